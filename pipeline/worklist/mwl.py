"""The Modality Worklist SCP: Modality Worklist Information Model - FIND
(PS3.4 K, SOP Class 1.2.840.10008.5.1.4.31), over :class:`WorklistQuery`.

A :class:`~pipeline.ingest.scp.DicomService` of the DICOM server: it adds the
presentation context and the ``EVT_C_FIND`` handler; the association's
admission checks are the server's.

What a request gets (PS3.4 K.4.1.2, K.6.1.2):

* matching on the keys of :data:`pipeline.worklist.query.TOP_KEYS` and, in
  the one item of the Scheduled Procedure Step Sequence, of
  :data:`pipeline.worklist.query.STEP_KEYS`: Scheduled Station AE Title,
  Modality, Scheduled Procedure Step Start Date/Time (ranges, combined as
  one date-time range), Patient's Name (wild cards, without case), Patient
  ID, Accession Number...; other keys are matched universally (an SCP need
  not match optional keys, PS3.4 C.2.2.1.2) and returned;
* one Pending (FF00) response per matching step holding every key the
  request named, with its value or empty (type 2). A sequence key with an
  item gets back the attributes named in the item; an empty sequence key
  gets the whole item as IHE RAD TF-2 4.5 (RAD-5, Table 4.5-3) lists it:
  Scheduled Procedure Step items with Scheduled Station AE Title, start
  date and time, Modality, Scheduled Performing Physician's Name, SPS
  Description, SPS ID, Scheduled Protocol Code Sequence; Requested
  Procedure Code Sequence items with CodeValue, CodingSchemeDesignator and
  CodeMeaning;
* Specific Character Set ``ISO_IR 192`` when a value is not ASCII;
* C-CANCEL ends the matches with FE00; a malformed Identifier or key value
  gets A900 (Identifier does not match SOP Class), anything else C000, each
  with an Error Comment (PS3.4 K.4.1.1.4).

Every C-FIND is one Query event of the audit trail (PS3.15 A.5.3.x) with the
keywords that carried a value and the number of matches. Log lines carry
keywords and counts only, never values.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, evt
from pynetdicom.presentation import PresentationContext

from pipeline.errors import InvalidRequest, LightboxError
from pipeline.security.audit import Action, AuditEvent, AuditTrail, EventID, Outcome
from pipeline.security.peers import normalise_ip
from pipeline.worklist.query import WorklistKeys, WorklistQuery

log = logging.getLogger(__name__)

#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.1.1, PS3.6 Annex A).
MWL_FIND = "1.2.840.10008.5.1.4.31"
PENDING, CANCEL, MISMATCH, UNABLE = 0xFF00, 0xFE00, 0xA900, 0xC000
_UTF8 = "ISO_IR 192"
_STEP_SEQUENCE = "ScheduledProcedureStepSequence"
_CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")

#: The Scheduled Procedure Step item returned for an empty sequence key
#: (IHE RAD TF-2 Table 4.5-3), keyword -> the row's column.
STEP_ITEM: dict[str, str] = {
    "ScheduledStationAETitle": "station_ae_title",
    "ScheduledProcedureStepStartDate": "start_date",
    "ScheduledProcedureStepStartTime": "start_time",
    "Modality": "modality",
    "ScheduledPerformingPhysicianName": "performing_physician_name",
    "ScheduledProcedureStepDescription": "step_description",
    "ScheduledStationName": "station_name",
    "ScheduledProtocolCodeSequence": "",  # built from protocol_code_*
    "ScheduledProcedureStepID": "sps_id",
    "ScheduledProcedureStepStatus": "status",
}

#: Top-level attributes answered from the row, keyword -> column.
TOP_VALUES: dict[str, str] = {
    "PatientName": "patient_name",
    "PatientID": "patient_id",
    "IssuerOfPatientID": "issuer_of_patient_id",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "AccessionNumber": "accession_number",
    "ReferringPhysicianName": "referring_physician_name",
    "PlacerOrderNumberImagingServiceRequest": "placer_order_number",
    "ReasonForTheRequestedProcedure": "reason",
    "RequestedProcedureID": "requested_procedure_id",
    "RequestedProcedureDescription": "procedure_description",
    "StudyInstanceUID": "study_instance_uid",
}


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO (PS3.7 C.4)
    return status


def _text(value: Any) -> str:
    if value is None or isinstance(value, (bytes, bytearray)):
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _keys(ds: Dataset) -> dict[str, str]:
    """Keyword -> value text of the non-sequence elements of ``ds``."""
    keys = {}
    for elem in ds:
        if elem.VR == "SQ" or elem.tag.is_private or elem.tag.element == 0:
            continue
        keyword = keyword_for_tag(elem.tag)
        if keyword:
            keys[keyword] = _text(elem.value).strip(" \0")
    return keys


def read_keys(identifier: Dataset) -> WorklistKeys:
    """The key values of a worklist Identifier (PS3.4 K.6.1.2).

    Raises
    ------
    InvalidRequest
        The Scheduled Procedure Step Sequence holds more than one item
        (PS3.4 C.2.2.2.6: a sequence key has a single item).
    """
    step: dict[str, str] = {}
    if _STEP_SEQUENCE in identifier:
        items = identifier[_STEP_SEQUENCE].value or []
        if len(items) > 1:
            raise InvalidRequest("the Scheduled Procedure Step Sequence key has more than one item")
        if items:
            step = _keys(items[0])
    return WorklistKeys(_keys(identifier), step)


def _code_item(value: str, scheme: str, meaning: str, wanted: Dataset | None) -> Sequence:
    """A code sequence of one item (PS3.3 8.8), or empty without a code."""
    if not value:
        return Sequence()
    item = Dataset()
    codes = dict(zip(_CODE_KEYS, (value, scheme, meaning)))
    names = [k for k in _keys(wanted)] if wanted is not None and len(wanted) else list(_CODE_KEYS)
    for keyword in names:
        item.add_new(keyword, dictionary_VR(keyword), codes.get(keyword, ""))
    return Sequence([item])


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return int(tag)


def _value(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None if vr in ("US", "UL", "SS", "SL", "FL", "FD", "IS", "DS") else ""
    return value


class ModalityWorklistSCP:
    """The worklist C-FIND SCP, a :class:`~pipeline.ingest.scp.DicomService`.

    Parameters
    ----------
    query
        The worklist search.
    audit
        The audit trail: one Query event per C-FIND.
    ae_title
        Our AE title (the audit events' destination).
    other_find
        The ``EVT_C_FIND`` handler of the server's other FIND SOP Classes
        (the Query/Retrieve SCP's ``handle_find``). pynetdicom binds one
        handler per intervention event, the last one given: list this
        service after the Query/Retrieve one and pass its handler here, and
        requests that are not for the worklist go there.
    """

    def __init__(
        self,
        query: WorklistQuery,
        audit: AuditTrail,
        ae_title: str,
        other_find: Callable[[evt.Event], Iterator[Any]] | None = None,
    ) -> None:
        self.query = query
        self.audit = audit
        self.ae_title = ae_title
        self.other_find = other_find
        # pynetdicom prints Identifiers (patient names, IDs) at INFO: never.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False

    def contexts(self) -> list[PresentationContext]:
        cx = PresentationContext()
        cx.abstract_syntax = MWL_FIND
        cx.transfer_syntax = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
        return [cx]

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_FIND, self.handle_find)]

    def handle_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND: Pending per matching step, then the final status (PS3.4 K.4.1.3).

        A request for another FIND SOP Class goes to ``other_find``.
        """
        if str(event.request.AffectedSOPClassUID) != MWL_FIND and self.other_find is not None:
            yield from self.other_find(event)
            return
        yield from self._find(event)

    def _find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        assoc = event.assoc
        calling_ae = str(assoc.requestor.ae_title or "").strip()
        address = normalise_ip(str(assoc.requestor.address or ""))
        given: list[str] = []
        patient_id = ""
        matches = 0
        status, reason, cancelled = 0x0000, "", False
        failure: Dataset | None = None
        try:
            try:
                identifier = event.identifier
            except Exception:  # noqa: BLE001 - the peer's bytes: refuse, do not crash
                raise InvalidRequest("the Identifier cannot be decoded") from None
            keys = read_keys(identifier)
            given = sorted({k for k, v in {**keys.top, **keys.step}.items() if v})
            pid = keys.top.get("PatientID", "")
            patient_id = pid if pid and not any(c in pid for c in "*?\\") else ""
            for row in self.query.search(keys):
                if event.is_cancelled:
                    cancelled = True
                    yield CANCEL, None
                    return
                matches += 1
                yield PENDING, self._response(identifier, row)
        except LightboxError as exc:
            status, reason = exc.dimse_status, exc.reason
            failure = _status(exc.dimse_status, exc.reason)
        except Exception as exc:  # noqa: BLE001
            # The exception's text may hold bound SQL parameters (a name).
            status, reason = UNABLE, type(exc).__name__
            log.error(
                "worklist C-FIND failed calling_ae=%s error=%s\n%s",
                calling_ae,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            failure = _status(UNABLE, "unable to process, see the server log")
        finally:
            log.info(
                "worklist C-FIND calling_ae=%s keys=%s matches=%d status=0x%04X%s",
                calling_ae,
                ",".join(given),
                matches,
                status,
                f" reason={reason}" if reason else "",
            )
            self._audit(calling_ae, address, patient_id, given, matches, status, reason, cancelled)
        if failure is not None:
            yield failure, None

    def _audit(
        self,
        calling_ae: str,
        address: str,
        patient_id: str,
        given: list[str],
        matches: int,
        status: int,
        reason: str,
        cancelled: bool,
    ) -> None:
        detail: dict[str, object] = {"model": "worklist", "keys": given, "matches": matches}
        if status:
            detail.update(status=f"{status:04X}", reason=reason)
        if cancelled:
            detail["cancelled"] = True
        outcome = (
            Outcome.SUCCESS
            if status == 0
            else Outcome.MINOR_FAILURE
            if status == MISMATCH
            else Outcome.SERIOUS_FAILURE
        )
        self.audit.record(
            AuditEvent(
                EventID.QUERY,
                Action.EXECUTE,
                "ae",
                calling_ae,
                outcome=outcome,
                source_address=address,
                destination=self.ae_title,
                patient_id=patient_id,
                detail=detail,
            )
        )

    def _response(self, identifier: Dataset, row: dict[str, Any]) -> Dataset:
        """The Pending response Identifier of one step: every requested key (PS3.4 K.6.1.2)."""
        ds = Dataset()
        for elem in identifier:
            if elem.tag.is_private or elem.tag.element == 0 or elem.tag == 0x00080005:
                continue
            keyword = keyword_for_tag(elem.tag) or ""
            if elem.VR == "SQ":
                wanted = elem.value[0] if elem.value else None
                ds.add_new(elem.tag, "SQ", self._sequence(keyword, wanted, row))
            else:
                column = TOP_VALUES.get(keyword)
                ds.add_new(elem.tag, elem.VR, _value(elem.VR, row.get(column) if column else None))
        if any(isinstance(v, str) and not v.isascii() for v in row.values()):
            ds.SpecificCharacterSet = _UTF8
        elif "SpecificCharacterSet" in identifier:
            ds.SpecificCharacterSet = identifier.SpecificCharacterSet
        return ds

    def _sequence(self, keyword: str, wanted: Dataset | None, row: dict[str, Any]) -> Sequence:
        if keyword == _STEP_SEQUENCE:
            return Sequence([self._step_item(wanted, row)])
        if keyword == "RequestedProcedureCodeSequence":
            return _code_item(row["code_value"], row["coding_scheme"], row["code_meaning"], wanted)
        return Sequence()  # not kept: returned empty (type 2)

    def _step_item(self, wanted: Dataset | None, row: dict[str, Any]) -> Dataset:
        item = Dataset()
        if wanted is None or not len(wanted):
            names: list[tuple[int, str, str, DataElement | None]] = [
                (_tag(k), dictionary_VR(k), k, None) for k in STEP_ITEM
            ]
        else:
            names = [
                (int(e.tag), e.VR, keyword_for_tag(e.tag) or "", e)
                for e in wanted
                if not e.tag.is_private and e.tag.element != 0
            ]
        for tag, vr, keyword, elem in names:
            if keyword == "ScheduledProtocolCodeSequence":
                inner = elem.value[0] if elem is not None and elem.value else None
                item.add_new(
                    tag,
                    "SQ",
                    _code_item(
                        row["protocol_code_value"],
                        row["protocol_coding_scheme"],
                        row["protocol_code_meaning"],
                        inner,
                    ),
                )
            elif vr == "SQ":
                item.add_new(tag, "SQ", Sequence())
            else:
                column = STEP_ITEM.get(keyword)
                item.add_new(tag, vr, _value(vr, row.get(column) if column else None))
        return item
