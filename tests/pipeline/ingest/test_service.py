"""The ingest service: durability order, duplicate policies, clean failures."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from pipeline.config import DuplicatePolicy
from pipeline.errors import DuplicateInstance, InvalidDataset, OutOfResources
from pipeline.index.records import Provenance, RecordOutcome
from pipeline.ingest.part10 import split_part10
from pipeline.runtime import Runtime

CT = "transfer_syntaxes/explicit_vr_le/dcm_qa_ts_1.dcm"


def blob_files(runtime: Runtime) -> list[Path]:
    root = Path(runtime.blobs.url.removeprefix("file://"))
    return [p for p in root.rglob("*") if p.is_file()]


def changed_copy(path: Path, tmp_path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    ds.StudyDescription = "corrected"
    out = tmp_path / "changed.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out.read_bytes()


def test_store_dataset_writes_our_meta_and_the_dataset_unchanged(runtime: Runtime, dicom_data: Path) -> None:
    data = (dicom_data / CT).read_bytes()
    part = split_part10(data)
    result = runtime.ingest.store_dataset(
        part.dataset, part.transfer_syntax_uid, Provenance("dimse", calling_ae="CT01")
    )
    assert result.outcome is RecordOutcome.STORED
    stored = runtime.blobs.get(result.storage_key)
    assert bytes(split_part10(stored).dataset) == bytes(part.dataset)
    meta = pydicom.dcmread(runtime.blobs.url.removeprefix("file://") + "/" + result.storage_key).file_meta
    assert meta.SourceApplicationEntityTitle == "CT01"
    assert meta.MediaStorageSOPInstanceUID == result.sop_instance_uid
    row = runtime.index.get_instance(result.sop_instance_uid)
    assert row is not None and row.calling_ae == "CT01"


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [(DuplicatePolicy.KEEP, RecordOutcome.KEPT_EXISTING), (DuplicatePolicy.REPLACE, RecordOutcome.REPLACED)],
)
def test_resend_policies_leave_exactly_one_blob(
    runtime: Runtime, dicom_data: Path, tmp_path: Path, policy: DuplicatePolicy, outcome: RecordOutcome
) -> None:
    runtime.ingest.duplicate_policy = policy
    original = (dicom_data / CT).read_bytes()
    changed = changed_copy(dicom_data / CT, tmp_path)
    first = runtime.ingest.store_part10(original, Provenance("import"))
    assert runtime.ingest.store_part10(original, Provenance("import")).outcome is RecordOutcome.IDENTICAL
    second = runtime.ingest.store_part10(changed, Provenance("import"))
    assert second.outcome is outcome
    assert len(blob_files(runtime)) == 1
    row = runtime.index.get_instance(first.sop_instance_uid)
    assert row is not None
    expected = original if policy is DuplicatePolicy.KEEP else changed
    assert runtime.blobs.get(row.storage_key) == expected
    assert runtime.index.counts().instances == 1


def test_reject_policy_refuses_and_keeps_the_first(runtime: Runtime, dicom_data: Path, tmp_path: Path) -> None:
    runtime.ingest.duplicate_policy = DuplicatePolicy.REJECT
    original = (dicom_data / CT).read_bytes()
    runtime.ingest.store_part10(original, Provenance("import"))
    with pytest.raises(DuplicateInstance):
        runtime.ingest.store_part10(changed_copy(dicom_data / CT, tmp_path), Provenance("import"))
    assert len(blob_files(runtime)) == 1


def test_index_failure_removes_the_new_blob(runtime: Runtime, dicom_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise OutOfResources("index unavailable: test")

    monkeypatch.setattr(runtime.index, "record_instance", broken)
    with pytest.raises(OutOfResources):
        runtime.ingest.store_part10((dicom_data / CT).read_bytes(), Provenance("import"))
    assert blob_files(runtime) == []


def test_blob_write_failure_is_out_of_resources(runtime: Runtime, dicom_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(key: str, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runtime.blobs, "put", disk_full)
    with pytest.raises(OutOfResources) as info:
        runtime.ingest.store_part10((dicom_data / CT).read_bytes(), Provenance("import"))
    assert info.value.dimse_status == 0xA700 and info.value.http_status == 503
    assert runtime.index.counts().instances == 0


def test_not_dicom(runtime: Runtime) -> None:
    with pytest.raises(InvalidDataset):
        runtime.ingest.store_part10(b"%PDF-1.7 this is not a DICOM file at all", Provenance("import"))
    assert runtime.index.counts().instances == 0

