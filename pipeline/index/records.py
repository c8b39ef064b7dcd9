"""Plain values that cross the index interface (no ORM objects leak out)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipeline.index.schema import PixelState, WorkState


@dataclass(frozen=True, slots=True)
class PatientAttributes:
    """Patient level keys (PS3.4 C.6.1.1.2)."""

    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""


@dataclass(frozen=True, slots=True)
class StudyAttributes:
    """Study level keys (PS3.4 C.6.1.1.3)."""

    study_instance_uid: str
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""


@dataclass(frozen=True, slots=True)
class SeriesAttributes:
    """Series level keys (PS3.4 C.6.1.1.4)."""

    series_instance_uid: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    series_date: str = ""
    series_time: str = ""
    body_part_examined: str = ""
    performed_procedure_step_start_date: str = ""
    performed_procedure_step_start_time: str = ""


@dataclass(frozen=True, slots=True)
class InstanceAttributes:
    """Composite object instance level keys (PS3.4 C.6.1.1.5) and image geometry."""

    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    bits_allocated: int | None = None
    photometric_interpretation: str = ""
    content_date: str = ""
    content_time: str = ""
    has_pixel_data: bool = False


@dataclass(frozen=True, slots=True)
class ParsedHeader:
    """Everything the index keeps from one dataset's header."""

    patient: PatientAttributes
    study: StudyAttributes
    series: SeriesAttributes
    instance: InstanceAttributes


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """Where and what the blob store holds for one instance."""

    storage_key: str
    size: int
    sha256: str
    transfer_syntax_uid: str


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who sent an instance and how; ``source`` is dimse, stow or import."""

    source: str
    calling_ae: str = ""
    received_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class RecordOutcome(str, enum.Enum):
    """What :meth:`Index.record_instance` did with the row."""

    STORED = "stored"  # new instance
    IDENTICAL = "identical"  # same SOP Instance UID and same SHA-256: nothing changed
    KEPT_EXISTING = "kept_existing"  # different content, policy keep
    REPLACED = "replaced"  # different content, policy replace


@dataclass(frozen=True, slots=True)
class RecordResult:
    outcome: RecordOutcome
    #: The blob that is no longer referenced and may be deleted (the new one for
    #: IDENTICAL/KEPT_EXISTING, the old one for REPLACED, None for STORED).
    orphaned_key: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    size: int
    sha256: str
    storage_key: str
    received_at: datetime
    calling_ae: str
    source: str
    pixel_state: PixelState
    pixel_error: str | None


@dataclass(frozen=True, slots=True)
class SeriesRow:
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    number_of_instances: int


@dataclass(frozen=True, slots=True)
class StudyRow:
    study_instance_uid: str
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    modalities_in_study: tuple[str, ...]
    number_of_series: int
    number_of_instances: int


@dataclass(frozen=True, slots=True)
class WorkItem:
    pk: int
    stage: str
    sop_instance_uid: str
    storage_key: str
    attempts: int
    state: WorkState


@dataclass(frozen=True, slots=True)
class IndexCounts:
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int
    pixel_states: dict[str, int]
    work: dict[str, dict[str, int]]


def person_name_key(name: str) -> str:
    """A Person Name (PN) as compared without case, padding or trailing empty components.

    ``"Doe^Jane^^Dr"`` and ``"DOE^JANE^^DR "`` give the same key; so do
    ``"Doe^Jane^^"`` and ``"DOE^JANE"`` (PS3.5 6.2: trailing empty components
    and padding carry no meaning; PS3.4 C.2.2.2.1 lets PN match without case).
    """
    return "^".join(part.strip() for part in name.upper().split("^")).rstrip("^")
