"""Splitting Part-10 files (PS3.10 7.1) and writing a File Meta Information."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from pipeline.errors import InvalidDataset
from pipeline.ingest.part10 import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    build_file_meta,
    infer_transfer_syntax,
    split_part10,
)
from tests.corpus import corpus_files

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _pydicom_view(path: Path) -> tuple[int, str | None, tuple[bool, bool]]:
    """Where pydicom finds the dataset, the meta's Transfer Syntax UID, the encoding it reads."""
    with open(path, "rb") as fp:
        read_preamble(fp, True)  # rewinds to 0 when there is no preamble
        meta = _read_file_meta_info(fp)
        offset = fp.tell()
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    ts = meta.get("TransferSyntaxUID")
    return offset, (str(ts) if ts else None), ds.original_encoding[:2]


def _encoding(ts: str) -> tuple[bool, bool]:
    return ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian


def test_split_agrees_with_pydicom_on_every_corpus_file(dicom_data: Path) -> None:
    files = corpus_files(dicom_data)
    assert len(files) > 100
    mismatches: dict[str, str] = {}
    with_meta = 0
    for path in files:
        name = str(path.relative_to(dicom_data))
        data = path.read_bytes()
        part = split_part10(data)
        offset, meta_ts, encoding = _pydicom_view(path)
        if part.dataset_offset != offset:
            mismatches[name] = f"offset {part.dataset_offset} != pydicom's {offset}"
        elif bytes(part.dataset) != data[offset:]:
            mismatches[name] = "dataset view is not the bytes after the meta"
        elif part.has_meta != (meta_ts is not None):
            mismatches[name] = f"has_meta {part.has_meta} but meta TS {meta_ts!r}"
        elif meta_ts is not None and part.transfer_syntax_uid != meta_ts:
            mismatches[name] = f"TS {part.transfer_syntax_uid} != meta's {meta_ts}"
        elif meta_ts is None and _encoding(part.transfer_syntax_uid) != encoding:
            mismatches[name] = f"inferred {part.transfer_syntax_uid}, pydicom reads {encoding}"
        with_meta += part.has_meta
    assert mismatches == {}
    assert with_meta == len(files) - 4  # the four files the manifest lists without a TS


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ExplVR_LitEndNoMeta.dcm", ExplicitVRLittleEndian),
        ("PrivateMDNTags.dcm", ImplicitVRLittleEndian),
        ("no_meta.dcm", ImplicitVRLittleEndian),
        ("meta_missing_tsyntax.dcm", ImplicitVRLittleEndian),
    ],
)
def test_files_without_transfer_syntax_are_inferred(
    dicom_data: Path, name: str, expected: str
) -> None:
    part = split_part10((dicom_data / "edge_cases" / name).read_bytes())
    assert part.has_meta is False
    assert part.transfer_syntax_uid == expected


def _dataset_bytes(ts: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3"
    buf = BytesIO()
    implicit, little = _encoding(ts)
    ds.save_as(buf, implicit_vr=implicit, little_endian=little, enforce_file_format=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_bare_datasets_are_inferred(ts: str) -> None:
    data = _dataset_bytes(ts)
    part = split_part10(data)
    assert (part.dataset_offset, part.has_meta) == (0, False)
    assert part.transfer_syntax_uid == ts
    assert infer_transfer_syntax(data, 0) == ts


def test_meta_without_preamble() -> None:
    dataset = _dataset_bytes(ExplicitVRLittleEndian)
    meta = build_file_meta(CT_IMAGE, "1.2.3.4.5", ExplicitVRLittleEndian)[132:]
    part = split_part10(meta + dataset)
    assert part.has_meta is True
    assert part.dataset_offset == len(meta)
    assert part.transfer_syntax_uid == ExplicitVRLittleEndian
    assert bytes(part.dataset) == dataset


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x00",
        b"\0" * 128 + b"DICM",  # a preamble and nothing else
        b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x40\x00" + b"1.2.840",  # meta cut short
        b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\0\0\x10\0\0\0\0\1",  # long header cut short
        b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00XX\x04\x00\0\0\0\0",  # meta not explicit VR
    ],
    ids=["empty", "two-bytes", "preamble-only", "meta-value-cut", "meta-header-cut", "meta-bad-vr"],
)
def test_malformed_input_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidDataset) as err:
        split_part10(data)
    assert err.value.reason


def test_whole_meta_but_no_dataset_is_refused() -> None:
    meta = build_file_meta(CT_IMAGE, "1.2.3.4.5", ExplicitVRLittleEndian)
    with pytest.raises(InvalidDataset, match="no dataset"):
        split_part10(meta)


def test_implicit_big_endian_is_not_dicom() -> None:
    # Group 0x0800 read little endian, 0x0008 read big endian, and no VR: refused.
    with pytest.raises(InvalidDataset):
        infer_transfer_syntax(b"\x00\x08\x00\x16\x00\x00\x00\x04abcd", 0)


@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless]
)
@pytest.mark.parametrize("source_ae", ["", "MODALITY_A"])
def test_build_file_meta_round_trips_through_pydicom(ts: str, source_ae: str) -> None:
    sop = "1.2.826.0.1.3680043.10.1.12345"  # odd length: padded with a NUL
    meta = build_file_meta(CT_IMAGE, sop, ts, source_ae)
    assert meta[:128] == b"\0" * 128 and meta[128:132] == b"DICM"
    assert len(meta) % 2 == 0

    with BytesIO(meta) as fp:
        read_preamble(fp, False)
        fm = _read_file_meta_info(fp)
        assert fp.tell() == len(meta)
    assert isinstance(fm, FileMetaDataset)
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == CT_IMAGE
    assert fm.MediaStorageSOPInstanceUID == sop
    assert fm.TransferSyntaxUID == ts
    assert fm.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert fm.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    if source_ae:
        assert fm.SourceApplicationEntityTitle == source_ae
    else:
        assert "SourceApplicationEntityTitle" not in fm

    part = split_part10(meta + b"\x08\x00\x18\x00UI\x06\x001.2.3\0")
    assert (part.dataset_offset, part.transfer_syntax_uid, part.has_meta) == (len(meta), ts, True)


def test_build_file_meta_makes_a_readable_file(dicom_data: Path) -> None:
    # A DIMSE dataset (no meta) plus our meta reads back in pydicom like the original.
    path = dicom_data / "transfer_syntaxes" / "implicit_vr_le" / "MR_small_implicit.dcm"
    original = pydicom.dcmread(path)
    dataset = bytes(split_part10(path.read_bytes()).dataset)
    meta = build_file_meta(original.SOPClassUID, original.SOPInstanceUID, ImplicitVRLittleEndian)
    rebuilt = pydicom.dcmread(BytesIO(meta + dataset))
    assert rebuilt.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert rebuilt.SOPInstanceUID == original.SOPInstanceUID
    assert rebuilt.PixelData == original.PixelData
    assert len(rebuilt) == len(original)
