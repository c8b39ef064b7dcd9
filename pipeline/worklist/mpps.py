"""The MPPS SCP: Modality Performed Procedure Step SOP Class (PS3.4 F.7,
1.2.840.10008.3.1.2.3.3), N-CREATE and N-SET, over :class:`PerformedProcedureSteps`.

A :class:`~pipeline.ingest.scp.DicomService` of the DICOM server. The
handlers translate the request into a service call and the service's errors
into DIMSE statuses (:mod:`pipeline.errors`): 0120H/0121H a missing
attribute or value, 0106H an invalid value or an attribute N-SET may not
change, 0111H an N-CREATE of an existing instance, 0112H an N-SET of an
unknown one, and 0110H Processing failure with Error ID A710H
("Performed Procedure Step Object may no longer be updated", PS3.4
F.7.2.2.2) for an N-SET after COMPLETED or DISCONTINUED. Every status but
Success carries an Error Comment naming the rule.

On success the response's Attribute List holds the step's attributes as
now kept (PS3.7 10.1.5.1.6 / 10.1.3.1.6 allow it) and, when the N-CREATE had
no Affected SOP Instance UID, the one generated (PS3.7 10.1.5.1.4).

Each operation is a Procedure Record event of the audit trail (PS3.15
A.5.3, CID 400 110111) with the calling AE, the patient and the study.
Log lines carry the calling AE and statuses, never patient data.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any, cast

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.presentation import PresentationContext

from pipeline.errors import InvalidRequest, InvalidState, LightboxError
from pipeline.security.audit import Action, AuditEvent, AuditTrail, EventID, Outcome
from pipeline.security.peers import normalise_ip
from pipeline.worklist.performed import PerformedProcedureSteps, PerformedStep

log = logging.getLogger(__name__)

MPPS = "1.2.840.10008.3.1.2.3.3"
#: Error ID (0000,0903) of PS3.4 F.7.2.2.2: "Performed Procedure Step Object may no longer be updated".
NO_LONGER_UPDATABLE = 0xA710
_PROCESSING_FAILURE = 0x0110


def _failure(exc: LightboxError, n_set: bool) -> Dataset:
    status = Dataset()
    status.Status = exc.dimse_status
    status.ErrorComment = exc.reason[:64]  # LO (PS3.7 C.4)
    if isinstance(exc, InvalidState):
        status.ErrorID = NO_LONGER_UPDATABLE
    keyword = getattr(exc, "keyword", "")
    if n_set and keyword and tag_for_keyword(keyword) is not None:
        # Attribute Identifier List (0000,1005): the attribute at fault (PS3.7
        # C.4.2). pynetdicom's N-CREATE response has no such field: there the
        # Error Comment names it.
        status.AttributeIdentifierList = [tag_for_keyword(keyword)]
    return status


class PerformedProcedureStepSCP:
    """The MPPS SCP, a :class:`~pipeline.ingest.scp.DicomService`.

    Parameters
    ----------
    service
        Where the steps are kept.
    audit
        The audit trail: one Procedure Record event per N-CREATE and N-SET.
    ae_title
        Our AE title (the audit events' destination).
    """

    def __init__(self, service: PerformedProcedureSteps, audit: AuditTrail, ae_title: str) -> None:
        self.service = service
        self.audit = audit
        self.ae_title = ae_title

    def contexts(self) -> list[PresentationContext]:
        cx = PresentationContext()
        cx.abstract_syntax = MPPS
        cx.transfer_syntax = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
        return [cx]

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_N_CREATE, self.handle_create), (evt.EVT_N_SET, self.handle_set)]

    def handle_create(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_CREATE (PS3.4 F.7.2.1)."""
        request = cast(N_CREATE, event.request)
        return self._handle(
            event,
            Action.CREATE,
            str(request.AffectedSOPClassUID),
            lambda ae: self.service.create(
                request.AffectedSOPInstanceUID,
                self._dataset(event, "attribute_list"),
                calling_ae=ae,
            ),
            generated=request.AffectedSOPInstanceUID is None,
        )

    def handle_set(self, event: evt.Event) -> tuple[int | Dataset, Dataset | None]:
        """EVT_N_SET (PS3.4 F.7.2.2)."""
        request = cast(N_SET, event.request)
        return self._handle(
            event,
            Action.UPDATE,
            str(request.RequestedSOPClassUID),
            lambda ae: self.service.set(
                str(request.RequestedSOPInstanceUID),
                self._dataset(event, "modification_list"),
                calling_ae=ae,
            ),
        )

    @staticmethod
    def _dataset(event: evt.Event, name: str) -> Dataset:
        try:
            return getattr(event, name)
        except Exception:  # noqa: BLE001 - the peer's bytes: refuse, do not crash
            raise InvalidRequest("the attribute list cannot be decoded") from None

    def _handle(
        self,
        event: evt.Event,
        action: Action,
        sop_class: str,
        call: Callable[[str], PerformedStep],
        *,
        generated: bool = False,
    ) -> tuple[int | Dataset, Dataset | None]:
        assoc = event.assoc
        calling_ae = str(assoc.requestor.ae_title or "").strip()
        address = normalise_ip(str(assoc.requestor.address or ""))
        operation = "N-CREATE" if action is Action.CREATE else "N-SET"
        step: PerformedStep | None = None
        status: int | Dataset
        code = 0x0000
        reason = ""
        try:
            if sop_class != MPPS:
                raise InvalidRequest("not the Modality Performed Procedure Step SOP Class")
            step = call(calling_ae)
            answer = Dataset()
            answer.update(step.attributes)
            if generated:
                answer.AffectedSOPInstanceUID = step.sop_instance_uid
            status = 0x0000
        except LightboxError as exc:
            code, reason = exc.dimse_status, exc.reason
            status, answer = _failure(exc, n_set=action is Action.UPDATE), None
        except Exception as exc:  # noqa: BLE001
            # The text may hold bound SQL parameters (patient data): the type only.
            code, reason = _PROCESSING_FAILURE, type(exc).__name__
            log.error(
                "MPPS %s failed calling_ae=%s error=%s\n%s",
                operation,
                calling_ae,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            failure = Dataset()
            failure.Status = _PROCESSING_FAILURE
            failure.ErrorComment = "processing failure, see the server log"
            status, answer = failure, None
        log.info(
            "MPPS %s calling_ae=%s status=0x%04X%s%s",
            operation,
            calling_ae,
            code,
            f" pps_status={step.status.value}" if step else "",
            f" reason={reason}" if reason else "",
        )
        self._audit(action, operation, calling_ae, address, step, code, reason)
        return status, answer

    def _audit(
        self,
        action: Action,
        operation: str,
        calling_ae: str,
        address: str,
        step: PerformedStep | None,
        code: int,
        reason: str,
    ) -> None:
        detail: dict[str, object] = {"operation": operation}
        patient_id = study = ""
        if step is not None:
            detail.update(
                status=step.status.value, steps=step.sps_ids, accession_number=step.accession_number
            )
            patient_id = str(step.attributes.get("PatientID", "") or "")
            items = step.attributes.get("ScheduledStepAttributesSequence") or []
            study = str(items[0].get("StudyInstanceUID", "") or "") if items else ""
        if code:
            detail.update(dimse_status=f"{code:04X}", reason=reason)
        self.audit.record(
            AuditEvent(
                EventID.PROCEDURE_RECORD,
                action,
                "ae",
                calling_ae,
                outcome=Outcome.SUCCESS if code == 0 else Outcome.MINOR_FAILURE,
                source_address=address,
                destination=self.ae_title,
                patient_id=patient_id,
                study_instance_uid=study,
                detail=detail,
            )
        )
