"""Storage Commitment Push Model SCP (PS3.4 J.3, SOP Class 1.2.840.10008.1.20.1).

A modality asks, with an N-ACTION (Action Type ID 1, Request Storage
Commitment, PS3.4 J.3.2), whether the archive has taken responsibility for
the instances of its Referenced SOP Sequence. The N-ACTION is answered at
once (Success: the request is accepted); the answer itself follows in an
N-EVENT-REPORT (PS3.4 J.3.3): Event Type ID 1 when every instance is
committed, 2 when some are not (Failed SOP Sequence, each item with a
Failure Reason: 0112H no such object instance, 0119H class-instance
conflict, PS3.4 J.3.3.1.1 and Table J.3-2).

"Committed" means durably in the index: ingest writes the blob (fsync) and
commits the index row before it answers C-STORE (``ARCHITECTURE.md``), so a
row whose SOP Instance UID and SOP Class UID match the reference is an
instance we hold. :class:`StorageCommitmentService` answers that from the
index alone; :class:`StorageCommitmentSCP` is the protocol adapter.

Delivery of the N-EVENT-REPORT (PS3.4 J.3.3.1.2):

* on the association of the N-ACTION when it is still open: the report is
  sent right after the N-ACTION response, without pausing the association's
  reactor, so that an SCU that releases at once is answered at once (its
  release is not held up by a report it will ignore, PS3.8 7.2.2);
* else, or when the SCU did not answer it there, on a new association to the
  requesting AE as registered in the device registry (host, port, TLS), where
  we are the association requestor acting as SCP of the SOP Class: the
  SCP/SCU Role Selection item proposes the SCP role only (PS3.4 J.3.3.1.2
  note 1, PS3.7 D.3.3.4).

Each request is audited once delivery ends (DICOM Instances Accessed,
action R, with the counts and how the report went); log lines carry counts
and AE titles, never UIDs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_primitives import N_ACTION, N_EVENT_REPORT
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from sqlalchemy import select

from pipeline.config import Settings
from pipeline.devices.registry import DeviceRegistry
from pipeline.index.schema import instances
from pipeline.retrieve.send import client_tls_args
from pipeline.security.audit import Action, AuditEvent, AuditTrail, EventID, Outcome
from pipeline.security.peers import normalise_ip

log = logging.getLogger(__name__)

#: Storage Commitment Push Model SOP Class and its well-known SOP Instance (PS3.4 J.3.5).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Action Type ID of Request Storage Commitment (PS3.4 Table J.3-1).
REQUEST_COMMITMENT = 1
#: Event Type IDs (PS3.4 Table J.3-2).
ALL_COMMITTED = 1
SOME_FAILED = 2
#: Failure Reasons (PS3.4 J.3.3.1.1, values of PS3.7 C).
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
#: N-ACTION statuses (PS3.7 C.5, 10.1.4.1.10).
SUCCESS = 0x0000
INVALID_ARGUMENT = 0x0115
NO_SUCH_ACTION = 0x0123
NO_SUCH_INSTANCE = 0x0112
NO_SUCH_SOP_CLASS = 0x0118
PROCESSING_FAILURE = 0x0110
#: N-EVENT-REPORT-RSP Command Field (PS3.7 Table E.1-1).
N_EVENT_REPORT_RSP = 0x8100

_CHUNK = 500
_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class CommitmentResult:
    """The answer to one request: what is committed, what failed and why."""

    transaction_uid: str
    committed: list[tuple[str, str]] = field(default_factory=list)  # (class, instance)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (+ reason)

    @property
    def event_type(self) -> int:
        return SOME_FAILED if self.failed else ALL_COMMITTED

    def event_information(self, retrieve_ae_title: str = "") -> Dataset:
        """The Event Information of the N-EVENT-REPORT (PS3.4 Table J.3-2)."""
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        if retrieve_ae_title:
            ds.RetrieveAETitle = retrieve_ae_title
        if self.committed:
            ds.ReferencedSOPSequence = [_item(c, i) for c, i in self.committed]
        if self.failed:
            items = []
            for c, i, reason in self.failed:
                item = _item(c, i)
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = items
        return ds


def _item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


class StorageCommitmentService:
    """Which referenced instances the index holds (PS3.4 J.3.2.1.2).

    Parameters
    ----------
    index
        The index (read through ``index.engine``).
    """

    def __init__(self, index: Any) -> None:
        self.index = index

    def check(
        self, transaction_uid: str, references: Sequence[tuple[str, str]]
    ) -> CommitmentResult:
        """Commit each (SOP Class UID, SOP Instance UID) held with that class."""
        held: dict[str, str] = {}
        uids = list(dict.fromkeys(uid for _, uid in references))
        with self.index.engine.connect() as conn:
            for start in range(0, len(uids), _CHUNK):
                chunk = uids[start : start + _CHUNK]
                query = select(instances.c.sop_instance_uid, instances.c.sop_class_uid).where(
                    instances.c.sop_instance_uid.in_(chunk)
                )
                held.update((str(u), str(c)) for u, c in conn.execute(query))
        result = CommitmentResult(transaction_uid)
        for sop_class, sop_instance in references:
            stored_class = held.get(sop_instance)
            if stored_class is None:
                result.failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
            elif stored_class != sop_class:
                result.failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
            else:
                result.committed.append((sop_class, sop_instance))
        return result


def read_request(info: Dataset | None) -> tuple[str, list[tuple[str, str]]] | None:
    """Transaction UID and references of an Action Information, or None when malformed.

    PS3.4 Table J.3-1: Transaction UID and a Referenced SOP Sequence whose
    items each hold a Referenced SOP Class UID and Instance UID, all valid UIDs.
    """
    if info is None:
        return None
    transaction = str(info.get("TransactionUID", "") or "").strip()
    sequence = info.get("ReferencedSOPSequence")
    if not transaction or not UID(transaction).is_valid or not sequence:
        return None
    references = []
    for item in sequence:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not (UID(sop_class).is_valid and UID(sop_instance).is_valid):
            return None
        references.append((sop_class, sop_instance))
    return transaction, references


def _status(code: int) -> Dataset:
    # No Error Comment: PS3.7 C.5 does not allow one with these N-ACTION statuses.
    status = Dataset()
    status.Status = code
    return status


class _AfterResponse:
    """Runs a callback once the N-ACTION-RSP of a message ID has been handed to the DUL.

    pynetdicom sends the response after the handler returns; the report must
    follow it on the wire. ``dimse.send_msg`` of the one association is
    wrapped (as :func:`pipeline.retrieve.send.install_sender` wraps
    ``send_c_store``): the wrapper also serialises our report with the
    reactor's own messages, so that their P-DATA never interleave.
    """

    def __init__(self, assoc: Any) -> None:
        self.lock = threading.Lock()
        self.callbacks: dict[int, Callable[[], None]] = {}
        original = assoc.dimse.send_msg

        def send_msg(primitive: Any, context_id: int) -> None:
            with self.lock:
                original(primitive, context_id)
            if isinstance(primitive, N_ACTION) and primitive.MessageIDBeingRespondedTo is not None:
                callback = self.callbacks.pop(int(primitive.MessageIDBeingRespondedTo), None)
                if callback is not None:
                    callback()

        assoc.dimse.send_msg = send_msg

    @classmethod
    def on(cls, assoc: Any) -> _AfterResponse:
        hook = getattr(assoc, "_lightbox_after_response", None)
        if hook is None:
            hook = cls(assoc)
            assoc._lightbox_after_response = hook
        return hook


class StorageCommitmentSCP:
    """Storage Commitment Push Model SCP: N-ACTION in, N-EVENT-REPORT out.

    Parameters
    ----------
    service
        Answers a request from the index.
    devices
        Where a requesting AE listens, for a report on a new association.
    audit
        The audit trail.
    settings
        Our AE title, timeouts and TLS files for the outbound association.
    """

    def __init__(
        self,
        service: StorageCommitmentService,
        devices: DeviceRegistry,
        audit: AuditTrail,
        settings: Settings,
    ) -> None:
        self.service = service
        self.devices = devices
        self.audit = audit
        self.settings = settings
        self._message_ids = iter(range(1, 1 << 16))
        self._lock = threading.Lock()
        #: Delivery threads still running (tests and shutdown join them).
        self.deliveries: list[threading.Thread] = []

    def contexts(self) -> list[PresentationContext]:
        """The SOP Class; both roles acceptable, as an SCU may propose role selection."""
        cx = PresentationContext()
        cx.abstract_syntax = STORAGE_COMMITMENT
        cx.transfer_syntax = list(_SYNTAXES)
        cx.scu_role = True
        cx.scp_role = True
        return [cx]

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_N_ACTION, self.handle_action)]

    def handle_action(self, event: evt.Event) -> tuple[Dataset, Dataset | None]:
        """EVT_N_ACTION: check the request, answer it, schedule the report."""
        request = event.request
        calling_ae = str(event.assoc.requestor.ae_title or "").strip()
        if str(request.RequestedSOPClassUID) != STORAGE_COMMITMENT:
            return _status(NO_SUCH_SOP_CLASS), None  # an N-ACTION of another service
        if str(request.RequestedSOPInstanceUID) != STORAGE_COMMITMENT_INSTANCE:
            return _status(NO_SUCH_INSTANCE), None
        if request.ActionTypeID != REQUEST_COMMITMENT:
            return _status(NO_SUCH_ACTION), None
        try:
            parsed = read_request(event.action_information)
        except Exception:  # noqa: BLE001 - decoding a malformed dataset may raise anything
            parsed = None
        if parsed is None:
            log.warning("storage commitment request malformed calling_ae=%s", calling_ae)
            return _status(INVALID_ARGUMENT), None
        transaction, references = parsed
        try:
            result = self.service.check(transaction, references)
        except Exception:
            log.exception("storage commitment check failed calling_ae=%s", calling_ae)
            return _status(PROCESSING_FAILURE), None
        address = normalise_ip(str(event.assoc.requestor.address or ""))
        assoc = event.assoc
        _AfterResponse.on(assoc).callbacks[int(request.MessageID)] = lambda: self._start(
            assoc, result, calling_ae, address
        )
        return _status(SUCCESS), None

    def _start(self, assoc: Any, result: CommitmentResult, calling_ae: str, address: str) -> None:
        thread = threading.Thread(
            target=self.deliver,
            args=(assoc, result, calling_ae, address),
            name="storage-commitment-report",
            daemon=True,
        )
        with self._lock:
            self.deliveries = [t for t in self.deliveries if t.is_alive()] + [thread]
        thread.start()

    def _message_id(self) -> int:
        with self._lock:
            try:
                return next(self._message_ids)
            except StopIteration:
                self._message_ids = iter(range(1, 1 << 16))
                return next(self._message_ids)

    # -- delivery ----------------------------------------------------------------

    def deliver(self, assoc: Any, result: CommitmentResult, calling_ae: str, address: str) -> str:
        """Send the report on ``assoc`` or a new association; how it went (for the audit)."""
        how = "undelivered"
        try:
            if self._on_same_association(assoc, result):
                how = "same association"
            elif self._on_new_association(calling_ae, result):
                how = "new association"
        except Exception:
            log.exception("storage commitment report failed calling_ae=%s", calling_ae)
        log.info(
            "storage commitment calling_ae=%s committed=%d failed=%d report=%s",
            calling_ae,
            len(result.committed),
            len(result.failed),
            how,
        )
        if how == "undelivered":
            outcome = Outcome.SERIOUS_FAILURE
        elif result.failed:
            outcome = Outcome.MINOR_FAILURE
        else:
            outcome = Outcome.SUCCESS
        self.audit.record(
            AuditEvent(
                EventID.INSTANCES_ACCESSED,
                Action.READ,
                "ae",
                calling_ae,
                outcome=outcome,
                source_address=address,
                destination=self.settings.ae_title,
                detail={
                    "operation": "storage commitment",
                    "requested": len(result.committed) + len(result.failed),
                    "committed": len(result.committed),
                    "failed": len(result.failed),
                    "report": how,
                },
            )
        )
        return how

    def _on_same_association(self, assoc: Any, result: CommitmentResult) -> bool:
        """Send the report on the N-ACTION's association; True when the SCU answered Success."""
        if not assoc.is_established or assoc.acse.is_release_requested():
            return False
        contexts = [
            cx for cx in assoc.accepted_contexts if cx.abstract_syntax == STORAGE_COMMITMENT
        ]
        if not contexts:
            return False
        cx = contexts[0]
        ts = cx.transfer_syntax[0]
        payload = encode(
            result.event_information(self.settings.ae_title),
            ts.is_implicit_VR,
            ts.is_little_endian,
            ts.is_deflated,
        )
        req = N_EVENT_REPORT()
        req.MessageID = self._message_id()
        req.AffectedSOPClassUID = STORAGE_COMMITMENT
        req.AffectedSOPInstanceUID = STORAGE_COMMITMENT_INSTANCE
        req.EventTypeID = result.event_type
        req.EventInformation = BytesIO(payload)
        answered = threading.Event()
        status: list[int] = []

        def on_receive(event: evt.Event) -> None:
            command = event.message.command_set
            if (
                command.get("CommandField") == N_EVENT_REPORT_RSP
                and command.get("MessageIDBeingRespondedTo") == req.MessageID
            ):
                status.append(int(command.get("Status", 0xFFFF)))
                answered.set()

        # Not send_n_event_report: it pauses the reactor until the answer,
        # and a paused reactor cannot answer the SCU's A-RELEASE-RQ.
        assoc.bind(evt.EVT_DIMSE_RECV, on_receive)
        try:
            assoc.dimse.send_msg(req, cx.context_id)
            deadline = self.settings.network_timeout
            waited = 0.0
            while not answered.wait(0.05):
                waited += 0.05
                if not assoc.is_established or waited > deadline:
                    return False
        finally:
            assoc.unbind(evt.EVT_DIMSE_RECV, on_receive)
        return bool(status) and status[0] == SUCCESS

    def _on_new_association(self, calling_ae: str, result: CommitmentResult) -> bool:
        """Open an association to the registered requestor and send the report there."""
        device = self.devices.find(calling_ae)
        if device is None or not device.active or not device.reachable:
            log.warning(
                "storage commitment report: no registered address for calling_ae=%s", calling_ae
            )
            return False
        ae = AE(ae_title=self.settings.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.network_timeout
        ae.add_requested_context(STORAGE_COMMITMENT, list(_SYNTAXES))
        options: dict[str, Any] = {
            "ae_title": device.ae_title,
            # We are the requestor and the SCP of the SOP Class (PS3.4 J.3.3.1.2).
            "ext_neg": [build_role(STORAGE_COMMITMENT, scu_role=False, scp_role=True)],
        }
        tls = client_tls_args(self.settings, device)
        if tls is not None:
            options["tls_args"] = tls
        assoc = ae.associate(device.host, device.port, **options)
        if not assoc.is_established:
            log.warning("storage commitment report: association refused by %s", device.ae_title)
            return False
        try:
            status = assoc.send_n_event_report(
                result.event_information(self.settings.ae_title),
                result.event_type,
                STORAGE_COMMITMENT,
                STORAGE_COMMITMENT_INSTANCE,
                msg_id=self._message_id(),
            )
            rsp, _ = status if isinstance(status, tuple) else (status, None)
            return rsp is not None and int(rsp.get("Status", 0xFFFF)) == SUCCESS
        finally:
            if assoc.is_established:
                assoc.release()


def references_of(items: Iterable[tuple[str, str]]) -> Iterator[Dataset]:
    """Referenced SOP Sequence items for (class, instance) pairs (an SCU's request)."""
    for sop_class, sop_instance in items:
        yield _item(sop_class, sop_instance)


def commitment_service(index: Any, audit: AuditTrail, settings: Settings) -> StorageCommitmentSCP:
    """The Storage Commitment SCP on one runtime's index (``DicomIngestServer(services=...)``)."""
    return StorageCommitmentSCP(
        StorageCommitmentService(index), DeviceRegistry(index), audit, settings
    )
