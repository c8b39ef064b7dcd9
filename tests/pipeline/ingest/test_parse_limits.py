"""Hostile input at ingest: sequence depth, declared pixel sizes, inflated size, UIDs.

Every limit is checked before anything is stored; each refusal is a
:class:`~pipeline.errors.LightboxError` with a reason that quotes no value.
"""

from __future__ import annotations

import re
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.errors import DatasetMismatch, InvalidDataset, TooLarge
from pipeline.index.records import Provenance
from pipeline.ingest.parse import (
    DEFAULT_MAX_SEQUENCE_DEPTH,
    check_element_lengths,
    check_pixel_limits,
    inflate,
    read_header,
)
from pipeline.ingest.part10 import build_file_meta, split_part10
from pipeline.ingest.service import IngestService
from pipeline.runtime import Runtime

PATIENT = "Hostile^Harriet"
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def header(**values: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.PatientName = PATIENT
    ds.PatientID = "HH-0001"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def image(rows: int = 4, columns: int = 4, **values: object) -> Dataset:
    ds = header(
        Rows=rows,
        Columns=columns,
        SamplesPerPixel=1,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelRepresentation=0,
        PhotometricInterpretation="MONOCHROME2",
    )
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.add_new(0x7FE00010, "OB", bytes(rows * columns))
    return ds


def raw_value(data: bytes, placeholder: str, value: bytes) -> bytes:
    """``data`` with a value written through pydicom swapped for raw bytes of the same length."""
    assert data.count(placeholder.encode()) == 1 and len(placeholder) == len(value)
    return data.replace(placeholder.encode(), value)


def nested(depth: int, implicit: bool, defined: bool, tag: int = 0x0040A730, vr: bytes = b"SQ") -> bytes:
    """``depth`` sequences, each in the one item of the one above (PS3.5 7.5), built without recursion."""
    inner = struct.pack("<HH", 0x0008, 0x0100) + (
        struct.pack("<I", 4) if implicit else b"SH" + struct.pack("<H", 4)
    ) + b"DEEP"
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + (b"" if implicit else vr + b"\0\0")
    item = struct.pack("<HH", 0xFFFE, 0xE000)
    if not defined:
        undefined = struct.pack("<I", 0xFFFFFFFF)
        closing = struct.pack("<HHIHHI", 0xFFFE, 0xE00D, 0, 0xFFFE, 0xE0DD, 0)
        return (head + undefined + item + undefined) * depth + inner + closing * depth
    sizes, size = [], len(inner)
    for _ in range(depth):
        sizes.append(size)
        size = len(head) + 4 + 8 + size
    return b"".join(
        head + struct.pack("<I", s + 8) + item + struct.pack("<I", s) for s in reversed(sizes)
    ) + inner


def with_nesting(depth: int, implicit: bool, defined: bool, **kw: object) -> bytes:
    return encode(header(), implicit) + nested(depth, implicit, defined, **kw)


def ts(implicit: bool) -> str:
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


# -- sequence depth (PS3.5 7.5) ------------------------------------------------------------


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("defined", [False, True], ids=["undefined", "defined"])
def test_sequence_depth_limit(implicit: bool, defined: bool) -> None:
    limit = DEFAULT_MAX_SEQUENCE_DEPTH
    ds, _ = read_header(with_nesting(limit, implicit, defined), ts(implicit))
    assert "ContentSequence" in ds
    with pytest.raises(InvalidDataset, match=f"sequences nest deeper than {limit} levels") as err:
        read_header(with_nesting(limit + 1, implicit, defined), ts(implicit))
    assert err.value.dimse_status == 0xC000 and err.value.http_status == 400
    with pytest.raises(InvalidDataset, match="deeper than 3"):
        read_header(with_nesting(4, implicit, defined), ts(implicit), max_sequence_depth=3)


@pytest.mark.parametrize("defined", [False, True], ids=["undefined", "defined"])
def test_hundred_thousand_levels_are_refused_at_once(defined: bool) -> None:
    """The walk stops at the limit: no recursion error, no time, no memory."""
    data = with_nesting(100_000, implicit=False, defined=defined)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InvalidDataset, match="nest deeper"):
            read_header(data, ExplicitVRLittleEndian)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 0.5
    assert peak < 1 << 20


def test_un_and_private_sequences_count() -> None:
    """A sequence in a UN value (implicit VR inside, PS3.5 6.2.2) or a private one counts too."""
    base = encode(header())
    un = nested(17, implicit=True, defined=True)[8:]  # the outer sequence's value: its item
    element = struct.pack("<HH", 0x0040, 0xA730) + b"UN\0\0" + struct.pack("<I", len(un)) + un
    read_header(base + element, ExplicitVRLittleEndian, max_sequence_depth=17)
    with pytest.raises(InvalidDataset, match="nest deeper"):
        read_header(base + element, ExplicitVRLittleEndian)
    private = encode(header(), True) + nested(17, True, False, tag=0x00091010)
    with pytest.raises(InvalidDataset, match="nest deeper"):
        read_header(private, ImplicitVRLittleEndian)


def test_defined_length_values_that_are_not_sequences_stay_accepted() -> None:
    """Only depth is refused inside defined length values: a UN or OB value that merely
    starts like an item (and is broken after) is accepted as it always was."""
    base = encode(header())
    value = struct.pack("<HHI", 0xFFFE, 0xE000, 0x7FFFFFF0) + b"not a dataset"
    value += b"\0" * (len(value) % 2)
    for vr in (b"UN", b"OB"):
        element = struct.pack("<HH", 0x0009, 0x1010) + vr + b"\0\0" + struct.pack("<I", len(value)) + value
        private_creator = struct.pack("<HH", 0x0009, 0x0010) + b"LO" + struct.pack("<H", 4) + b"FUZZ"
        read_header(base + private_creator + element, ExplicitVRLittleEndian)


def test_corpus_depths_are_far_below_the_default(dicom_data: Path) -> None:
    """The deepest corpus file (an SR content tree) nests 5 levels."""
    path = dicom_data / "other" / "test-SR.dcm"
    part = split_part10(path.read_bytes())
    check_element_lengths(bytes(part.dataset), False, True, 5)
    with pytest.raises(InvalidDataset, match="deeper than 4"):
        check_element_lengths(bytes(part.dataset), False, True, 4)


def test_service_uses_the_configured_depth(runtime: Runtime, dicom_data: Path) -> None:
    data = (dicom_data / "other" / "test-SR.dcm").read_bytes()
    strict = IngestService(runtime.index, runtime.blobs, max_sequence_depth=4)
    with pytest.raises(InvalidDataset, match="nest deeper"):
        strict.store_part10(data, Provenance("import"))
    assert runtime.index.counts().instances == 0
    assert runtime.ingest.max_sequence_depth == runtime.settings.max_sequence_depth
    runtime.ingest.store_part10(data, Provenance("import"))
    assert runtime.index.counts().instances == 1


# -- declared pixel sizes (PS3.3 C.7.6.3) ------------------------------------------------------


def _limits(ds: Dataset, limit: int = 1 << 30, implicit: bool = False) -> int:
    parsed, has_pixels = read_header(encode(ds, implicit), ts(implicit))
    return check_pixel_limits(parsed, has_pixels, limit)


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"Rows": 0}, "Rows must be 1 to 65535"),
        ({"Columns": 0}, "Columns must be 1 to 65535"),
        ({"NumberOfFrames": "0"}, "NumberOfFrames must be a positive integer"),
        ({"NumberOfFrames": "-3"}, "NumberOfFrames"),
        ({"NumberOfFrames": "1.5"}, "NumberOfFrames"),
        ({"NumberOfFrames": "2\\3"}, "NumberOfFrames"),
        ({"NumberOfFrames": "1_000"}, "NumberOfFrames"),
        ({"BitsAllocated": 12}, "BitsAllocated must be 1, 8, 16, 32 or 64"),
        ({"BitsAllocated": 0}, "BitsAllocated"),
        ({"BitsAllocated": 24}, "BitsAllocated"),
        ({"SamplesPerPixel": 0}, "SamplesPerPixel"),
    ],
)
def test_nonsense_image_pixel_module_is_invalid(values: dict[str, object], why: str) -> None:
    ds = image()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    with pytest.raises(InvalidDataset, match=re.escape(why)) as err:
        _limits(ds)
    assert PATIENT not in err.value.reason


@pytest.mark.parametrize("keyword", ["Rows", "Columns", "BitsAllocated"])
def test_absent_image_pixel_attributes_are_left_to_decode(keyword: str) -> None:
    """No size is declared: nothing to bound; decoding refuses it (``Rows is missing``)."""
    ds = image()
    delattr(ds, keyword)
    assert _limits(ds) == 0


@pytest.mark.parametrize("keyword", ["Rows", "Columns", "BitsAllocated", "SamplesPerPixel"])
def test_image_pixel_attributes_that_are_not_one_number_are_invalid(keyword: str) -> None:
    ds = image()
    ds.add_new(keyword, "US", [1, 2])  # two values: no size
    with pytest.raises(InvalidDataset, match=f"{keyword} is not a number"):
        _limits(ds)


@pytest.mark.parametrize("bits", [1, 8, 16, 32, 64])
def test_valid_bits_allocated(bits: int) -> None:
    per_sample = max(1, bits // 8)
    assert _limits(image(BitsAllocated=bits, NumberOfFrames="3")) == 4 * 4 * 3 * per_sample


def test_number_of_frames_absent_or_empty_is_one() -> None:
    assert _limits(image()) == 16
    assert _limits(image(NumberOfFrames="")) == 16
    assert _limits(image(NumberOfFrames=" 02 "), implicit=True) == 32


def test_declared_size_over_the_limit_is_too_large() -> None:
    ds = image(64, 32, SamplesPerPixel=3, BitsAllocated=16, NumberOfFrames="5")
    declared = 64 * 32 * 3 * 2 * 5
    assert _limits(ds, declared) == declared
    with pytest.raises(TooLarge, match=f"is {declared} bytes, over the limit of {declared - 1}") as err:
        _limits(ds, declared - 1)
    assert (err.value.dimse_status, err.value.http_status) == (0xA700, 413)


def test_no_pixel_data_no_check() -> None:
    data = raw_value(encode(header(Rows=0, Columns=0, NumberOfFrames="77777777", BitsAllocated=3)),
                     "77777777", b"nonsense")
    parsed, has_pixels = read_header(data, ExplicitVRLittleEndian)
    assert has_pixels is False and check_pixel_limits(parsed, has_pixels, 1) == 0


def test_bomb_is_refused_before_anything_is_stored(runtime: Runtime, dicom_data: Path) -> None:
    """65535 x 65535 x 16 bits declared (8.6 GB) with a few bytes there: A700H / 413."""
    bomb = dicom_data / "edge_cases" / "2026-05-26-oob-monochrome-65535.dcm"
    with pytest.raises(TooLarge, match="65535x65535x1 frames") as err:
        runtime.ingest.store_part10(bomb.read_bytes(), Provenance("import"))
    assert err.value.dimse_status == 0xA700
    part = split_part10(bomb.read_bytes())
    with pytest.raises(TooLarge):
        runtime.ingest.store_dataset(part.dataset, part.transfer_syntax_uid, Provenance("dimse"))
    assert runtime.index.counts().instances == 0
    assert not list((runtime.settings.data_dir / "blobs").rglob("*.dcm"))


def test_service_uses_the_configured_decoded_limit(runtime: Runtime) -> None:
    ds = image(16, 16)
    data = build_file_meta(SOP_CLASS, ds.SOPInstanceUID, ExplicitVRLittleEndian) + encode(ds)
    small = IngestService(runtime.index, runtime.blobs, max_decoded_bytes=255)
    with pytest.raises(TooLarge):
        small.store_part10(data, Provenance("import"))
    assert runtime.ingest.max_decoded_bytes == runtime.settings.max_decoded_bytes
    assert runtime.ingest.store_part10(data, Provenance("import")).size == len(data)


# -- a Deflated dataset (PS3.5 A.5) may not inflate past the dataset limit -------------------------


def deflate(data: bytes) -> bytes:
    raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return raw.compress(data) + raw.flush()


def test_deflate_bomb_is_refused_without_inflating_it() -> None:
    ds = header()
    ds.add_new(0x00091010, "OB", bytes(64 << 20))  # 64 MiB of zeros: ~64 kB deflated
    ds.add_new(0x00090010, "LO", "FUZZ")
    stream = deflate(encode(ds))
    assert len(stream) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="inflates past the limit of 1048576"):
            read_header(stream, DeflatedExplicitVRLittleEndian, max_inflated_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    with pytest.raises(InvalidDataset, match="truncated"):
        inflate(stream[: len(stream) // 2], 1 << 30)
    assert len(inflate(deflate(b"abc" * 10), 30)) == 30
    with pytest.raises(TooLarge):
        inflate(deflate(b"abc" * 10), 29)


def test_service_bounds_the_inflated_dataset(runtime: Runtime) -> None:
    ds = header()
    ds.add_new(0x00090010, "LO", "FUZZ")
    ds.add_new(0x00091010, "OB", bytes(4 << 20))
    data = build_file_meta(SOP_CLASS, ds.SOPInstanceUID, DeflatedExplicitVRLittleEndian)
    data += deflate(encode(ds))
    small = IngestService(runtime.index, runtime.blobs, max_dataset_bytes=1 << 20)
    with pytest.raises(TooLarge, match="inflates past"):
        small.store_part10(data, Provenance("import"))
    assert runtime.index.counts().instances == 0
    runtime.ingest.store_part10(data, Provenance("import"))


# -- UIDs (PS3.5 9.1): every one checked; none ever names a path ----------------------------------

HOSTILE_UIDS = ["../../../../etc/passwd", "1.2.3/../../x", "1.2.3\\..\\x", "1.2.3%2F..", "1.2.3.4\n"]


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"]
)
@pytest.mark.parametrize("value", HOSTILE_UIDS)
def test_dataset_uids_are_checked(runtime: Runtime, keyword: str, value: str) -> None:
    raw = value.encode() + b"\0" * (len(value) % 2)
    placeholder = "9" * len(raw)
    dataset = raw_value(encode(header(**{keyword: placeholder})), placeholder, raw)
    data = build_file_meta(SOP_CLASS, "1.2.3.4.5.6", ExplicitVRLittleEndian) + dataset
    with pytest.raises(DatasetMismatch, match=f"{keyword} is not a valid UID"):
        runtime.ingest.store_part10(data, Provenance("import"))
    with pytest.raises(DatasetMismatch, match=keyword):
        runtime.ingest.store_dataset(dataset, ExplicitVRLittleEndian, Provenance("dimse"))
    assert runtime.index.counts().instances == 0


@pytest.mark.parametrize("value", [*HOSTILE_UIDS, "1." + "2" * 64, ""])
def test_transfer_syntax_uid_is_checked(runtime: Runtime, value: str) -> None:
    if value:  # (an empty one in a File Meta is no transfer syntax: it is inferred, PS3.10 7.1)
        meta = build_file_meta(SOP_CLASS, "1.2.3.4.5.6", ExplicitVRLittleEndian)
        element = struct.pack("<HH2sH", 2, 0x10, b"UI", 20) + ExplicitVRLittleEndian.encode() + b"\0"
        raw = value.encode() + b"\0" * (len(value) % 2)
        bad = meta.replace(element, struct.pack("<HH2sH", 2, 0x10, b"UI", len(raw)) + raw)
        assert bad != meta
        with pytest.raises(InvalidDataset, match="Transfer Syntax UID is not a valid UID"):
            runtime.ingest.store_part10(bad + encode(header()), Provenance("import"))
    with pytest.raises(InvalidDataset, match="Transfer Syntax UID is not a valid UID"):
        runtime.ingest.store_dataset(encode(header()), value, Provenance("dimse"))
    assert runtime.index.counts().instances == 0


def test_storage_keys_are_generated_not_received(runtime: Runtime) -> None:
    ds = header()
    result = runtime.ingest.store_dataset(encode(ds), ExplicitVRLittleEndian, Provenance("dimse"))
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\d{2}/[0-9a-f]{32}\.dcm", result.storage_key)
    assert ds.SOPInstanceUID not in result.storage_key
    for path in (runtime.settings.data_dir).rglob("*"):
        assert ds.SOPInstanceUID not in path.name and ds.StudyInstanceUID not in str(path)
