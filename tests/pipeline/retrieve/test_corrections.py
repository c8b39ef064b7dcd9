"""Reconciliation's corrections applied on retrieval; the stored files untouched.

The corpus' MR series arrives without an order (as from a uni-directional
device) and lands on the reconciliation list; a user links it to an order
of a registered patient. From then on what leaves the archive carries the
registration's Patient ID, name, birth date, sex, Accession Number and
Referring Physician's Name, with the replaced values in an Original
Attributes Sequence item (PS3.3 C.12.1.1.9.2): a C-GET by dcmtk ``getscu``,
WADO-RS instances and metadata. The blobs stay as received, and a study
whose values need no correction goes out byte for byte as stored.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, date, datetime
from email import message_from_bytes
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from pipeline.config import Settings
from pipeline.index.records import Provenance
from pipeline.index.schema import LinkState
from pipeline.ingest.part10 import split_part10
from pipeline.ingest.scp import DicomIngestServer
from pipeline.retrieve.corrections import Corrections, corrections_for
from pipeline.retrieve.scp import retrieve_services
from pipeline.runtime import Runtime
from pipeline.worklist.reconcile import Reconciler
from pipeline.worklist.registration import ProcedureRequest
from tests.api.conftest import api_key_for, bearer
from tests.conftest import require_tool
from tests.corpus import SERIES, corpus_files
from tests.pipeline.retrieve.test_scp import received
from tests.pipeline.security.test_tls import DCMTK_ENV

MR_STUDY = "1.3.12.2.1107.5.2.43.67060.30000022040717195958300000010"
CORRECTED = {
    "PatientID": "REG-77",
    "PatientName": "Registered^Rhea",
    "PatientBirthDate": "19791231",
    "PatientSex": "F",
    "AccessionNumber": "ACC-RECON-1",
    "ReferringPhysicianName": "Referrer^Rita",
}


@pytest.fixture
def linked(runtime: Runtime, dicom_data: Path) -> dict[str, bytes]:
    """The MR series stored, found unmatched, then linked by hand; SOP UID -> stored file."""
    stored: dict[str, bytes] = {}
    for path in sorted((dicom_data / SERIES["mr"]).iterdir()):
        data = path.read_bytes()
        result = runtime.ingest.store_part10(data, Provenance("import"))
        stored[result.sop_instance_uid] = data
    assert runtime.ingest.linker is not None and runtime.ingest.linker.drain(30)
    reconciler = Reconciler(runtime.index)
    link = reconciler.link_of(MR_STUDY)
    assert link is not None and link.state is LinkState.UNMATCHED
    assert corrections_for(runtime.index, MR_STUDY) is None  # nothing linked: nothing corrected

    reg = runtime.registration
    patient = reg.register_patient(
        "REG-77", actor="t", patient_name="Registered^Rhea",
        patient_birth_date=date(1979, 12, 31), patient_sex="F",
    ).patient  # fmt: skip
    order = reg.create_order(
        patient.id, [ProcedureRequest("MR", datetime(2026, 12, 4, 9))], actor="t",
        accession_number="ACC-RECON-1", referring_physician_name="Referrer^Rita",
    )  # fmt: skip
    assert reconciler.link(MR_STUDY, order.id, actor="user:t").state is LinkState.LINKED
    return stored


def _check_corrected(ds: pydicom.Dataset, original: pydicom.Dataset) -> None:
    for keyword, value in CORRECTED.items():
        assert str(ds.get(keyword, "")) == value, keyword
    [item] = ds.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "CORRECT"
    [before] = item.ModifiedAttributesSequence
    assert before.PatientID == original.PatientID
    assert str(before.PatientName) == str(original.PatientName)
    # Everything else is the stored dataset's, pixel data byte for byte.
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert ds.PixelData == original.PixelData
    assert ds.StudyDescription == original.StudyDescription


def test_corrections_are_what_changed(runtime: Runtime, linked: dict[str, bytes]) -> None:
    corrections = corrections_for(runtime.index, MR_STUDY)
    assert corrections is not None
    original = pydicom.dcmread(io.BytesIO(next(iter(linked.values()))))
    # Only what differs from the received values; the issuer was "" and stays "".
    assert corrections.values == {
        k: v for k, v in CORRECTED.items() if str(original.get(k, "")) != v
    }
    assert "IssuerOfPatientID" not in corrections.values
    # The stored blobs are as received.
    for row in runtime.index.list_instances(study_instance_uid=MR_STUDY):
        assert runtime.blobs.get(row.storage_key) == linked[row.sop_instance_uid]


def test_getscu_receives_corrected_instances(
    runtime: Runtime, settings: Settings, linked: dict[str, bytes], tmp_path: Path
) -> None:
    services = retrieve_services(runtime.index, runtime.blobs, runtime.audit, settings)
    server = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=services).start()
    try:
        out = tmp_path / "got"
        out.mkdir()
        cmd = [require_tool("getscu"), "-S", "-aet", "GETSCU", "-aec", settings.ae_title, "+B",
               "-od", str(out), "-k", "QueryRetrieveLevel=STUDY", "-k",
               f"StudyInstanceUID={MR_STUDY}", "127.0.0.1", str(settings.dicom_port)]  # fmt: skip
        done = subprocess.run(cmd, check=False, env=DCMTK_ENV, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
    finally:
        server.stop()
    got = received(out)
    assert set(got) == set(linked)
    for path in out.iterdir():
        ds = pydicom.dcmread(path)
        _check_corrected(ds, pydicom.dcmread(io.BytesIO(linked[str(ds.SOPInstanceUID)])))


@pytest.fixture
def client(settings: Settings, runtime: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(settings, runtime)) as c:
        c.headers.update(bearer(api_key_for(runtime, "rad", "radiologist")))
        yield c


def _parts(response: bytes, content_type: str) -> list[bytes]:
    message = message_from_bytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + response
    )
    return [part.get_payload(decode=True) for part in message.get_payload()]


def test_wado_rs_corrected(
    runtime: Runtime, linked: dict[str, bytes], client: TestClient
) -> None:
    row = runtime.index.list_instances(study_instance_uid=MR_STUDY)[0]
    url = f"/dicom-web/studies/{MR_STUDY}/series/{row.series_instance_uid}"
    original = pydicom.dcmread(io.BytesIO(linked[row.sop_instance_uid]))

    answer = client.get(f"{url}/instances/{row.sop_instance_uid}",
                        headers={"Accept": 'multipart/related; type="application/dicom"'})  # fmt: skip
    assert answer.status_code == 200, answer.text
    [part] = _parts(answer.content, answer.headers["content-type"])
    _check_corrected(pydicom.dcmread(io.BytesIO(part)), original)

    series = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    parts = _parts(series.content, series.headers["content-type"])
    assert len(parts) == len(linked)
    for part in parts:
        ds = pydicom.dcmread(io.BytesIO(part))
        assert ds.PatientID == "REG-77" and ds.AccessionNumber == "ACC-RECON-1"

    for path in (f"{url}/metadata", f"/dicom-web/studies/{MR_STUDY}/metadata",
                 f"{url}/instances/{row.sop_instance_uid}/metadata"):  # fmt: skip
        documents = client.get(path).json()
        assert len(documents) == (1 if "instances" in path else len(linked))
        for document in documents:
            assert document["00100020"] == {"vr": "LO", "Value": ["REG-77"]}
            assert document["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Registered^Rhea"}]}
            assert document["00080050"] == {"vr": "SH", "Value": ["ACC-RECON-1"]}
            assert document["00080090"]["Value"] == [{"Alphabetic": "Referrer^Rita"}]
            assert list(document) == sorted(document)  # PS3.18 F.2: ordered by tag


def test_link_changes_etag(runtime: Runtime, dicom_data: Path, client: TestClient) -> None:
    """A cached answer from before the link is not reused after it (ETag, revalidation)."""
    path = sorted((dicom_data / SERIES["mr"]).iterdir())[0]
    runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    assert runtime.ingest.linker is not None and runtime.ingest.linker.drain(30)
    row = runtime.index.list_instances(study_instance_uid=MR_STUDY)[0]
    url = f"/dicom-web/studies/{MR_STUDY}/series/{row.series_instance_uid}/instances/{row.sop_instance_uid}"
    before = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    meta_before = client.get(url + "/metadata")
    # Unlinked: the stored bytes exactly.
    [part] = _parts(before.content, before.headers["content-type"])
    assert part == path.read_bytes()
    assert before.headers["cache-control"] == "private, no-cache"

    patient = runtime.registration.register_patient("REG-78", actor="t").patient
    order = runtime.registration.create_order(
        patient.id, [ProcedureRequest("MR", datetime(2026, 12, 4, 9))], actor="t")
    Reconciler(runtime.index).link(MR_STUDY, order.id, actor="user:t")
    for target, old in ((url, before), (url + "/metadata", meta_before)):
        again = client.get(target, headers={"If-None-Match": old.headers["etag"]})
        assert again.status_code == 200 and again.headers["etag"] != old.headers["etag"]


def test_apply_keeps_every_transfer_syntax(dicom_data: Path) -> None:
    """Written back in its own syntax with the pixel data untouched, for every syntax."""
    corrections = Corrections({"PatientID": "NEW", "IssuerOfPatientID": "", "PatientSex": "O"},
                              datetime(2026, 12, 4, 12, tzinfo=UTC))  # fmt: skip
    files = corpus_files(dicom_data / "transfer_syntaxes")
    assert len(files) >= 10
    for path in files:
        data = path.read_bytes()
        original = pydicom.dcmread(io.BytesIO(data))
        out = corrections.apply(data, modifying_system="LIGHTBOX")
        ds = pydicom.dcmread(io.BytesIO(out))
        assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, path.name
        assert ds.PixelData == original.PixelData, path.name
        assert (ds.PatientID, ds.PatientSex) == ("NEW", "O")
        assert "IssuerOfPatientID" in ds and not ds.IssuerOfPatientID
        [item] = ds.OriginalAttributesSequence
        assert item.AttributeModificationDateTime == "20261204120000+0000"
        # Absent before (some corpus files have no Patient ID): there, empty.
        assert item.ModifiedAttributesSequence[0].PatientID == original.get("PatientID", "")
        # What DIMSE would carry parses on its own (group lengths redone).
        assert split_part10(out).dataset


def test_patch_document() -> None:
    corrections = Corrections({"PatientName": "Doe^Jo", "PatientSex": ""}, datetime.now(UTC))
    document = json.dumps({"00100040": {"vr": "CS", "Value": ["M"]},
                           "00080018": {"vr": "UI", "Value": ["1.2.3"]}}).encode()  # fmt: skip
    patched = json.loads(corrections.patch_document(document))
    assert patched == {
        "00080018": {"vr": "UI", "Value": ["1.2.3"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jo"}]},
        "00100040": {"vr": "CS"},
    }
