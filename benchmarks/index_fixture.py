"""A large generated index, written with bulk inserts: for query tests and benchmarks.

:func:`build_index` migrates a fresh database and fills patients, studies,
series and instances directly (``executemany`` in one transaction, no files,
no ingest path), deterministically: study ``j`` belongs to patient
``j % patients``, has one series of ``instances_per_study`` instances, a
Study Date spread over 2010-2023 and one of five modalities. The functions of
:class:`GeneratedIndex` say what a search must find (PatientID, a PatientName
wildcard, a StudyDate range), so a test can check counts against what was
generated.

100,000 studies of 3 instances (20,000 patients) take about 10-20 s on two
cores (SQLite, WAL).

Command line::

    python -m benchmarks.index_fixture OUT.sqlite [--studies 100000] [--patients 20000] [--instances 3]
"""

from __future__ import annotations

import argparse
import fnmatch
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import insert

from pipeline.index import migrate
from pipeline.index.records import person_name_key
from pipeline.index.schema import PixelState, instances, patients, series, studies
from pipeline.index.sql import make_engine

UID_ROOT = "1.2.826.0.1.3680043.8.498.424242"
SURNAMES = (
    "SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS", "RODRIGUEZ",
    "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON", "THOMAS", "TAYLOR",
    "MOORE", "JACKSON", "MARTIN", "LEE", "PEREZ", "THOMPSON", "WHITE", "HARRIS", "SANCHEZ",
    "CLARK", "RAMIREZ", "LEWIS", "ROBINSON", "WALKER", "YOUNG", "ALLEN", "KING", "WRIGHT",
    "SCOTT", "TORRES", "NGUYEN", "HILL", "FLORES", "GREEN", "ADAMS", "NELSON", "BAKER", "HALL",
    "RIVERA", "CAMPBELL", "MITCHELL", "CARTER", "ROBERTS",
)  # fmt: skip
GIVEN = (
    "JAMES", "MARY", "ROBERT", "PATRICIA", "JOHN", "JENNIFER", "MICHAEL", "LINDA", "DAVID",
    "ELIZABETH", "WILLIAM", "BARBARA", "RICHARD", "SUSAN", "JOSEPH", "JESSICA", "THOMAS",
    "SARAH", "CHARLES", "KAREN", "CHRISTOPHER", "LISA", "DANIEL", "NANCY", "MATTHEW", "BETTY",
    "ANTHONY", "MARGARET", "MARK", "SANDRA", "DONALD", "ASHLEY", "STEVEN", "KIMBERLY", "PAUL",
    "EMILY", "ANDREW", "DONNA", "JOSHUA", "MICHELLE",
)  # fmt: skip
MODALITIES = ("CT", "MR", "CR", "US", "DX")
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
}
REFERRERS = tuple(f"{s}^{g}^^DR" for s, g in zip(SURNAMES[::5], GIVEN[::4]))
FIRST_DAY = date(2010, 1, 1)
DAYS = 5000  # 2010-01-01 .. 2023-09-09
_CHUNK = 20_000


@dataclass(frozen=True)
class GeneratedIndex:
    """What :func:`build_index` wrote, and what searches must find in it."""

    url: str
    studies: int
    patients: int
    instances_per_study: int
    seconds: float

    # -- the generated values -------------------------------------------------------

    @staticmethod
    def patient_id(i: int) -> str:
        return f"LBX{i:07d}"

    @staticmethod
    def patient_name(i: int) -> str:
        return f"{SURNAMES[i % len(SURNAMES)]}^{GIVEN[(i // len(SURNAMES)) % len(GIVEN)]}"

    def patient_of(self, j: int) -> int:
        return j % self.patients

    @staticmethod
    def study_uid(j: int) -> str:
        return f"{UID_ROOT}.1.{j}"

    @staticmethod
    def study_date(j: int) -> str:
        return (FIRST_DAY + timedelta(days=(j * 7919) % DAYS)).strftime("%Y%m%d")

    @staticmethod
    def modality(j: int) -> str:
        return MODALITIES[j % len(MODALITIES)]

    # -- expectations -----------------------------------------------------------------

    def studies_of_patient(self, i: int) -> list[str]:
        return [self.study_uid(j) for j in range(i, self.studies, self.patients)]

    def studies_named(self, pattern: str) -> list[str]:
        """Studies whose patient's name matches a DICOM wildcard (without case)."""
        names = {i for i in range(self.patients)
                 if fnmatch.fnmatchcase(self.patient_name(i), pattern.upper())}  # fmt: skip
        return [self.study_uid(j) for j in range(self.studies) if self.patient_of(j) in names]

    def studies_between(self, low: str, high: str) -> list[str]:
        return [self.study_uid(j) for j in range(self.studies) if low <= self.study_date(j) <= high]


def build_index(
    url: str, *, studies_count: int = 100_000, patients_count: int = 20_000, instances_per_study: int = 3
) -> GeneratedIndex:
    """Migrate ``url`` (an empty database) and fill it; see the module docstring."""
    started = time.perf_counter()
    migrate(url)
    generated = GeneratedIndex(url, studies_count, patients_count, instances_per_study, 0.0)
    engine = make_engine(url)
    now = datetime(2024, 1, 1, tzinfo=timezone.utc)
    try:
        with engine.begin() as conn:
            for rows in _chunks(_patients(generated, now)):
                conn.execute(insert(patients), rows)
            for rows in _chunks(_studies(generated, now)):
                conn.execute(insert(studies), rows)
            for rows in _chunks(_series(generated, now)):
                conn.execute(insert(series), rows)
            for rows in _chunks(_instances(generated, now)):
                conn.execute(insert(instances), rows)
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                # Fold the WAL into the database file: the first queries then
                # read one file, as a server that has been running would.
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return GeneratedIndex(url, studies_count, patients_count, instances_per_study,
                          time.perf_counter() - started)  # fmt: skip


def _chunks(rows: Iterator[dict[str, object]]) -> Iterator[list[dict[str, object]]]:
    chunk: list[dict[str, object]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _patients(g: GeneratedIndex, now: datetime) -> Iterator[dict[str, object]]:
    for i in range(g.patients):
        name = g.patient_name(i)
        yield {
            "pk": i + 1, "patient_id": g.patient_id(i), "issuer_of_patient_id": "",
            "patient_name": name, "patient_name_search": name.upper(),
            "patient_birth_date": (date(1930, 1, 1) + timedelta(days=(i * 37) % 30000)).strftime("%Y%m%d"),
            "patient_sex": "MF"[i % 2], "created_at": now,
        }  # fmt: skip


def _studies(g: GeneratedIndex, now: datetime) -> Iterator[dict[str, object]]:
    for j in range(g.studies):
        referrer = REFERRERS[j % len(REFERRERS)]
        yield {
            "pk": j + 1, "study_instance_uid": g.study_uid(j), "patient_pk": g.patient_of(j) + 1,
            "study_date": g.study_date(j), "study_time": f"{(j * 13) % 24:02d}{(j * 7) % 60:02d}00",
            "accession_number": f"A{j:08d}", "study_id": str(j % 10000),
            "study_description": f"{g.modality(j)} study", "referring_physician_name": referrer,
            "referring_physician_search": person_name_key(referrer),
            "modalities_in_study": g.modality(j), "number_of_series": 1,
            "number_of_instances": g.instances_per_study, "created_at": now, "updated_at": now,
        }  # fmt: skip


def _series(g: GeneratedIndex, now: datetime) -> Iterator[dict[str, object]]:
    for j in range(g.studies):
        yield {
            "pk": j + 1, "series_instance_uid": f"{UID_ROOT}.2.{j}.1", "study_pk": j + 1,
            "modality": g.modality(j), "series_number": 1, "series_description": "",
            "series_date": g.study_date(j), "series_time": "", "body_part_examined": "",
            "performed_procedure_step_start_date": "", "performed_procedure_step_start_time": "",
            "number_of_instances": g.instances_per_study, "created_at": now, "updated_at": now,
        }  # fmt: skip


def _instances(g: GeneratedIndex, now: datetime) -> Iterator[dict[str, object]]:
    pk = 0
    for j in range(g.studies):
        sop_class = SOP_CLASSES[g.modality(j)]
        for n in range(1, g.instances_per_study + 1):
            pk += 1
            yield {
                "pk": pk, "sop_instance_uid": f"{UID_ROOT}.3.{j}.1.{n}", "series_pk": j + 1,
                "sop_class_uid": sop_class, "instance_number": n,
                "transfer_syntax_uid": "1.2.840.10008.1.2.1", "rows": 512, "columns": 512,
                "number_of_frames": 1, "bits_allocated": 16, "photometric_interpretation": "MONOCHROME2",
                "content_date": g.study_date(j), "content_time": "", "size": 526000,
                "sha256": f"{pk:064x}", "storage_key": f"generated/{pk:09d}", "received_at": now,
                "calling_ae": "GENERATOR", "source": "import", "pixel_state": PixelState.NONE,
                "pixel_error": None,
            }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the SQLite file to create")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=20_000)
    parser.add_argument("--instances", type=int, default=3)
    args = parser.parse_args()
    built = build_index(f"sqlite:///{args.out}", studies_count=args.studies,
                        patients_count=args.patients, instances_per_study=args.instances)  # fmt: skip
    print(f"{built.studies} studies, {built.studies * built.instances_per_study} instances "
          f"in {built.seconds:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
