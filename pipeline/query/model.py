"""The Query/Retrieve information models: levels, and the attributes searched and returned.

One table serves C-FIND (PS3.4 C.6.1 Patient Root, C.6.2 Study Root) and
QIDO-RS (PS3.18 10.6, which uses the Study Root model): each
:class:`Attribute` names the index column (:mod:`pipeline.index.schema`) it
is returned from and the column it is matched on, and how it is matched
(:class:`Kind`, the matching rules of PS3.4 C.2.2.2 by VR). Nothing here ever
opens a file: an attribute the index does not keep is not in :data:`ATTRIBUTES`,
and the protocol adapters return it empty (C-FIND, PS3.4 C.2.2.1.2: an SCP
need not support matching on optional keys) or leave it out (QIDO-RS,
PS3.18 10.6.3.3: "if available").

Kept in the index and so searchable or returnable, by level:

* PATIENT: PatientName, PatientID, IssuerOfPatientID, PatientBirthDate,
  PatientSex; returned only: NumberOfPatientRelatedStudies/Series/Instances.
* STUDY: StudyInstanceUID, StudyDate, StudyTime, AccessionNumber, StudyID,
  StudyDescription, ReferringPhysicianName, ModalitiesInStudy; returned only:
  NumberOfStudyRelatedSeries/Instances, SOPClassesInStudy.
* SERIES: SeriesInstanceUID, Modality, SeriesNumber, SeriesDescription,
  SeriesDate, SeriesTime, BodyPartExamined, PerformedProcedureStepStartDate/Time;
  returned only: NumberOfSeriesRelatedInstances.
* IMAGE: SOPInstanceUID, SOPClassUID, InstanceNumber, Rows, Columns,
  NumberOfFrames, BitsAllocated, PhotometricInterpretation, ContentDate,
  ContentTime, AvailableTransferSyntaxUID.

Everything else (e.g. PatientBirthTime, OtherPatientIDs, TimezoneOffsetFromUTC,
IssuerOfAccessionNumberSequence, RequestAttributeSequence, StationName) is
not indexed: returned empty by C-FIND, absent from QIDO-RS answers.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pydicom.datadict import dictionary_VR, tag_for_keyword
from sqlalchemy import func, select
from sqlalchemy.sql.elements import ColumnElement

from pipeline.index.schema import instances, patients, series, studies


class Level(str, enum.Enum):
    """Query/Retrieve Level (0008,0052) values (PS3.4 C.6.1.1, C.6.2.1)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"

    @property
    def depth(self) -> int:
        """0 for PATIENT ... 3 for IMAGE: a level is "above" another with a smaller depth."""
        return _DEPTH[self]


_DEPTH = {Level.PATIENT: 0, Level.STUDY: 1, Level.SERIES: 2, Level.IMAGE: 3}


class Root(str, enum.Enum):
    """The information model: Patient Root (PS3.4 C.6.1) or Study Root (C.6.2)."""

    PATIENT = "patient"
    STUDY = "study"

    @property
    def levels(self) -> tuple[Level, ...]:
        """Study Root has no PATIENT level: patient attributes are study attributes there."""
        if self is Root.PATIENT:
            return (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
        return (Level.STUDY, Level.SERIES, Level.IMAGE)


class Kind(enum.Enum):
    """How a key is matched (PS3.4 C.2.2.2), chosen by the attribute's VR."""

    UID = "uid"  # single value or list of UIDs (C.2.2.2.2); never wildcards
    TEXT = "text"  # single value, wildcard (C.2.2.2.1, C.2.2.2.4), case-sensitive
    PERSON = "person"  # as TEXT but without case (C.2.2.2.1 allows it for PN)
    CODES = "codes"  # a multi-valued code string kept joined by backslashes
    DATE = "date"  # DA: single value or range (C.2.2.2.5)
    TIME = "time"  # TM: single value or range (C.2.2.2.5)
    NUMBER = "number"  # IS/US: single value (or a list of them)
    NONE = "none"  # returned, never matched (counts, derived values)


@dataclass(frozen=True)
class Attribute:
    """An attribute the index keeps.

    Parameters
    ----------
    keyword, vr, level
        The DICOM keyword, its VR (PS3.6) and the level it belongs to.
    value
        The column (or expression) it is returned from; None for a value the
        service derives after the query (SOPClassesInStudy).
    kind
        How it is matched.
    search
        The column it is matched on when not ``value`` (an upper-cased name).
    """

    keyword: str
    vr: str
    level: Level
    value: ColumnElement | None
    kind: Kind
    search: ColumnElement | None = None

    @property
    def tag(self) -> int:
        tag = tag_for_keyword(self.keyword)
        assert tag is not None, self.keyword
        return int(tag)

    @property
    def matchable(self) -> bool:
        return self.kind is not Kind.NONE

    @property
    def column(self) -> ColumnElement:
        """What matching compares."""
        column = self.search if self.search is not None else self.value
        assert column is not None, self.keyword
        return column


def _attr(keyword: str, level: Level, value: ColumnElement | None, kind: Kind,
          search: ColumnElement | None = None) -> Attribute:  # fmt: skip
    return Attribute(keyword, str(dictionary_VR(keyword)), level, value, kind, search)


# Counts of a patient's studies, series and instances (PS3.4 C.6.1.1.2, returned
# only): correlated subqueries, evaluated for the rows returned. They read an
# alias of studies, so that a query that joins studies itself still correlates
# on the patient alone.
_their = studies.alias("patient_studies")


def _per_patient(expression: ColumnElement) -> ColumnElement:
    return (
        select(expression)
        .where(_their.c.patient_pk == patients.c.pk)
        .correlate(patients)
        .scalar_subquery()
    )


_patient_studies = _per_patient(func.count(_their.c.pk))
_patient_series = _per_patient(func.coalesce(func.sum(_their.c.number_of_series), 0))
_patient_instances = _per_patient(func.coalesce(func.sum(_their.c.number_of_instances), 0))

P, ST, SE, IM = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE

_ALL: tuple[Attribute, ...] = (
    # PS3.4 C.6.1.1.2 Patient level
    _attr("PatientName", P, patients.c.patient_name, Kind.PERSON, patients.c.patient_name_search),
    _attr("PatientID", P, patients.c.patient_id, Kind.TEXT),
    _attr("IssuerOfPatientID", P, patients.c.issuer_of_patient_id, Kind.TEXT),
    _attr("PatientBirthDate", P, patients.c.patient_birth_date, Kind.DATE),
    _attr("PatientSex", P, patients.c.patient_sex, Kind.TEXT),
    _attr("NumberOfPatientRelatedStudies", P, _patient_studies, Kind.NONE),
    _attr("NumberOfPatientRelatedSeries", P, _patient_series, Kind.NONE),
    _attr("NumberOfPatientRelatedInstances", P, _patient_instances, Kind.NONE),
    # PS3.4 C.6.1.1.3 Study level
    _attr("StudyInstanceUID", ST, studies.c.study_instance_uid, Kind.UID),
    _attr("StudyDate", ST, studies.c.study_date, Kind.DATE),
    _attr("StudyTime", ST, studies.c.study_time, Kind.TIME),
    _attr("AccessionNumber", ST, studies.c.accession_number, Kind.TEXT),
    _attr("StudyID", ST, studies.c.study_id, Kind.TEXT),
    _attr("StudyDescription", ST, studies.c.study_description, Kind.TEXT),
    # Matched on person_name_key(name): the key the referring physician's
    # scope uses too (pipeline.index.records).
    _attr("ReferringPhysicianName", ST, studies.c.referring_physician_name, Kind.PERSON,
          studies.c.referring_physician_search),  # fmt: skip
    _attr("ModalitiesInStudy", ST, studies.c.modalities_in_study, Kind.CODES),
    _attr("NumberOfStudyRelatedSeries", ST, studies.c.number_of_series, Kind.NONE),
    _attr("NumberOfStudyRelatedInstances", ST, studies.c.number_of_instances, Kind.NONE),
    _attr("SOPClassesInStudy", ST, None, Kind.NONE),
    # PS3.4 C.6.1.1.4 Series level
    _attr("SeriesInstanceUID", SE, series.c.series_instance_uid, Kind.UID),
    _attr("Modality", SE, series.c.modality, Kind.TEXT),
    _attr("SeriesNumber", SE, series.c.series_number, Kind.NUMBER),
    _attr("SeriesDescription", SE, series.c.series_description, Kind.TEXT),
    _attr("SeriesDate", SE, series.c.series_date, Kind.DATE),
    _attr("SeriesTime", SE, series.c.series_time, Kind.TIME),
    _attr("BodyPartExamined", SE, series.c.body_part_examined, Kind.TEXT),
    _attr("PerformedProcedureStepStartDate", SE, series.c.performed_procedure_step_start_date,
          Kind.DATE),  # fmt: skip
    _attr("PerformedProcedureStepStartTime", SE, series.c.performed_procedure_step_start_time,
          Kind.TIME),  # fmt: skip
    _attr("NumberOfSeriesRelatedInstances", SE, series.c.number_of_instances, Kind.NONE),
    # PS3.4 C.6.1.1.5 Composite Object Instance level
    _attr("SOPInstanceUID", IM, instances.c.sop_instance_uid, Kind.UID),
    _attr("SOPClassUID", IM, instances.c.sop_class_uid, Kind.UID),
    _attr("InstanceNumber", IM, instances.c.instance_number, Kind.NUMBER),
    _attr("Rows", IM, instances.c.rows, Kind.NUMBER),
    _attr("Columns", IM, instances.c.columns, Kind.NUMBER),
    _attr("NumberOfFrames", IM, instances.c.number_of_frames, Kind.NUMBER),
    _attr("BitsAllocated", IM, instances.c.bits_allocated, Kind.NUMBER),
    _attr("PhotometricInterpretation", IM, instances.c.photometric_interpretation, Kind.TEXT),
    _attr("ContentDate", IM, instances.c.content_date, Kind.DATE),
    _attr("ContentTime", IM, instances.c.content_time, Kind.TIME),
    _attr("AvailableTransferSyntaxUID", IM, instances.c.transfer_syntax_uid, Kind.UID),
)

#: Every attribute the index keeps, by keyword.
ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in _ALL}

#: The Unique Key of each level (PS3.4 C.6.1.1.2-5).
UNIQUE_KEYS: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

#: The primary key of the row a match is at each level (results are ordered by it).
PRIMARY_KEYS: dict[Level, ColumnElement] = {
    Level.PATIENT: patients.c.pk,
    Level.STUDY: studies.c.pk,
    Level.SERIES: series.c.pk,
    Level.IMAGE: instances.c.pk,
}

#: Instance Availability (0008,0056) of everything the index lists: the blobs
#: are on line storage (PS3.4 C.4.1.1.3.2).
INSTANCE_AVAILABILITY = "ONLINE"


@functools.cache
def visible_at(level: Level) -> Mapping[str, Attribute]:
    """The attributes of ``level`` and the levels above it, by keyword (read-only).

    Made once per level: every search asks for it, and building it cost a
    noticeable share of a small search's CPU.
    """
    return MappingProxyType({k: a for k, a in ATTRIBUTES.items() if a.level.depth <= level.depth})


def unique_keys_above(level: Level, root: Root) -> tuple[str, ...]:
    """The Unique Keys a hierarchical C-FIND at ``level`` must carry (PS3.4 C.4.1.2.2.1).

    Patient Root: PatientID from STUDY down, StudyInstanceUID from SERIES,
    SeriesInstanceUID at IMAGE. Study Root (no PATIENT level, C.6.2.1):
    StudyInstanceUID from SERIES, SeriesInstanceUID at IMAGE.
    """
    return tuple(
        UNIQUE_KEYS[upper] for upper in root.levels if upper.depth < level.depth
    )
