"""Micro-benchmarks of study searches at 100,000 studies: QIDO-RS, C-FIND and the engine alone.

The index is generated once for the module (:mod:`benchmarks.index_fixture`:
100,000 studies of 3 instances, 20,000 patients, bulk inserts, ~10-20 s).

* ``qido``: ``GET /dicom-web/studies`` through the whole application
  (authentication, audit, DICOM JSON) in-process with Starlette's TestClient,
  by PatientID (5 studies), PatientName wildcard (``SMITH^J*``, 300 studies),
  StudyDate range of a month (620 studies) in full and as a first page of 101
  (what OHIF's study list asks);
* ``c-find``: Study Root STUDY-level C-FIND over one open association
  (pynetdicom SCU and SCP in this process, over 127.0.0.1): the same searches;
  the time is until the final Success;
* ``service``: :meth:`QueryService.search` alone (SQL and row dicts).

    pytest benchmarks/test_query_bench.py -p no:cacheprovider --benchmark-only

``LIGHTBOX_BENCH_STUDIES`` (default 100000) sizes the index.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from pipeline.security.accounts import API_KEY
from pipeline.security.roles import Role

STUDIES = int(os.environ.get("LIGHTBOX_BENCH_STUDIES", "100000"))
SEARCHES = {
    "PatientID": lambda g, n: {"PatientID": g.patient_id(n % g.patients)},
    "PatientName wildcard": lambda g, n: {"PatientName": "SMITH^J*"},
    "StudyDate month": lambda g, n: {"StudyDate": "20200101-20200131"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GeneratedIndex, Runtime, TestClient, DicomIngestServer]]:
    data = Path(tmp_path_factory.mktemp("query-bench")) / "data"
    data.mkdir()
    settings = get_settings(data_dir=data, dicom_host="127.0.0.1", dicom_port=_free_port(), ingest_actors=1)
    generated = build_index(settings.resolved_index_url, studies_count=STUDIES)
    runtime = open_runtime(settings, run_migrations=True)
    account = runtime.accounts.create_user("bench", Role.ADMINISTRATOR)
    key = runtime.accounts.issue(account, API_KEY, name="bench").secret
    find = QueryRetrieveFindSCP(QueryService(runtime.index), runtime.audit, settings.ae_title)
    server = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=[find]).start()
    try:
        with TestClient(create_app(settings, runtime), headers={"Authorization": f"Bearer {key}"}) as http:
            yield generated, runtime, http, server
    finally:
        server.stop()
        runtime.close()


@pytest.mark.parametrize("search", list(SEARCHES))
def test_qido_studies(benchmark, archive, search: str) -> None:  # type: ignore[no-untyped-def]
    generated, _runtime, http, _server = archive
    benchmark.group = f"qido studies at {STUDIES} studies"
    counter = itertools.count()

    def get() -> int:
        keys = SEARCHES[search](generated, next(counter) * 7919)
        response = http.get("/dicom-web/studies", params=keys)
        assert response.status_code == 200
        return len(response.json())

    found = benchmark(get)
    benchmark.extra_info["studies_per_answer"] = found
    assert found > 0


def test_qido_studies_first_page(benchmark, archive) -> None:  # type: ignore[no-untyped-def]
    """A month of studies, first page of 101 (a viewer's study list)."""
    _generated, _runtime, http, _server = archive
    benchmark.group = f"qido studies at {STUDIES} studies"
    response = benchmark(http.get, "/dicom-web/studies", params={"StudyDate": "20200101-20200131", "limit": 101})
    assert len(response.json()) == 101 and "warning" in response.headers


@pytest.fixture(scope="module")
def association(archive) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    _generated, _runtime, _http, server = archive
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.settings.ae_title)
    assert assoc.is_established
    # A C-FIND-RQ is two PDUs (command, identifier): with Nagle on the SCU's
    # socket the second waits for the server's delayed ACK (~40 ms), which is
    # the client's stall, not the search's (FIELD-NOTES: dcmtk needs TCP_NODELAY=1).
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield assoc
    assoc.release()


@pytest.mark.parametrize("search", list(SEARCHES))
def test_c_find_studies(benchmark, archive, association, search: str) -> None:  # type: ignore[no-untyped-def]
    generated = archive[0]
    benchmark.group = f"c-find studies at {STUDIES} studies"
    counter = itertools.count()

    def find() -> int:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        identifier.StudyDate = ""
        identifier.PatientName = ""
        for keyword, value in SEARCHES[search](generated, next(counter) * 7919).items():
            setattr(identifier, keyword, value)
        responses = list(association.send_c_find(identifier, STUDY_ROOT))
        assert responses[-1][0].Status == 0x0000
        return len(responses) - 1

    found = benchmark(find)
    benchmark.extra_info["studies_per_answer"] = found
    assert found > 0


@pytest.mark.parametrize("search", list(SEARCHES))
def test_service_search_studies(benchmark, archive, search: str) -> None:  # type: ignore[no-untyped-def]
    generated, runtime, _http, _server = archive
    benchmark.group = f"service studies at {STUDIES} studies"
    service = QueryService(runtime.index)
    counter = itertools.count()
    rows = benchmark(lambda: service.search("STUDY", SEARCHES[search](generated, next(counter) * 7919)))
    assert rows
