"""HL7 v2 intake: ADT and order messages to the registration, each answered with an ACK.

The protocol adapter of the registration for a RIS or HIS (ARCHITECTURE.md:
protocols at the edge, services in the middle): :class:`HL7Intake` turns one
message, as the MLLP listener (:mod:`pipeline.worklist.mllp`) received it,
into at most one call of :class:`~pipeline.worklist.registration.RegistrationService`
and answers it in the original acknowledgment mode of HL7 v2.5 chapter 2
(2.9.2, "Original mode acknowledgment rules"):

========================  ============================================================
message                   effect
========================  ============================================================
ADT^A04                   register the patient of PID (3.3.4); a patient already
                          registered under PID-3 is updated instead, as a second
                          visit's A04 is ordinary
ADT^A08                   update the patient of PID-3 (3.3.8); unknown: AE
ADT^A40                   merge the patient of MRG-1 into the patient of PID-3
                          (3.3.40): the prior's orders move to the survivor and the
                          prior record ends; a survivor not registered yet takes
                          over the prior record under the new identifier
ORM^O01, OMI^O23          ORC-1 ``NW``: a new order (4.4.1, 4.4.5); ``CA``: cancel it
========================  ============================================================

The answer (MSA-1, HL7 table 0008) is ``AA`` when the change is committed,
``AE`` when the message is understood but cannot be processed (an unknown
patient, a value that breaks its DICOM VR, an order in the wrong state; with
an ERR segment and the reason in MSA-3), and ``AR`` when it is refused
unread (no MSH, broken encoding characters, an unsupported message type,
trigger event, version or processing ID, a message over the size limit).
MSA-2 is the message's control ID (MSH-10). A message answered AE or AR
changes nothing: each is one call of the service, one database transaction.
Error codes in ERR-3 are those of HL7 table 0357 (2.15.5.3).

Fields are read where IHE Radiology puts them (RAD TF-2 4.4 for ORM^O01 and
Appendix B for OMI^O23): accession number from IPC-1 or OBR-18 (else one is
generated), modality from IPC-5 or OBR-24, scheduled station AE title from
IPC-9 or ORC-18 (dcm4chee's convention for ORM), procedure code from OBR-4,
protocol code from IPC-6, scheduled start from TQ1-7, ORC-7.4, OBR-27.4 or
OBR-36, referring physician from PV1-8 or OBR-16.

Every message is in the audit trail (Patient Record or Order Record events,
PS3.15 A.5.3) with the actor ``hl7:<MSH-3>``; the registration history
records the same actor. Log lines carry the message type, control ID and
outcome only: messages are full of PHI.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import hl7
import hl7.containers
import hl7.parser
import hl7.util

from pipeline.errors import AlreadyExists, InvalidRequest, InvalidState, NotFound
from pipeline.security.audit import Action, AuditEvent, EventID, Outcome
from pipeline.worklist.records import Code, Patient, ProcedureRequest

if TYPE_CHECKING:
    from pipeline.security.audit import AuditTrail
    from pipeline.worklist.registration import RegistrationService

__all__ = ["HL7Error", "HL7Intake", "SUPPORTED"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# python-hl7 logs the raw field when an escape sequence is broken: a patient's
# name in a log line. Its loggers are named after its files; silence them.
for _module in (hl7.util, hl7.containers):
    logging.getLogger(getattr(_module, "logger").name).disabled = True

#: Message types and trigger events processed (MSH-9.1 and MSH-9.2).
SUPPORTED: dict[str, frozenset[str]] = {
    "ADT": frozenset({"A04", "A08", "A40"}),
    "ORM": frozenset({"O01"}),
    "OMI": frozenset({"O23"}),
}
#: Versions (MSH-12) whose ADT, ORM and OMI segments this reads alike: from
#: 2.3 (ORM as IHE RAD-4 uses it) to 2.8 (OMI; ORM withdrawn in 2.7 but still sent).
_VERSIONS = re.compile(r"2\.[3-8](\.\d+)?")
#: Processing IDs (MSH-11.1, HL7 table 0103) processed: production and
#: debugging. Training (T) messages are refused: they would write real records.
_PROCESSING = frozenset({"P", "D"})
#: MSH-18 character sets (HL7 table 0211) and their Python codecs.
_CHARSETS = {
    "": "utf-8",  # none named: ASCII by the standard; UTF-8 is a superset that RIS send
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
}
#: HL7 table 0357 (message error condition codes) as used here.
REQUIRED_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION = 203
UNKNOWN_KEY = 204
DUPLICATE_KEY = 205
INTERNAL_ERROR = 207
SEGMENT_SEQUENCE_ERROR = 100
_CODE_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION: "Unsupported version id",
    UNKNOWN_KEY: "Unknown key identifier",
    DUPLICATE_KEY: "Duplicate key identifier",
    INTERNAL_ERROR: "Application internal error",
}
_DEFAULT_ENCODING = "^~\\&"


class HL7Error(Exception):
    """A message that is answered AE or AR (HL7 v2.5 2.9.2).

    Parameters
    ----------
    ack_code
        ``AE`` (application error) or ``AR`` (application reject), table 0008.
    code
        The error condition, HL7 table 0357.
    reason
        What is wrong, in words that name fields, never their values (it is
        sent back in MSA-3 and ERR-8, and logged).
    location
        Segment ID and field position (ERR-2), when one field is at fault.
    """

    def __init__(
        self, ack_code: str, code: int, reason: str, location: tuple[str, int] | None = None
    ) -> None:
        super().__init__(reason)
        self.ack_code = ack_code
        self.code = code
        self.reason = reason
        self.location = location


def _reject(code: int, reason: str, location: tuple[str, int] | None = None) -> HL7Error:
    return HL7Error("AR", code, reason, location)


def _error(code: int, reason: str, location: tuple[str, int] | None = None) -> HL7Error:
    return HL7Error("AE", code, reason, location)


# -- reading a message ---------------------------------------------------------------


@dataclass
class _Header:
    """What the answer needs of MSH, read even from a message that is refused."""

    field_sep: str = "|"
    encoding: str = _DEFAULT_ENCODING
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_code: str = ""
    trigger: str = ""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    charset: str = ""


class _Message:
    """A parsed message: segments by ID, fields split by the message's own
    encoding characters (MSH-1, MSH-2; HL7 v2.5 2.5.4) and unescaped (2.7.4)."""

    def __init__(self, parsed: hl7.Message) -> None:
        self.parsed = parsed
        seps = parsed.separators  # segment, field, repetition, component, subcomponent
        self.rep, self.comp, self.sub = seps[2], seps[3], seps[4]
        self.segments: list[tuple[str, list[str]]] = []
        for segment in parsed:
            name = str(segment[0])
            if name == "MSH":
                # python-hl7 keeps MSH-1 and MSH-2 as fields 1 and 2.
                fields = [name, *(str(f) for f in segment[1:])]
            else:
                fields = [str(f) for f in segment]
            self.segments.append((name, fields))

    def all(self, name: str) -> list[list[str]]:
        return [fields for seg, fields in self.segments if seg == name]

    def first(self, name: str) -> list[str] | None:
        found = self.all(name)
        return found[0] if found else None

    def raw(self, fields: list[str] | None, n: int) -> str:
        """Field ``n`` as sent (repetitions, components, escapes)."""
        if fields is None or n >= len(fields):
            return ""
        return fields[n]

    def get(self, fields: list[str] | None, n: int, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        """Field ``n``, repetition ``rep``, component ``comp``, subcomponent
        ``sub`` (all 1-based), unescaped; empty when absent."""
        value = self.raw(fields, n)
        return self.part(value, comp, sub, rep)

    def part(self, value: str, comp: int = 1, sub: int = 1, rep: int = 1) -> str:
        for separator, index in ((self.rep, rep), (self.comp, comp), (self.sub, sub)):
            pieces = value.split(separator)
            if index > len(pieces):
                return ""
            value = pieces[index - 1]
        return str(self.parsed.unescape(value)).strip()

    def repetitions(self, fields: list[str] | None, n: int) -> list[str]:
        value = self.raw(fields, n)
        return value.split(self.rep) if value else []


def _read_header(text: str) -> _Header:
    """MSH as far as it can be read, without python-hl7 (which needs a sound MSH).

    Raises :class:`HL7Error` AR for a missing MSH or broken encoding characters
    (HL7 v2.5 2.5.4: four distinct characters, none alphanumeric, after the
    field separator).
    """
    text = text.lstrip("\r\n")
    header = _Header()
    if not text.startswith("MSH") or len(text) < 8:
        raise _reject(SEGMENT_SEQUENCE_ERROR, "a message begins with an MSH segment (2.5.1)")
    sep = text[3]
    first = text.split("\r", 1)[0]
    fields = first.split(sep)
    encoding = fields[1] if len(fields) > 1 else ""
    specials = sep + encoding
    if (
        sep.isalnum()
        or sep in "\r\n "
        or len(encoding) not in (4, 5)  # 2.7+ add a truncation character
        or len(set(specials)) != len(specials)
        or any(c.isalnum() or c in "\r\n " for c in specials)
    ):
        raise _reject(
            DATA_TYPE_ERROR,
            "MSH-1 and MSH-2 must be five distinct non-alphanumeric encoding characters (2.5.4)",
            ("MSH", 2),
        )
    header.field_sep, header.encoding = sep, encoding[:4]
    comp = encoding[0]

    def field(n: int) -> str:
        # fields[0] is "MSH", fields[1] MSH-2: MSH-n is fields[n - 1].
        return fields[n - 1] if n - 1 < len(fields) else ""

    header.sending_application = field(3).split(comp)[0]
    header.sending_facility = field(4).split(comp)[0]
    header.receiving_application = field(5).split(comp)[0]
    header.receiving_facility = field(6).split(comp)[0]
    kind = field(9).split(comp)
    header.message_code = kind[0].strip().upper()
    header.trigger = (kind[1] if len(kind) > 1 else "").strip().upper()
    header.control_id = field(10).strip()
    header.processing_id = field(11).split(comp)[0].strip().upper()
    header.version = field(12).split(comp)[0].strip()
    header.charset = field(18).split(encoding[1])[0].strip().upper()
    return header


def _check_header(header: _Header) -> None:
    """The refusals of 2.9.2: what this application does not accept at all."""
    if not header.control_id:
        raise _reject(REQUIRED_MISSING, "MSH-10 (message control ID) is required", ("MSH", 10))
    if len(header.control_id) > 20:
        raise _reject(DATA_TYPE_ERROR, "MSH-10 has at most 20 characters", ("MSH", 10))
    if header.message_code not in SUPPORTED:
        raise _reject(
            UNSUPPORTED_MESSAGE_TYPE,
            "message type not supported: ADT, ORM and OMI are",
            ("MSH", 9),
        )
    if header.trigger not in SUPPORTED[header.message_code]:
        raise _reject(
            UNSUPPORTED_EVENT,
            f"trigger event not supported for {header.message_code}: "
            + ", ".join(sorted(SUPPORTED[header.message_code])),
            ("MSH", 9),
        )
    if header.processing_id not in _PROCESSING:
        raise _reject(
            UNSUPPORTED_PROCESSING_ID,
            "processing ID (MSH-11) not supported: P and D are",
            ("MSH", 11),
        )
    if not _VERSIONS.fullmatch(header.version):
        raise _reject(
            UNSUPPORTED_VERSION, "version (MSH-12) not supported: 2.3 to 2.8 are", ("MSH", 12)
        )
    if header.charset not in _CHARSETS:
        raise _reject(
            TABLE_VALUE_NOT_FOUND,
            "character set (MSH-18) not supported: ASCII, 8859/1, 8859/15, UNICODE UTF-8 are",
            ("MSH", 18),
        )


# -- values ----------------------------------------------------------------------------


def _person_name(msg: _Message, value: str) -> str:
    """An XPN/XCN-like name (family^given^middle^suffix^prefix) as a DICOM PN
    (Family^Given^Middle^Prefix^Suffix, PS3.5 6.2.1); the family name is the
    first subcomponent of its FN component (HL7 v2.5 2.A.30)."""
    family, given, middle, suffix, prefix = (_pn_part(msg, value, i) for i in range(1, 6))
    return "^".join((family, given, middle, prefix, suffix)).rstrip("^")


def _xcn_name(msg: _Message, value: str) -> str:
    """An XCN (ID^family^given^middle^suffix^prefix, 2.A.88) as a DICOM PN."""
    family, given, middle, suffix, prefix = (_pn_part(msg, value, i) for i in range(2, 7))
    return "^".join((family, given, middle, prefix, suffix)).rstrip("^")


def _pn_part(msg: _Message, value: str, comp: int) -> str:
    # An escaped delimiter (\S\) would make a component of a DICOM PN split in
    # two (PS3.5 6.2.1): a space keeps the name readable and the PN whole.
    return msg.part(value, comp).replace("^", " ").replace("=", " ")


_TS = re.compile(r"(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})?(\d{2})?(?:\.\d{1,4})?)?([+-]\d{4})?")


def _timestamp(value: str, where: tuple[str, int], *, date_only: bool = False) -> datetime:
    """An HL7 TS/DTM (YYYYMMDD[HH[MM[SS[.S]]]][+/-ZZZZ], 2.A.77) to at least a day.

    The offset is dropped: scheduled times are wall-clock times of the place
    (PS3.3 C.4.10), birth dates are dates.
    """
    m = _TS.fullmatch(value)
    try:
        if m is None:
            raise ValueError
        y, mo, d, h, mi, s = (int(g or 0) for g in m.groups()[:6])
        if date_only:
            return datetime(y, mo, d)
        return datetime(y, mo, d, h, mi, s)
    except ValueError:
        raise _error(
            DATA_TYPE_ERROR,
            f"{where[0]}-{where[1]}: a date (and time) as YYYYMMDD[HHMM[SS]] (2.A.77)",
            where,
        ) from None


#: HL7 table 0001 (administrative sex) to DICOM Patient's Sex (PS3.3 C.7.1.1).
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "U": "", "N": "", "": ""}

#: HL7 v2.5 2.5.3: a field of two double quotes is "null": the value is deleted.
_NULL = '""'


@dataclass
class _PatientFields:
    patient_id: str
    issuer: str
    changes: dict[str, object]


def _patient_identifier(msg: _Message, segment: list[str], n: int, name: str) -> tuple[str, str]:
    """(ID, issuer) from a CX list (PID-3, MRG-1; 2.A.12): the first repetition
    of identifier type MR, else the first; issuer is CX-4's namespace ID or
    universal ID (IHE: Issuer of Patient ID)."""
    reps = [r for r in msg.repetitions(segment, n) if msg.part(r, 1)]
    if not reps:
        raise _error(REQUIRED_MISSING, f"{name}-{n} (patient identifier) is required", (name, n))
    chosen = next((r for r in reps if msg.part(r, 5).upper() == "MR"), reps[0])
    issuer = msg.part(chosen, 4, 1) or msg.part(chosen, 4, 2)
    return msg.part(chosen, 1), issuer


def _patient_fields(msg: _Message) -> _PatientFields:
    pid = msg.first("PID")
    if pid is None:
        raise _error(REQUIRED_MISSING, "the message needs a PID segment", ("PID", 0))
    patient_id, issuer = _patient_identifier(msg, pid, 3, "PID")
    changes: dict[str, object] = {}
    # An empty field is "not sent": unchanged; '""' clears it (2.5.3).
    name = msg.raw(pid, 5)
    if name == _NULL:
        changes["patient_name"] = ""
    elif name:
        changes["patient_name"] = _person_name(msg, msg.repetitions(pid, 5)[0])
    birth = msg.raw(pid, 7)
    if birth == _NULL:
        changes["patient_birth_date"] = None
    elif birth:
        changes["patient_birth_date"] = _timestamp(
            msg.get(pid, 7), ("PID", 7), date_only=True
        ).date()
    sex = msg.raw(pid, 8)
    if sex == _NULL:
        changes["patient_sex"] = ""
    elif sex:
        code = msg.get(pid, 8).upper()
        if code not in _SEX:
            raise _error(
                TABLE_VALUE_NOT_FOUND, "PID-8: administrative sex of HL7 table 0001", ("PID", 8)
            )
        changes["patient_sex"] = _SEX[code]
    return _PatientFields(patient_id, issuer, changes)


# -- the intake -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Done:
    """What one message did: the answer and, for the audit, what it touched."""

    ack_code: str
    event: EventID
    action: Action
    patient_id: str
    detail: dict[str, object]


class HL7Intake:
    """Process HL7 v2 messages into the registration; answer each with an ACK.

    Parameters
    ----------
    registration
        The registration service every change goes through.
    audit
        The audit trail (one event per message, PS3.15 A.5.3).
    application, facility
        Our MSH-3 and MSH-4 in the answers (the AE title by default).
    """

    def __init__(
        self,
        registration: RegistrationService,
        audit: AuditTrail,
        *,
        application: str = "LIGHTBOX",
        facility: str = "",
    ) -> None:
        self.registration = registration
        self.audit = audit
        self.application = application
        self.facility = facility
        self._handlers: dict[tuple[str, str], Callable[[_Message, str], _Done]] = {
            ("ADT", "A04"): self._register,
            ("ADT", "A08"): self._update,
            ("ADT", "A40"): self._merge,
            ("ORM", "O01"): self._order,
            ("OMI", "O23"): self._order,
        }

    # -- entry points -------------------------------------------------------------------

    def handle(self, payload: bytes, peer: str = "") -> bytes:
        """The ACK (encoded as the message was) of one message, ``payload``
        being the content of one MLLP block."""
        header = _Header()
        charset = "utf-8"
        try:
            # MSH up to MSH-18 is ASCII in any character set HL7 allows here:
            # read it as Latin-1 (never fails), then decode as MSH-18 says.
            header = _read_header(payload.decode("latin-1"))
            _check_header(header)
            charset = _CHARSETS[header.charset]
            try:
                text = payload.decode(charset)
            except UnicodeDecodeError:
                if header.charset:
                    raise _reject(
                        DATA_TYPE_ERROR, "content not in the character set of MSH-18", ("MSH", 18)
                    ) from None
                charset = "latin-1"  # unnamed and not UTF-8: the usual legacy RIS
                text = payload.decode(charset)
            try:
                parsed = hl7.parse(text.replace("\n", "\r").replace("\r\r", "\r"))
            except Exception:
                raise _reject(SEGMENT_SEQUENCE_ERROR, "the message cannot be parsed") from None
            msg = _Message(parsed)
            actor = f"hl7:{header.sending_application or '?'}"
            outcome = self._handlers[(header.message_code, header.trigger)](msg, actor)
        except HL7Error as exc:
            self._log_and_audit(header, exc.ack_code, peer, exc.reason, None)
            return self._ack(header, exc.ack_code, exc).encode(charset, "replace")
        except Exception:
            # A bug or a database failure: AE, so that the sender keeps the message.
            log.exception(
                "HL7 %s^%s control_id=%s: internal error",
                header.message_code,
                header.trigger,
                header.control_id,
            )
            exc = _error(INTERNAL_ERROR, "internal error; the message was not processed")
            self._log_and_audit(header, "AE", peer, exc.reason, None)
            return self._ack(header, "AE", exc).encode(charset, "replace")
        self._log_and_audit(header, "AA", peer, "", outcome)
        return self._ack(header, "AA", None).encode(charset, "replace")

    def reject_oversize(self, head: bytes, limit: int, peer: str = "") -> bytes:
        """The AR of a message longer than ``limit`` bytes, of which ``head``
        (its start) was kept to read MSH from."""
        header = _Header()
        try:
            header = _read_header(head.decode("latin-1"))
        except HL7Error:
            pass
        exc = _reject(INTERNAL_ERROR, f"message longer than {limit} bytes, not read")
        self._log_and_audit(header, "AR", peer, exc.reason, None)
        return self._ack(header, "AR", exc).encode("latin-1", "replace")

    # -- messages -------------------------------------------------------------------------

    def _find_patient(self, patient_id: str, issuer: str) -> Patient | None:
        found = self.registration.list_patients(
            patient_id=patient_id, issuer_of_patient_id=issuer, limit=1
        )
        return found[0] if found else None

    def _register(self, msg: _Message, actor: str) -> _Done:
        fields = _patient_fields(msg)
        known = self._find_patient(fields.patient_id, fields.issuer)
        if known is not None:
            # A04 is sent at every registration of a visit: a patient we know
            # is updated with what this one says (3.3.4).
            return self._apply_update(known, fields, actor)
        changes = fields.changes
        registered = self._call(
            lambda: self.registration.register_patient(
                fields.patient_id,
                actor=actor,
                issuer_of_patient_id=fields.issuer,
                patient_name=str(changes.get("patient_name", "")),
                patient_birth_date=changes.get("patient_birth_date"),  # type: ignore[arg-type]
                patient_sex=str(changes.get("patient_sex", "")),
            ),
            ("PID", 3),
        )
        return _Done(
            "AA",
            EventID.PATIENT_RECORD,
            Action.CREATE,
            registered.patient.patient_id,
            {"patient": registered.patient.id, "possible_duplicates": len(registered.warnings)},
        )

    def _update(self, msg: _Message, actor: str) -> _Done:
        fields = _patient_fields(msg)
        known = self._find_patient(fields.patient_id, fields.issuer)
        if known is None:
            raise _error(UNKNOWN_KEY, "PID-3: no such patient registered", ("PID", 3))
        return self._apply_update(known, fields, actor)

    def _apply_update(self, known: Patient, fields: _PatientFields, actor: str) -> _Done:
        changes = dict(fields.changes)
        registered = self._call(
            lambda: self.registration.update_patient(known.id, actor=actor, **changes),
            ("PID", 0),
        )
        return _Done(
            "AA",
            EventID.PATIENT_RECORD,
            Action.UPDATE,
            registered.patient.patient_id,
            {"patient": known.id, "fields": sorted(changes)},
        )

    def _merge(self, msg: _Message, actor: str) -> _Done:
        if len(msg.all("PID")) != 1 or len(msg.all("MRG")) != 1:
            raise _error(
                SEGMENT_SEQUENCE_ERROR, "one PID and one MRG segment: one merge per message"
            )
        fields = _patient_fields(msg)
        mrg = msg.first("MRG")
        assert mrg is not None
        prior_id, prior_issuer = _patient_identifier(msg, mrg, 1, "MRG")
        prior = self._find_patient(prior_id, prior_issuer)
        if prior is None:
            raise _error(UNKNOWN_KEY, "MRG-1: no such patient registered", ("MRG", 1))
        survivor = self._find_patient(fields.patient_id, fields.issuer)
        if survivor is None:
            # Nothing to merge into: the prior record continues under the
            # surviving identifier, with its orders (one update).
            changes = {
                **fields.changes,
                "patient_id": fields.patient_id,
                "issuer_of_patient_id": fields.issuer,
            }
            registered = self._call(
                lambda: self.registration.update_patient(prior.id, actor=actor, **changes),
                ("PID", 3),
            )
            return _Done(
                "AA",
                EventID.PATIENT_RECORD,
                Action.UPDATE,
                registered.patient.patient_id,
                {"patient": prior.id, "merge": "identifier changed"},
            )
        if survivor.id == prior.id:
            raise _error(DUPLICATE_KEY, "PID-3 and MRG-1 name the same patient", ("MRG", 1))
        merged = self._call(
            lambda: self.registration.merge_patients(survivor.id, prior.id, actor=actor),
            ("MRG", 1),
        )
        return _Done(
            "AA",
            EventID.PATIENT_RECORD,
            Action.UPDATE,
            merged.patient_id,
            {"patient": survivor.id, "merged": prior.id},
        )

    def _order(self, msg: _Message, actor: str) -> _Done:
        orcs, obrs = msg.all("ORC"), msg.all("OBR")
        if not orcs or not obrs:
            raise _error(REQUIRED_MISSING, "an order message needs ORC and OBR segments", ("ORC", 0))
        controls = {msg.get(orc, 1).upper() for orc in orcs}
        if len(controls) != 1:
            raise _error(
                SEGMENT_SEQUENCE_ERROR, "ORC-1 differs between orders: one action per message"
            )
        control = controls.pop()
        accessions = {self._accession(msg, i) for i in range(len(obrs))}
        if len(accessions) != 1:
            raise _error(
                SEGMENT_SEQUENCE_ERROR,
                "OBR-18/IPC-1 differ: one order (accession number) per message",
                ("OBR", 18),
            )
        accession = accessions.pop()
        fields = _patient_fields(msg)
        patient = self._find_patient(fields.patient_id, fields.issuer)
        if patient is None:
            raise _error(UNKNOWN_KEY, "PID-3: no such patient registered", ("PID", 3))
        placer = msg.get(orcs[0], 2) or msg.get(obrs[0], 2)
        if control == "NW":
            return self._new_order(msg, actor, patient, accession, placer)
        if control == "CA":
            return self._cancel_order(msg, actor, patient, accession, placer)
        raise _error(
            TABLE_VALUE_NOT_FOUND, "ORC-1: order control NW (new) or CA (cancel)", ("ORC", 1)
        )

    def _accession(self, msg: _Message, i: int) -> str:
        """Accession number of the ``i``-th OBR: IPC-1 (OMI, IHE RAD TF-2 B) or OBR-18."""
        ipcs = msg.all("IPC")
        if i < len(ipcs) and msg.get(ipcs[i], 1):
            return msg.get(ipcs[i], 1)
        if ipcs and msg.get(ipcs[0], 1):
            return msg.get(ipcs[0], 1)
        return msg.get(msg.all("OBR")[i], 18)

    def _new_order(
        self, msg: _Message, actor: str, patient: Patient, accession: str, placer: str
    ) -> _Done:
        obrs, ipcs = msg.all("OBR"), msg.all("IPC")
        orc = msg.all("ORC")[0]
        pv1 = msg.first("PV1")
        procedures = []
        if ipcs:
            # OMI^O23: one IPC per scheduled step of the procedure of its OBR.
            groups = [(obrs[min(i, len(obrs) - 1)], ipc) for i, ipc in enumerate(ipcs)]
        else:
            groups = [(obr, None) for obr in obrs]
        for obr, ipc in groups:
            procedures.append(self._procedure(msg, orc, obr, ipc))
        referring = ""
        if pv1 is not None and msg.raw(pv1, 8):
            referring = _xcn_name(msg, msg.repetitions(pv1, 8)[0])
        elif msg.raw(obrs[0], 16):
            referring = _xcn_name(msg, msg.repetitions(obrs[0], 16)[0])
        reason = msg.get(obrs[0], 31, 2) or msg.get(obrs[0], 31, 1)
        order = self._call(
            lambda: self.registration.create_order(
                patient.id,
                procedures,
                actor=actor,
                accession_number=accession or None,
                placer_order_number=placer,
                referring_physician_name=referring,
                reason=reason,
            ),
            ("OBR", 18),
        )
        return _Done(
            "AA",
            EventID.ORDER_RECORD,
            Action.CREATE,
            patient.patient_id,
            {"order": order.id, "procedures": len(procedures)},
        )

    def _procedure(
        self, msg: _Message, orc: list[str], obr: list[str], ipc: list[str] | None
    ) -> ProcedureRequest:
        modality = (msg.get(ipc, 5) if ipc else "") or msg.get(obr, 24)
        if not modality:
            raise _error(REQUIRED_MISSING, "IPC-5 or OBR-24 (modality) is required", ("OBR", 24))
        start = ""
        where: tuple[str, int] = ("OBR", 27)
        tq1 = msg.first("TQ1")
        for fields, n, comp, loc in (
            (tq1, 7, 1, ("TQ1", 7)),
            (orc, 7, 4, ("ORC", 7)),
            (obr, 27, 4, ("OBR", 27)),
            (obr, 36, 1, ("OBR", 36)),
        ):
            start = msg.get(fields, n, comp) if fields is not None else ""
            if start:
                where = loc
                break
        if not start:
            raise _error(
                REQUIRED_MISSING,
                "a scheduled start is required (TQ1-7, ORC-7.4, OBR-27.4 or OBR-36)",
                where,
            )
        scheduled = _timestamp(start, where)
        code = self._code(msg, obr, 4, ("OBR", 4))
        protocol = self._code(msg, ipc, 6, ("IPC", 6)) if ipc else None
        station = (msg.get(ipc, 9) if ipc else "") or msg.get(orc, 18)
        return ProcedureRequest(
            modality=modality.upper(),
            scheduled_start=scheduled,
            description=msg.get(obr, 4, 2) or msg.get(obr, 4, 1),
            code=code,
            station_ae_title=station,
            station_name=msg.get(ipc, 7) if ipc else "",
            protocol_code=protocol,
        )

    def _code(
        self, msg: _Message, fields: list[str] | None, n: int, where: tuple[str, int]
    ) -> Code | None:
        """A CE/CWE (identifier^text^coding system, 2.A.8) as a DICOM code, when complete."""
        value, meaning, scheme = (msg.get(fields, n, i) for i in (1, 2, 3))
        if not (value and meaning and scheme):
            return None
        try:
            return Code.checked(value, scheme, meaning, f"{where[0]}-{where[1]}")
        except InvalidRequest as exc:
            raise _error(DATA_TYPE_ERROR, str(exc), where) from None

    def _cancel_order(
        self, msg: _Message, actor: str, patient: Patient, accession: str, placer: str
    ) -> _Done:
        candidates = self.registration.list_orders(patient=patient.id, limit=1000)
        if accession:
            matches = [o for o in candidates if o.accession_number == accession]
        elif placer:
            matches = [o for o in candidates if o.placer_order_number == placer]
        else:
            raise _error(
                REQUIRED_MISSING,
                "a cancel names its order: OBR-18/IPC-1 (accession) or ORC-2 (placer number)",
                ("OBR", 18),
            )
        if len(matches) != 1:
            raise _error(
                UNKNOWN_KEY, "no single order of this patient with that number", ("OBR", 18)
            )
        reason = msg.get(msg.all("ORC")[0], 16, 2) or msg.get(msg.all("ORC")[0], 16, 1)
        order = matches[0]
        self._call(
            lambda: self.registration.cancel_order(order.id, actor=actor, reason=reason),
            ("ORC", 1),
        )
        return _Done(
            "AA", EventID.ORDER_RECORD, Action.DELETE, patient.patient_id, {"order": order.id}
        )

    @staticmethod
    def _call(operation: Callable[[], _T], where: tuple[str, int]) -> _T:
        """Run one service operation; its refusals become AE (2.9.2)."""
        try:
            return operation()
        except NotFound as exc:
            raise _error(UNKNOWN_KEY, str(exc), where) from None
        except AlreadyExists as exc:
            raise _error(DUPLICATE_KEY, str(exc), where) from None
        except InvalidRequest as exc:
            raise _error(DATA_TYPE_ERROR, str(exc), where) from None
        except InvalidState as exc:
            raise _error(INTERNAL_ERROR, str(exc), where) from None

    # -- the answer -------------------------------------------------------------------------

    def _ack(self, header: _Header, code: str, error: HL7Error | None) -> str:
        """An ACK in the message's encoding characters (HL7 v2.5 2.14.1, 2.15.8)."""
        f, enc = header.field_sep, header.encoding
        comp, esc = enc[0], enc[2]

        def text(value: str) -> str:
            # Escape the delimiters (2.7.4); the escape character first.
            out = value.replace(esc, f"{esc}E{esc}")
            for ch, name in ((f, "F"), (comp, "S"), (enc[1], "R"), (enc[3], "T")):
                out = out.replace(ch, f"{esc}{name}{esc}")
            return out

        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        version = header.version if _VERSIONS.fullmatch(header.version) else "2.5"
        msh = f.join(
            [
                "MSH",
                enc,
                text(self.application),
                text(self.facility),
                text(header.sending_application),
                text(header.sending_facility),
                now,
                "",
                comp.join(["ACK", text(header.trigger), "ACK"]),
                _control_id(),
                header.processing_id if header.processing_id in _PROCESSING else "P",
                version,
            ]
            + ([""] * 5 + [text(header.charset)] if header.charset else [])
        )
        msa = f.join(["MSA", code, text(header.control_id)] + ([text(error.reason)] if error else []))
        segments = [msh, msa]
        if error is not None:
            sub = enc[3]
            seg, pos = error.location or ("", 0)
            label = _CODE_TEXT.get(error.code, "")
            # ERR-1 (ELD, kept for receivers before 2.5), ERR-2 location,
            # ERR-3 code of table 0357, ERR-4 severity E, ERR-8 user message.
            err1 = comp.join([seg, "1" if seg else "", str(pos) if pos else "",
                              sub.join([str(error.code), label, "HL70357"])])
            err2 = comp.join([seg, "1", str(pos)]) if seg and pos else ""
            segments.append(
                f.join(
                    ["ERR", err1, err2, comp.join([str(error.code), label, "HL70357"]), "E",
                     "", "", "", text(error.reason)]
                )
            )
        return "\r".join(segments) + "\r"

    def _log_and_audit(
        self, header: _Header, code: str, peer: str, reason: str, outcome: _Done | None
    ) -> None:
        # Type, control ID, outcome and a reason that names fields: no PHI.
        log.info(
            "HL7 %s^%s control_id=%s: %s%s",
            header.message_code or "?",
            header.trigger or "?",
            header.control_id or "-",
            code,
            f" ({reason})" if reason else "",
        )
        if outcome is not None:
            event, action, patient_id, detail = (
                outcome.event, outcome.action, outcome.patient_id, outcome.detail
            )
        else:
            event = (
                EventID.ORDER_RECORD if header.message_code in ("ORM", "OMI")
                else EventID.PATIENT_RECORD
            )
            action, patient_id, detail = Action.EXECUTE, "", {"reason": reason}
        self.audit.record(
            AuditEvent(
                event,
                action,
                "system",
                f"hl7:{header.sending_application or '?'}",
                outcome=Outcome.SUCCESS if code == "AA" else Outcome.MINOR_FAILURE,
                source_address=peer,
                destination="hl7",
                patient_id=patient_id,
                detail={
                    "message": f"{header.message_code}^{header.trigger}",
                    "control_id": header.control_id,
                    "ack": code,
                    **detail,
                },
            )
        )


def _control_id() -> str:
    """A new message control ID for an answer (MSH-10, at most 20 characters)."""
    return hl7.util.generate_message_control_id()
