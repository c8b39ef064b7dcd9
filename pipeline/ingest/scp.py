"""The DICOM protocol adapter for ingest: Verification and Storage SCP (pynetdicom).

The handlers only translate an event into an :class:`IngestService` call and a
status (PS3.4 A.4 for C-ECHO, B.2.3 for C-STORE). Policy and persistence live
behind the service.

Several processes can each run a :class:`DicomIngestServer` on the same port:
the listening socket sets ``SO_REUSEPORT`` and the kernel spreads incoming
associations over them.

Transport security (issue 7): with ``dicom_tls_cert``/``dicom_tls_key`` the
port speaks TLS only (PS3.15 B.1, :mod:`pipeline.security.tls`); each
A-ASSOCIATE-RQ is checked against the calling-AE allow-list and the per-peer
association limit (:mod:`pipeline.security.peers`) before negotiation
(PS3.8 9.3.4); refusals and the instances stored per association are recorded
in the audit trail.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from pipeline.security.audit import Action, AuditEvent, AuditTrail, EventID, EventType, Outcome
from pipeline.security.peers import AllowList, PeerSlot, PeerSlots, normalise_ip
from pipeline.security.tls import server_context

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


#: A-ASSOCIATE-RJ (Result, Source, Reason/Diag.) of PS3.8 Table 9-21.
#: rejected-permanent, DICOM UL service-user, calling-AE-title-not-recognized.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
#: rejected-transient, DICOM UL service-provider (presentation related
#: function), local-limit-exceeded: the peer may try again later.
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
#: rejected-transient, DICOM UL service-user, no-reason-given: our own fault.
REJECT_INTERNAL = (0x02, 0x01, 0x01)

#: Reasons (for the log and the audit trail) of the A-ASSOCIATE-RJ that
#: pynetdicom sends on its own during negotiation (PS3.8 Table 9-21).
_REJECT_REASONS: dict[tuple[int, int, int], str] = {
    REJECT_CALLING_AE: "calling AE title not recognised",
    (0x01, 0x01, 0x07): "called AE title not recognised",
    (0x02, 0x02, 0x01): "user identity not accepted",
    REJECT_LOCAL_LIMIT: "local limit exceeded (max_associations)",
}


def _calling_ae(assoc: object) -> str:
    """The calling AE title of an association, also before negotiation.

    During EVT_REQUESTED pynetdicom has not yet copied it from the
    A-ASSOCIATE-RQ onto ``requestor.ae_title``: read the primitive then.
    """
    requestor = assoc.requestor  # type: ignore[attr-defined]
    title = requestor.ae_title
    if not title and requestor.primitive is not None:
        title = requestor.primitive.calling_ae_title
    return str(title or "").strip()


@dataclass
class _StudyTally:
    patient_id: str
    instances: int = 0
    failed: int = 0


@dataclass
class _AssociationState:
    """What one admitted association holds and has done, until it ends."""

    calling_ae: str
    address: str
    slot: PeerSlot | None
    #: Study Instance UID ("" when the dataset could not be read) -> counts.
    studies: dict[str, _StudyTally] = field(default_factory=dict)


class StorageSCP:
    """Event handlers for association admission, Verification and Storage.

    Parameters
    ----------
    service
        Where received datasets go.
    audit
        The audit trail: refused associations (Security Alert, Node
        Authentication) and, when an association ends, one DICOM Instances
        Transferred event per study it stored (PS3.15 A.5.3).
    ae_title
        Our AE title, the audit events' destination.
    allow
        The calling-AE allow-list; None allows any peer.
    peers
        The per-peer association slots; None sets no limit.
    """

    def __init__(
        self,
        service: IngestService,
        audit: AuditTrail,
        *,
        ae_title: str = "",
        allow: AllowList | None = None,
        peers: PeerSlots | None = None,
    ) -> None:
        self.service = service
        self.audit = audit
        self.ae_title = ae_title
        self.allow = allow
        self.peers = peers
        self.stored = 0
        self.failed = 0
        self._lock = threading.Lock()
        # Keyed by the pynetdicom Association (a Thread: hashed by identity);
        # an entry lives from admission to release/abort/close.
        self._associations: dict[object, _AssociationState] = {}

    # -- association life cycle ------------------------------------------------

    def handle_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED: admit or refuse the A-ASSOCIATE-RQ, before negotiation.

        Checks, in order, the calling-AE allow-list (refusal:
        :data:`REJECT_CALLING_AE`) and the per-peer slots (refusal:
        :data:`REJECT_LOCAL_LIMIT`), the A-ASSOCIATE-RJ parameters of
        PS3.8 9.3.4 / Table 9-21. An admitted association then gets our
        transfer syntax preference (:func:`prefer_requestor_order`).
        """
        assoc = event.assoc
        address = normalise_ip(assoc.requestor.address)
        calling_ae = _calling_ae(assoc)
        slot: PeerSlot | None = None
        try:
            if self.allow is not None and not self.allow.permits(calling_ae, address):
                self._refuse(
                    assoc, REJECT_CALLING_AE, "calling AE title not allowed from this address"
                )
                return
            if self.peers is not None:
                slot = self.peers.acquire(address)
                if slot is None:
                    self._refuse(
                        assoc,
                        REJECT_LOCAL_LIMIT,
                        f"over {self.peers.limit} concurrent associations from this address",
                    )
                    return
            with self._lock:
                self._associations[assoc] = _AssociationState(calling_ae, address, slot)
            prefer_requestor_order(event)
        except Exception:
            # pynetdicom logs a notification handler's exception and goes on
            # to accept: fail closed instead.
            log.exception("association admission failed peer=%s", address)
            with self._lock:
                self._associations.pop(assoc, None)
            if slot is not None:
                slot.release()
            if not assoc.is_rejected:
                self._refuse(assoc, REJECT_INTERNAL, "internal error during admission")

    def _refuse(self, assoc: object, rsd: tuple[int, int, int], reason: str) -> None:
        assoc.acse.send_reject(*rsd)  # type: ignore[attr-defined]
        self._record_refusal(assoc, rsd, reason)
        # As pynetdicom does after its own A-ASSOCIATE-RJ: wait until the DUL
        # has sent it and the transport is closed; the association thread
        # would otherwise shut the socket under the PDU.
        assoc.kill()  # type: ignore[attr-defined]

    def handle_rejected(self, event: evt.Event) -> None:
        """EVT_REJECTED: pynetdicom refused the association itself (called AE, max_associations)."""
        assoc = event.assoc
        primitive = assoc.acceptor.primitive
        rsd = (
            int(primitive.result or 0),
            int(primitive.result_source or 0),
            int(primitive.diagnostic or 0),
        )
        self._record_refusal(assoc, rsd, _REJECT_REASONS.get(rsd, "association rejected"))
        self.handle_closed(event)

    def _record_refusal(self, assoc: object, rsd: tuple[int, int, int], reason: str) -> None:
        calling_ae = _calling_ae(assoc)
        address = normalise_ip(str(assoc.requestor.address or ""))  # type: ignore[attr-defined]
        log.warning(
            "association refused calling_ae=%s peer=%s result=%d source=%d reason=%d (%s)",
            calling_ae,
            address,
            *rsd,
            reason,
        )
        self.audit.record(
            AuditEvent(
                EventID.SECURITY_ALERT,
                Action.EXECUTE,
                "ae",
                calling_ae,
                # A permanent refusal is a peer we do not trust; a transient
                # one (a limit) may succeed when it retries.
                outcome=Outcome.SERIOUS_FAILURE if rsd[0] == 0x01 else Outcome.MINOR_FAILURE,
                event_type=EventType.NODE_AUTHENTICATION,
                source_address=address,
                destination=self.ae_title,
                detail={
                    "reason": reason,
                    "result": rsd[0],
                    "source": rsd[1],
                    "diagnostic": rsd[2],
                },
            )
        )

    def handle_tls_failure(self, address: str, reason: str) -> None:
        """A peer failed the TLS handshake (a plain DICOM peer, an untrusted certificate)."""
        address = normalise_ip(address)
        # OpenSSL's reason code (WRONG_VERSION_NUMBER, CERTIFICATE_VERIFY_FAILED)
        # names the failure; the bytes received are never logged.
        log.warning("TLS handshake refused peer=%s reason=%s", address, reason)
        self.audit.record(
            AuditEvent(
                EventID.SECURITY_ALERT,
                Action.EXECUTE,
                "ae",
                "",  # no A-ASSOCIATE-RQ was read: the calling AE is unknown
                outcome=Outcome.SERIOUS_FAILURE,
                event_type=EventType.NODE_AUTHENTICATION,
                source_address=address,
                destination=self.ae_title,
                detail={"reason": f"TLS handshake failed: {reason}"},
            )
        )

    def handle_closed(self, event: evt.Event) -> None:
        """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE: free the slot, audit what was stored.

        Several of these events fire for one association; the first one does
        the work.
        """
        with self._lock:
            state = self._associations.pop(event.assoc, None)
        if state is None:
            return
        if state.slot is not None:
            state.slot.release()
        for study_uid, tally in state.studies.items():
            self._record_transfer(state.calling_ae, state.address, study_uid, tally)

    def _record_transfer(
        self, calling_ae: str, address: str, study_uid: str, tally: _StudyTally
    ) -> None:
        if tally.failed == 0:
            outcome = Outcome.SUCCESS
        elif tally.instances:
            outcome = Outcome.MINOR_FAILURE
        else:
            outcome = Outcome.SERIOUS_FAILURE
        self.audit.record(
            AuditEvent(
                EventID.INSTANCES_TRANSFERRED,
                Action.CREATE,
                "ae",
                calling_ae,
                outcome=outcome,
                source_address=address,
                destination=self.ae_title,
                patient_id=tally.patient_id,
                study_instance_uid=study_uid,
                detail={"instances": tally.instances, "failed": tally.failed},
            )
        )

    def _tally(self, event: evt.Event, study_uid: str, patient_id: str, stored: bool) -> None:
        with self._lock:
            if stored:
                self.stored += 1
            else:
                self.failed += 1
            state = self._associations.get(event.assoc)
            if state is not None:
                tally = state.studies.setdefault(study_uid, _StudyTally(patient_id))
                if stored:
                    tally.instances += 1
                else:
                    tally.failed += 1
                return
        # The association ended (an abort) while this C-STORE ran, or it was
        # never admitted through handle_requested: audit the instance alone.
        self._record_transfer(
            _calling_ae(event.assoc),
            normalise_ip(str(event.assoc.requestor.address or "")),
            study_uid,
            _StudyTally(patient_id, int(stored), int(not stored)),
        )

    # -- DIMSE services --------------------------------------------------------

    def handle_echo(self, event: evt.Event) -> int:
        return 0x0000

    def handle_store(self, event: evt.Event) -> int | Dataset:
        request = event.request
        calling_ae = event.assoc.requestor.ae_title
        try:
            # The raw dataset bytes as received: never decoded and re-encoded.
            dataset = request.DataSet.getbuffer()  # type: ignore[union-attr]
            result = self.service.store_dataset(
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
            # The study of a refused dataset is unknown (it may not parse).
            self._tally(event, "", "", stored=False)
            return _status(exc.dimse_status, exc.reason)
        except Exception:
            log.exception("C-STORE failed unexpectedly calling_ae=%s", calling_ae)
            self._tally(event, "", "", stored=False)
            return _status(_UNEXPECTED, "internal error, see server log")
        self._tally(event, result.study_instance_uid, result.patient_id, stored=True)
        return 0x0000


class _ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server: ``SO_REUSEPORT``, ``TCP_NODELAY``, TLS handshake per thread."""

    #: Called with (peer address, reason) when a TLS handshake fails.
    on_tls_failure: Callable[[str, str], None] | None = None
    #: Seconds a peer has to complete the TLS handshake.
    handshake_timeout: float = 30.0

    def server_bind(self) -> None:
        # Several processes listen on one port; the kernel balances associations.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self):  # type: ignore[no-untyped-def]
        client, address = self.socket.accept()
        try:
            # A DIMSE response is small and latency-bound: without TCP_NODELAY,
            # Nagle plus the peer's delayed ACK stall every instance by ~40 ms.
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                # pynetdicom wraps with the handshake done here, in the one
                # thread that accepts: a peer that connects and sends nothing
                # would stall every other association, and a plain DICOM peer's
                # bytes (no ClientHello) would end in the socketserver's error
                # path. The handshake runs in the connection's own thread
                # instead (process_request_thread), under a timeout.
                client.settimeout(self.handshake_timeout)
                client = self.ssl_context.wrap_socket(
                    client, server_side=True, do_handshake_on_connect=False
                )
        except OSError:
            client.close()
            raise  # socketserver drops this connection and keeps serving
        return client, address

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
                request.settimeout(None)  # pynetdicom polls with select()
            except (OSError, ValueError) as exc:
                # ssl.SSLError (plain peer, untrusted or missing certificate),
                # a timeout, a reset: refuse this connection, keep serving.
                reason = getattr(exc, "reason", None) or type(exc).__name__
                if self.on_tls_failure is not None:
                    try:
                        self.on_tls_failure(str(client_address[0]), str(reason))
                    except Exception:
                        log.exception("recording a TLS failure failed")
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


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


def merge_contexts(
    contexts: Iterable[PresentationContext],
) -> dict[str, tuple[list[str], bool | None, bool | None]]:
    """Abstract syntax -> (transfer syntaxes, SCU role, SCP role), over every service.

    Two services may offer the same abstract syntax (Storage, and C-GET's
    storage sub-operations with the SCP/SCU roles of PS3.7 D.3.3.4): the
    syntaxes are joined in order and a role accepted by one is accepted.
    """
    merged: dict[str, tuple[list[str], bool | None, bool | None]] = {}
    for cx in contexts:
        uid = str(cx.abstract_syntax)
        syntaxes, scu, scp = merged.get(uid, ([], None, None))
        syntaxes += [str(ts) for ts in cx.transfer_syntax if str(ts) not in syntaxes]
        merged[uid] = (syntaxes, scu or cx.scu_role, scp or cx.scp_role)
    return merged


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
            # The roles a service offers (C-GET's storage sub-operations,
            # PS3.7 D.3.3.4) stay: without them the role selection is refused.
            ordered.scu_role = cx.scu_role
            ordered.scp_role = cx.scp_role
            contexts.append(ordered)
    if contexts:
        acceptor.supported_contexts = contexts


class DicomService(Protocol):
    """A DIMSE service offered on the same port and associations as Storage.

    The admission checks of :class:`StorageSCP` (allow-list, per-peer limit,
    audit of refusals) apply to every association, whatever it asks for; a
    service adds its presentation contexts (with the SCP/SCU roles it needs,
    e.g. C-GET's storage sub-operations) and its event handlers
    (``EVT_C_FIND``, ``EVT_C_MOVE``, ``EVT_C_GET``, ``EVT_N_ACTION``...).
    """

    def contexts(self) -> list[PresentationContext]: ...

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]: ...


class HandlerGuard(Protocol):
    """Wraps an event handler with a per-request check (``DevicePolicy``)."""

    def guard(self, event_type: Any, handler: Callable[..., Any]) -> Callable[..., Any]: ...


class DicomIngestServer:
    """A pynetdicom AE serving Verification and Storage on ``settings.dicom_port``.

    Works without Ray (tests, single process); :class:`pipeline.ingest.actors.IngestActor`
    runs one per Ray actor.

    Parameters
    ----------
    settings
        Port, AE title, limits; ``dicom_tls_*`` make the port TLS-only
        (PS3.15 B.1), ``allowed_calling_aes`` and ``max_associations_per_peer``
        are enforced on each A-ASSOCIATE-RQ (PS3.8 9.3.4).
    service
        Where received datasets go.
    audit
        The audit trail of this process (``Runtime.audit``).
    services
        Further DIMSE services on the same port (C-FIND, C-MOVE, C-GET,
        Storage Commitment...).
    policy
        Checks each request of a registered calling AE against the services
        it is granted (the device registry); None checks nothing beyond the
        admission at association time.

    Raises
    ------
    pipeline.security.tls.TLSConfigError
        A TLS file is missing or unusable (the message names the setting).
    pipeline.security.peers.AllowListError
        An ``allowed_calling_aes`` entry is malformed.
    """

    def __init__(
        self,
        settings: Settings,
        service: IngestService,
        audit: AuditTrail,
        services: Sequence[DicomService] = (),
        policy: HandlerGuard | None = None,
    ) -> None:
        self.settings = settings
        self.services = list(services)
        # Configuration errors surface here, before the port is bound.
        ssl_context = (
            server_context(settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca)
            if settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None
            else None
        )
        self.allow = AllowList(settings.allowed_calling_aes)
        # One folder for every process of the host sharing this data_dir:
        # the limit holds across all ingest actors (see PeerSlots).
        self.peers = PeerSlots(
            settings.data_dir / "run" / "peers", settings.max_associations_per_peer
        )
        self.scp = StorageSCP(
            service,
            audit,
            ae_title=settings.ae_title,
            allow=None if self.allow.allows_any else self.allow,
            peers=self.peers,
        )
        # pynetdicom's standard DIMSE/PDU log handlers print dataset contents
        # at DEBUG, which can be PHI: switch them off.
        _config.LOG_HANDLER_LEVEL = "none"
        # pynetdicom logs C-FIND/C-MOVE/C-GET Identifiers (requests, and the
        # responses an SCU in this process gets) at INFO, with Patient IDs
        # and names: PHI, never logged.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
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
        # pynetdicom's own list knows AE titles only: StorageSCP.handle_requested
        # checks titles with their addresses (an empty list: no check here).
        ae.require_calling_aet = []
        extra_contexts = [cx for service_ in self.services for cx in service_.contexts()]
        for uid, (syntaxes, scu_role, scp_role) in merge_contexts(
            storage_contexts() + extra_contexts
        ).items():
            # Not ``ae.supported_contexts = ...``: that setter drops the roles.
            ae.add_supported_context(uid, syntaxes, scu_role=scu_role, scp_role=scp_role)
        self.ae = ae
        # Orthanc's "UnknownSopClassAccepted": pynetdicom's switch is per
        # process, and one process runs one ingest server.
        _config.UNRESTRICTED_STORAGE_SERVICE = settings.accept_unknown_sop_classes
        handlers = [
            (evt.EVT_REQUESTED, self.scp.handle_requested),
            (evt.EVT_REJECTED, self.scp.handle_rejected),
            (evt.EVT_RELEASED, self.scp.handle_closed),
            (evt.EVT_ABORTED, self.scp.handle_closed),
            (evt.EVT_CONN_CLOSE, self.scp.handle_closed),
            (evt.EVT_C_ECHO, self.scp.handle_echo),
            (evt.EVT_C_STORE, self.scp.handle_store),
        ]
        for service_ in self.services:
            handlers.extend(service_.handlers())
        if policy is not None:
            handlers = [(event, policy.guard(event, handler)) for event, handler in handlers]
        self.server = ae.make_server(
            (settings.dicom_host, settings.dicom_port),
            ssl_context=ssl_context,
            evt_handlers=handlers,
            server_class=_ReusePortServer,
        )
        self.server.on_tls_failure = self.scp.handle_tls_failure
        self.server.handshake_timeout = settings.network_timeout
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
        log.info(
            "DICOM SCP %s listening on port %d (%s)",
            self.settings.ae_title,
            self.port,
            "TLS" if self.server.ssl_context is not None else "plain TCP",
        )
        return self

    def stop(self) -> None:
        self.server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        # As AE.shutdown() does: abort what is still open, so that its peer
        # slot is freed and its transfers audited now.
        for assoc in self.server.active_associations:
            assoc.abort()
