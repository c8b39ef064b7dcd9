"""The audit trail of one scenario, across DICOM and HTTP, read back with ``lightbox audit``.

A modality stores a study with dcmtk's storescu (C-STORE), an intruder AE is
refused, a workstation queries it (findscu), retrieves it (getscu) and
exports it to another registered device (movescu to a storescp), a
technologist stores another over STOW-RS, someone fails to log in, a
radiologist logs in, views the images (rendered, thumbnail, instance record)
and downloads the study over WADO-RS. The DICOM server is the one the ingest
actors run (:func:`pipeline.ingest.actors.build_dicom_server`). The trail must
list every event with who (user or AE), the patient, the study, the source
address and the time; ``lightbox audit`` must print them and record its own
use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.main import create_app
from pipeline.cli import app as cli
from pipeline.config import Settings
from pipeline.decode.service import DecodeService
from pipeline.devices.registry import DeviceRegistry
from pipeline.ingest.actors import build_dicom_server
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from tests.api.conftest import CONTENT_TYPE, api_key_for, bearer, multipart_body
from tests.conftest import require_tool
from tests.corpus import SERIES
from tests.pipeline.retrieve.test_scp import storescp  # noqa: F401 - a fixture

PASSWORD = "radiology rocks 42"


def test_every_event_of_a_scenario_is_on_record(
    settings: Settings,
    runtime: Runtime,
    dicom_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    storescp: Callable[..., tuple[Path, int]],  # noqa: F811 - the fixture imported above
) -> None:
    began = datetime.now(timezone.utc)
    ct = sorted((dicom_data / SERIES["ct"]).iterdir())[:3]
    cr = dicom_data / "cr_dx/Monochrome1-Jpeg.dcm"
    ct_header = pydicom.dcmread(ct[0], stop_before_pixels=True)
    cr_header = pydicom.dcmread(cr, stop_before_pixels=True)

    # 1. A modality sends three CT slices; an unknown AE is refused; a
    #    workstation queries, retrieves and exports the study to DEST.
    scp_settings = settings.model_copy(update={"allowed_calling_aes": ["CT_ROOM_2", "WS_1"]})
    received, dest_port = storescp("DEST")
    DeviceRegistry(runtime.index).add("DEST", host="127.0.0.1", port=dest_port)
    server = build_dicom_server(dataclasses.replace(runtime, settings=scp_settings)).start()
    try:
        env = {**os.environ, "TCP_NODELAY": "1"}
        storescu = require_tool("storescu")
        address = ["127.0.0.1", str(settings.dicom_port)]
        sent = subprocess.run([storescu, "-aet", "CT_ROOM_2", "-aec", settings.ae_title,
                               *address, *map(str, ct)], env=env, capture_output=True, timeout=120)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        refused = subprocess.run([storescu, "-aet", "INTRUDER", "-aec", settings.ae_title,
                                  *address, str(ct[0])], env=env, capture_output=True, timeout=120)  # fmt: skip
        assert refused.returncode != 0
        study_keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ct_header.StudyInstanceUID}"]
        workstation = ["-S", "-aet", "WS_1", "-aec", settings.ae_title]
        found = subprocess.run([require_tool("findscu"), *workstation, *address, "-k", "QueryRetrieveLevel=STUDY",
                                "-k", f"PatientID={ct_header.PatientID}", "-k", "StudyInstanceUID"],
                               env=env, capture_output=True, timeout=120)  # fmt: skip
        assert found.returncode == 0, found.stderr
        got = subprocess.run([require_tool("getscu"), *workstation, *study_keys, "-od", str(tmp_path), *address],
                             env=env, capture_output=True, timeout=120)  # fmt: skip
        assert got.returncode == 0, got.stderr
        moved = subprocess.run([require_tool("movescu"), *workstation, "-aem", "DEST", *study_keys, *address],
                               env=env, capture_output=True, timeout=120)  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        assert len(list(received.iterdir())) == 3
    finally:
        server.stop()  # ends the associations: their transfers are recorded

    # 2. A technologist stores the CR over STOW-RS.
    app = create_app(settings, runtime)
    tech = api_key_for(runtime, "tech-anna", Role.TECHNOLOGIST)
    with TestClient(app, headers=bearer(tech)) as client:
        stow = client.post("/dicom-web/studies", content=multipart_body([cr.read_bytes()]),
                           headers={"Content-Type": CONTENT_TYPE})  # fmt: skip
        assert stow.status_code == 200
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once(limit=10)

    # 3. A failed login, then a radiologist logs in and views both studies.
    runtime.accounts.create_user("dr-house", Role.RADIOLOGIST, password=PASSWORD)
    with TestClient(app) as browser:
        assert browser.post("/api/auth/login", json={"username": "dr-house", "password": "guess"}).status_code == 401
        assert browser.post("/api/auth/login", json={"username": "dr-house", "password": PASSWORD}).status_code == 200
        base = f"/dicom-web/studies/{ct_header.StudyInstanceUID}/series/{ct_header.SeriesInstanceUID}"
        for path in ct:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            assert browser.get(f"{base}/instances/{uid}/rendered").status_code == 200
        assert browser.get(f"/dicom-web/studies/{cr_header.StudyInstanceUID}/thumbnail").status_code == 200
        assert browser.get(f"/api/instances/{cr_header.SOPInstanceUID}").status_code == 200
        # A whole study downloaded over WADO-RS, as stored.
        download = browser.get(f"/dicom-web/studies/{cr_header.StudyInstanceUID}",
                               headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})  # fmt: skip
        assert download.status_code == 200 and cr.read_bytes()[-256:] in download.content

    # 4. The trail, read with the command line.
    runtime.audit.flush()
    monkeypatch.setenv("LIGHTBOX_DATA_DIR", str(settings.data_dir))
    result = CliRunner().invoke(cli, ["audit", "--json", "--limit", "100"])
    assert result.exit_code == 0, result.output
    events = json.loads(result.output)
    seen = {
        (e["event_id"], e["action"], e["outcome"], e["actor_kind"], e["actor"], e["patient_id"],
         e["study_instance_uid"])
        for e in events
    }  # fmt: skip
    ct_study, cr_study = ct_header.StudyInstanceUID, cr_header.StudyInstanceUID
    expected = {
        # C-STORE by the modality: DICOM Instances Transferred, create.
        ("110104", "C", 0, "ae", "CT_ROOM_2", ct_header.PatientID, ct_study),
        # The refused intruder: Security Alert, serious failure.
        ("110113", "E", 8, "ae", "INTRUDER", "", ""),
        # STOW-RS by the technologist.
        ("110104", "C", 0, "user", "tech-anna", cr_header.PatientID, cr_study),
        # The failed and the good login.
        ("110114", "E", 4, "user", "dr-house", "", ""),
        ("110114", "E", 0, "user", "dr-house", "", ""),
        # The views: DICOM Instances Accessed, read, per study.
        ("110103", "R", 0, "user", "dr-house", ct_header.PatientID, ct_study),
        ("110103", "R", 0, "user", "dr-house", cr_header.PatientID, cr_study),
    }
    assert expected <= seen, expected - seen
    # The workstation's query (Query, execute) and its retrieve and export
    # (DICOM Instances Transferred, read: the archive is the source), each
    # with the study's patient; the export names its destination.
    queries = [e for e in events if e["event_id"] == "110112" and e["actor"] == "WS_1"]
    assert queries and queries[0]["outcome"] == 0 and queries[0]["detail"]["matches"] == 1
    sent_out = {(e["detail"]["operation"], e["destination"]): e for e in events
                if e["event_id"] == "110104" and e["action"] == "R" and e["actor"] == "WS_1"}  # fmt: skip
    assert set(sent_out) == {("C-GET", "WS_1"), ("C-MOVE", "DEST")}, set(sent_out)
    for event in sent_out.values():
        assert (event["patient_id"], event["study_instance_uid"]) == (ct_header.PatientID, ct_study)
        assert event["detail"]["instances"] == 3 and event["source_address"] == "127.0.0.1"
    for event in events:
        assert datetime.fromisoformat(event["event_time"]) >= began.replace(microsecond=0)
    stored = next(e for e in events if e["actor"] == "CT_ROOM_2")
    assert stored["detail"]["instances"] == 3 and stored["source_address"] == "127.0.0.1"
    # Three rendered slices of one study by one user: one row counting them.
    views = [e for e in events if e["event_id"] == "110103" and e["study_instance_uid"] == ct_study]
    assert sum(e["count"] for e in views) == 3
    # Reading the trail is itself on record (Audit Log Used).
    runtime.audit.flush()
    used = runtime.audit.query(event_id=None, actor=None, limit=5)
    assert any(r.event_id == "110101" for r in used)
    # And the table printout names the same people.
    table = CliRunner().invoke(cli, ["audit", "--patient", ct_header.PatientID])
    assert "CT_ROOM_2" in table.output and "dr-house" in table.output
