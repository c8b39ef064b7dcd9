"""The archive routes: status with decode failures, one instance's record."""

from __future__ import annotations

from pathlib import Path

import pydicom
from fastapi.testclient import TestClient

from pipeline.decode.service import DecodeService
from pipeline.index.records import Provenance
from pipeline.runtime import Runtime
from tests.pipeline.decode.test_codestream import jpeg_bomb


def test_status_and_instance_show_decode_failures(
    client: TestClient, runtime: Runtime, dicom_data: Path, tmp_path: Path
) -> None:
    good = sorted((dicom_data / "series" / "mr_siemens_prisma_t1_fl2d_sag_35sl").iterdir())[0]
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(jpeg_bomb(dicom_data))
    for path in (good, bomb):
        runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once()

    status = client.get("/api/status").json()
    assert status["instances"] == 2
    assert status["pixel_states"] == {"ready": 1, "failed": 1}
    (failure,) = status["pixel_failures"]
    bomb_uid = pydicom.dcmread(bomb, stop_before_pixels=True).SOPInstanceUID
    assert failure["sop_instance_uid"] == bomb_uid and "declares 65535x65535" in failure["reason"]

    record = client.get(f"/api/instances/{bomb_uid}").json()
    assert record["pixel_state"] == "failed" and "65535x65535" in record["pixel_error"]
    good_uid = pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID
    assert client.get(f"/api/instances/{good_uid}").json()["pixel_state"] == "ready"
    assert client.get("/api/instances/1.2.3.4.5").status_code == 404
    assert client.get("/api/instances/not-a-uid").status_code == 400
