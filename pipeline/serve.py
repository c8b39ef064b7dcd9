"""``lightbox serve``: the composition root that starts Ray, the ingest and decode actors, HTTP.

Order matters for durability: the index schema is migrated, the stores swept
of what a crash left half-written, and the previous run's claims on pipeline
work released, before any actor accepts an association or claims work.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from typing import TYPE_CHECKING

from pipeline.config import Settings
from pipeline.decode.actors import start_decode
from pipeline.index import SqlIndex, migrate
from pipeline.ingest.actors import start_ingest
from pipeline.storage.blobs import LocalBlobStore, open_blob_store
from pipeline.storage.pixels import open_pixel_store

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    import uvicorn

    from pipeline.security.audit import AuditTrail
    from pipeline.worklist.mllp import MLLPServer

log = logging.getLogger(__name__)


def start_ray(settings: Settings) -> None:
    import ray

    if ray.is_initialized():
        return
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=True)
    else:
        # Embedded local Ray: no dashboard, a small object store (ingest moves
        # no objects through it), quiet start-up.
        ray.init(
            include_dashboard=False,
            object_store_memory=128 * 1024**2,
            log_to_driver=True,
            configure_logging=False,
        )


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold ``port`` (bound, not listening) with SO_REUSEPORT until the actors bind it.

    A bound socket keeps every other process from the port, except sockets of
    the same user with SO_REUSEPORT: our ingest actors. Not listening, it
    takes no connections.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"lightbox: cannot use DICOM port {port}: {exc.strerror}") from None
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP API's socket, bound and listening before anything else starts.

    Created with ``IPPROTO_TCP`` spelled out: asyncio sets TCP_NODELAY on the
    connections it accepts only for sockets whose protocol says TCP, and
    without it every small response waits ~40 ms on Nagle and delayed ACKs.
    """
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"lightbox: cannot use HTTP port {port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def prepare_storage(settings: Settings) -> None:
    """Migrate the index and clear what a crash may have left mid-write."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate(settings.resolved_index_url)
    blobs = open_blob_store(settings.resolved_storage_url)
    if isinstance(blobs, LocalBlobStore):
        swept = blobs.sweep_temporary()
        if swept:
            log.warning("removed %d partial blob writes left by an earlier crash", swept)
    pixels = open_pixel_store(settings.resolved_storage_url)
    swept = pixels.sweep_temporary()
    if swept:
        log.warning("removed %d partial pixel stores left by an earlier crash", swept)
    if not settings.ray_address:
        # Alone on this index: what our previous run had claimed is ours to
        # redo now. (In a cluster, other nodes' claims run out by lease.)
        index = SqlIndex(settings.resolved_index_url)
        try:
            released = index.release_claims()
        finally:
            index.close()
        if released:
            log.warning("resuming %d pipeline work items interrupted by a stop", released)


def http_config(settings: Settings, app: object) -> uvicorn.Config:
    """uvicorn's configuration for ``app``: HTTPS when ``http_tls_cert``/``http_tls_key`` are set.

    The certificate and key are loaded once here (:func:`server_context`), so
    that a missing or unreadable file stops the start with the setting's name
    instead of failing the first client's handshake.
    """
    import uvicorn

    tls: dict[str, object] = {}
    if settings.http_tls_cert and settings.http_tls_key:
        from pipeline.security.tls import TLSConfigError, server_context

        try:
            server_context(settings.http_tls_cert, settings.http_tls_key, setting="http_tls")
        except TLSConfigError as exc:
            raise SystemExit(f"lightbox: {exc}") from None
        tls = {"ssl_certfile": str(settings.http_tls_cert), "ssl_keyfile": str(settings.http_tls_key)}
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # uvicorn wraps each accepted connection of the pre-bound socket.
        **tls,  # type: ignore[arg-type]
    )


def ensure_first_administrator(settings: Settings) -> None:
    """On first start (no account at all), create ``admin`` and print its one-time password.

    Printed on the console, never logged: log files are kept and shipped, and
    must not hold a credential. The password must be changed at first login.
    """
    from pipeline.security.accounts import AccountService

    index = SqlIndex(settings.resolved_index_url)
    try:
        created = AccountService(index, settings).ensure_first_administrator()
    finally:
        index.close()
    if created is None:
        return
    username, password = created
    log.warning("first start: created the administrator account %r", username)
    print(
        "\n  First start: the administrator account was created.\n"
        f"    user name:          {username}\n"
        f"    one-time password:  {password}\n"
        "  Log in (POST /api/auth/login or /api/auth/token) and change it\n"
        "  (POST /api/auth/password) before anything else. It is shown only once;\n"
        "  `lightbox user passwd admin` sets a new one-time password.\n",
        file=sys.stderr,
        flush=True,
    )


class HL7Listener:
    """The HL7 MLLP listener of ``lightbox serve`` with the index and audit trail it owns."""

    def __init__(self, server: MLLPServer, index: SqlIndex, audit: AuditTrail) -> None:
        self.server = server
        self.index = index
        self.audit = audit

    def stop(self) -> None:
        self.server.stop()
        self.audit.close()  # writes what is queued
        self.index.close()


def start_hl7(settings: Settings) -> HL7Listener | None:
    """Start the HL7 v2 MLLP listener on ``hl7_host:hl7_port`` (None when the port is 0).

    A thread of this process: a message is a few small transactions, far
    from the load that puts DICOM ingest in Ray actors. Its own index
    connection pool and audit trail: it shares nothing with uvicorn's.
    """
    if not settings.hl7_port:
        return None
    from pipeline.security.audit import AuditTrail
    from pipeline.worklist.hl7 import HL7Intake
    from pipeline.worklist.mllp import MLLPServer
    from pipeline.worklist.registration import RegistrationService

    index = SqlIndex(settings.resolved_index_url)
    audit = AuditTrail.from_settings(settings, index)
    intake = HL7Intake(
        RegistrationService(index, settings.accession_format), audit, application=settings.ae_title
    )
    try:
        server = MLLPServer(
            intake.handle,
            intake.reject_oversize,
            settings.hl7_host,
            settings.hl7_port,
            max_message_bytes=settings.hl7_max_message_bytes,
            idle_timeout=settings.network_timeout * 5,
        )
    except OSError as exc:
        audit.close()
        index.close()
        raise SystemExit(f"lightbox: cannot use HL7 port {settings.hl7_port}: {exc.strerror}") from None
    return HL7Listener(server.start(), index, audit)


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM to this process when its parent dies (Linux).

    A ``lightbox serve`` killed outright (SIGKILL, the OOM killer) must not
    leave HTTP workers holding the port.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _http_worker(settings: Settings, sock: socket.socket) -> None:
    """One more HTTP process: the application on the shared socket until SIGTERM.

    Everything per process is opened here (the runtime with its index pool
    and audit writer, the caches); what processes share lives in the index.
    """
    _die_with_parent()
    import uvicorn

    from api.main import create_app
    from pipeline.logs import configure_logging

    configure_logging(settings.log_level)
    server = uvicorn.Server(http_config(settings, create_app(settings)))
    server.run(sockets=[sock])


def start_http_workers(settings: Settings, sock: socket.socket) -> list[BaseProcess]:
    """Start ``http_workers - 1`` HTTP processes beside this one, on ``sock``.

    One Python process runs one request's Python at a time (the GIL): a
    rendered frame, a QIDO answer and a token check all share one core. The
    kernel hands each connection on the listening socket to one of the
    processes waiting on it. Spawned, not forked: this process holds threads
    and Ray's state by then.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = []
    for number in range(1, settings.http_workers):
        worker = context.Process(
            target=_http_worker, args=(settings, sock), name=f"lightbox-http-{number}"
        )
        worker.start()
        workers.append(worker)
    return workers


def stop_http_workers(workers: list[BaseProcess], timeout: float = 30.0) -> None:
    """SIGTERM (uvicorn finishes the requests in flight), then SIGKILL after ``timeout``."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout)
        if worker.is_alive():
            log.warning("HTTP worker %s did not stop; killed", worker.name)
            worker.kill()
            worker.join(5)


def sweep_reconciliation(index: SqlIndex) -> threading.Thread:
    """Link the studies a crash left without a reconciliation look, in the background.

    The ingest processes look at each study as it arrives
    (:class:`pipeline.worklist.reconcile.StudyLinker`); a study stored just
    before a crash has no ``study_links`` row and would wait for the next
    study to arrive somewhere. Started with the server, so it does not.
    """
    from pipeline.worklist.reconcile import Reconciler

    def run() -> None:
        try:
            Reconciler(index).sweep()
        except Exception as exc:  # noqa: BLE001 - the next start sweeps again
            log.warning("reconciliation sweep failed: %s", type(exc).__name__)

    thread = threading.Thread(target=run, name="lightbox-reconcile-sweep", daemon=True)
    thread.start()
    return thread


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM: Ray ingest and decode actors, HTTP in this process."""
    import ray
    import uvicorn

    from api.main import create_app

    prepare_storage(settings)
    ensure_first_administrator(settings)
    # Take both ports before Ray starts: Ray's daemons bind dozens of ports
    # and would otherwise be free to take ours first.
    http_socket = listening_socket(settings.http_host, settings.http_port)
    dicom_placeholder = reserve_port(settings.dicom_host, settings.dicom_port)
    hl7 = start_hl7(settings)  # takes its port before Ray too
    start_ray(settings)
    try:
        actors = start_ingest(settings)
    finally:
        dicom_placeholder.close()  # the actors listen on the port now

    # The dispatcher claims work with an index connection of its own; the
    # decode actors record outcomes with theirs.
    dispatch_index = SqlIndex(settings.resolved_index_url)
    decoders, dispatcher, dispatch_thread = start_decode(settings, dispatch_index)

    sweep_reconciliation(dispatch_index)

    app = create_app(settings)
    server = uvicorn.Server(http_config(settings, app))
    http_workers = start_http_workers(settings, http_socket)
    log.info(
        "Lightbox ready: DICOM %s@%s:%d%s, HTTP %s://%s:%d (%d processes), data %s",
        settings.ae_title,
        settings.dicom_host,
        settings.dicom_port,
        " (TLS)" if settings.dicom_tls_cert else "",
        "https" if settings.http_tls_cert else "http",
        settings.http_host,
        settings.http_port,
        settings.http_workers,
        settings.data_dir,
    )
    # uvicorn installs its own signal handlers while it runs; it stops on
    # SIGINT/SIGTERM and we then stop the actors.
    try:
        server.run(sockets=[http_socket])
    finally:
        # uvicorn raises the SIGTERM it caught once more after stopping, and
        # Ray's handler turns that into SystemExit: the shutdown runs here.
        stop_http_workers(http_workers)
        if hl7 is not None:
            hl7.stop()
        dispatcher.stop()
        dispatch_thread.join(timeout=30)
        dispatch_index.close()
        try:
            ray.get([a.stop.remote() for a in [*actors, *decoders]], timeout=30)
        except Exception:  # an actor that is already gone needs no stopping
            log.warning("some actors did not stop cleanly")
        ray.shutdown()
