"""A small archive in the index, once per module and backend, for the query tests.

The rows are recorded through :meth:`SqlIndex.record_instance` (what ingest
does), from headers made here: no files. Names, dates and IDs are chosen to
exercise the matching rules (case, escaping of SQL wildcards, empty values,
ranges across a year end, multi-valued Modalities in Study).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import DuplicatePolicy
from pipeline.index import SqlIndex, migrate
from pipeline.index.records import (
    InstanceAttributes,
    ParsedHeader,
    PatientAttributes,
    Provenance,
    SeriesAttributes,
    StoredBlob,
    StudyAttributes,
)
from pipeline.storage.blobs import new_storage_key
from tests.pipeline.index.conftest import postgres_url, reset_postgres  # noqa: F401 (fixture)

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
ROOT = "1.2.826.0.1.3680043.8.498.77"

#: patient id -> (name, birth date, sex)
PATIENTS = {
    "PAT-1": ("Doe^Jane", "19700101", "F"),
    "PAT-2": ("DOE^JOHN^^", "19800505", "M"),
    "pat-3": ("Smith^Anna", "19900101", "F"),
    "PAT_4": ("O%Brien_^Sean", "", "M"),
    "PAT[5]": ("Müller^Jürgen", "20000229", "M"),
}

#: study number -> (patient id, date, time, accession, description, referring physician,
#: [(modality, sop class, series number, instances)])
STUDIES = {
    1: ("PAT-1", "20200115", "101500", "ACC-1", "CT Head", "Who^Doctor",
        [("CT", CT, 1, 3), ("SR", SR, 2, 1)]),
    2: ("PAT-1", "20201231", "235959.5", "ACC-2", "MR Knee", "Roe^Rick", [("MR", MR, 1, 2)]),
    3: ("PAT-2", "20210101", "080000", "ACC-3", "CT Chest", "", [("CT", CT, 5, 1)]),
    4: ("pat-3", "", "", "", "head ct", "WHO^DOCTOR^^", [("CT", CT, 1, 1)]),
    5: ("PAT_4", "20190601", "1230", "X_1", "100% done", "Roe^Rick", [("MR", MR, 7, 1)]),
    6: ("PAT[5]", "20221111", "120000", "ACC-6", "Knee*?", "", [("OT", CT, 1, 1)]),
}  # fmt: skip


def study_uid(n: int) -> str:
    return f"{ROOT}.{n}"


def series_uid(n: int, k: int) -> str:
    return f"{ROOT}.{n}.{k}"


def sop_uid(n: int, k: int, i: int) -> str:
    return f"{ROOT}.{n}.{k}.{i}"


def populate(index: SqlIndex) -> None:
    for n, (pid, date, time, accession, description, referring, series_list) in STUDIES.items():
        name, birth, sex = PATIENTS[pid]
        for k, (modality, sop_class, number, count) in enumerate(series_list, 1):
            for i in range(1, count + 1):
                header = ParsedHeader(
                    PatientAttributes(pid, "", name, birth, sex),
                    StudyAttributes(study_uid(n), date, time, accession, f"S{n}", description, referring),
                    SeriesAttributes(series_uid(n, k), modality, number, f"{modality} series",
                                     date, time, "HEAD" if modality == "CT" else ""),
                    InstanceAttributes(sop_uid(n, k, i), sop_class, i,
                                       512 if sop_class != SR else None,
                                       512 if sop_class != SR else None,
                                       1 if sop_class != SR else None,
                                       16 if sop_class != SR else None,
                                       "MONOCHROME2" if sop_class != SR else "",
                                       date, time, sop_class != SR),
                )  # fmt: skip
                key = new_storage_key()
                blob = StoredBlob(key, 100, hashlib.sha256(key.encode()).hexdigest(), "1.2.840.10008.1.2.1")
                index.record_instance(header, blob, Provenance("import"), DuplicatePolicy.KEEP)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlIndex]:
    """The archive of :data:`STUDIES` in a fresh index (SQLite, then PostgreSQL)."""
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('query')) / 'index.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
        reset_postgres(url)
    migrate(url)
    index = SqlIndex(url)
    populate(index)
    yield index
    index.close()
