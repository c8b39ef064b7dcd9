"""GET /api/waiting-list: every order and stored study with its workflow state.

A department's morning, built with the real services: orders registered,
MPPS N-CREATE/N-SET through the performed-step service, corpus CT slices
stored through the runtime's ingest and linked by its reconciliation thread.
Proven: an order goes scheduled -> in_progress (MPPS IN PROGRESS) and its
study in_progress (images arriving) -> acquired (MPPS COMPLETED); a
uni-directional device's study is acquired once linked, an unlinked one
unmatched; the filters, sort keys, paging and total; who may read it, and a
referring physician's scope.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from api.main import create_app
from pipeline.config import Settings
from pipeline.index.records import Provenance
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from pipeline.worklist.performed import PerformedProcedureSteps
from pipeline.worklist.registration import Order
from tests.api.conftest import api_key_for, bearer
from tests.corpus import SERIES
from tests.pipeline.security.test_tls import audit_rows
from tests.pipeline.worklist.test_mpps import final, in_progress
from tests.pipeline.worklist.test_reconcile import order, part10, register


@dataclass
class Morning:
    runtime: Runtime
    slices: list[Path]
    scheduled: Order  # Jane, CT on the 4th, nothing done yet
    running: Order  # John, MR on the 5th, MPPS IN PROGRESS, no images yet
    pushed: Order  # Jane, CT on the 2nd, a uni-directional device's study, no MPPS
    running_step: str  # its MPPS
    walk_in: str = ""  # a study no order matches
    pushed_study: str = ""

    def store(self, i: int, study: str, **attrs: str) -> str:
        self.runtime.ingest.store_part10(part10(self.slices[i], study, **attrs), Provenance("import"))
        assert self.runtime.ingest.linker is not None and self.runtime.ingest.linker.drain()
        return study


@pytest.fixture
def morning(runtime: Runtime, dicom_data: Path) -> Morning:
    reg = runtime.registration
    jane, john = register(reg), register(reg, "REG-2", patient_name="Roe^John", patient_sex="M")
    scheduled = order(reg, jane, start=datetime(2026, 12, 4, 9, 30), referring_physician_name="Ref^Rita")
    running = order(reg, john, "MR", datetime(2026, 12, 5, 10, 0), referring_physician_name="Other^Olga")
    pushed = order(reg, jane, start=datetime(2026, 12, 2, 8, 0), referring_physician_name="Ref^Rita",
                   accession_number="ACC-P")  # fmt: skip
    step = generate_uid()
    PerformedProcedureSteps(runtime.index).create(step, in_progress(running, Modality="MR"), calling_ae="MR01")
    m = Morning(runtime, sorted((dicom_data / SERIES["ct"]).iterdir())[:4], scheduled, running, pushed, step)
    m.pushed_study = m.store(0, generate_uid(), AccessionNumber="ACC-P", StudyDate="20261202")
    m.walk_in = m.store(1, generate_uid(), PatientID="WALK-IN", PatientName="Smith^J", StudyDate="20261201",
                        ReferringPhysicianName="Who^Ever")  # fmt: skip
    return m


def rows(client: TestClient, query: str = "") -> tuple[int, list[tuple[str, str]]]:
    """(total, [(state, study uid)]) of a page."""
    answer = client.get(f"/api/waiting-list?{query}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return body["total"], [(e["state"], e["study_instance_uid"]) for e in body["items"]]


def uids(client: TestClient, query: str = "") -> list[str]:
    return [uid for _, uid in rows(client, query)[1]]


def test_states_follow_the_workflow(morning: Morning, client: TestClient) -> None:
    m = morning
    sched, run = m.scheduled.procedures[0].study_instance_uid, m.running.procedures[0].study_instance_uid
    # Newest date first: the 5th, 4th, 2nd, 1st.
    assert rows(client) == (4, [("in_progress", run), ("scheduled", sched), ("acquired", m.pushed_study),
                                ("unmatched", m.walk_in)])  # fmt: skip
    entry = next(e for e in client.get("/api/waiting-list").json()["items"] if e["study_instance_uid"] == m.pushed_study)
    # The linked study is shown with the registration's patient and order.
    assert (entry["order_id"], entry["patient_id"], entry["patient_name"], entry["accession_number"]) == (
        m.pushed.id, "REG-1", "Doe^Jane", "ACC-P")  # fmt: skip
    assert (entry["modality"], entry["date"], entry["number_of_instances"]) == ("CT", "20261202", 1)

    # The scheduled order: MPPS IN PROGRESS, then its images, then MPPS COMPLETED.
    mpps = PerformedProcedureSteps(m.runtime.index)
    step = generate_uid()
    mpps.create(step, in_progress(m.scheduled), calling_ae="CT01")
    assert ("in_progress", sched) in rows(client, "state=in_progress")[1]
    m.store(2, sched, PatientID="REG-1", StudyDate="20261204")
    m.store(3, sched, PatientID="REG-1", StudyDate="20261204")
    entry = next(e for e in client.get("/api/waiting-list?state=in_progress").json()["items"]
                 if e["study_instance_uid"] == sched)  # fmt: skip
    # One entry, now the study's: images arriving while the step runs.
    assert (entry["order_id"], entry["number_of_instances"]) == (m.scheduled.id, 2)
    assert uids(client).count(sched) == 1
    mpps.set(step, final("COMPLETED"), calling_ae="CT01")
    assert rows(client, "state=acquired") == (2, [("acquired", sched), ("acquired", m.pushed_study)])
    assert rows(client, "state=scheduled") == (0, [])
    # An order completed without images yet is still in progress (they are on their way).
    mpps.set(m.running_step, final("COMPLETED"), calling_ae="MR01")
    assert m.runtime.registration.get_order(m.running.id).state.value == "COMPLETED"
    assert rows(client, "state=in_progress") == (1, [("in_progress", run)])


def test_filters(morning: Morning, client: TestClient) -> None:
    m = morning
    sched, run = m.scheduled.procedures[0].study_instance_uid, m.running.procedures[0].study_instance_uid
    assert uids(client, "state=unmatched&state=scheduled") == [sched, m.walk_in]
    assert uids(client, "modality=MR") == [run]
    assert uids(client, "modality=ct") == [sched, m.pushed_study, m.walk_in]
    assert uids(client, "modality=C") == []  # a whole value, not a part of one
    assert uids(client, "patient=REG-1") == [sched, m.pushed_study]
    assert uids(client, "patient=doe") == [sched, m.pushed_study]  # name prefix, any case
    assert uids(client, "patient=smith%5Ej") == [m.walk_in]
    assert uids(client, "patient=REG") == []  # an ID matches whole
    assert uids(client, "referring_physician=other") == [run]
    assert uids(client, "referring_physician=REF%5ERITA") == [sched, m.pushed_study]
    assert uids(client, "date_from=2026-12-02&date_to=2026-12-04") == [sched, m.pushed_study]
    assert uids(client, "date_from=2026-12-05") == [run]
    assert uids(client, "date_to=2026-12-01") == [m.walk_in]
    assert uids(client, "patient=doe&modality=CT&date_from=2026-12-03") == [sched]
    for bad in ("state=done", "date_from=2026-13-01", "modality=C%25", "limit=0", "limit=1001", "offset=-1"):
        assert client.get(f"/api/waiting-list?{bad}").status_code == 422, bad


def test_sorting_and_paging(morning: Morning, client: TestClient) -> None:
    m = morning
    sched, run = m.scheduled.procedures[0].study_instance_uid, m.running.procedures[0].study_instance_uid
    assert uids(client, "order=asc") == [m.walk_in, m.pushed_study, sched, run]
    assert uids(client, "sort=modality&order=asc") == [sched, m.pushed_study, m.walk_in, run]
    assert uids(client, "sort=modality")[0] == run
    # Workflow order: scheduled, in_progress, acquired, unmatched.
    assert [s for s, _ in rows(client, "sort=state&order=asc")[1]] == ["scheduled", "in_progress", "acquired", "unmatched"]
    assert [s for s, _ in rows(client, "sort=state")[1]] == ["unmatched", "acquired", "in_progress", "scheduled"]
    assert uids(client, "sort=patient&order=asc") == [sched, m.pushed_study, run, m.walk_in]  # DOE, DOE, ROE, SMITH
    assert uids(client, "sort=referring_physician&order=asc") == [run, sched, m.pushed_study, m.walk_in]
    answer = client.get("/api/waiting-list?sort=name")
    assert answer.status_code == 422 and "sort" in json.dumps(answer.json()["detail"])
    pages = [rows(client, f"limit=3&offset={o}") for o in (0, 3, 6)]
    assert [total for total, _ in pages] == [4, 4, 4]
    assert [uid for _, page in pages for _, uid in page] == uids(client)
    assert pages[2][1] == []
    body = client.get("/api/waiting-list?limit=2&offset=1").json()
    assert (body["limit"], body["offset"], len(body["items"])) == (2, 1, 2)


def test_who_may_read_it(morning: Morning, app: FastAPI, anonymous: TestClient, runtime: Runtime) -> None:
    sched = morning.scheduled.procedures[0].study_instance_uid
    for role in (Role.RADIOLOGIST, Role.TECHNOLOGIST):
        with TestClient(app, headers=bearer(api_key_for(runtime, role.value, role))) as reader:
            assert rows(reader)[0] == 4
    assert anonymous.get("/api/waiting-list").status_code == 401
    # A referring physician sees the entries naming them, whatever they filter on.
    rita = api_key_for(runtime, "rita", Role.REFERRING_PHYSICIAN, referring_physician_name="REF^RITA^^")
    with TestClient(app, headers=bearer(rita)) as referring:
        assert uids(referring) == [sched, morning.pushed_study]
        assert uids(referring, "referring_physician=other") == [] and rows(referring, "limit=1")[0] == 2
    nameless = api_key_for(runtime, "nameless", Role.REFERRING_PHYSICIAN)
    with TestClient(app, headers=bearer(nameless)) as referring:
        assert rows(referring) == (0, [])  # no name: nothing, not the entries without one
    queries = [json.loads(r["detail"]) for r in audit_rows(runtime, event_id="110112", actor="rita")]  # type: ignore[arg-type]
    assert {"list": "waiting", "filters": ["referring_physician"], "matches": 0} in queries


@pytest.fixture
def open_app(settings: Settings, runtime: Runtime) -> Iterator[FastAPI]:
    yield create_app(settings.model_copy(update={"referring_own_studies_only": False}), runtime)


def test_referring_physicians_see_everything_when_configured(morning: Morning, open_app: FastAPI,
                                                             runtime: Runtime) -> None:  # fmt: skip
    rita = api_key_for(runtime, "rita", Role.REFERRING_PHYSICIAN, referring_physician_name="Ref^Rita")
    with TestClient(open_app, headers=bearer(rita)) as referring:
        assert rows(referring)[0] == 4
