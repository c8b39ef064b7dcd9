"""Searches over 100,000 studies: QIDO-RS and C-FIND find exactly what was generated, fast.

The index is written once for the module by bulk inserts
(:mod:`benchmarks.index_fixture`, about 10-20 s on two cores); the searches
then go through the real application (TestClient) and a real association
(pynetdicom SCU against the DICOM server), and their counts are checked
against the generator. The query plans are checked too: each of these
searches is answered from an index, never by scanning a table.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT

from api.main import create_app
from benchmarks.index_fixture import GeneratedIndex, build_index
from pipeline.config import get_settings
from pipeline.ingest.scp import DicomIngestServer
from pipeline.query.scp import QueryRetrieveFindSCP
from pipeline.query.service import QueryService
from pipeline.runtime import Runtime, open_runtime
from pipeline.security.roles import Role
from tests.api.conftest import api_key_for, bearer
from tests.conftest import free_port

STUDIES = 100_000
STUDY_UID = "0020000D"


@dataclass
class Archive:
    generated: GeneratedIndex
    runtime: Runtime
    http: TestClient
    dicom: DicomIngestServer


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    data = Path(tmp_path_factory.mktemp("scale")) / "data"
    data.mkdir()
    settings = get_settings(data_dir=data, dicom_host="127.0.0.1", dicom_port=free_port(),
                            http_host="127.0.0.1", http_port=free_port(), ingest_actors=1)  # fmt: skip
    generated = build_index(settings.resolved_index_url, studies_count=STUDIES)
    runtime = open_runtime(settings, run_migrations=True)
    key = api_key_for(runtime, "scale-admin", Role.ADMINISTRATOR)
    find = QueryRetrieveFindSCP(QueryService(runtime.index), runtime.audit, settings.ae_title)
    server = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=[find]).start()
    try:
        with TestClient(create_app(settings, runtime), headers=bearer(key)) as http:
            yield Archive(generated, runtime, http, server)
    finally:
        server.stop()
        runtime.close()


def qido(archive: Archive, query: str) -> tuple[set[str], float]:
    """Every study of a QIDO-RS search (pages of 5,000), and the first page's time."""
    found: set[str] = set()
    first = 0.0
    offset = 0
    while True:
        started = time.perf_counter()
        response = archive.http.get(f"/dicom-web/studies?{query}&limit=5000&offset={offset}")
        first = first or time.perf_counter() - started
        assert response.status_code == 200, response.text
        page = response.json()
        found |= {s[STUDY_UID]["Value"][0] for s in page}
        if "warning" not in response.headers:
            return found, first
        offset += len(page)


def c_find(archive: Archive, **keys: str) -> tuple[set[str], float]:
    ae = AE(ae_title="SCALE")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", archive.dicom.port, ae_title=archive.dicom.settings.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    started = time.perf_counter()
    try:
        responses = list(assoc.send_c_find(identifier, STUDY_ROOT))
    finally:
        assoc.release()
    elapsed = time.perf_counter() - started
    assert responses[-1][0].Status == 0x0000
    return {str(ds.StudyInstanceUID) for status, ds in responses if status.Status == 0xFF00}, elapsed


def test_the_index_is_big(archive: Archive) -> None:
    counts = archive.runtime.index.counts()
    assert (counts.studies, counts.instances) == (STUDIES, STUDIES * 3)
    print(f"\ngenerated {STUDIES} studies in {archive.generated.seconds:.1f} s")


@pytest.mark.parametrize("patient", [0, 1234, 19_999])
def test_by_patient_id(archive: Archive, patient: int) -> None:
    g = archive.generated
    expected = set(g.studies_of_patient(patient))
    assert len(expected) == STUDIES // g.patients
    found, seconds = qido(archive, f"PatientID={g.patient_id(patient)}")
    assert found == expected
    assert c_find(archive, PatientID=g.patient_id(patient))[0] == expected
    print(f"\nQIDO PatientID: {seconds * 1000:.1f} ms")


@pytest.mark.parametrize("pattern", ["SMITH^J*", "w*^mar?", "*^JAMES"])
def test_by_patient_name_wildcard(archive: Archive, pattern: str) -> None:
    expected = set(archive.generated.studies_named(pattern))
    assert expected
    found, seconds = qido(archive, f"PatientName={pattern}")
    assert found == expected
    assert c_find(archive, PatientName=pattern)[0] == expected
    print(f"\nQIDO PatientName={pattern}: {len(found)} studies, first page {seconds * 1000:.1f} ms")


@pytest.mark.parametrize(("low", "high"), [("20200101", "20200131"), ("20150301", "20160229"),
                                          ("", "20100110"), ("20230901", "")])  # fmt: skip
def test_by_study_date_range(archive: Archive, low: str, high: str) -> None:
    expected = set(archive.generated.studies_between(low or "0", high or "99999999"))
    assert expected
    found, seconds = qido(archive, f"StudyDate={low}-{high}")
    assert found == expected
    dimse, find_seconds = c_find(archive, StudyDate=f"{low}-{high}")
    assert dimse == expected
    print(f"\nStudyDate={low}-{high}: {len(found)} studies, QIDO first page {seconds * 1000:.1f} ms, "
          f"C-FIND all {find_seconds * 1000:.1f} ms")  # fmt: skip


def test_pages_of_a_large_answer(archive: Archive) -> None:
    """A year of studies in pages of 1,000: each page is the next one, none lost or repeated."""
    expected = archive.generated.studies_between("20150301", "20160229")
    seen: list[str] = []
    offset = 0
    while True:
        response = archive.http.get(f"/dicom-web/studies?StudyDate=20150301-20160229&limit=1000&offset={offset}")
        page = [s[STUDY_UID]["Value"][0] for s in response.json()]
        seen += page
        if "warning" not in response.headers:
            break
        assert f"offset={offset + 1000}" in response.headers["warning"]
        offset += 1000
    assert len(seen) == len(set(seen)) == len(expected)
    assert set(seen) == set(expected)


def test_query_plans_use_indexes(archive: Archive) -> None:
    """SQLite's plan of each search: index searches only, never a scan of patients or studies."""
    service = QueryService(archive.runtime.index)
    engine = archive.runtime.index.engine
    for keys in ({"PatientID": "LBX0001234"}, {"PatientName": "SMITH^J*"},
                 {"StudyDate": "20200101-20200131"}, {"AccessionNumber": "A00012345"},
                 {"ReferringPhysicianName": "SMITH^JAMES^^DR"}):  # fmt: skip
        statement, _ = service._statement("STUDY", keys, "study", None, None, False)
        sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
        with engine.connect() as conn:
            plan = [row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
        assert not any(step.startswith("SCAN") for step in plan), (keys, plan)
        assert any("USING INDEX" in step for step in plan), (keys, plan)
