"""C-MOVE and C-GET SCPs: Query/Retrieve MOVE and GET, Patient Root and Study Root.

Protocol adapters in the sense of ``ARCHITECTURE.md``: each handler turns
the Identifier into a list
of stored instances (:class:`~pipeline.retrieve.service.RetrieveService`)
and drives pynetdicom's generator protocol; the sub-operations send the
stored bytes (:mod:`pipeline.retrieve.send`). Whether a calling AE may move
or get at all is decided before the handler runs, by the device policy of the
running server (:mod:`pipeline.devices.policy`: 0124H for C-GET, A801 for
C-MOVE).

C-MOVE (PS3.4 C.4.2): the destination is a registered, active,
bi-directional device with host and port; the sub-association to it is
opened by pynetdicom with our AE title, over TLS when the device says so.
C-GET (PS3.4 C.4.3): the sub-operations run on the same association, in the
storage contexts the requestor proposed with the SCP role (SCP/SCU Role
Selection, PS3.7 D.3.3.4): :meth:`GetSCP.contexts` offers every storage SOP
class with both roles, so that a plain C-STORE SCU keeps the default role.

Statuses (PS3.4 C.4.2.1.4, C.4.3.1.4; PS3.7 C): Pending FF00 after each
sub-operation, then Success 0000, Warning B000 (some failed; Failed SOP
Instance UID List), Failure A702 (all failed), Cancel FE00. Refusals:

* C-MOVE: an unknown, inactive or receive-less destination gets A801. pynetdicom's protocol allows no other
  status before it opens the sub-association (its first yield is the
  destination, and ``(None, None)`` is its only way out), and opening an
  association to the destination for a request we refuse is worse than a
  status that names the wrong reason; the audit trail and the log give the
  real one. A malformed Identifier raises, which pynetdicom answers with
  C514 (Failed: Unable to process, a Cxxx status of Table C.4-2).
* C-GET: a malformed Identifier A900 (Identifier does not match SOP
  Class), an unreadable index A701. pynetdicom's protocol asks for the
  number of sub-operations first: these answers report one failed.

Every request that sent something is audited once per study as DICOM
Instances Transferred (PS3.15 A.5.3.4, action R: we are the source);
refusals as Security Alert.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import evt
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pipeline.config import Settings
from pipeline.devices.registry import Device, DeviceRegistry
from pipeline.errors import LightboxError, OutOfResources
from pipeline.index.schema import DeviceSetup
from pipeline.ingest.scp import ACCEPTED_TRANSFER_SYNTAXES
from pipeline.retrieve.send import Transfer, client_tls_args, install_sender, store_contexts
from pipeline.retrieve.service import QueryModel, RetrieveItem, RetrieveService
from pipeline.security.audit import Action, AuditEvent, AuditTrail, EventID, Outcome
from pipeline.security.peers import normalise_ip

log = logging.getLogger(__name__)

#: Transfer syntaxes of the Query/Retrieve contexts: the Identifier is a
#: small dataset in a native syntax (PS3.5 10.1).
QR_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
MOVE_MODELS: dict[str, QueryModel] = {
    PatientRootQueryRetrieveInformationModelMove: QueryModel.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelMove: QueryModel.STUDY_ROOT,
}
GET_MODELS: dict[str, QueryModel] = {
    PatientRootQueryRetrieveInformationModelGet: QueryModel.PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelGet: QueryModel.STUDY_ROOT,
}

PENDING = 0xFF00
CANCEL = 0xFE00
#: PS3.4 Table C.4-3 Refused: Out of Resources - Unable to calculate number of matches.
OUT_OF_RESOURCES_MATCHES = 0xA701


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO (PS3.7 C.4)
    return status


def _context(
    abstract_syntax: str, syntaxes: tuple[str, ...] | list[str], **roles: bool
) -> PresentationContext:
    cx = PresentationContext()
    cx.abstract_syntax = abstract_syntax
    cx.transfer_syntax = list(syntaxes)
    for name, value in roles.items():
        setattr(cx, name, value)
    return cx


def _peer(event: evt.Event) -> tuple[str, str]:
    requestor = event.assoc.requestor
    return str(requestor.ae_title or "").strip(), normalise_ip(str(requestor.address or ""))


class _RetrieveSCP:
    """Policy, resolution and audit shared by :class:`MoveSCP` and :class:`GetSCP`.

    Parameters
    ----------
    retrieve
        Resolves Identifiers and reads stored blobs.
    devices
        Where move destinations listen.
    audit
        The audit trail (``Runtime.audit``).
    settings
        Our AE title (audit), the TLS files for outbound associations,
        ``max_decoded_bytes`` for conversions.
    """

    operation = ""

    def __init__(
        self,
        retrieve: RetrieveService,
        devices: DeviceRegistry,
        audit: AuditTrail,
        settings: Settings,
    ) -> None:
        self.retrieve = retrieve
        self.devices = devices
        self.audit = audit
        self.settings = settings

    def _refused(self, calling_ae: str, address: str, reason: str, **detail: object) -> None:
        log.warning(
            "%s refused calling_ae=%s peer=%s reason=%s",
            self.operation,
            calling_ae,
            address,
            reason,
        )
        self.audit.record(
            AuditEvent(
                EventID.SECURITY_ALERT,
                Action.EXECUTE,
                "ae",
                calling_ae,
                outcome=Outcome.MINOR_FAILURE,
                source_address=address,
                destination=self.settings.ae_title,
                detail={"refused": self.operation, "reason": reason, **detail},
            )
        )

    def _send_all(
        self, event: evt.Event, items: list[RetrieveItem], transfer: Transfer
    ) -> Iterator[tuple[int, Dataset | None]]:
        """Pending per instance; Cancel when the peer sent C-CANCEL (PS3.4 C.4.2.3.1)."""
        for item in items:
            if event.is_cancelled:
                log.info("%s cancelled by the peer", self.operation)
                yield CANCEL, None
                return
            yield PENDING, transfer.instance(item)

    def _audit_transfer(
        self, calling_ae: str, address: str, destination: str, transfer: Transfer
    ) -> None:
        """One DICOM Instances Transferred event per study (PS3.15 A.5.3.4).

        Action R: the archive is the source of the transfer (the receiver
        audits C). Outcome: 0 all sent, 4 some failed, 8 none sent.
        """
        for study_uid, tally in transfer.studies.items():
            if tally.completed == tally.failed == 0:
                continue  # cancelled before its first sub-operation
            if tally.failed == 0:
                outcome = Outcome.SUCCESS
            elif tally.completed:
                outcome = Outcome.MINOR_FAILURE
            else:
                outcome = Outcome.SERIOUS_FAILURE
            self.audit.record(
                AuditEvent(
                    EventID.INSTANCES_TRANSFERRED,
                    Action.READ,
                    "ae",
                    calling_ae,
                    outcome=outcome,
                    source_address=address,
                    destination=destination,
                    patient_id=tally.patient_id,
                    study_instance_uid=study_uid,
                    detail={
                        "instances": tally.completed,
                        "failed": tally.failed,
                        "operation": self.operation,
                    },
                )
            )
        sent = sum(t.completed for t in transfer.studies.values())
        failed = sum(t.failed for t in transfer.studies.values())
        log.info(
            "%s calling_ae=%s destination=%s sent=%d failed=%d converted=%d",
            self.operation,
            calling_ae,
            destination,
            sent,
            failed,
            transfer.converted,
        )

    def _transfer(self) -> Transfer:
        return Transfer(self.retrieve.reader(), self.settings.max_decoded_bytes)


class MoveSCP(_RetrieveSCP):
    """C-MOVE SCP (PS3.4 C.4.2): Patient Root and Study Root, every level."""

    operation = "C-MOVE"

    def contexts(self) -> list[PresentationContext]:
        return [_context(uid, QR_SYNTAXES) for uid in MOVE_MODELS]

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_MOVE, self.handle_move)]

    def destination(self, ae_title: str) -> tuple[Device | None, str]:
        """The registered device a move may go to, or None and why not."""
        device = self.devices.find(ae_title)
        if device is None:
            return None, "move destination is not a registered device"
        if not device.active:
            return None, "move destination is inactive"
        if device.setup is not DeviceSetup.BI_DIRECTIONAL:
            return None, "move destination is uni-directional (it only sends)"
        if not device.reachable:
            return None, "move destination has no host and port"
        return device, ""

    def handle_move(self, event: evt.Event) -> Iterator[Any]:
        """EVT_C_MOVE: destination, number of sub-operations, then statuses."""
        calling_ae, address = _peer(event)
        destination_ae = str(event.move_destination or "").strip()
        # Whether the calling AE may move at all is the device policy's
        # question (pipeline.devices.policy), asked before this handler runs.
        device, why = self.destination(destination_ae)
        if device is None:
            self._refused(calling_ae, address, why, move_destination=destination_ae)
            yield None, None  # pynetdicom: A801 Refused: Move Destination unknown
            return
        model = MOVE_MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            items = self.retrieve.resolve(event.identifier, model)
        except LightboxError as exc:
            # pynetdicom answers an exception here with C514 (unable to process).
            log.warning("C-MOVE not performed calling_ae=%s reason=%s", calling_ae, exc.reason)
            raise
        transfer = self._transfer()
        options: dict[str, Any] = {
            "contexts": store_contexts(items),
            # EVT_ACCEPTED fires before the association counts as established,
            # so the sender is in place before the first sub-operation.
            "evt_handlers": [(evt.EVT_ACCEPTED, lambda e: install_sender(e.assoc))],
        }
        tls = client_tls_args(self.settings, device)
        if tls is not None:
            options["tls_args"] = tls
        yield device.host, device.port, options
        yield len(items)
        try:
            yield from self._send_all(event, items, transfer)
        finally:
            # Also when the association ends mid-way: pynetdicom then drops
            # this generator and its closing runs this block.
            self._audit_transfer(calling_ae, address, device.ae_title, transfer)


class GetSCP(_RetrieveSCP):
    """C-GET SCP (PS3.4 C.4.3): Patient Root and Study Root, every level."""

    operation = "C-GET"

    def contexts(self) -> list[PresentationContext]:
        """The GET models, and every storage SOP class with both roles acceptable.

        With ``scu_role`` and ``scp_role`` set, pynetdicom accepts a requestor's
        proposal to act as Storage SCP (it receives our C-STORE
        sub-operations) and keeps the default roles for a requestor that
        proposes none (PS3.7 D.3.3.4).
        """
        storage = [
            _context(cx.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
            for cx in StoragePresentationContexts
        ]
        return [_context(uid, QR_SYNTAXES) for uid in GET_MODELS] + storage

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_GET, self.handle_get)]

    def handle_get(self, event: evt.Event) -> Iterator[Any]:
        """EVT_C_GET: number of sub-operations, then statuses."""
        calling_ae, address = _peer(event)
        model = GET_MODELS[str(event.request.AffectedSOPClassUID)]
        try:
            items = self.retrieve.resolve(event.identifier, model)
        except LightboxError as exc:
            log.warning("C-GET not performed calling_ae=%s reason=%s", calling_ae, exc.reason)
            code = OUT_OF_RESOURCES_MATCHES if isinstance(exc, OutOfResources) else exc.dimse_status
            yield 1
            yield _status(code, exc.reason), None
            return
        transfer = self._transfer()
        install_sender(event.assoc)
        yield len(items)
        try:
            yield from self._send_all(event, items, transfer)
        finally:
            self._audit_transfer(calling_ae, address, calling_ae, transfer)


def retrieve_services(
    index: Any, blobs: Any, audit: AuditTrail, settings: Settings
) -> list[_RetrieveSCP]:
    """The C-MOVE and C-GET SCPs on one runtime's stores (``DicomIngestServer(services=...)``)."""
    retrieve = RetrieveService(index, blobs, settings.ae_title)
    devices = DeviceRegistry(index)
    return [MoveSCP(retrieve, devices, audit, settings), GetSCP(retrieve, devices, audit, settings)]
