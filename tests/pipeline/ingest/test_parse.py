"""Reading a received dataset's header, refusing broken bytes, and UID syntax."""

from __future__ import annotations

import zlib
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from pipeline.errors import DatasetMismatch, InvalidDataset
from pipeline.ingest.parse import (
    dataset_encoding,
    extract_header,
    inflate,
    is_valid_uid,
    read_header,
)
from pipeline.ingest.part10 import split_part10
from tests.corpus import corpus_files

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
NO_STUDY_UID = "HTJ2KLossless_08_RGB.dcm"


def _parse(path: Path):  # type: ignore[no-untyped-def]
    part = split_part10(path.read_bytes())
    ds, has_pixels = read_header(bytes(part.dataset), part.transfer_syntax_uid)
    return ds, has_pixels, extract_header(ds, has_pixels)


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value in (None, "") else int(value)


def test_headers_agree_with_pydicom(dicom_data: Path) -> None:
    files = [
        p for p in corpus_files(dicom_data) if p.relative_to(dicom_data).parts[0] != "edge_cases"
    ]
    assert len(files) > 100
    mismatches: dict[str, object] = {}
    checked = 0
    for path in files:
        name = str(path.relative_to(dicom_data))
        if path.name == NO_STUDY_UID:
            continue
        ref = pydicom.dcmread(path, defer_size=1024)
        ds, has_pixels, h = _parse(path)
        pixels = any(k in ref for k in PIXEL_KEYWORDS)
        frames = _int(ref, "NumberOfFrames") or (1 if pixels else None)
        got = {
            "StudyInstanceUID": h.study.study_instance_uid,
            "SeriesInstanceUID": h.series.series_instance_uid,
            "SOPInstanceUID": h.instance.sop_instance_uid,
            "SOPClassUID": h.instance.sop_class_uid,
            "PatientID": h.patient.patient_id,
            "Modality": h.series.modality,
            "StudyDate": h.study.study_date,
            "AccessionNumber": h.study.accession_number,
            "Rows": h.instance.rows,
            "Columns": h.instance.columns,
            "BitsAllocated": h.instance.bits_allocated,
            "InstanceNumber": h.instance.instance_number,
            "SeriesNumber": h.series.series_number,
            "NumberOfFrames": h.instance.number_of_frames,
            "has_pixel_data": (has_pixels, h.instance.has_pixel_data),
        }
        want = {
            "StudyInstanceUID": _str(ref, "StudyInstanceUID"),
            "SeriesInstanceUID": _str(ref, "SeriesInstanceUID"),
            "SOPInstanceUID": _str(ref, "SOPInstanceUID"),
            "SOPClassUID": _str(ref, "SOPClassUID"),
            "PatientID": _str(ref, "PatientID"),
            "Modality": _str(ref, "Modality"),
            "StudyDate": _str(ref, "StudyDate"),
            "AccessionNumber": _str(ref, "AccessionNumber"),
            "Rows": _int(ref, "Rows"),
            "Columns": _int(ref, "Columns"),
            "BitsAllocated": _int(ref, "BitsAllocated"),
            "InstanceNumber": _int(ref, "InstanceNumber"),
            "SeriesNumber": _int(ref, "SeriesNumber"),
            "NumberOfFrames": frames,
            "has_pixel_data": (pixels, pixels),
        }
        if got != want:
            mismatches[name] = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
        # Only the header is kept: the pixel data element is not in the dataset.
        if any(k in ds for k in PIXEL_KEYWORDS):
            mismatches[name] = "pixel data in the header"
        checked += 1
    assert mismatches == {}
    assert checked == len(files) - 1


def test_pixel_data_and_frames_on_known_files(dicom_data: Path) -> None:
    _, has_pixels, h = _parse(dicom_data / "other" / "test-SR.dcm")
    assert has_pixels is False and h.instance.number_of_frames is None
    assert h.series.modality == "SR"
    _, has_pixels, h = _parse(dicom_data / "transfer_syntaxes" / "rle" / "emri_small_RLE.dcm")
    assert has_pixels is True and h.instance.number_of_frames == 10
    _, has_pixels, h = _parse(dicom_data / "cr_dx" / "dx_image.dcm")
    assert has_pixels is True and h.instance.number_of_frames == 1


def test_missing_study_uid_is_a_mismatch(dicom_data: Path) -> None:
    path = dicom_data / "transfer_syntaxes" / "htj2k_lossless" / NO_STUDY_UID
    with pytest.raises(DatasetMismatch, match="StudyInstanceUID") as err:
        _parse(path)
    assert err.value.dimse_status == 0xA900


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("MR_truncated.dcm", "truncated"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "delimiter"),
    ],
)
def test_malformed_files_are_invalid(dicom_data: Path, name: str, why: str) -> None:
    with pytest.raises(InvalidDataset) as err:
        _parse(dicom_data / "edge_cases" / name)
    assert why in err.value.reason
    assert err.value.dimse_status == 0xC000


def test_deflated_file_parses(dicom_data: Path) -> None:
    path = dicom_data / "transfer_syntaxes" / "deflated" / "image_dfl.dcm"
    part = split_part10(path.read_bytes())
    assert part.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    ds, has_pixels, h = _parse(path)
    ref = pydicom.dcmread(path)
    assert has_pixels is True
    assert h.instance.sop_instance_uid == ref.SOPInstanceUID
    assert (h.instance.rows, h.instance.columns) == (ref.Rows, ref.Columns)
    assert h.patient.patient_id == _str(ref, "PatientID")


def test_bad_deflate_stream_is_invalid() -> None:
    with pytest.raises(InvalidDataset, match="inflate"):
        read_header(b"\x08\x00\x18\x00 not a deflate stream", DeflatedExplicitVRLittleEndian)
    with pytest.raises(InvalidDataset):
        inflate(b"\xff\xff\xff")
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = raw.compress(b"abc") + raw.flush()
    assert inflate(data) == b"abc"


# -- truncated and trailing bytes -------------------------------------------------

TRUNCATION_FILES = [
    "other/test-SR.dcm",  # no pixel data, nested sequences
    "other/sample-pdf.dcm",  # no pixel data, a large OB document
    "other/waveform_ecg.dcm",  # waveform, no pixel data
    "other/rtdose.dcm",  # implicit VR
    "transfer_syntaxes/explicit_vr_be/dcm_qa_ts_3.dcm",  # big endian
    "transfer_syntaxes/jpeg2000_lossless/US1_J2KR.dcm",  # encapsulated
    "transfer_syntaxes/deflated/image_dfl.dcm",
    "enhanced/eCT_Supplemental.dcm",  # large functional group sequences
    "series/ct_philips_ingenuity_headphantom_54sl/I10",
]


def _header_cut(dataset: bytes, ts: str) -> int:
    """An offset in the middle of the largest value before the pixel data."""
    implicit, little = dataset_encoding(ts)
    ds = read_dataset(
        BytesIO(dataset), implicit, little, stop_when=lambda tag, *_: int(tag) >> 16 == 0x7FE0
    )
    # Raw (defined length) elements only: undefined length sequences come parsed.
    raw = [e for e in (ds.get_item(tag) for tag in ds.keys()) if hasattr(e, "length")]
    best = max(raw, key=lambda e: e.length if e.length != 0xFFFFFFFF else 0)
    assert best.length >= 4
    return best.value_tell + best.length // 2


@pytest.mark.parametrize("name", TRUNCATION_FILES)
def test_truncated_datasets_are_invalid(dicom_data: Path, name: str) -> None:
    part = split_part10((dicom_data / name).read_bytes())
    ts = part.transfer_syntax_uid
    dataset = bytes(part.dataset)
    if ts == DeflatedExplicitVRLittleEndian:
        # Cut inside the deflate stream (this one is followed by 8 bytes of padding).
        stream = zlib.decompressobj(-zlib.MAX_WBITS)
        stream.decompress(dataset)
        assert stream.eof
        stream_end = len(dataset) - len(stream.unused_data)
        cuts = [stream_end - 1, len(dataset) // 2]
    else:
        cuts = [len(dataset) - 1, len(dataset) - 3, _header_cut(dataset, ts)]
    read_header(dataset, ts)  # whole: fine
    for cut in cuts:
        with pytest.raises(InvalidDataset) as err:
            read_header(dataset[:cut], ts)
        assert err.value.reason, cut


def test_trailing_garbage_is_invalid(dicom_data: Path) -> None:
    part = split_part10((dicom_data / "other" / "test-SR.dcm").read_bytes())
    with pytest.raises(InvalidDataset):
        read_header(bytes(part.dataset) + b"\x01\x02\x03", part.transfer_syntax_uid)


def test_empty_dataset_is_invalid() -> None:
    with pytest.raises(InvalidDataset):
        read_header(b"", ExplicitVRLittleEndian)


def test_dataset_encoding() -> None:
    assert dataset_encoding(ImplicitVRLittleEndian) == (True, True)
    assert dataset_encoding(ExplicitVRLittleEndian) == (False, True)
    assert dataset_encoding(ExplicitVRBigEndian) == (False, False)
    assert dataset_encoding(JPEG2000Lossless) == (False, True)
    assert dataset_encoding(DeflatedExplicitVRLittleEndian) == (False, True)


# -- extract_header ---------------------------------------------------------------


def _minimal(**overrides: object) -> Dataset:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.PatientName = "Doe^John"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_extract_header_values() -> None:
    ds = _minimal(InstanceNumber="12", SeriesNumber="3", Rows=4, Columns=5, ImageType=["A", "B"])
    h = extract_header(ds, has_pixel_data=True)
    assert h.instance.instance_number == 12
    assert h.series.series_number == 3
    assert (h.instance.rows, h.instance.columns, h.instance.number_of_frames) == (4, 5, 1)
    assert h.patient.patient_name == "Doe^John"
    assert h.instance.has_pixel_data is True
    assert extract_header(_minimal(), has_pixel_data=False).instance.number_of_frames is None
    assert extract_header(_minimal(NumberOfFrames="7"), True).instance.number_of_frames == 7


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
def test_extract_header_refuses_missing_or_bad_uids(keyword: str) -> None:
    with pytest.raises(DatasetMismatch, match=keyword):
        extract_header(_minimal(**{keyword: None}), False)
    with pytest.raises(DatasetMismatch, match=keyword):
        extract_header(_minimal(**{keyword: "1.2.abc"}), False)


# -- UIDs (PS3.5 9.1) -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "1.2.840.10008.1.2.1",
        "0",
        "1.0.2",
        "2.25.329800735698586629295641978511506172918",
        "1." + "2" * 62,  # exactly 64 characters
    ],
)
def test_valid_uids(value: str) -> None:
    assert is_valid_uid(value)
    assert is_valid_uid(value, strict=True)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1." + "2" * 63,  # 65 characters
        "1.2.abc",
        "1.2.3a",
        "1..2",
        "1.2.",
        ".1.2",
        "1.2 ",
        " 1.2",
        "1.2\x00",
        "1.2\n",
        "1,2",
        "-1.2",
        "١.٢",  # digits, but not ASCII ones
    ],
)
def test_invalid_uids(value: str) -> None:
    assert not is_valid_uid(value)
    assert not is_valid_uid(value, strict=True)


def test_leading_zeros_only_in_lenient_mode() -> None:
    assert is_valid_uid("1.02.3")
    assert not is_valid_uid("1.02.3", strict=True)
    assert not is_valid_uid("01.2", strict=True)
