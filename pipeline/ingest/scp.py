"""The DICOM protocol adapter for ingest: Verification and Storage SCP (pynetdicom).

The handlers only translate an event into an :class:`IngestService` call and a
status (PS3.4 A.4 for C-ECHO, B.2.3 for C-STORE). Policy and persistence live
behind the service.

Several processes can each run a :class:`DicomIngestServer` on the same port:
the listening socket sets ``SO_REUSEPORT`` and the kernel spreads incoming
associations over them.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable

import pydicom.config
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from pipeline.config import Settings
from pipeline.errors import LightboxError
from pipeline.index.records import Provenance
from pipeline.ingest.service import IngestService

log = logging.getLogger(__name__)

#: Every transfer syntax we accept as is (no forced decompression): the native
#: ones, deflate, and every encapsulated syntax of PS3.5 Table A-1 that a
#: modality sends today. The sender's order of preference is kept.
ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Lossless Only
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless Only
    "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options Lossless Only
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 2D video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 3D video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
)

#: C-STORE status used for an error we did not foresee (PS3.4 B.2.3: Cannot understand).
_UNEXPECTED = 0xC001


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        # Error Comment (0000,0902) is LO: 64 characters at most (PS3.7 C.4).
        status.ErrorComment = comment[:64]
    return status


class StorageSCP:
    """Event handlers for Verification and Storage; see module docstring."""

    def __init__(self, service: IngestService) -> None:
        self.service = service
        self.stored = 0
        self.failed = 0
        self._lock = threading.Lock()

    def handle_echo(self, event: evt.Event) -> int:
        return 0x0000

    def handle_store(self, event: evt.Event) -> int | Dataset:
        request = event.request
        calling_ae = event.assoc.requestor.ae_title
        try:
            # The raw dataset bytes as received: never decoded and re-encoded.
            dataset = request.DataSet.getbuffer()  # type: ignore[union-attr]
            self.service.store_dataset(
                dataset,
                event.context.transfer_syntax,
                Provenance("dimse", calling_ae=calling_ae),
                sop_class_uid=request.AffectedSOPClassUID,
                sop_instance_uid=request.AffectedSOPInstanceUID,
            )
        except LightboxError as exc:
            log.warning(
                "C-STORE refused status=0x%04X calling_ae=%s reason=%s",
                exc.dimse_status,
                calling_ae,
                exc.reason,
            )
            with self._lock:
                self.failed += 1
            return _status(exc.dimse_status, exc.reason)
        except Exception:
            log.exception("C-STORE failed unexpectedly calling_ae=%s", calling_ae)
            with self._lock:
                self.failed += 1
            return _status(_UNEXPECTED, "internal error, see server log")
        with self._lock:
            self.stored += 1
        return 0x0000


class _ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with ``SO_REUSEPORT`` and ``TCP_NODELAY``."""

    def server_bind(self) -> None:
        # Several processes listen on one port; the kernel balances associations.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self):  # type: ignore[no-untyped-def]
        client, address = super().get_request()
        # A DIMSE response is small and latency-bound: without TCP_NODELAY,
        # Nagle plus the peer's delayed ACK stall every instance by ~40 ms.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def storage_contexts(
    transfer_syntaxes: Iterable[str] = ACCEPTED_TRANSFER_SYNTAXES,
) -> list[PresentationContext]:
    """Verification and every storage SOP class pynetdicom knows, with our syntaxes."""
    syntaxes = list(transfer_syntaxes)
    contexts = []
    for uid in [Verification] + [cx.abstract_syntax for cx in StoragePresentationContexts]:
        cx = PresentationContext()
        cx.abstract_syntax = uid
        cx.transfer_syntax = syntaxes
        contexts.append(cx)
    return contexts


_ACCEPTED = frozenset(ACCEPTED_TRANSFER_SYNTAXES)


def prefer_requestor_order(event: evt.Event) -> None:
    """Accept, per abstract syntax, the first transfer syntax the *requestor* proposed.

    pynetdicom picks the first of the acceptor's list; we want the sender's
    preference, so that a compressed instance is accepted compressed (no
    conversion by the sender) and an uncompressed one is never turned lossy
    because we happened to list a lossy syntax first. Runs on A-ASSOCIATE-RQ,
    before negotiation (PS3.8 9.3.2.2: the acceptor picks one per context).
    """
    acceptor = event.assoc.acceptor
    preferred: dict[str, list[str]] = {}
    for cx in event.assoc.requestor.requested_contexts:
        syntaxes = preferred.setdefault(cx.abstract_syntax, [])
        syntaxes.extend(ts for ts in cx.transfer_syntax if ts in _ACCEPTED and ts not in syntaxes)
    contexts = []
    for cx in acceptor.supported_contexts:
        if preferred.get(cx.abstract_syntax):
            ordered = PresentationContext()
            ordered.abstract_syntax = cx.abstract_syntax
            ordered.transfer_syntax = preferred[cx.abstract_syntax]
            contexts.append(ordered)
    if contexts:
        acceptor.supported_contexts = contexts


class DicomIngestServer:
    """A pynetdicom AE serving Verification and Storage on ``settings.dicom_port``.

    Works without Ray (tests, single process); :class:`pipeline.ingest.actors.IngestActor`
    runs one per Ray actor.
    """

    def __init__(self, settings: Settings, service: IngestService) -> None:
        self.settings = settings
        self.scp = StorageSCP(service)
        # pynetdicom's standard DIMSE/PDU log handlers print dataset contents
        # at DEBUG, which can be PHI: switch them off.
        _config.LOG_HANDLER_LEVEL = "none"
        # pydicom validates every value pynetdicom reads or writes in the
        # command sets (~25 per C-STORE): it costs ~10% of the CPU per
        # instance and only ever warns. Datasets are checked by our parser.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
        ae = AE(ae_title=settings.ae_title)
        ae.maximum_associations = settings.max_associations
        ae.maximum_pdu_size = settings.max_pdu_size
        ae.network_timeout = settings.network_timeout
        ae.dimse_timeout = settings.network_timeout
        ae.acse_timeout = settings.network_timeout
        ae.require_called_aet = settings.require_called_ae
        allowed = [a.strip() for a in settings.allowed_calling_aes if a.strip()]
        # An empty list means "any calling AE" to pynetdicom; "*" says so explicitly.
        ae.require_calling_aet = [] if (not allowed or "*" in allowed) else allowed
        ae.supported_contexts = storage_contexts()
        self.ae = ae
        # Orthanc's "UnknownSopClassAccepted": pynetdicom's switch is per
        # process, and one process runs one ingest server.
        _config.UNRESTRICTED_STORAGE_SERVICE = settings.accept_unknown_sop_classes
        handlers = [
            (evt.EVT_REQUESTED, prefer_requestor_order),
            (evt.EVT_C_ECHO, self.scp.handle_echo),
            (evt.EVT_C_STORE, self.scp.handle_store),
        ]
        self.server = ae.make_server(
            (settings.dicom_host, settings.dicom_port),
            evt_handlers=handlers,
            server_class=_ReusePortServer,
        )
        # pynetdicom's shutdown() expects its AE to know the server.
        ae._servers.append(self.server)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> DicomIngestServer:
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="dicom-ingest", daemon=True
        )
        self._thread.start()
        log.info("DICOM SCP %s listening on port %d", self.settings.ae_title, self.port)
        return self

    def stop(self) -> None:
        self.server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
