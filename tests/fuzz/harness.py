"""What the fuzz tests share: the tally and its report, the invariants, a crash-proof decode worker.

Per input, every target checks that

* nothing but a :class:`~pipeline.errors.LightboxError` escapes the service
  (HTTP: no 5xx but 503/507; DIMSE: a defined status, never C001H "internal
  error"), and a refusal's reason quotes none of the seed's patient data;
* the input finishes within :data:`BOUND` seconds, and the decoding of
  what it stored within :data:`DECODE_BOUND` per instance (measured: a hang
  is a failure; a hard hang trips a watchdog that dumps every thread and
  ends the run). Decoding has its own, longer bound: it runs in the decode
  actors, not while a sender waits, and CharLS (pyjpegls) is known to spend
  about 5 s refusing some garbage JPEG-LS scans, which pydicom tries twice;
* the decode stage leaves every stored instance ``ready``, ``failed`` or
  ``none`` and never dies: it runs in a child process, as the Ray decode
  actors do, so a codec crashing the process is seen and counted, not fatal;

and at the end, every instance stored before the fuzzing (the seeds) is still
there, byte for byte, with its pixel state; every indexed instance has its
blob with the recorded SHA-256; no blob is left without an index row.

The figures (inputs tried, crashes, hangs, lost, time) go to a JSON file:
``$LIGHTBOX_FUZZ_REPORT``, by default ``lightbox-fuzz-report.json`` in the
temporary folder; inputs that failed are kept under ``$LIGHTBOX_FUZZ_ARTIFACTS``
(default ``lightbox-fuzz-artifacts`` there) to become regression tests.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import multiprocessing
import os
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from pipeline.config import Settings
from pipeline.decode.service import STAGE
from pipeline.index.records import Provenance
from pipeline.index.schema import PixelState
from pipeline.ingest.part10 import split_part10
from pipeline.runtime import Runtime
from tests.fuzz.mutate import FuzzInput, Seed

#: Seconds one input may take through import, C-STORE or STOW-RS.
BOUND = float(os.environ.get("LIGHTBOX_FUZZ_BOUND", "10"))
#: Seconds the decoding of one stored instance may take.
DECODE_BOUND = float(os.environ.get("LIGHTBOX_FUZZ_DECODE_BOUND", "30"))
EXAMPLES = int(os.environ.get("LIGHTBOX_FUZZ_EXAMPLES", "200"))
#: Deterministic by default (``make test``); ``make fuzz`` draws anew each run.
DERANDOMIZE = os.environ.get("LIGHTBOX_FUZZ_DERANDOMIZE", "1") not in ("0", "false", "no")
REPORT = Path(
    os.environ.get("LIGHTBOX_FUZZ_REPORT")
    or Path(tempfile.gettempdir()) / "lightbox-fuzz-report.json"
)
ARTIFACTS = Path(
    os.environ.get("LIGHTBOX_FUZZ_ARTIFACTS")
    or Path(tempfile.gettempdir()) / "lightbox-fuzz-artifacts"
)

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,  # measured per input against BOUND instead
    derandomize=DERANDOMIZE,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)

#: Settings of the fuzzed archives: production defaults but for the decoded
#: size limit, kept low so that no input can make this shared machine allocate
#: gigabytes (the limit's logic is the same at any value).
SETTINGS_OVERRIDES: dict[str, Any] = {"max_decoded_bytes": 256 << 20}


class FuzzFailure(AssertionError):
    """An input broke an invariant (the message says which)."""


# -- the tally ------------------------------------------------------------------------


@dataclass
class TargetTally:
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    lost: int = 0
    stored: int = 0
    refused: int = 0
    decoded: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    max_seconds: float = 0.0
    max_decode_seconds: float = 0.0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    #: Time the current input spent decoding (not counted against BOUND).
    decode_elapsed: float = 0.0


class Tally:
    """The figures of every fuzz target in this process, written as JSON."""

    def __init__(self, path: Path = REPORT) -> None:
        self.path = path
        self.targets: dict[str, TargetTally] = {}
        self.started = time.time()

    def target(self, name: str) -> TargetTally:
        return self.targets.setdefault(name, TargetTally())

    def report(self) -> dict[str, Any]:
        totals = {
            key: sum(getattr(t, key) for t in self.targets.values())
            for key in ("inputs", "crashes", "hangs", "lost", "stored", "refused")
        }
        return {
            "examples_per_target": EXAMPLES,
            "derandomize": DERANDOMIZE,
            "bound_seconds": BOUND,
            "decode_bound_seconds": DECODE_BOUND,
            "wall_seconds": round(time.time() - self.started, 1),
            "totals": totals,
            "targets": {
                name: {
                    "inputs": t.inputs,
                    "crashes": t.crashes,
                    "hangs": t.hangs,
                    "lost": t.lost,
                    "stored": t.stored,
                    "refused": t.refused,
                    "decoded": dict(t.decoded),
                    "outcomes": dict(t.outcomes.most_common(25)),
                    "seconds": round(t.seconds, 1),
                    "max_seconds_per_input": round(t.max_seconds, 3),
                    "max_decode_seconds_per_instance": round(t.max_decode_seconds, 3),
                    "failures": t.failures[:50],
                }
                for name, t in self.targets.items()
            },
        }

    def flush(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.report(), indent=2, sort_keys=True))
        os.replace(tmp, self.path)


TALLY = Tally()


def keep_input(target: str, kind: str, inp: FuzzInput, detail: str) -> Path:
    """Save a failing input (and what happened) for a regression test."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(inp.data).hexdigest()[:16]
    path = ARTIFACTS / f"{target}-{kind}-{digest}.dcm"
    path.write_bytes(inp.data)
    path.with_suffix(".txt").write_text(f"{inp.describe()}\n{detail}\n")
    return path


@contextmanager
def one_input(target: str, inp: FuzzInput) -> Iterator[TargetTally]:
    """Count, time and guard one input; a failure is tallied, kept, and raised."""
    tally = TALLY.target(target)
    tally.inputs += 1
    tally.decode_elapsed = 0.0
    # A hang that holds the GIL cannot be timed from Python: this watchdog
    # thread (faulthandler's, in C) dumps every thread and ends the run.
    faulthandler.dump_traceback_later((BOUND + DECODE_BOUND) * 3, exit=True)
    started = time.monotonic()
    try:
        yield tally
    except FuzzFailure as exc:
        kind = "hang" if "hang" in str(exc) else "crash"
        if kind == "hang":
            tally.hangs += 1
        else:
            tally.crashes += 1
        kept = keep_input(target, kind, inp, str(exc))
        tally.failures.append(f"{kind}: {inp.describe()}: {str(exc)[:300]} (kept as {kept.name})")
        TALLY.flush()
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        tally.crashes += 1
        detail = "".join(traceback.format_exception(exc))[-4000:]
        kept = keep_input(target, "crash", inp, detail)
        tally.failures.append(f"crash: {inp.describe()}: {type(exc).__name__} (kept as {kept.name})")
        TALLY.flush()
        raise FuzzFailure(f"{type(exc).__name__} escaped for {inp.describe()}") from exc
    finally:
        faulthandler.cancel_dump_traceback_later()
        total = time.monotonic() - started
        elapsed = total - tally.decode_elapsed
        tally.seconds += total
        tally.max_seconds = max(tally.max_seconds, elapsed)
        if tally.inputs % 25 == 0:
            TALLY.flush()
    if elapsed > BOUND:
        tally.hangs += 1
        kept = keep_input(target, "hang", inp, f"{elapsed:.1f} s")
        tally.failures.append(f"hang: {inp.describe()}: {elapsed:.1f} s (kept as {kept.name})")
        TALLY.flush()
        raise FuzzFailure(f"hang: {elapsed:.1f} s over the bound of {BOUND} s for {inp.describe()}")


def check_reason(reason: str, inp: FuzzInput) -> None:
    """A refusal has a reason, and the reason quotes none of the seed's patient data."""
    if not reason:
        raise FuzzFailure(f"a refusal without a reason for {inp.describe()}")
    for value in inp.seed.phi:
        if value in reason:
            raise FuzzFailure(f"a refusal reason quotes patient data for {inp.describe()}")


# -- the decode stage, in a child process ---------------------------------------------


def _decode_worker(settings_json: str, conn: Any) -> None:  # pragma: no cover - child process
    from pipeline.decode.service import DecodeService
    from pipeline.runtime import open_runtime

    settings = Settings.model_validate_json(settings_json)
    runtime = open_runtime(settings)
    service = DecodeService.from_settings(settings, runtime.index, runtime.blobs)
    conn.send("ready")
    while True:
        limit = conn.recv()
        if limit is None:
            break
        try:
            outcomes = service.run_once(limit=limit, lease_seconds=3600)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as a crash
            conn.send(("error", f"{type(exc).__name__}", traceback.format_exc()[-4000:]))
            continue
        conn.send(("ok", [(o.state.value, o.reason) for o in outcomes]))
    runtime.close()


class DecodeWorker:
    """A decode process, like a Ray decode actor: restarted when it dies.

    :meth:`run` decodes the queue one instance per call and raises
    :class:`FuzzFailure` when the service raised, the process died (a codec
    crashed it) or one instance took longer than :data:`DECODE_BOUND`; the
    instance is then marked failed so that the run goes on.
    """

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings_json = settings.model_dump_json()
        self.runtime = runtime
        self._ctx = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self.conn, child = self._ctx.Pipe()
        self.proc = self._ctx.Process(
            target=_decode_worker, args=(self.settings_json, child), daemon=True
        )
        self.proc.start()
        child.close()
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            raise RuntimeError("the decode worker did not start")

    def _restart(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)
        self._start()
        # The instance it was decoding stays claimed: fail it, as the
        # service's own give-up does after repeated deaths.
        self.runtime.index.release_claims()
        for item in self.runtime.index.claim_work(STAGE, 100, 60):
            self.runtime.index.finish_pixel_work(
                item.pk, item.sop_instance_uid, PixelState.FAILED, "fuzz: the decoder died"
            )

    def run(self) -> list[tuple[str, str | None]]:
        outcomes: list[tuple[str, str | None]] = []
        while True:
            try:
                self.conn.send(1)
            except OSError:  # BrokenPipeError: it died since the last call
                self.proc.join(10)
                code = self.proc.exitcode
                self._restart()
                raise FuzzFailure(f"crash: the decode process died (exit code {code})") from None
            if not self.conn.poll(DECODE_BOUND):
                self._restart()
                raise FuzzFailure(f"hang: decoding one instance took over {DECODE_BOUND} s")
            try:
                message = self.conn.recv()
            except EOFError:
                self.proc.join(10)
                code = self.proc.exitcode
                self._restart()
                raise FuzzFailure(f"crash: the decode process died (exit code {code})") from None
            if message[0] == "error":
                self._restart()
                raise FuzzFailure(f"crash: {message[1]} escaped DecodeService:\n{message[2]}")
            if not message[1]:
                return outcomes
            outcomes.extend(message[1])

    def close(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(20)
        except (OSError, BrokenPipeError):
            pass
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)


# -- the archive under fuzzing ----------------------------------------------------------


def _blob_sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@dataclass
class Baseline:
    """The instances stored before fuzzing: key, SHA-256 of the whole blob, pixel state."""

    rows: dict[str, tuple[str, str, PixelState]] = field(default_factory=dict)


class FuzzArchive:
    """An archive (index, blobs, decode worker) with the seeds stored as a baseline."""

    def __init__(self, settings: Settings, runtime: Runtime, seeds: list[Seed]) -> None:
        self.settings = settings
        self.runtime = runtime
        self.seeds = seeds
        self.worker = DecodeWorker(settings, runtime)
        self.baseline = Baseline()
        for seed in seeds:
            try:
                runtime.ingest.store_part10(seed.part10, Provenance("import"))
            except Exception:  # a seed the archive refuses (none today) is no baseline
                continue
        for state, reason in self.worker.run():
            if state not in ("ready", "none"):
                raise AssertionError(f"a seed did not decode: {reason}")
        for row in runtime.index.list_instances():
            blob = runtime.blobs.get(row.storage_key)
            self.baseline.rows[row.sop_instance_uid] = (
                row.storage_key,
                _blob_sha(blob),
                row.pixel_state,
            )
        assert len(self.baseline.rows) >= len(seeds) - 2, "the seeds were not stored"

    def decode(self, tally: TargetTally) -> None:
        """Decode what the last input stored; every instance ends ready, failed or none."""
        started = time.monotonic()
        try:
            outcomes = self.worker.run()
        finally:
            elapsed = time.monotonic() - started
            tally.decode_elapsed += elapsed
            tally.max_decode_seconds = max(tally.max_decode_seconds, elapsed)
        for state, _reason in outcomes:
            tally.decoded[state] += 1
            if state not in ("ready", "failed", "none"):
                raise FuzzFailure(f"crash: a decode ended {state!r}")
        work = self.runtime.index.counts().work.get(STAGE, {})
        if work.get("pending", 0) or work.get("claimed", 0):
            raise FuzzFailure(f"crash: decode work left behind: {work}")

    def check_nothing_lost(self, tally: TargetTally) -> list[str]:
        """Every baseline instance intact, every indexed instance with its blob, no orphans."""
        problems = []
        index, blobs = self.runtime.index, self.runtime.blobs
        for uid, (key, sha, state) in self.baseline.rows.items():
            row = index.get_instance(uid)
            if row is None or not blobs.exists(row.storage_key):
                problems.append(f"baseline instance {uid} is gone")
            elif row.storage_key != key or _blob_sha(blobs.get(row.storage_key)) != sha:
                problems.append(f"baseline instance {uid} changed")
            elif row.pixel_state != state:
                problems.append(f"baseline instance {uid}: pixels {state.value} -> {row.pixel_state.value}")
        rows = index.list_instances()
        keys = set()
        for row in rows:
            keys.add(row.storage_key)
            if not blobs.exists(row.storage_key):
                problems.append(f"instance {row.sop_instance_uid} has no blob")
                continue
            dataset = split_part10(blobs.get(row.storage_key)).dataset
            if hashlib.sha256(dataset).hexdigest() != row.sha256:
                problems.append(f"instance {row.sop_instance_uid}: blob differs from its SHA-256")
        root = getattr(blobs, "root", None)
        if root is not None:
            on_disk = {
                str(p.relative_to(root))
                for p in Path(root).rglob("*.dcm")
                if not p.name.startswith(".")
            }
            orphans = on_disk - keys
            if orphans:
                problems.append(f"{len(orphans)} blobs without an index row")
        tally.lost += len(problems)
        tally.stored = len(rows) - len(self.baseline.rows)
        return problems

    def close(self) -> None:
        self.worker.close()


def run_fuzz(
    target: str, archive: FuzzArchive, body: Callable[[], None]
) -> None:
    """Run the hypothesis loop ``body``; then check that nothing was lost, and report."""
    tally = TALLY.target(target)
    started = time.monotonic()
    try:
        body()
    finally:
        problems = archive.check_nothing_lost(tally)
        tally.failures.extend(f"lost: {p}" for p in problems[:20])
        TALLY.flush()
        print(f"\nfuzz {target}: {json.dumps(TALLY.report()['targets'][target])}")
        print(f"fuzz {target}: {time.monotonic() - started:.1f} s, report in {REPORT}")
    assert not problems, problems
