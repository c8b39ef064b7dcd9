"""What the registration hands out: patients, orders, their procedures and steps,
the requests to make them, and the history of changes (frozen dataclasses).

The names follow the standard's modules: the Patient Module (PS3.3 C.7.1.1),
the Requested Procedure (C.4.11) and Scheduled Procedure Step (C.4.10)
modules, the Code Sequence Macro (8.8).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import InvalidRequest
from pipeline.index.schema import OrderState, StepStatus
from pipeline.worklist import values


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime: SQLite hands back naive ones, written in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@dataclass(frozen=True)
class Code:
    """A coded entry (PS3.3 8.8, Code Sequence Macro): value, scheme, meaning."""

    value: str
    scheme: str
    meaning: str

    @classmethod
    def checked(cls, value: str, scheme: str, meaning: str, field_: str) -> Code | None:
        """A code with each part checked (CodeValue and CodingSchemeDesignator SH,
        CodeMeaning LO); None when all three are empty."""
        value = values.short_string(value, f"{field_}.value")
        scheme = values.short_string(scheme, f"{field_}.scheme")
        meaning = values.long_string(meaning, f"{field_}.meaning")
        if not (value or scheme or meaning):
            return None
        if not (value and scheme and meaning):
            raise InvalidRequest(f"{field_}: value, scheme and meaning are given together")
        return cls(value, scheme, meaning)


@dataclass(frozen=True)
class Patient:
    """A registered patient (PS3.3 C.7.1.1 Patient Module attributes)."""

    id: int
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str  # DA or ""
    patient_sex: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DuplicateWarning:
    """Another patient with the same name, birth date and sex (another ID)."""

    id: int
    patient_id: str
    issuer_of_patient_id: str
    reason: str = "same name, birth date and sex under another patient ID"


@dataclass(frozen=True)
class Registered:
    """A patient as registered or updated, with the possible duplicates found."""

    patient: Patient
    warnings: list[DuplicateWarning] = field(default_factory=list)


@dataclass(frozen=True)
class ScheduledStep:
    """A Scheduled Procedure Step (PS3.3 C.4.10, the Scheduled Procedure Step Sequence item)."""

    sps_id: str
    modality: str
    station_ae_title: str
    station_name: str
    start_date: str
    start_time: str
    performing_physician_name: str
    description: str
    protocol_code: Code | None
    status: StepStatus


@dataclass(frozen=True)
class Procedure:
    """A Requested Procedure (PS3.3 C.4.11) and its scheduled step."""

    requested_procedure_id: str
    description: str
    code: Code | None
    study_instance_uid: str
    steps: list[ScheduledStep]


@dataclass(frozen=True)
class Order:
    """An order ("bill"): one Accession Number, its patient and procedures."""

    id: int
    accession_number: str
    patient: Patient
    placer_order_number: str
    referring_physician_name: str
    reason: str
    state: OrderState
    procedures: list[Procedure]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ProcedureRequest:
    """One procedure to order, and when and where its step is scheduled.

    ``scheduled_start`` is the wall-clock time at the place of the procedure
    (Scheduled Procedure Step Start Date/Time have no offset in the worklist).
    """

    modality: str
    scheduled_start: datetime
    description: str = ""
    code: Code | None = None
    station_ae_title: str = ""
    station_name: str = ""
    performing_physician_name: str = ""
    step_description: str = ""
    protocol_code: Code | None = None


@dataclass(frozen=True)
class StepChange:
    """A rescheduling of the step ``sps_id``: the fields given change."""

    sps_id: str
    scheduled_start: datetime | None = None
    modality: str | None = None
    station_ae_title: str | None = None
    station_name: str | None = None
    performing_physician_name: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One change, as ``registration_history`` keeps it."""

    event_time: datetime
    actor: str
    entity: str
    entity_pk: int
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def patient_from_row(row: Any) -> Patient:
    return Patient(
        id=row.pk,
        patient_id=row.patient_id,
        issuer_of_patient_id=row.issuer_of_patient_id,
        patient_name=row.patient_name,
        patient_birth_date=row.patient_birth_date,
        patient_sex=row.patient_sex,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def code_or_none(value: str, scheme: str, meaning: str) -> Code | None:
    return Code(value, scheme, meaning) if value else None
