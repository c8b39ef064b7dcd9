"""Which stored instances a C-MOVE or C-GET asks for, and their stored bytes.

The DIMSE retrieve SCPs (:mod:`pipeline.retrieve.scp`) hand the request's
Identifier to :meth:`RetrieveService.resolve`, which reads the unique keys of
the Query/Retrieve level (PS3.4 C.4.2.2.1, C.4.3.2.1: hierarchical retrieve,
Patient Root and Study Root information models, C.6.1 and C.6.2) and selects
the matching instances from the index, never opening a file.
:meth:`RetrieveService.read` then gives each instance's Part-10 blob exactly
as it was stored; :meth:`RetrieveService.reader` the same with the
corrections of reconciliation applied (:mod:`pipeline.retrieve.corrections`),
which is what the C-MOVE and C-GET sub-operations send.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from sqlalchemy import select

from pipeline.errors import InvalidRequest, NotFound, OutOfResources
from pipeline.index.schema import instances, patients, series, studies
from pipeline.retrieve.corrections import Corrections, corrections_for
from pipeline.storage.blobs import BlobStore

#: Bound parameters per ``IN (...)`` clause: SQLite allows 32766 in all.
_CHUNK = 500


class QueryModel(str, enum.Enum):
    """Query/Retrieve information models (PS3.4 C.6.1, C.6.2)."""

    PATIENT_ROOT = "patient"
    STUDY_ROOT = "study"


#: The Query/Retrieve levels of each model, from the top (PS3.4 C.6.1.1, C.6.2.1).
LEVELS: dict[QueryModel, tuple[str, ...]] = {
    QueryModel.PATIENT_ROOT: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    QueryModel.STUDY_ROOT: ("STUDY", "SERIES", "IMAGE"),
}

#: The unique key of each level (PS3.4 Table C.6-1 .. C.6-4).
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


@dataclass(frozen=True, slots=True)
class RetrieveKeys:
    """The unique keys of a retrieve Identifier; empty tuples are keys not given."""

    level: str
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """One stored instance to send; the UIDs and patient ID are for the
    protocol and the audit trail, never for logs."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    storage_key: str
    size: int
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str


def _values(identifier: Dataset, keyword: str) -> tuple[str, ...]:
    """A key's values: a UID list is backslash-separated (PS3.4 C.2.2.2.2)."""
    if keyword not in identifier:
        return ()
    value = identifier[keyword].value
    if value is None:
        return ()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        items = [str(v) for v in value]
    else:
        items = str(value).split("\\")
    return tuple(v.strip(" \0") for v in items if v.strip(" \0"))


def _uids(identifier: Dataset, keyword: str, *, single: bool) -> tuple[str, ...]:
    values = _values(identifier, keyword)
    for uid in values:
        # Wildcards and universal matching have no place in a retrieve
        # (PS3.4 C.4.2.2.1: unique keys only, single value or UID list).
        if not UID(uid).is_valid:
            raise InvalidRequest(f"{keyword} is not a valid UID (PS3.5 9.1)")
    if single and len(values) > 1:
        raise InvalidRequest(f"{keyword} above the Query/Retrieve level takes one value")
    return values


def retrieve_keys(identifier: Dataset, model: QueryModel) -> RetrieveKeys:
    """Read and check the unique keys of a C-MOVE/C-GET Identifier.

    The key of the Query/Retrieve Level (0008,0052) is required: Patient ID
    at PATIENT level, else a UID or a list of UIDs (PS3.4 C.4.2.2.1). Keys of
    the levels above narrow the match when present (hierarchical retrieve);
    an SCU that leaves them out, as some do, is served all the same.

    Raises
    ------
    InvalidRequest
        No or an unknown level for the model, the level's key missing or
        empty, a wildcard, a malformed UID, a list above the level (A900H:
        Identifier does not match SOP Class, PS3.4 C.4.2.1.4.1).
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS[model]:
        raise InvalidRequest(
            f"Query/Retrieve Level must be one of {', '.join(LEVELS[model])} for this model"
        )
    depth = ("PATIENT", "STUDY", "SERIES", "IMAGE").index(level)
    patient = _values(identifier, "PatientID")
    if len(patient) > 1:
        raise InvalidRequest("PatientID takes one value")
    if patient and any(c in patient[0] for c in "*?"):
        raise InvalidRequest("PatientID may not hold wildcards in a retrieve")
    issuer = _values(identifier, "IssuerOfPatientID")
    keys = RetrieveKeys(
        level=level,
        patient_id=patient[0] if patient else None,
        issuer_of_patient_id=issuer[0] if issuer else None,
        study_uids=_uids(identifier, "StudyInstanceUID", single=depth > 1) if depth >= 1 else (),
        series_uids=_uids(identifier, "SeriesInstanceUID", single=depth > 2) if depth >= 2 else (),
        sop_uids=_uids(identifier, "SOPInstanceUID", single=False) if depth >= 3 else (),
    )
    required = {
        "PATIENT": keys.patient_id,
        "STUDY": keys.study_uids,
        "SERIES": keys.series_uids,
        "IMAGE": keys.sop_uids,
    }[level]
    if not required:
        raise InvalidRequest(f"{UNIQUE_KEYS[level]} is required at {level} level")
    return keys


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    if not values:
        yield ()
        return
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


class RetrieveService:
    """Resolve retrieve requests against the index; read the stored blobs.

    Parameters
    ----------
    index
        The index (read through ``index.engine``).
    blobs
        The blob store holding each instance's Part-10 bytes as received.
    ae_title
        Our AE title: the Modifying System of the corrections applied.
    """

    def __init__(self, index: object, blobs: BlobStore, ae_title: str = "LIGHTBOX") -> None:
        self.index = index
        self.blobs = blobs
        self.ae_title = ae_title

    def resolve(self, identifier: Dataset, model: QueryModel) -> list[RetrieveItem]:
        """The instances an Identifier names, by study, series and instance number.

        Raises
        ------
        InvalidRequest
            See :func:`retrieve_keys`.
        OutOfResources
            The index could not be read (A701H: unable to calculate the
            number of matches).
        """
        return self.select(retrieve_keys(identifier, model))

    def select(self, keys: RetrieveKeys) -> list[RetrieveItem]:
        """The instances matching ``keys`` (every key given must match)."""
        query = (
            select(
                instances.c.sop_class_uid,
                instances.c.sop_instance_uid,
                instances.c.transfer_syntax_uid,
                instances.c.storage_key,
                instances.c.size,
                studies.c.study_instance_uid,
                series.c.series_instance_uid,
                patients.c.patient_id,
                instances.c.instance_number,
                instances.c.pk,
            )
            .join(series, instances.c.series_pk == series.c.pk)
            .join(studies, series.c.study_pk == studies.c.pk)
            .join(patients, studies.c.patient_pk == patients.c.pk)
        )
        if keys.patient_id is not None:
            query = query.where(patients.c.patient_id == keys.patient_id)
        if keys.issuer_of_patient_id is not None:
            query = query.where(patients.c.issuer_of_patient_id == keys.issuer_of_patient_id)
        if keys.study_uids and keys.level != "STUDY":
            query = query.where(studies.c.study_instance_uid.in_(keys.study_uids))
        if keys.series_uids and keys.level != "SERIES":
            query = query.where(series.c.series_instance_uid.in_(keys.series_uids))
        # The level's own key may be a long list: chunked over several queries.
        listed, column = {
            "PATIENT": ((), None),
            "STUDY": (keys.study_uids, studies.c.study_instance_uid),
            "SERIES": (keys.series_uids, series.c.series_instance_uid),
            "IMAGE": (keys.sop_uids, instances.c.sop_instance_uid),
        }[keys.level]
        rows = []
        try:
            with self.index.engine.connect() as conn:  # type: ignore[attr-defined]
                for chunk in _chunks(list(dict.fromkeys(listed))):
                    q = query.where(column.in_(chunk)) if column is not None else query
                    rows.extend(conn.execute(q).all())
        except Exception as exc:
            raise OutOfResources(f"index unavailable: {type(exc).__name__}") from None
        # One order whatever the chunks: study, series, then Instance Number
        # (those without one last) and arrival, so that a receiver gets each
        # series whole and in order.
        rows.sort(key=lambda r: (r[5], r[6], r[8] is None, r[8] or 0, r[9]))
        return [RetrieveItem(*row[:8]) for row in rows]

    def read(self, item: RetrieveItem) -> bytes:
        """The Part-10 bytes stored for ``item``, checked against the recorded size.

        Raises
        ------
        NotFound
            The blob is missing or not the size the index recorded.
        OutOfResources
            The blob store could not be read.
        """
        try:
            data = self.blobs.get(item.storage_key)
        except FileNotFoundError:
            raise NotFound("the stored blob is missing") from None
        except OSError as exc:
            raise OutOfResources(f"blob store read failed: {type(exc).__name__}") from None
        if len(data) != item.size:
            raise NotFound("the stored blob is not the size the index recorded")
        return data

    def reader(self) -> Callable[[RetrieveItem], bytes]:
        """:meth:`read` with the corrections of reconciliation applied, for one transfer.

        Each study's corrections are looked up once per transfer (one query
        for a study of any size); an instance of a study without corrections
        is the stored bytes unchanged.

        Raises (from the returned callable)
        ------
        NotFound, OutOfResources
            As :meth:`read`.
        """
        known: dict[str, Corrections | None] = {}

        def read(item: RetrieveItem) -> bytes:
            data = self.read(item)
            study = item.study_instance_uid
            if study not in known:
                try:
                    known[study] = corrections_for(self.index, study)
                except Exception as exc:
                    raise OutOfResources(f"index unavailable: {type(exc).__name__}") from None
            corrections = known[study]
            if corrections is None:
                return data
            return corrections.apply(data, modifying_system=self.ae_title)

        return read
