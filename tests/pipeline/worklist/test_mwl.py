"""The Modality Worklist SCP against dcmtk's ``findscu -W`` and pynetdicom, over 127.0.0.1.

Patients and orders are registered through the HTTP API (the ``client``
fixture, an administrator); a :class:`DicomIngestServer` runs the
:class:`ModalityWorklistSCP` in this process. The keys returned are those
IHE RAD-5 lists (RAD TF-2 4.5, Table 4.5-3); statuses those of PS3.4 K.4.1.1.4.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pynetdicom import AE

from pipeline.config import Settings
from pipeline.ingest.scp import DicomIngestServer
from pipeline.query.scp import QueryRetrieveFindSCP
from pipeline.query.service import QueryService
from pipeline.runtime import Runtime
from pipeline.worklist.mwl import MWL_FIND, ModalityWorklistSCP
from pipeline.worklist.query import WorklistQuery
from pipeline.worklist.services import worklist_services
from tests.conftest import require_tool
from tests.pipeline.security.test_tls import DCMTK_ENV, audit_rows, wait_for

SPS = "ScheduledProcedureStepSequence"


def _order(
    client: TestClient, patient: int, *procedures: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    answer = client.post(
        "/api/orders", json={"patient": patient, "procedures": list(procedures), **extra}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


@pytest.fixture
def registered(client: TestClient) -> dict[str, Any]:
    """Two patients; Jane has a CT and an MR on 4 December, John a CT on the 5th,
    and a cancelled order on the 4th that no worklist may show."""
    jane = client.post(
        "/api/patients",
        json={
            "patient_id": "MWL-1",
            "issuer_of_patient_id": "HOSP",
            "patient_name": "Doe^Jane",
            "patient_birth_date": "1980-05-06",
            "patient_sex": "F",
        },
    ).json()["patient"]["id"]
    john = client.post(
        "/api/patients",
        json={"patient_id": "MWL-2", "patient_name": "Smith^John", "patient_sex": "M"},
    ).json()["patient"]["id"]
    jane_order = _order(
        client,
        jane,
        {
            "modality": "CT",
            "scheduled_start": "2026-12-04T09:30:00",
            "description": "CT head",
            "code": {"value": "CTHEAD", "scheme": "99LB", "meaning": "CT head"},
            "station_ae_title": "CT01",
            "station_name": "CT ROOM 1",
            "performing_physician_name": "Tech^Terry",
            "protocol_code": {"value": "P-HEAD", "scheme": "99LB", "meaning": "Head routine"},
        },
        {
            "modality": "MR",
            "scheduled_start": "2026-12-04T14:00:00",
            "description": "MR knee",
            "station_ae_title": "MR01",
        },
        referring_physician_name="Ref^Rita",
    )
    john_order = _order(
        client,
        john,
        {
            "modality": "CT",
            "scheduled_start": "2026-12-05T08:00:00",
            "description": "CT chest",
            "station_ae_title": "CT01",
        },
    )
    gone = _order(
        client,
        john,
        {"modality": "CT", "scheduled_start": "2026-12-04T10:00:00", "station_ae_title": "CT01"},
    )
    assert client.post(f"/api/orders/{gone['id']}/cancel", json={}).status_code == 200
    return {"jane": jane_order, "john": john_order, "cancelled": gone}


@pytest.fixture
def server(runtime: Runtime, settings: Settings) -> Iterator[DicomIngestServer]:
    mwl = ModalityWorklistSCP(WorklistQuery(runtime.index), runtime.audit, settings.ae_title)
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=[mwl]).start()
    yield srv
    srv.stop()


def findscu_w(settings: Settings, out: Path, *keys: str) -> list[Dataset]:
    """``findscu -W`` with ``-k`` keys; the responses it wrote (``-X``)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    cmd = [
        require_tool("findscu"),
        "-W",
        "-aet",
        "CT01",
        "-aec",
        settings.ae_title,
        "-X",
        "-od",
        str(out),
    ]
    for key in keys:
        cmd += ["-k", key]
    done = subprocess.run(
        [*cmd, "127.0.0.1", str(settings.dicom_port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


#: What a modality asks (IHE RAD-5 return keys), with the step item's keys empty.
RAD5 = [
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "ReferringPhysicianName",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedureCodeSequence",
    "StudyInstanceUID",
    "RequestedProcedurePriority",
    "PatientWeight",
]
STEP = [
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledStationName",
    "ScheduledProcedureStepID",
    "ScheduledProtocolCodeSequence",
]


def step_keys(**values: str) -> list[str]:
    return [f"{SPS}[0].{k}" + (f"={values[k]}" if k in values else "") for k in STEP] + [
        f"{SPS}[0].{k}={v}" for k, v in values.items() if k not in STEP
    ]


def sps_ids(responses: list[Dataset]) -> set[str]:
    return {ds[SPS][0].ScheduledProcedureStepID for ds in responses}


def test_findscu_finds_the_steps_registered_through_the_api(
    registered: dict[str, Any],
    server: DicomIngestServer,
    settings: Settings,
    tmp_path: Path,
    runtime: Runtime,
) -> None:
    jane, john = registered["jane"], registered["john"]
    ct, mr = jane["procedures"]
    # The CT01 worklist of 4 December: Jane's CT only (the cancelled order is gone).
    (ds,) = findscu_w(
        settings,
        tmp_path,
        *RAD5,
        *step_keys(ScheduledStationAETitle="CT01", ScheduledProcedureStepStartDate="20261204"),
    )
    assert (str(ds.PatientName), ds.PatientID, ds.IssuerOfPatientID) == (
        "Doe^Jane",
        "MWL-1",
        "HOSP",
    )
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19800506", "F")
    assert (
        ds.AccessionNumber == jane["accession_number"]
        and str(ds.ReferringPhysicianName) == "Ref^Rita"
    )
    assert ds.RequestedProcedureID == ct["requested_procedure_id"]
    assert ds.RequestedProcedureDescription == "CT head"
    assert ds.StudyInstanceUID == ct["study_instance_uid"]
    (code,) = ds.RequestedProcedureCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "CTHEAD",
        "99LB",
        "CT head",
    )
    # Requested but not kept: present and empty (type 2).
    assert ds.RequestedProcedurePriority == "" and "PatientWeight" in ds
    (step,) = ds[SPS]
    assert (
        step.ScheduledStationAETitle,
        step.ScheduledProcedureStepStartDate,
        step.ScheduledProcedureStepStartTime,
        step.Modality,
    ) == ("CT01", "20261204", "093000", "CT")
    assert str(step.ScheduledPerformingPhysicianName) == "Tech^Terry"
    assert (
        step.ScheduledProcedureStepDescription == "CT head"
        and step.ScheduledStationName == "CT ROOM 1"
    )
    assert step.ScheduledProcedureStepID == ct["steps"][0]["sps_id"]
    (protocol,) = step.ScheduledProtocolCodeSequence
    assert (protocol.CodeValue, protocol.CodeMeaning) == ("P-HEAD", "Head routine")

    # Modality; station; patient name with a wild card, without case; patient ID; accession number.
    assert sps_ids(findscu_w(settings, tmp_path, "PatientName", *step_keys(Modality="MR"))) == {
        mr["steps"][0]["sps_id"]
    }
    assert sps_ids(findscu_w(settings, tmp_path, *step_keys(ScheduledStationAETitle="CT01"))) == {
        ct["steps"][0]["sps_id"],
        john["procedures"][0]["steps"][0]["sps_id"],
    }
    assert sps_ids(findscu_w(settings, tmp_path, "PatientName=doe*", *step_keys())) == {
        ct["steps"][0]["sps_id"],
        mr["steps"][0]["sps_id"],
    }
    assert sps_ids(findscu_w(settings, tmp_path, "PatientID=MWL-2", *step_keys())) == {
        john["procedures"][0]["steps"][0]["sps_id"]
    }
    by_accession = findscu_w(
        settings, tmp_path, f"AccessionNumber={jane['accession_number']}", *step_keys()
    )
    assert len(by_accession) == 2
    # Date and time together are one range (PS3.4 C.2.2.2.5.1): 4 Dec 10:00 to 5 Dec 08:00.
    assert sps_ids(
        findscu_w(
            settings,
            tmp_path,
            *step_keys(
                ScheduledProcedureStepStartDate="20261204-20261205",
                ScheduledProcedureStepStartTime="1000-0800",
            ),
        )
    ) == {mr["steps"][0]["sps_id"], john["procedures"][0]["steps"][0]["sps_id"]}
    assert (
        findscu_w(settings, tmp_path, *step_keys(ScheduledProcedureStepStartDate="20261206-")) == []
    )
    # A cancelled step is listed only when its status is asked for.
    cancelled = registered["cancelled"]["procedures"][0]["steps"][0]["sps_id"]
    assert sps_ids(
        findscu_w(settings, tmp_path, *step_keys(ScheduledProcedureStepStatus="CANCELED"))
    ) == {cancelled}

    rows = wait_for(lambda: [r for r in audit_rows(runtime, event_id="110112", actor="CT01")])
    assert rows and all('"model": "worklist"' in str(r["detail"]) for r in rows)  # type: ignore[union-attr]


def test_a_query_file_made_with_dump2dcm(
    registered: dict[str, Any], server: DicomIngestServer, settings: Settings, tmp_path: Path
) -> None:
    """A modality's worklist query as a file (dcmtk's wlmscpfs examples do the same)."""
    dump = tmp_path / "query.dump"
    dump.write_text(
        "(0008,0050) SH (no value available)\n"
        "(0010,0010) PN (no value available)\n"
        "(0020,000d) UI (no value available)\n"
        "(0040,0100) SQ (Sequence with explicit length #=1)\n"
        "  (fffe,e000) na (Item with explicit length #=3)\n"
        "    (0008,0060) CS [MR]\n"
        "    (0040,0002) DA [20261204]\n"
        "    (0040,0009) SH (no value available)\n"
        "  (fffe,e00d) na (ItemDelimitationItem for re-encoding)\n"
        "(fffe,e0dd) na (SequenceDelimitationItem for re-encoding)\n"
    )
    query = tmp_path / "query.wl"
    subprocess.run([require_tool("dump2dcm"), str(dump), str(query)], check=True, timeout=60)
    out = tmp_path / "out"
    out.mkdir()
    cmd = [
        require_tool("findscu"),
        "-W",
        "-aec",
        settings.ae_title,
        "-X",
        "-od",
        str(out),
        "127.0.0.1",
        str(settings.dicom_port),
        str(query),
    ]
    done = subprocess.run(
        cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    (ds,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    mr = registered["jane"]["procedures"][1]
    assert ds.StudyInstanceUID == mr["study_instance_uid"] and str(ds.PatientName) == "Doe^Jane"
    # Only the keys of the request's item come back in it.
    assert [e.keyword for e in ds[SPS][0]] == [
        "Modality",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepID",
    ]


def _c_find(
    settings: Settings, identifier: Dataset, model: str = MWL_FIND
) -> list[tuple[Dataset, Any]]:
    ae = AE(ae_title="PYMOD")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    try:
        return list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()


def test_refused_keys_and_the_empty_sequence(
    registered: dict[str, Any], server: DicomIngestServer, settings: Settings
) -> None:
    item = Dataset()
    item.ScheduledProcedureStepStartDate = "2026-12-04"  # not a DA
    bad = Dataset()
    bad.PatientName = ""
    bad.ScheduledProcedureStepSequence = [item]
    ((status, _),) = _c_find(settings, bad)
    assert status.Status == 0xA900 and "ScheduledProcedureStepStartDate" in status.ErrorComment
    # An empty sequence key gets the whole RAD-5 step item.
    whole = Dataset()
    whole.PatientID = "MWL-2"
    whole.ScheduledProcedureStepSequence = []
    responses = _c_find(settings, whole)
    assert [s.Status for s, _ in responses] == [0xFF00, 0x0000]
    step = responses[0][1].ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStatus) == (
        "CT",
        "CT01",
        "SCHEDULED",
    )
    assert (
        step.ScheduledProcedureStepStartDate == "20261205"
        and "ScheduledProtocolCodeSequence" in step
    )


def test_worklist_and_query_retrieve_share_the_port(
    registered: dict[str, Any], runtime: Runtime, settings: Settings
) -> None:
    """pynetdicom binds one C-FIND handler: the worklist passes other models on."""
    qr = QueryRetrieveFindSCP(QueryService(runtime.index), runtime.audit, settings.ae_title)
    services = worklist_services(
        runtime.index, runtime.audit, settings.ae_title, other_find=qr.handle_find
    )
    srv = DicomIngestServer(
        settings, runtime.ingest, runtime.audit, services=[qr, *services]
    ).start()
    try:
        wl = Dataset()
        wl.PatientID = "MWL-1"
        wl.ScheduledProcedureStepSequence = []
        assert [s.Status for s, _ in _c_find(settings, wl)] == [0xFF00, 0xFF00, 0x0000]
        study = Dataset()
        study.QueryRetrieveLevel = "STUDY"
        study.StudyInstanceUID = ""
        answers = _c_find(settings, study, "1.2.840.10008.5.1.4.1.2.2.1")
        assert [s.Status for s, _ in answers] == [0x0000]  # nothing stored: no match, success
    finally:
        srv.stop()


def test_the_worklist_follows_the_schedule(
    client: TestClient,
    registered: dict[str, Any],
    server: DicomIngestServer,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """A rescheduled step moves; a cancelled order leaves the worklist at once."""
    john = registered["john"]
    sps_id = john["procedures"][0]["steps"][0]["sps_id"]
    moved = client.patch(
        f"/api/orders/{john['id']}",
        json={
            "steps": [
                {
                    "sps_id": sps_id,
                    "scheduled_start": "2026-12-07T07:45:00",
                    "station_ae_title": "CT02",
                }
            ]
        },
    )
    assert moved.status_code == 200
    found = findscu_w(settings, tmp_path, *step_keys(ScheduledStationAETitle="CT02"))
    assert sps_ids(found) == {sps_id}
    assert found[0][SPS][0].ScheduledProcedureStepStartTime == "074500"
    assert client.post(f"/api/orders/{john['id']}/cancel", json={}).status_code == 200
    assert findscu_w(settings, tmp_path, *step_keys(ScheduledStationAETitle="CT02")) == []


def test_non_ascii_names_come_back_in_utf8(
    client: TestClient, server: DicomIngestServer, settings: Settings
) -> None:
    pk = client.post(
        "/api/patients", json={"patient_id": "MWL-U", "patient_name": "Müller^Jürgen"}
    ).json()["patient"]["id"]
    _order(
        client,
        pk,
        {"modality": "US", "scheduled_start": "2026-12-04T12:00:00", "station_ae_title": "US01"},
    )
    query = Dataset()
    query.PatientName = "MÜLLER*"
    query.SpecificCharacterSet = "ISO_IR 192"
    query.ScheduledProcedureStepSequence = []
    responses = _c_find(settings, query)
    assert [s.Status for s, _ in responses] == [0xFF00, 0x0000]
    answer = responses[0][1]
    assert answer.SpecificCharacterSet == "ISO_IR 192"
    assert str(answer.PatientName) == "Müller^Jürgen"
