"""Ray actors for ingest: each runs a :class:`DicomIngestServer` on the shared port.

The expensive set-up (index engine, blob store, AE, listening socket) happens
once in ``__init__``; the kernel spreads associations over the actors'
``SO_REUSEPORT`` sockets, so each association is served by one process and the
GIL of one does not limit the others.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipeline.config import Settings
from pipeline.ingest.scp import DicomIngestServer, DicomService
from pipeline.logs import configure_logging
from pipeline.runtime import Runtime, open_runtime

log = logging.getLogger(__name__)


def dicom_services(runtime: Runtime) -> list[DicomService]:
    """The DIMSE services beside Verification and Storage, on one runtime's stores.

    Query/Retrieve FIND (Patient and Study Root, PS3.4 C.4.1), MOVE and GET
    (C.4.2, C.4.3), Storage Commitment Push Model (J.3), Modality Worklist
    FIND (K) and MPPS (F). Imported here so that a process that never serves
    DICOM does not load them.

    pynetdicom keeps one ``EVT_C_FIND`` handler per server: the worklist SCP
    comes after the Query/Retrieve one and hands it every C-FIND that is not
    a worklist query (``other_find``), so its handler is the one installed.
    """
    from pipeline.query.scp import QueryRetrieveFindSCP
    from pipeline.query.service import QueryService
    from pipeline.retrieve.commitment import commitment_service
    from pipeline.retrieve.scp import retrieve_services
    from pipeline.worklist.services import worklist_services

    settings = runtime.settings
    find = QueryRetrieveFindSCP(QueryService(runtime.index), runtime.audit, settings.ae_title)
    return [
        find,
        *retrieve_services(runtime.index, runtime.blobs, runtime.audit, settings),
        commitment_service(runtime.index, runtime.audit, settings),
        *worklist_services(
            runtime.index, runtime.audit, settings.ae_title, other_find=find.handle_find
        ),
    ]


def build_dicom_server(runtime: Runtime) -> DicomIngestServer:
    """The DICOM server of an ingest actor: every service, behind the device policy.

    A calling AE in the device registry gets only the services it is
    granted (:class:`~pipeline.devices.policy.DevicePolicy`); any other AE is
    admitted or refused by the calling-AE allow-list, as before.
    """
    from pipeline.devices.policy import DevicePolicy
    from pipeline.devices.registry import DeviceRegistry

    settings = runtime.settings
    policy = DevicePolicy(DeviceRegistry(runtime.index), runtime.audit, settings.ae_title)
    return DicomIngestServer(
        settings, runtime.ingest, runtime.audit, services=dicom_services(runtime), policy=policy
    )


class IngestWorker:
    """The plain class behind the actor (tests call it without Ray)."""

    def __init__(self, settings_json: str) -> None:
        settings = Settings.model_validate_json(settings_json)
        configure_logging(settings.log_level)
        self.runtime = open_runtime(settings)
        self.server = build_dicom_server(self.runtime).start()

    def ready(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "port": self.server.port}

    def stats(self) -> dict[str, int]:
        return {
            "pid": os.getpid(),
            "stored": self.server.scp.stored,
            "failed": self.server.scp.failed,
        }

    def stop(self) -> None:
        self.server.stop()
        self.runtime.close()


def ingest_actor_class():  # type: ignore[no-untyped-def]
    """The Ray actor class, made on demand so that importing this module needs no Ray."""
    import ray

    # num_cpus=0: the actors wait on sockets and disks; they must not hold
    # the CPU slots that decode and render tasks are scheduled on.
    # max_restarts=-1: a crashed actor comes back and listens again.
    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(IngestWorker)


def start_ingest(settings: Settings) -> list[Any]:
    """Start ``settings.ingest_actors`` actors and wait until each listens."""
    import ray

    actor_class = ingest_actor_class()
    settings_json = settings.model_dump_json()
    actors = [
        actor_class.options(name=f"lightbox-ingest-{i}", scheduling_strategy="SPREAD").remote(
            settings_json
        )
        for i in range(settings.ingest_actors)
    ]
    try:
        ready = ray.get([a.ready.remote() for a in actors], timeout=120)
    except ray.exceptions.RayError as exc:
        # The actor's traceback ends with the cause, e.g. "OSError: [Errno 98]
        # Address already in use": that line is what an administrator needs.
        lines = [line for line in str(exc).splitlines() if line.strip()]
        ray.shutdown()
        raise SystemExit(
            f"lightbox: the DICOM ingest actors could not start on port "
            f"{settings.dicom_port}: {lines[-1].strip() if lines else exc}"
        ) from None
    log.info(
        "%d ingest actors listening on DICOM port %d as %s (pids %s)",
        len(actors),
        settings.dicom_port,
        settings.ae_title,
        ",".join(str(r["pid"]) for r in ready),
    )
    return actors
