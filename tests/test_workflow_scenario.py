"""The bi-directional workflow of IHE Scheduled Workflow (RAD TF-1 4), end to end, on one server.

One modality (``CT01``, registered by an administrator as a bi-directional
device) lives a whole acquisition against the DICOM server the ingest actors
run (:func:`pipeline.ingest.actors.build_dicom_server`), with the HTTP API of
:func:`api.main.create_app` on the same runtime:

1. a technologist registers the patient and a CT order over ``/api/patients``
   and ``/api/orders`` (RAD-1/RAD-4); the Waiting list says "scheduled";
2. dcmtk's ``findscu -W`` asks the Modality Worklist for the station's steps
   (RAD-5) and gets the order's patient, Accession Number and Study Instance UID;
3. pynetdicom reports MPPS IN PROGRESS (RAD-6): the order and the Waiting
   list say in progress;
4. dcmtk's ``storescu`` sends three CT images made from the worklist answer
   (patient keys, Accession Number, Study Instance UID, Referenced Study and
   Referenced Performed Procedure Step, RAD TF-2 4.8.4.1.3; the modality's
   messages are those of ``lightbox demo``, :mod:`pipeline.worklist.demo`) (RAD-8); the
   study is linked to the order and is still in progress;
5. pynetdicom asks for Storage Commitment (N-ACTION, RAD-10) and receives
   the N-EVENT-REPORT naming all three images as committed;
6. pynetdicom reports MPPS COMPLETED with the series (RAD-7);
7. ``GET /api/waiting-list`` shows the study as "acquired", linked to the
   order, with three instances, and the audit trail lists every step with
   who did it.

A second test proves the device policy on the same server: a uni-directional
device is refused the worklist (and MPPS) with 0124H but may store; its
study, with no order behind it, is unmatched.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

from api.main import create_app
from pipeline.config import Settings
from pipeline.ingest.actors import build_dicom_server
from pipeline.ingest.scp import DicomIngestServer
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from pipeline.worklist.demo import make_study, mpps_completed, mpps_in_progress
from pipeline.worklist.mpps import MPPS
from pipeline.worklist.mwl import MWL_FIND
from pipeline.worklist.waitinglist import WaitingList, WorkflowState
from tests.api.conftest import api_key_for, bearer
from tests.conftest import require_tool
from tests.pipeline.security.test_tls import DCMTK_ENV, wait_for
from tests.pipeline.worklist.test_mwl import RAD5, findscu_w, step_keys

#: The modality: a bi-directional device in the registry (the AE title ``findscu_w`` calls with).
MODALITY = "CT01"
#: Storage Commitment Push Model SOP Instance (PS3.4 J.3.5, well-known).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: Detached Study Management SOP Class (retired), the Referenced Study Sequence's class (PS3.3 C.4.10).
DAY = "20301115"


@pytest.fixture
def server(runtime: Runtime) -> Iterator[DicomIngestServer]:
    """The DICOM server of ``lightbox serve``: every service, behind the device policy."""
    srv = build_dicom_server(runtime).start()
    yield srv
    srv.stop()


@pytest.fixture
def admin(settings: Settings, runtime: Runtime) -> Iterator[TestClient]:
    key = api_key_for(runtime, "admin-ada", Role.ADMINISTRATOR)
    with TestClient(create_app(settings, runtime), headers=bearer(key)) as client:
        yield client


@pytest.fixture
def technologist(settings: Settings, runtime: Runtime) -> Iterator[TestClient]:
    key = api_key_for(runtime, "tech-tom", Role.TECHNOLOGIST)
    with TestClient(create_app(settings, runtime), headers=bearer(key)) as client:
        yield client


def associate(settings: Settings, ae_title: str, *contexts: str, **kwargs: Any) -> Association:
    ae = AE(ae_title=ae_title)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title, **kwargs)
    assert assoc.is_established
    return assoc


def waiting(client: TestClient, patient_id: str) -> list[dict[str, Any]]:
    answer = client.get("/api/waiting-list", params={"patient": patient_id})
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]


def test_register_worklist_mpps_store_commit_complete_acquired(
    server: DicomIngestServer,
    admin: TestClient,
    technologist: TestClient,
    runtime: Runtime,
    settings: Settings,
    tmp_path: Path,
) -> None:
    began = datetime.now(timezone.utc)
    device = admin.post("/api/devices", json={"ae_title": MODALITY, "setup": "bi-directional",
                                             "description": "CT room 1"})  # fmt: skip
    assert device.status_code == 201, device.text
    assert {"worklist", "mpps", "store", "commitment"} <= set(device.json()["allowed_services"])

    # 1. Registration (RAD-1, RAD-4), by a technologist over HTTP.
    patient = technologist.post("/api/patients", json={
        "patient_id": "WF-1", "issuer_of_patient_id": "HOSP", "patient_name": "Flow^Wendy",
        "patient_birth_date": "1975-02-03", "patient_sex": "F",
    })  # fmt: skip
    assert patient.status_code == 201, patient.text
    order = technologist.post("/api/orders", json={
        "patient": patient.json()["patient"]["id"],
        "referring_physician_name": "Ref^Rita",
        "procedures": [{"modality": "CT", "scheduled_start": "2030-11-15T09:30:00",
                        "description": "CT chest", "station_ae_title": MODALITY,
                        "station_name": "CT ROOM 1"}],
    })  # fmt: skip
    assert order.status_code == 201, order.text
    order_id, accession = order.json()["id"], order.json()["accession_number"]
    procedure = order.json()["procedures"][0]
    (entry,) = waiting(technologist, "WF-1")
    assert (entry["state"], entry["order_id"], entry["study_instance_uid"]) == (
        "scheduled", order_id, procedure["study_instance_uid"])  # fmt: skip

    # 2. The Modality Worklist (RAD-5) with dcmtk: the station's CT steps of the day.
    (item,) = findscu_w(
        settings, tmp_path / "mwl", *RAD5,
        *step_keys(ScheduledStationAETitle=MODALITY, ScheduledProcedureStepStartDate=DAY, Modality="CT"),
    )  # fmt: skip
    assert (str(item.PatientName), item.PatientID, item.IssuerOfPatientID) == ("Flow^Wendy", "WF-1", "HOSP")
    assert (item.AccessionNumber, item.StudyInstanceUID) == (accession, procedure["study_instance_uid"])
    assert item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID == procedure["steps"][0]["sps_id"]

    # 3. MPPS IN PROGRESS (RAD-6).
    mpps_uid = generate_uid()
    assoc = associate(settings, MODALITY, MPPS)
    try:
        status, attributes = assoc.send_n_create(mpps_in_progress(item, MODALITY, datetime.now()), MPPS, mpps_uid)
        assert status.Status == 0x0000
        assert attributes is not None and attributes.PerformedProcedureStepStatus == "IN PROGRESS"
    finally:
        assoc.release()
    in_progress = technologist.get(f"/api/orders/{order_id}").json()
    assert in_progress["state"] == "IN_PROGRESS"
    assert in_progress["procedures"][0]["steps"][0]["status"] == "STARTED"
    assert [e["state"] for e in waiting(technologist, "WF-1")] == ["in_progress"]

    # 4. The images (RAD-8) with dcmtk's storescu.
    images = make_study(item, slices=3, size=32, performed_step_uid=mpps_uid)
    files = []
    for n, image in enumerate(images):
        files.append(tmp_path / f"ct{n}.dcm")
        image.save_as(files[-1], enforce_file_format=True)
    sent = subprocess.run(
        [require_tool("storescu"), "-aet", MODALITY, "-aec", settings.ae_title,
         "127.0.0.1", str(settings.dicom_port), *map(str, files)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    assert runtime.ingest.linker is not None and runtime.ingest.linker.drain(30)
    (entry,) = waiting(technologist, "WF-1")
    assert (entry["state"], entry["order_id"], entry["study_instance_uid"]) == (
        "in_progress", order_id, item.StudyInstanceUID)  # fmt: skip

    # 5. Storage Commitment (RAD-10): the report comes on the same association.
    reports: list[tuple[int, Dataset]] = []
    arrived = threading.Event()

    def on_report(event: evt.Event) -> tuple[int, None]:
        reports.append((int(event.event_type), event.event_information))
        arrived.set()
        return 0x0000, None

    transaction = generate_uid()
    commit = Dataset()
    commit.TransactionUID = transaction
    commit.ReferencedSOPSequence = []
    for image in images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = image.SOPClassUID
        ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
        commit.ReferencedSOPSequence.append(ref)
    assoc = associate(
        settings, MODALITY, StorageCommitmentPushModel,
        ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)],
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )  # fmt: skip
    try:
        status, _ = assoc.send_n_action(commit, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)
        assert status.Status == 0x0000
        assert arrived.wait(30), "no N-EVENT-REPORT"
    finally:
        assoc.release()
    ((event_type, report),) = reports
    assert event_type == 1  # all committed (PS3.4 J.3.3)
    assert report.TransactionUID == transaction
    assert sorted(r.ReferencedSOPInstanceUID for r in report.ReferencedSOPSequence) == sorted(
        i.SOPInstanceUID for i in images
    )
    assert "FailedSOPSequence" not in report or len(report.FailedSOPSequence) == 0

    # 6. MPPS COMPLETED (RAD-7).
    assoc = associate(settings, MODALITY, MPPS)
    try:
        status, _ = assoc.send_n_set(mpps_completed(images, datetime.now()), MPPS, mpps_uid)
        assert status.Status == 0x0000
    finally:
        assoc.release()

    # 7. The Waiting list: acquired, linked, three instances; the order is completed.
    (entry,) = waiting(technologist, "WF-1")
    assert entry["state"] == "acquired"
    assert (entry["order_id"], entry["accession_number"], entry["study_instance_uid"]) == (
        order_id, accession, item.StudyInstanceUID)  # fmt: skip
    assert (entry["number_of_instances"], entry["modality"], entry["patient_id"]) == (3, "CT", "WF-1")
    assert (entry["referring_physician_name"], entry["patient_name"]) == ("Ref^Rita", "Flow^Wendy")
    # Found by the start of the name too, without case.
    assert [e["study_instance_uid"] for e in waiting(technologist, "flow")] == [item.StudyInstanceUID]
    done = technologist.get(f"/api/orders/{order_id}").json()
    assert done["state"] == "COMPLETED" and done["procedures"][0]["steps"][0]["status"] == "COMPLETED"
    acquired = technologist.get("/api/waiting-list", params={"state": "acquired"}).json()
    assert [e["study_instance_uid"] for e in acquired["items"]] == [item.StudyInstanceUID]

    # The audit trail: every step, with who did it.
    def trail() -> list[Any]:
        return runtime.audit.query(since=began, limit=200)

    def steps() -> set[tuple[str, str, str]]:
        return {(r.event_id, r.action, r.actor) for r in trail() if r.outcome == 0}

    expected = {
        ("110113", "C", "admin-ada"),  # the device added (Security Alert: configuration change)
        ("110110", "C", "tech-tom"),  # Patient Record, create
        ("110109", "C", "tech-tom"),  # Order Record, create
        ("110112", "E", MODALITY),  # the worklist query
        ("110111", "C", MODALITY),  # MPPS N-CREATE (Procedure Record)
        ("110104", "C", MODALITY),  # the C-STORE (Instances Transferred, create)
        ("110103", "R", MODALITY),  # storage commitment (Instances Accessed)
        ("110111", "U", MODALITY),  # MPPS N-SET
        ("110112", "E", "tech-tom"),  # the Waiting list read
    }
    wait_for(lambda: expected <= steps())
    assert expected <= steps(), expected - steps()
    rows = trail()
    worklist = [r for r in rows if r.event_id == "110112" and r.actor == MODALITY]
    assert worklist[0].detail["model"] == "worklist" and worklist[0].detail["matches"] == 1
    procedure_records = [r for r in rows if r.event_id == "110111"]
    assert {r.detail["status"] for r in procedure_records} == {"IN PROGRESS", "COMPLETED"}
    for r in procedure_records:
        assert (r.patient_id, r.study_instance_uid) == ("WF-1", item.StudyInstanceUID)
    (stored,) = [r for r in rows if r.event_id == "110104" and r.actor == MODALITY]
    assert stored.study_instance_uid == item.StudyInstanceUID and stored.detail["instances"] == 3
    (committed,) = [r for r in rows if r.event_id == "110103" and r.actor == MODALITY]
    assert (committed.detail["committed"], committed.detail["failed"]) == (3, 0)
    assert committed.detail["report"] == "same association"
    # In the order they happened.
    order_of_events = [(r.event_id, r.action, r.actor) for r in sorted(rows, key=lambda r: r.event_time)]
    firsts = [order_of_events.index(step) for step in (
        ("110110", "C", "tech-tom"), ("110109", "C", "tech-tom"), ("110112", "E", MODALITY),
        ("110111", "C", MODALITY), ("110104", "C", MODALITY), ("110103", "R", MODALITY),
        ("110111", "U", MODALITY),
    )]  # fmt: skip
    assert firsts == sorted(firsts), order_of_events
    # Nothing refused anywhere in the scenario.
    assert not [r for r in rows if r.event_id == "110113" and r.outcome != 0]


def test_a_uni_directional_device_may_store_but_not_read_the_worklist(
    server: DicomIngestServer, admin: TestClient, runtime: Runtime, settings: Settings
) -> None:
    added = admin.post("/api/devices", json={"ae_title": "US_CART", "setup": "uni-directional"})
    assert added.status_code == 201, added.text
    query = Dataset()
    query.PatientName = ""
    query.ScheduledProcedureStepSequence = [Dataset()]
    query.ScheduledProcedureStepSequence[0].Modality = "US"
    typed = _worklist_like("US-1")
    assoc = associate(settings, "US_CART", MWL_FIND, MPPS, CTImageStorage)
    try:
        responses = list(assoc.send_c_find(query, MWL_FIND))
        # One final answer, no match: 0124H Refused: Not Authorized (PS3.7 C.5).
        assert [(r[0].Status, r[1]) for r in responses] == [(0x0124, None)]
        status, _ = assoc.send_n_create(mpps_in_progress(typed, "US_CART", datetime.now()), MPPS, generate_uid())
        assert status.Status == 0x0124
        (image,) = make_study(typed, slices=1, size=32)
        assert assoc.send_c_store(image).Status == 0x0000
    finally:
        assoc.release()
    assert runtime.index.stored_blob(image.SOPInstanceUID) is not None
    # No order behind it: the study waits on the reconciliation list.
    assert runtime.ingest.linker is not None and runtime.ingest.linker.drain(30)
    assert WaitingList(runtime.index).state_of(typed.StudyInstanceUID) is WorkflowState.UNMATCHED
    refusals = wait_for(lambda: [r for r in runtime.audit.query(event_id="110113", actor="US_CART")
                                 if r.detail.get("refused")])  # fmt: skip
    assert {r.detail["refused"] for r in refusals} == {"worklist", "mpps"}  # type: ignore[union-attr]


def _worklist_like(patient_id: str) -> Dataset:
    """What an operator types at a uni-directional device: no order behind it."""
    item = Dataset()
    item.PatientName = "Cart^Carl"
    item.PatientID = patient_id
    item.IssuerOfPatientID = ""
    item.PatientBirthDate = ""
    item.PatientSex = "M"
    item.AccessionNumber = ""
    item.ReferringPhysicianName = ""
    item.StudyInstanceUID = generate_uid()
    item.RequestedProcedureDescription = ""
    item.RequestedProcedureID = ""
    step = Dataset()
    step.ScheduledProcedureStepID = ""
    step.ScheduledProcedureStepDescription = ""
    step.Modality = "CT"
    item.ScheduledProcedureStepSequence = [step]
    return item
