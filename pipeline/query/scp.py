"""The C-FIND SCP of the Query/Retrieve Service Class (pynetdicom), over :class:`QueryService`.

Patient Root and Study Root Query/Retrieve Information Model - FIND
(PS3.4 C.6.1.1, C.6.2.1), levels PATIENT (Patient Root only), STUDY, SERIES
and IMAGE, hierarchical search only (PS3.4 C.4.1.3.1.1; relational queries,
fuzzy matching, timezone adjustment and the other extended negotiations of
C.5 are not offered: pynetdicom answers their sub-items with none).

The handler only translates the request Identifier into a service call and
yields statuses (pynetdicom's generator protocol):

* the Unique Keys of every level above the Query/Retrieve Level must be in the
  Identifier with a single value (C.4.1.3.1.1), otherwise A900;
* keys the index keeps are matched (:mod:`pipeline.query.matching`); an
  optional key it does not keep, a key of a level below the query's, a
  sequence, is matched universally (the SCP need not support matching on
  optional keys, PS3.4 C.2.2.1.2) and returned empty;
* each match is a Pending (FF00) response holding every requested attribute
  (empty when unknown), the Query/Retrieve Level, Retrieve AE Title (our AE
  title), Instance Availability (ONLINE) when asked, the Unique Keys down to
  the level, and Specific Character Set ``ISO_IR 192`` when a value is not
  ASCII (the index keeps decoded text);
* C-CANCEL ends the matches with FE00 (Cancel);
* A900 (Identifier does not match SOP Class) for a bad Identifier or key
  value, C000 (Unable to process) for anything else, with an Error Comment.

Every C-FIND is recorded in the audit trail (Query, PS3.15 A.5.3.x: the
level, the model, the keywords that carried a value and how many matched).
Log lines carry keywords and counts, never values (patient names and IDs).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from pipeline.errors import InvalidRequest, LightboxError
from pipeline.query.matching import is_single_value
from pipeline.query.model import (
    ATTRIBUTES,
    INSTANCE_AVAILABILITY,
    UNIQUE_KEYS,
    Level,
    Root,
    unique_keys_above,
)
from pipeline.query.service import QueryService
from pipeline.security.audit import Action, AuditEvent, AuditTrail, EventID, Outcome
from pipeline.security.peers import normalise_ip

log = logging.getLogger(__name__)

#: SOP Class UID -> information model.
MODELS: dict[str, Root] = {
    str(PatientRootQueryRetrieveInformationModelFind): Root.PATIENT,
    str(StudyRootQueryRetrieveInformationModelFind): Root.STUDY,
}
#: The transfer syntaxes of an Identifier (PS3.4 C.4.1: no encapsulation applies).
FIND_TRANSFER_SYNTAXES = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))

PENDING = 0xFF00
CANCEL = 0xFE00
#: Identifier does not match SOP Class (PS3.4 C.4.1.1.4).
MISMATCH = 0xA900
#: Unable to process (PS3.4 C.4.1.1.4).
UNABLE = 0xC000

_QUERY_RETRIEVE_LEVEL = 0x00080052
_SPECIFIC_CHARACTER_SET = 0x00080005
_RETRIEVE_AE_TITLE = 0x00080054
_INSTANCE_AVAILABILITY = 0x00080056
#: Elements of an Identifier that are not keys (handled on their own).
_NOT_KEYS = frozenset({_QUERY_RETRIEVE_LEVEL, _SPECIFIC_CHARACTER_SET, _RETRIEVE_AE_TITLE,
                       _INSTANCE_AVAILABILITY})  # fmt: skip
_UTF8 = "ISO_IR 192"


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # Error Comment (0000,0902) is LO: 64 characters at most (PS3.7 C.4).
    status.ErrorComment = comment[:64]
    return status


@dataclass
class FindRequest:
    """A C-FIND Identifier, read: what to match and what to return."""

    level: Level
    #: Keyword -> value (multi-values joined by backslashes) of the keys the index can match.
    keys: dict[str, str]
    #: (tag, VR, keyword) of every attribute to return, in the request's order.
    returns: list[tuple[int, str, str]]
    #: Keywords of the keys that carried a value (for the audit trail).
    given: list[str] = field(default_factory=list)
    #: Specific Character Set of the request, if it had one.
    character_set: Any = None
    instance_availability: bool = False


def _text(elem: DataElement) -> str:
    """An element's value as DICOM text: multiple values joined by backslashes."""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return ""  # binary VRs are never matched
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return str(value)


def read_identifier(identifier: Dataset, root: Root) -> FindRequest:
    """Check a request Identifier against the hierarchical model and read its keys.

    Raises
    ------
    InvalidRequest
        No or a wrong Query/Retrieve Level, a level the model does not have, a
        missing or non-single Unique Key of a level above (PS3.4 C.4.1.3.1.1).
    """
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw_level)
    except ValueError:
        raise InvalidRequest("Query/Retrieve Level missing or not PATIENT/STUDY/SERIES/IMAGE") from None
    if level not in root.levels:
        raise InvalidRequest(f"{level.value} level is not in the {root.value} root model")
    keys: dict[str, str] = {}
    returns: list[tuple[int, str, str]] = []
    given: list[str] = []
    values: dict[str, str] = {}
    for elem in identifier:
        tag = int(elem.tag)
        if tag in _NOT_KEYS or elem.tag.is_private or elem.tag.element == 0:
            continue
        keyword = keyword_for_tag(tag) or ""
        returns.append((tag, elem.VR, keyword))
        if elem.VR == "SQ" or not keyword:
            continue  # no sequence is kept in the index: universal, returned empty
        value = _text(elem).strip(" \0")
        values[keyword] = value
        if value:
            given.append(keyword)
        attribute = ATTRIBUTES.get(keyword)
        if attribute is not None and attribute.matchable and attribute.level.depth <= level.depth:
            keys[keyword] = value
    for keyword in unique_keys_above(level, root):
        if not is_single_value(values.get(keyword, "")):
            raise InvalidRequest(f"{keyword} must be a single value at {level.value} level")
    return FindRequest(
        level,
        keys,
        returns,
        given,
        identifier.get("SpecificCharacterSet"),
        instance_availability=_INSTANCE_AVAILABILITY in identifier,
    )


class QueryRetrieveFindSCP:
    """The C-FIND SCP, a :class:`~pipeline.ingest.scp.DicomService` of the DICOM server.

    Parameters
    ----------
    service
        The query engine.
    audit
        The audit trail: one Query event per C-FIND.
    ae_title
        Our AE title: Retrieve AE Title (0008,0054) of every match, and the
        audit events' destination.
    """

    def __init__(self, service: QueryService, audit: AuditTrail, ae_title: str) -> None:
        self.service = service
        self.audit = audit
        self.ae_title = ae_title
        # pynetdicom prints Identifiers (patient names, IDs) at INFO: never.
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False

    def contexts(self) -> list[PresentationContext]:
        contexts = []
        for uid in MODELS:
            cx = PresentationContext()
            cx.abstract_syntax = uid
            cx.transfer_syntax = list(FIND_TRANSFER_SYNTAXES)
            contexts.append(cx)
        return contexts

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [(evt.EVT_C_FIND, self.handle_find)]

    def handle_find(self, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """EVT_C_FIND: yield (status, identifier) pairs, Pending per match (PS3.4 C.4.1.3).

        The audit event is recorded when the matches end (before the final
        response is sent), or when pynetdicom drops the generator (an abort).
        """
        root = MODELS.get(str(event.request.AffectedSOPClassUID))
        assoc = event.assoc
        audit = _FindAudit(
            str(assoc.requestor.ae_title or "").strip(),
            normalise_ip(str(assoc.requestor.address or "")),
            model=root.value if root is not None else "",
        )
        try:
            failure = yield from self._find(event, root, audit)
        finally:
            self._finished(audit)
        if failure is not None:
            yield failure, None

    def _find(
        self, event: evt.Event, root: Root | None, audit: _FindAudit
    ) -> Generator[tuple[int, Dataset | None], None, Dataset | None]:
        """The matches as Pending responses; returns the failure status, if any."""
        try:
            if root is None:
                raise InvalidRequest("not a Query/Retrieve FIND SOP Class")
            try:
                identifier = event.identifier
            except Exception:  # noqa: BLE001 - the peer's bytes: refuse, do not crash
                raise InvalidRequest("the Identifier cannot be decoded") from None
            request = read_identifier(identifier, root)
            audit.level = request.level.value
            audit.given = request.given
            patient_id = request.keys.get("PatientID", "")
            audit.patient_id = patient_id if is_single_value(patient_id) else ""
            matches = self.service.iter_search(
                request.level,
                request.keys,
                root=root,
                fields=[keyword for _, _, keyword in request.returns],
            )
            for row in matches:
                if event.is_cancelled:
                    audit.cancelled = True
                    yield CANCEL, None
                    return None
                audit.matches += 1
                yield PENDING, self._response(request, row)
        except LightboxError as exc:
            audit.status = exc.dimse_status
            audit.reason = exc.reason
            return _status(exc.dimse_status, exc.reason)
        except Exception as exc:  # noqa: BLE001
            audit.status = UNABLE
            # The exception's text may hold bound SQL parameters (a patient's
            # name): its type and the stack only.
            audit.reason = type(exc).__name__
            log.error("C-FIND failed calling_ae=%s error=%s\n%s", audit.calling_ae,
                      type(exc).__name__, "".join(traceback.format_tb(exc.__traceback__)))  # fmt: skip
            return _status(UNABLE, "unable to process, see the server log")
        return None

    def _finished(self, audit: _FindAudit) -> None:
        log.info(
            "C-FIND model=%s level=%s calling_ae=%s keys=%s matches=%d status=0x%04X%s",
            audit.model, audit.level, audit.calling_ae, ",".join(audit.given), audit.matches,
            audit.status, f" reason={audit.reason}" if audit.reason else "",
        )  # fmt: skip
        self.audit.record(audit.event(self.ae_title))

    def _response(self, request: FindRequest, row: dict[str, Any]) -> Dataset:
        """The Pending response Identifier of one match (PS3.4 C.4.1.1.3.2)."""
        ds = Dataset()
        non_ascii = False
        wanted = list(request.returns)
        present = {tag for tag, _, _ in wanted}
        # The Unique Keys down to the level, even when not asked: the keys of a C-MOVE/C-GET.
        for level in Level:
            if level.depth <= request.level.depth and UNIQUE_KEYS[level] in row:
                attribute = ATTRIBUTES[UNIQUE_KEYS[level]]
                if attribute.tag not in present:
                    wanted.append((attribute.tag, attribute.vr, attribute.keyword))
        for tag, vr, keyword in wanted:
            if vr == "SQ":
                ds.add_new(tag, vr, Sequence())
                continue
            value = row.get(keyword) if keyword else None
            if isinstance(value, str) and not value.isascii():
                non_ascii = True
            elif isinstance(value, list) and any(not str(v).isascii() for v in value):
                non_ascii = True
            ds.add_new(tag, vr, _element_value(vr, value))
        ds.QueryRetrieveLevel = request.level.value
        ds.RetrieveAETitle = self.ae_title
        if request.instance_availability:
            ds.InstanceAvailability = INSTANCE_AVAILABILITY
        if non_ascii:
            ds.SpecificCharacterSet = _UTF8
        elif request.character_set:
            # ASCII is valid in every character set a request may name.
            ds.SpecificCharacterSet = request.character_set
        return ds


def _element_value(vr: str, value: Any) -> Any:
    """A value from the index as pydicom takes it for ``vr`` (None/"" for empty)."""
    if value is None or value == "":
        return None if vr in ("US", "UL", "SS", "SL", "FL", "FD") else ""
    if isinstance(value, list):
        return value
    if vr in ("US", "UL", "SS", "SL"):
        return int(value)
    return str(value) if vr != "IS" else int(value)


@dataclass
class _FindAudit:
    """What one C-FIND did, for its audit event."""

    calling_ae: str
    address: str
    model: str = ""
    level: str = ""
    given: list[str] = field(default_factory=list)
    patient_id: str = ""
    matches: int = 0
    status: int = 0x0000
    reason: str = ""
    cancelled: bool = False

    def event(self, ae_title: str) -> AuditEvent:
        if self.status == 0x0000:
            outcome = Outcome.SUCCESS
        elif self.status == MISMATCH or self.status == 0xA700:
            outcome = Outcome.MINOR_FAILURE
        else:
            outcome = Outcome.SERIOUS_FAILURE
        detail: dict[str, object] = {
            "level": self.level,
            "model": self.model,
            "keys": sorted(self.given),
            "matches": self.matches,
        }
        if self.status:
            detail["status"] = f"{self.status:04X}"
            detail["reason"] = self.reason
        if self.cancelled:
            detail["cancelled"] = True
        return AuditEvent(
            EventID.QUERY,
            Action.EXECUTE,
            "ae",
            self.calling_ae,
            outcome=outcome,
            source_address=self.address,
            destination=ae_title,
            patient_id=self.patient_id,
            detail=detail,
        )
