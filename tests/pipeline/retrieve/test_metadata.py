"""WADO-RS metadata documents (PS3.18 F.2): DICOM JSON with BulkDataURIs and
InlineBinary, person names, sequences; the series join and its cache."""

from __future__ import annotations

import base64
import json
from io import BytesIO
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pipeline.index.records import InstanceRow
from pipeline.index.schema import PixelState
from pipeline.retrieve.frames import bulk_value
from pipeline.retrieve.metadata import (
    BULK_DATA_THRESHOLD,
    MetadataService,
    bulkdata_uri,
    instance_document,
    json_array,
    keys_version,
    with_base,
)
from pipeline.storage.blobs import LocalBlobStore, new_storage_key
from pipeline.storage.metadata import LocalMetadataStore

STUDY, SERIES, SOP = "1.2.3.4", "1.2.3.4.5", "1.2.3.4.5.6"


def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = SOP
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientName = "Doe^Jane^^Dr=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceNumber = 7
    ds.SliceThickness = "2.5"
    ds.add_new(0x00091010, "OB", b"\x01\x02\x03\x04")  # private, short: InlineBinary
    ds.add_new(0x00091011, "FD", [1.5, float("nan")])  # JSON has no NaN
    icon = Dataset()
    icon.Rows, icon.Columns = 32, 32
    icon.add_new(0x7FE00010, "OB", bytes(range(256)) * 4)  # 1024 bytes: bulk data
    ds.IconImageSequence = [icon]
    ds.add_new(0x7FE00010, "OW", bytes(2000))
    return ds


@pytest.fixture
def document() -> dict:
    return json.loads(instance_document(_part10(_dataset())))


def test_values_equal_pydicoms_json(document: dict) -> None:
    ds = _dataset()
    assert document["00080018"] == {"vr": "UI", "Value": [SOP]}
    assert document["00200013"] == {"vr": "IS", "Value": [7]}
    assert document["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert "00020010" not in document  # File Meta Information is not the instance's
    assert document["00100010"] == ds["PatientName"].to_json_dict(None, BULK_DATA_THRESHOLD)
    assert document["00100010"]["Value"][0] == {
        "Alphabetic": "Doe^Jane^^Dr",
        "Ideographic": "\u5c71\u7530^\u592a\u90ce",
        "Phonetic": "\u3084\u307e\u3060^\u305f\u308d\u3046",
    }


def test_short_binary_inline_long_binary_bulk(document: dict) -> None:
    assert document["00091010"] == {"vr": "OB",
                                    "InlineBinary": base64.b64encode(b"\x01\x02\x03\x04").decode()}  # fmt: skip
    assert document["7FE00010"] == {"vr": "OW",
                                    "BulkDataURI": bulkdata_uri(STUDY, SERIES, SOP, "7FE00010")}  # fmt: skip
    icon = document["00880200"]
    assert icon["vr"] == "SQ" and len(icon["Value"]) == 1
    assert icon["Value"][0]["00280010"] == {"vr": "US", "Value": [32]}
    assert icon["Value"][0]["7FE00010"]["BulkDataURI"].endswith(
        f"/instances/{SOP}/bulkdata/00880200/1/7FE00010")


def test_non_finite_floats_become_null(document: dict) -> None:
    assert document["00091011"] == {"vr": "FD", "Value": [1.5, None]}


def test_bulkdata_uris_resolve_in_the_blob() -> None:
    part10 = _part10(_dataset())
    doc = json.loads(instance_document(part10))
    prefix = bulkdata_uri(STUDY, SERIES, SOP, "")
    icon_path = doc["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"].removeprefix(prefix)
    assert bulk_value(part10, icon_path).data == bytes(range(256)) * 4
    assert bulk_value(part10, doc["7FE00010"]["BulkDataURI"].removeprefix(prefix)).data == bytes(2000)


def test_with_base_makes_uris_absolute() -> None:
    raw = instance_document(_part10(_dataset()))
    absolute = json.loads(with_base(raw, "https://pacs.example/dicom-web/"))
    assert absolute["7FE00010"]["BulkDataURI"] == (
        f"https://pacs.example/dicom-web/studies/{STUDY}/series/{SERIES}"
        f"/instances/{SOP}/bulkdata/7FE00010")
    no_bulk = b'{"00080018":{"vr":"UI","Value":["1.2"]}}'
    assert with_base(no_bulk, "http://x") is no_bulk


def _no_empty_sequences(value: object) -> object:
    """pydicom writes an empty sequence as ``"Value": []``; we leave Value out (F.2.5)."""
    if isinstance(value, dict):
        if value.get("vr") == "SQ" and value.get("Value") == []:
            return {"vr": "SQ"}
        return {k: _no_empty_sequences(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_empty_sequences(v) for v in value]
    return value


def test_corpus_sequences_and_charsets(dicom_data: Path) -> None:
    """Deep SR content tree and ISO 2022 names: equal to pydicom's own JSON."""
    for rel in ("other/test-SR.dcm", "other/chrH31.dcm", "other/chrRuss.dcm"):
        data = (dicom_data / rel).read_bytes()
        ds = pydicom.dcmread(BytesIO(data))
        ours = json.loads(instance_document(data))
        theirs = ds.to_json_dict(BULK_DATA_THRESHOLD, lambda e: "bulk")
        for key, value in theirs.items():
            if "BulkDataURI" in json.dumps(value):
                continue
            assert ours[key] == _no_empty_sequences(value), (rel, key)
        assert set(ours) == set(theirs)


def test_refuses_what_is_not_ours() -> None:
    with pytest.raises(ValueError):
        instance_document(b"not dicom at all")
    ds = _dataset()
    del ds.StudyInstanceUID
    with pytest.raises(ValueError):
        instance_document(_part10(ds))


# ----------------------------------------------------------------- service


def _row(key: str, sop: str, series: str = SERIES) -> InstanceRow:
    return InstanceRow(
        sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        series_instance_uid=series, study_instance_uid=STUDY, patient_id="P",
        instance_number=None, transfer_syntax_uid=ExplicitVRLittleEndian, rows=None,
        columns=None, number_of_frames=None, size=0, sha256="0" * 64, storage_key=key,
        received_at=datetime.now(UTC), calling_ae="", source="import",
        pixel_state=PixelState.NONE, pixel_error=None,
    )  # fmt: skip


class CountingBlobs(LocalBlobStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return super().get(key)


def _stored(blobs: CountingBlobs, n: int) -> list[InstanceRow]:
    rows = []
    for i in range(n):
        ds = _dataset()
        ds.SOPInstanceUID = generate_uid()
        key = new_storage_key()
        blobs.put(key, _part10(ds))
        rows.append(_row(key, ds.SOPInstanceUID))
    return rows


def test_series_built_once_then_cached(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path / "blobs")
    store = LocalMetadataStore(tmp_path)
    service = MetadataService(blobs, store)
    rows = _stored(blobs, 4)
    blobs.reads = 0
    first = service.series(SERIES, rows)
    assert blobs.reads == 4  # built on demand and saved
    assert all(store.get(r.storage_key) for r in rows)
    array = json.loads(json_array([first.members]))
    assert [d["00080018"]["Value"][0] for d in array] == [r.sop_instance_uid for r in rows]
    assert service.series(SERIES, rows) is first  # cached join
    service.invalidate()
    assert service.series(SERIES, rows).members == first.members
    assert blobs.reads == 4  # the second build read the documents, not the blobs
    more = rows + _stored(blobs, 1)
    changed = service.series(SERIES, more)
    assert changed.version != first.version and changed.instances == 5


def test_lost_blob_falls_back_to_the_index(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path / "blobs")
    service = MetadataService(blobs, LocalMetadataStore(tmp_path))
    row = _row(new_storage_key(), "1.2.9")
    doc = json.loads(service.instance(row))
    assert doc["00080018"] == {"vr": "UI", "Value": ["1.2.9"]}
    assert doc["0020000D"] == {"vr": "UI", "Value": [STUDY]}


def test_cache_is_bounded(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path / "blobs")
    service = MetadataService(blobs, LocalMetadataStore(tmp_path), cache_bytes=1500)
    a, b = _stored(blobs, 1), _stored(blobs, 1)
    first = service.series("1.1", a)
    assert 1000 < len(first.members) <= 1500
    service.series("1.2", b)
    assert list(service._cache) == ["1.2"]  # noqa: SLF001 - the older one dropped
    assert service._cached == len(service._cache["1.2"].members)  # noqa: SLF001


def test_version_is_the_set_of_keys_and_answer_is_kept(tmp_path: Path) -> None:
    blobs = CountingBlobs(tmp_path / "blobs")
    service = MetadataService(blobs, LocalMetadataStore(tmp_path))
    rows = _stored(blobs, 3)
    keys = [r.storage_key for r in rows]
    assert keys_version(keys) == keys_version(reversed(keys)) != keys_version(keys[:2])
    assert service.cached(SERIES, keys_version(keys)) is None
    joined = service.series(SERIES, rows)
    assert service.cached(SERIES, keys_version(reversed(keys))) is joined
    assert service.cached(SERIES, keys_version(keys[:2])) is None
    body = joined.answer("http://a/dicom-web")
    assert joined.answer("http://a/dicom-web") is body
    documents = json.loads(body)
    assert len(documents) == 3
    assert documents[0]["7FE00010"]["BulkDataURI"].startswith("http://a/dicom-web/studies/")
    other = json.loads(joined.answer("https://b/dicom-web"))
    assert other[0]["7FE00010"]["BulkDataURI"].startswith("https://b/dicom-web/studies/")
