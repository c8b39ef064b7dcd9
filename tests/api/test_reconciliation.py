"""/api/reconciliation over HTTP, and the issue's end-to-end with real peers.

End-to-end: a uni-directional device (no worklist) sends two studies with
dcmtk's ``storescu`` to the running DICOM server (composed as the ingest
actors compose it, behind the device policy): the one carrying an order's
Accession Number is linked automatically; the other lands on the
reconciliation list and is linked by an API call, after which ``findscu``
(Study Root, STUDY level) and QIDO-RS answer the registered Patient ID, name,
Accession Number and Referring Physician. Then the route's permission
(``registration:write``), its refusals and the audit trail.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.config import Settings
from pipeline.index.records import Provenance
from pipeline.ingest.actors import build_dicom_server
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from tests.api.conftest import api_key_for, bearer
from tests.conftest import require_tool
from tests.corpus import SERIES
from tests.pipeline.security.test_tls import DCMTK_ENV, audit_rows
from tests.pipeline.worklist.test_reconcile import order, part10


def register(client: TestClient, pid: str, name: str, referring: str = "Ref^Rita") -> dict[str, Any]:
    """A patient and a one-CT order, through the registration API as a desk would."""
    made = client.post("/api/patients", json={"patient_id": pid, "patient_name": name,
                                              "patient_birth_date": "1970-05-06", "patient_sex": "F"})  # fmt: skip
    assert made.status_code == 201, made.text
    body = {"patient": made.json()["patient"]["id"], "referring_physician_name": referring,
            "procedures": [{"modality": "CT", "scheduled_start": "2026-12-04T09:30:00"}]}  # fmt: skip
    order = client.post("/api/orders", json=body)
    assert order.status_code == 201, order.text
    return order.json()


def as_role(app: FastAPI, runtime: Runtime, name: str, role: Role, **user: Any) -> TestClient:
    return TestClient(app, headers=bearer(api_key_for(runtime, name, role, **user)))


def storescu(settings: Settings, calling: str, *files: Path) -> None:
    cmd = [require_tool("storescu"), "-aet", calling, "-aec", settings.ae_title,
           "127.0.0.1", str(settings.dicom_port), *map(str, files)]  # fmt: skip
    done = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def findscu(settings: Settings, out: Path, *keys: str) -> list[Dataset]:
    """Study Root C-FIND at STUDY level with ``keys``; the responses findscu wrote."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    cmd = [require_tool("findscu"), "-S", "-aet", "FINDSCU", "-aec", settings.ae_title, "-X", "-od", str(out),
           "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName",
           "-k", "AccessionNumber", "-k", "ReferringPhysicianName", "-k", "PatientBirthDate"]  # fmt: skip
    for key in keys:
        cmd += ["-k", key]
    done = subprocess.run([*cmd, "127.0.0.1", str(settings.dicom_port)],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def qido(client: TestClient, query: str) -> list[dict[str, Any]]:
    answer = client.get(f"/dicom-web/studies?{query}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def value(study: dict[str, Any], tag: str) -> Any:
    return study[tag].get("Value", [""])[0]


@pytest.fixture
def server(runtime: Runtime) -> Iterator[None]:
    srv = build_dicom_server(runtime).start()
    yield
    srv.stop()


def test_uni_directional_device_end_to_end(
    app: FastAPI, runtime: Runtime, settings: Settings, client: TestClient, server: None,
    dicom_data: Path, tmp_path: Path,
) -> None:  # fmt: skip
    assert client.post("/api/devices", json={"ae_title": "OLDCT", "setup": "uni-directional"}).status_code == 201
    jane = register(client, "REG-1", "Doe^Jane")
    john = register(client, "REG-2", "Roe^John", referring="Other^Olga")
    slices = sorted((dicom_data / SERIES["ct"]).iterdir())[:3]
    matched, unmatched = generate_uid(), generate_uid()
    files = [tmp_path / "a.dcm", tmp_path / "b.dcm", tmp_path / "c.dcm"]
    # The operator typed the accession number of Jane's order, and a wrong ID.
    files[0].write_bytes(part10(slices[0], matched, PatientID="TYPO-1", AccessionNumber=jane["accession_number"]))
    # John came without an order number: two slices, what the operator typed.
    for path, source in zip(files[1:], slices[1:], strict=True):
        path.write_bytes(part10(source, unmatched, PatientID="WALK-IN", PatientName="Smith^J",
                                ReferringPhysicianName="Who^Ever"))  # fmt: skip
    storescu(settings, "OLDCT", *files)
    assert runtime.ingest.linker is not None and runtime.ingest.linker.drain()

    tech = as_role(app, runtime, "tech", Role.TECHNOLOGIST)
    auto = tech.get(f"/api/reconciliation/{matched}").json()
    assert (auto["state"], auto["method"], auto["order_id"]) == ("linked", "accession", jane["id"])
    (listed,) = tech.get("/api/reconciliation").json()
    assert (listed["study_instance_uid"], listed["patient_id"], listed["calling_ae"]) == (unmatched, "WALK-IN", "OLDCT")
    assert listed["number_of_instances"] == 2 and "no order matches" in listed["reason"]

    # Olga refers John: before the link the study does not name her (404, as
    # for a study that is not there); the link makes it hers at once.
    olga = as_role(app, runtime, "olga", Role.REFERRING_PHYSICIAN, referring_physician_name="Other^Olga")
    assert olga.get(f"/dicom-web/studies/{unmatched}/series").status_code == 404
    linked = tech.post(f"/api/reconciliation/{unmatched}/link", json={"order_id": john["id"]})
    assert linked.status_code == 200, linked.text
    assert (linked.json()["method"], linked.json()["actor"]) == ("manual", "user:tech")
    assert linked.json()["received"]["patient_id"] == "WALK-IN"
    assert tech.get("/api/reconciliation").json() == []
    assert olga.get(f"/dicom-web/studies/{unmatched}/series").status_code == 200

    # C-FIND answers from the corrected index...
    out = tmp_path / "find"
    (ds,) = findscu(settings, out, "PatientID=REG-2")
    assert (ds.StudyInstanceUID, str(ds.PatientName), ds.AccessionNumber) == (unmatched, "Roe^John", john["accession_number"])
    assert (str(ds.ReferringPhysicianName), ds.PatientBirthDate) == ("Other^Olga", "19700506")
    assert findscu(settings, out, "PatientID=WALK-IN") == [] and findscu(settings, out, "PatientID=TYPO-1") == []
    (auto_ds,) = findscu(settings, out, f"AccessionNumber={jane['accession_number']}")
    assert (auto_ds.StudyInstanceUID, auto_ds.PatientID, str(auto_ds.PatientName)) == (matched, "REG-1", "Doe^Jane")
    # ...and so does QIDO-RS.
    (study,) = qido(client, "PatientID=REG-2&includefield=ReferringPhysicianName")
    assert value(study, "0020000D") == unmatched and value(study, "00080050") == john["accession_number"]
    assert value(study, "00100010") == {"Alphabetic": "Roe^John"}
    assert value(study, "00080090") == {"Alphabetic": "Other^Olga"}
    assert [value(s, "00100020") for s in qido(client, f"AccessionNumber={jane['accession_number']}")] == ["REG-1"]
    assert qido(client, "PatientID=WALK-IN") == [] and qido(client, "PatientName=smith*") == []
    assert [value(s, "0020000D") for s in qido(olga, "")] == [unmatched]


def test_who_may_list_and_link(app: FastAPI, runtime: Runtime, anonymous: TestClient, dicom_data: Path) -> None:
    """``registration:write``: administrators and technologists; not radiologists nor referring physicians."""
    uid = generate_uid()
    slice_ = sorted((dicom_data / SERIES["ct"]).iterdir())[0]
    runtime.ingest.store_part10(part10(slice_, uid, PatientID="WALK-IN"), Provenance("import"))
    assert runtime.ingest.linker is not None and runtime.ingest.linker.drain()
    patient = runtime.registration.register_patient("REG-1", actor="t", patient_name="Doe^Jane").patient.id
    o = order(runtime.registration, patient)
    link = {"order_id": o.id}
    for name, role in (("rad", Role.RADIOLOGIST), ("ref", Role.REFERRING_PHYSICIAN)):
        with as_role(app, runtime, name, role) as other:
            assert other.get("/api/reconciliation").status_code == 403
            assert other.get(f"/api/reconciliation/{uid}").status_code == 403
            assert other.post(f"/api/reconciliation/{uid}/link", json=link).status_code == 403
    assert anonymous.get("/api/reconciliation").status_code == 401
    assert anonymous.post(f"/api/reconciliation/{uid}/link", json=link).status_code == 401
    assert runtime.index.get_study(uid).patient_id == "WALK-IN"  # type: ignore[union-attr]
    with as_role(app, runtime, "admin2", Role.ADMINISTRATOR) as admin:
        assert [u["study_instance_uid"] for u in admin.get("/api/reconciliation").json()] == [uid]
        assert admin.post(f"/api/reconciliation/{uid}/link", json=link).json()["actor"] == "user:admin2"
    assert runtime.index.get_study(uid).patient_id == "REG-1"  # type: ignore[union-attr]

    # The trail: the list is a Query, the link an update of the study naming the registered patient.
    queries = [json.loads(r["detail"]) for r in audit_rows(runtime, event_id="110112")]  # type: ignore[arg-type]
    assert {"list": "reconciliation", "matches": 1} in queries
    (update,) = [r for r in audit_rows(runtime, event_id="110103") if r["action"] == "U"]
    assert (update["actor"], update["patient_id"], update["study_instance_uid"]) == ("admin2", "REG-1", uid)


def test_refusals(client: TestClient, runtime: Runtime, dicom_data: Path) -> None:
    uid = generate_uid()
    slice_ = sorted((dicom_data / SERIES["ct"]).iterdir())[0]
    runtime.ingest.store_part10(part10(slice_, uid, PatientID="WALK-IN"), Provenance("import"))
    assert runtime.ingest.linker is not None and runtime.ingest.linker.drain()
    reg = runtime.registration
    patient = reg.register_patient("REG-1", actor="t", patient_name="Doe^Jane").patient.id
    gone = order(reg, patient)
    reg.cancel_order(gone.id, actor="t")

    def link(study: str, order_id: Any) -> tuple[int, str]:
        answer = client.post(f"/api/reconciliation/{study}/link", json={"order_id": order_id})
        return answer.status_code, json.dumps(answer.json()["detail"])

    status, reason = link("1.2.x", gone.id)
    assert status == 400 and "not a valid UID" in reason
    assert client.get("/api/reconciliation/1..2").status_code == 400
    assert client.get(f"/api/reconciliation/{'1' * 65}").status_code == 422
    assert link("1.2.3.4", gone.id)[0] == 404 and client.get("/api/reconciliation/1.2.3.4").status_code == 404
    status, reason = link(uid, 999999)
    assert status == 404 and "no such order" in reason
    status, reason = link(uid, gone.id)
    assert status == 409 and "cancelled" in reason
    assert link(uid, 0)[0] == 422 and link(uid, "x")[0] == 422
    assert client.get("/api/reconciliation?limit=0").status_code == 422
    # Nothing changed.
    assert client.get(f"/api/reconciliation/{uid}").json()["state"] == "unmatched"
    assert runtime.index.get_study(uid).patient_id == "WALK-IN"  # type: ignore[union-attr]
