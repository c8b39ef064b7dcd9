"""Ray actors for the decode stage, and the dispatcher that feeds them.

:class:`DecodeWorker` does its set-up (index engine, blob and pixel stores) in
``__init__`` and decodes one claimed item per call. :class:`DecodeDispatcher`
claims work from the durable queue and keeps at most ``max_in_flight`` calls
running, waiting on them with ``ray.wait``. Both work without Ray too.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.config import Settings
from pipeline.decode.service import STAGE, DecodeOutcome, DecodeService
from pipeline.index.protocol import Index
from pipeline.index.records import WorkItem
from pipeline.logs import configure_logging
from pipeline.runtime import open_runtime

log = logging.getLogger(__name__)

#: Added to the decode actors' niceness (ingest keeps the default priority).
DECODE_NICENESS = 10


class DecodeWorker:
    """The plain class behind the decode actor."""

    def __init__(self, settings_json: str) -> None:
        settings = Settings.model_validate_json(settings_json)
        configure_logging(settings.log_level)
        # Decoding can wait, a modality waiting for its C-STORE response
        # cannot: on a shared machine the ingest actors get the CPU first.
        os.nice(DECODE_NICENESS)
        self.runtime = open_runtime(settings)
        self.service = DecodeService.from_settings(settings, self.runtime.index, self.runtime.blobs)

    def decode(self, item: WorkItem) -> DecodeOutcome:
        return self.service.decode(item)

    def stop(self) -> None:
        self.runtime.close()


def decode_actor_class():  # type: ignore[no-untyped-def]
    """The Ray actor class (made on demand: importing this module needs no Ray)."""
    import ray

    # One CPU each: decoding is CPU-bound, Ray schedules them over the cluster.
    return ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(DecodeWorker)


class DecodeDispatcher:
    """Claim decode work and run it on workers, with bounded in-flight work.

    Parameters
    ----------
    index
        Where the work comes from (claims with a lease: a dispatcher or worker
        that dies leaves its items to be claimed again).
    submit
        Starts one decode and returns a handle (a Ray ObjectRef).
    wait
        ``ray.wait``-like: ``wait(handles, num_returns=1, timeout=...)`` ->
        (done, pending).
    get
        ``ray.get``-like, for the finished handles.
    """

    def __init__(
        self,
        index: Index,
        submit: Callable[[WorkItem], Any],
        wait: Callable[..., tuple[list[Any], list[Any]]],
        get: Callable[[Any], Any],
        max_in_flight: int,
        lease_seconds: float = 300.0,
        idle_seconds: float = 0.25,
    ) -> None:
        self.index = index
        self.submit = submit
        self.wait = wait
        self.get = get
        self.max_in_flight = max_in_flight
        self.lease_seconds = lease_seconds
        self.idle_seconds = idle_seconds
        self.decoded = 0
        self.failed = 0
        self._stop = threading.Event()

    def step(self, in_flight: list[Any]) -> list[Any]:
        """Top up to ``max_in_flight`` from the queue, then wait for one to finish.

        Claims go in batches (when half the calls are done), so that the
        index's writers' lock is taken once for several items.
        """
        room = self.max_in_flight - len(in_flight)
        if room >= max(1, self.max_in_flight // 2):
            for item in self.index.claim_work(STAGE, room, self.lease_seconds):
                in_flight.append(self.submit(item))
        if not in_flight:
            return in_flight
        done, pending = self.wait(in_flight, num_returns=1, timeout=self.idle_seconds)
        for handle in done:
            try:
                outcome = self.get(handle)
            except Exception:  # the item stays claimed and comes back after its lease
                log.exception("decode call failed; the item will be retried")
                continue
            if outcome.reason is None:
                self.decoded += 1
            else:
                self.failed += 1
        return list(pending)

    def run(self) -> None:
        """Until :meth:`stop`: keep the workers busy, sleep when the queue is empty."""
        in_flight: list[Any] = []
        while not self._stop.is_set():
            try:
                in_flight = self.step(in_flight)
            except Exception:  # the index may be briefly unavailable; keep going
                log.exception("decode dispatcher step failed")
                time.sleep(self.idle_seconds)
                continue
            if not in_flight:
                self._stop.wait(self.idle_seconds)

    def stop(self) -> None:
        self._stop.set()


def start_decode(settings: Settings, index: Index) -> tuple[list[Any], DecodeDispatcher, threading.Thread]:
    """Start decode actors and a dispatcher thread (``lightbox serve``)."""
    import ray

    actor_class = decode_actor_class()
    settings_json = settings.model_dump_json()
    workers = [
        actor_class.options(name=f"lightbox-decode-{i}", scheduling_strategy="SPREAD").remote(
            settings_json
        )
        for i in range(settings.decode_actors)
    ]
    turn = itertools.cycle(workers)

    def submit(item: WorkItem) -> Any:
        return next(turn).decode.remote(item)

    dispatcher = DecodeDispatcher(
        index, submit, ray.wait, ray.get, max_in_flight=4 * len(workers)
    )
    thread = threading.Thread(target=dispatcher.run, name="decode-dispatcher", daemon=True)
    thread.start()
    return workers, dispatcher, thread
