"""Decompression bombs and garbage frames: refused, or failed, before any decoder allocates.

Real frames of the corpus have their codestream header patched (JPEG SOF,
JPEG-LS SOF55, JPEG 2000 / HTJ2K SIZ, the RLE header) to declare another
image than the dataset: each is refused with DecodeFailed before a decoder
runs, in a few milliseconds and a few megabytes (tracemalloc).
"""

from __future__ import annotations

import re
import struct
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pipeline.decode import pixels
from pipeline.decode.codestream import j2k_header, jpeg_header, rle_segments
from pipeline.decode.pixels import INFLATE_HEADROOM, decode_instance
from pipeline.decode.service import MAX_ATTEMPTS, STAGE, DecodeService
from pipeline.errors import DecodeFailed
from pipeline.index.records import Provenance
from pipeline.index.schema import PixelState
from pipeline.ingest.part10 import build_file_meta
from pipeline.runtime import Runtime

LIMIT = 1 << 30
_ENCAPSULATED = re.compile(rb"\xe0\x7f\x10\x00O[BW]\x00\x00\xff\xff\xff\xff")

JPEG_BASELINE = "edge_cases/SC_jpeg_no_color_transform.dcm"  # 256 x 256 x 3, 8 bits
JPEG_EXTENDED = "edge_cases/JPEG-lossy.dcm"  # 1024 x 256, 12 bits, GDCM
JPEG_LOSSLESS = "transfer_syntaxes/jpeg_lossless_sv1/CT1_JPLL"  # 512 x 512, 16 bits
JPEG_LS = "enhanced/emri_small_jpeg_ls_lossless.dcm"  # 64 x 64, 10 frames
J2K = "transfer_syntaxes/jpeg2000_lossy/CT2_J2KI"  # 512 x 512
HTJ2K = "transfer_syntaxes/htj2k_lossless_rpcl/CT1_JPH"  # 512 x 512
RLE = "transfer_syntaxes/rle/emri_small_RLE.dcm"  # 64 x 64 x 16 bits, 10 frames


def fragments(blob: bytes) -> Iterator[tuple[int, int]]:
    """(offset of the value, length) of each item after the Basic Offset Table (PS3.5 A.4)."""
    pos = list(_ENCAPSULATED.finditer(blob))[-1].end()
    first = True
    while True:
        group, element, length = struct.unpack_from("<HHI", blob, pos)
        if (group, element) != (0xFFFE, 0xE000):
            return
        if not first:
            yield pos + 8, length
        first = False
        pos += 8 + length


def patched(blob: bytes, at: int, value: bytes) -> bytes:
    return blob[:at] + value + blob[at + len(value) :]


def sof_offset(blob: bytes, start: int, markers: tuple[int, ...]) -> int:
    """Offset of the first Start Of Frame marker in the codestream at ``start``."""
    pos = start + 2
    while blob[pos + 1] not in markers:
        pos += 2 + int.from_bytes(blob[pos + 2 : pos + 4], "big")
    return pos


def jpeg_bomb(dicom_data: Path) -> bytes:
    """A stored-as-received JPEG Baseline instance whose first frame's SOF declares 65535 x 65535.

    Ingest reads only the header, whose Image Pixel Module is sound, so the
    instance is stored; the decode stage refuses the frame ("over the
    limit") before a decoder allocates anything. The undecodable instance of
    the decode and archive tests.
    """
    blob = read(dicom_data, JPEG_BASELINE)
    start, _ = next(fragments(blob))
    return patched(blob, sof_offset(blob, start, (0xC0,)) + 5, struct.pack(">HH", 65535, 65535))


def refused_quickly(blob: bytes, match: str) -> DecodeFailed:
    """Decoding ``blob`` fails with ``match`` in well under a second and a few MB."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeFailed, match=match) as err:
            decode_instance(blob, LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    # The blob itself is copied a few times (read, split into frames): the
    # decoders' allocation of 65535 x 65535 samples would be gigabytes.
    assert peak < 4 * len(blob) + (4 << 20), peak
    return err.value


def read(dicom_data: Path, rel: str) -> bytes:
    return (dicom_data / rel).read_bytes()


# -- JPEG (ISO/IEC 10918-1 B.2.2) and JPEG-LS (14495-1 C.2.2) -------------------------------


@pytest.mark.parametrize(
    ("rel", "markers"),
    [
        (JPEG_BASELINE, (0xC0,)),
        (JPEG_EXTENDED, (0xC1,)),
        (JPEG_LOSSLESS, (0xC3,)),
        (JPEG_LS, (0xF7,)),
    ],
)
def test_jpeg_frame_declaring_65535_square_is_refused(dicom_data: Path, rel: str, markers: tuple[int, ...]) -> None:
    blob = read(dicom_data, rel)
    decode_instance(blob, LIMIT)  # as stored: decodes
    start, _ = next(fragments(blob))
    sof = sof_offset(blob, start, markers)
    bomb = patched(blob, sof + 5, struct.pack(">HH", 65535, 65535))  # Y, X
    err = refused_quickly(bomb, r"frame 1: JPEG(-LS SOF55| SOF) declares 65535x65535")
    assert "the dataset" in err.reason


def test_jpeg_ls_bomb_in_a_later_frame(dicom_data: Path) -> None:
    blob = read(dicom_data, JPEG_LS)
    start, _ = list(fragments(blob))[6]
    bomb = patched(blob, sof_offset(blob, start, (0xF7,)) + 5, struct.pack(">H", 65535))
    refused_quickly(bomb, "frame 7: JPEG-LS SOF55 declares 65535x64")


def test_jpeg_components_precision_and_dnl_height(dicom_data: Path) -> None:
    blob = read(dicom_data, JPEG_BASELINE)
    start, _ = next(fragments(blob))
    sof = sof_offset(blob, start, (0xC0,))
    refused_quickly(patched(blob, sof + 9, b"\x01"), "with 1 components, the dataset 256x256 with 3")
    refused_quickly(patched(blob, sof + 4, b"\x10"), "16-bit samples, Bits Allocated is 8")
    # Y = 0: the height comes later in a DNL marker (B.2.5): not trusted.
    refused_quickly(patched(blob, sof + 5, b"\0\0"), "declares 0x256")


def test_jpeg_without_a_frame_header(dicom_data: Path) -> None:
    blob = read(dicom_data, JPEG_BASELINE)
    start, length = next(fragments(blob))
    refused_quickly(patched(blob, start, b"\0\0"), "no SOI marker")
    sof = sof_offset(blob, start, (0xC0,))
    refused_quickly(patched(blob, sof + 1, b"\xfe"), "no frame header|marker segment")
    with pytest.raises(DecodeFailed):
        jpeg_header(b"\xff\xd8\xff\xc0\x00\x05\x08")


# -- JPEG 2000 and HTJ2K (ISO/IEC 15444-1 A.5.1) ------------------------------------------------


@pytest.mark.parametrize("rel", [J2K, HTJ2K])
def test_j2k_siz_declaring_65535_square_is_refused(dicom_data: Path, rel: str) -> None:
    blob = read(dicom_data, rel)
    start, _ = next(fragments(blob))
    assert blob[start : start + 4] == b"\xff\x4f\xff\x51"
    bomb = patched(blob, start + 8, struct.pack(">II", 65535, 65535))  # Xsiz, Ysiz
    refused_quickly(bomb, "frame 1: JPEG 2000 SIZ declares 65535x65535 with 1 components")
    # Components, precision, tiles: what OpenJPEG sizes its structures by.
    refused_quickly(patched(blob, start + 40, b"\x00\x03"), "SIZ is malformed|with 3 components")
    refused_quickly(patched(blob, start + 24, struct.pack(">II", 1, 1)), "262144 tiles, over 65535")
    refused_quickly(patched(blob, start + 42, b"\x7f"), "SIZ component is malformed")
    refused_quickly(patched(blob, start + 42, b"\x1f"), "32-bit samples, Bits Allocated is 16")


def test_j2k_header_reads_a_jp2_wrapper(dicom_data: Path) -> None:
    blob = read(dicom_data, J2K)
    start, length = next(fragments(blob))
    codestream = blob[start : start + length]
    jp2 = (
        b"\x00\x00\x00\x0cjP  \r\n\x87\n"
        + struct.pack(">I4s", 20, b"ftyp") + b"jp2 \0\0\0\0jp2 "
        + struct.pack(">I4s", 8 + len(codestream), b"jp2c") + codestream
    )  # fmt: skip
    assert j2k_header(jp2) == j2k_header(codestream)
    assert j2k_header(codestream)[0].rows == 512


# -- RLE (PS3.5 G.3.1) ----------------------------------------------------------------------


def test_rle_segment_count_must_match(dicom_data: Path) -> None:
    blob = read(dicom_data, RLE)
    start, length = next(fragments(blob))
    assert rle_segments(blob[start : start + length]) == 2  # 16 bits: two byte planes
    refused_quickly(patched(blob, start, struct.pack("<I", 15)), "15 segments|offsets")
    refused_quickly(patched(blob, start, struct.pack("<I", 0)), "must be 1 to 15")
    refused_quickly(patched(blob, start, struct.pack("<I", 0xFFFFFFFF)), "must be 1 to 15")
    refused_quickly(patched(blob, start + 4, struct.pack("<I", 0)), "start at offset 64")
    refused_quickly(patched(blob, start + 8, struct.pack("<I", 1 << 30)), "out of order or past")


def test_rle_segment_running_past_its_plane_fails_the_instance(dicom_data: Path) -> None:
    """Regression (found by tests/fuzz): a segment whose runs decode past Rows x Columns
    made pylibjpeg-rle panic (pyo3 PanicException, a BaseException) and kill the decode
    call instead of failing the instance."""
    blob = read(dicom_data, RLE)
    start, length = next(fragments(blob))
    first = struct.unpack_from("<3I", blob, start)
    segment = bytes([0x81, 0x00]) * ((first[2] - first[1]) // 2)  # 128 zeros per 2 bytes
    with pytest.raises(DecodeFailed, match=r"RLE Lossless: cannot decode pixel data \(PanicException\)"):
        decode_instance(patched(blob, start + 64, segment), LIMIT)


# -- garbage after a valid header, and any exception at all ---------------------------------------


@pytest.mark.parametrize("rel", [JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LS, J2K, HTJ2K, RLE])
def test_garbage_frames_fail_cleanly(dicom_data: Path, rel: str) -> None:
    blob = read(dicom_data, rel)
    start, length = next(fragments(blob))
    keep = 64 if rel == RLE else 200  # the header, then noise
    noise = bytes((i * 193 + 71) & 0xFF for i in range(length - keep))
    try:
        decode_instance(patched(blob, start + keep, noise), LIMIT)
    except DecodeFailed as exc:
        assert exc.reason
    # (Some codecs decode noise to noise: no error is also an answer.)


def test_any_exception_of_a_decoder_is_decode_failed(
    dicom_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Panic(BaseException):  # like pyo3's PanicException
        pass

    def explode(*args: object, **kwargs: object) -> None:
        raise Panic("index out of bounds")

    monkeypatch.setattr(pixels, "describe", explode)
    with pytest.raises(DecodeFailed, match=r"unexpected error while decoding \(Panic\)"):
        decode_instance(read(dicom_data, J2K), LIMIT)
    monkeypatch.setattr(pixels, "_decode", explode)
    with pytest.raises(DecodeFailed, match=r"\(Panic\)"):
        decode_instance(read(dicom_data, J2K), LIMIT)
    monkeypatch.setattr(pixels, "_decode", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        decode_instance(read(dicom_data, J2K), LIMIT)


def test_fewer_frames_than_declared(dicom_data: Path) -> None:
    blob = read(dicom_data, JPEG_LS)
    frames = list(fragments(blob))
    start, _ = frames[9]
    # The tenth item's tag becomes a sequence delimiter: nine frames are left.
    cut = patched(blob, start - 8, struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    with pytest.raises(DecodeFailed, match="9 frames, 10 declared|cannot split|cannot parse"):
        decode_instance(cut, LIMIT)


# -- a deflated dataset (PS3.5 A.5) ----------------------------------------------------------


def test_deflate_bomb_at_decode() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3"
    ds.add_new(0x00090010, "LO", "FUZZ")
    ds.add_new(0x00091010, "OB", bytes(INFLATE_HEADROOM + (2 << 20)))
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = raw.compress(fp.getvalue()) + raw.flush()
    del fp, ds
    blob = build_file_meta(ds_class := "1.2.840.10008.5.1.4.1.1.7", "1.2.3", DeflatedExplicitVRLittleEndian)
    assert ds_class
    tracemalloc.start()
    try:
        with pytest.raises(DecodeFailed, match="inflates past the limit"):
            decode_instance(blob + stream, 1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Bounded by the limit (max_decoded_bytes + INFLATE_HEADROOM), not by the
    # stream: zlib's output buffer costs up to twice the limit, never more.
    assert peak < 2 * (INFLATE_HEADROOM + (1 << 20)) + (8 << 20)


# -- the decode service: one bad instance fails alone, even one that kills its process ------------


def test_a_bomb_stored_by_an_older_version_fails_alone(runtime: Runtime, dicom_data: Path) -> None:
    """An instance stored before the codestream checks (here: patched after storing)
    fails with its reason; the instance next to it is decoded."""
    blob = read(dicom_data, J2K)
    start, _ = next(fragments(blob))
    runtime.ingest.store_part10(blob, Provenance("import"))
    good = sorted((dicom_data / "series" / "mr_siemens_prisma_t1_fl2d_sag_35sl").iterdir())[0]
    runtime.ingest.store_part10(good.read_bytes(), Provenance("import"))
    key = next(r.storage_key for r in runtime.index.list_instances() if r.transfer_syntax_uid.endswith(".91"))
    path = runtime.settings.data_dir / "blobs" / key
    path.write_bytes(patched(blob, start + 8, struct.pack(">II", 65535, 65535)))
    service = DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs)
    outcomes = service.run_once(limit=10)
    assert sorted(o.state.value for o in outcomes) == ["failed", "ready"]
    ((uid, reason),) = runtime.index.pixel_failures()
    assert "JPEG 2000 SIZ declares 65535x65535" in reason


def test_an_instance_that_kills_its_process_is_given_up(runtime: Runtime, dicom_data: Path) -> None:
    """A decode that never returns (the process died in the codec) is retried up to
    MAX_ATTEMPTS; the next claim fails it without decoding it again."""
    runtime.ingest.store_part10(read(dicom_data, J2K), Provenance("import"))
    service = DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs)
    for _ in range(MAX_ATTEMPTS):  # each claim's process "dies": no outcome recorded
        (item,) = runtime.index.claim_work(STAGE, 1, lease_seconds=0)
    (item,) = runtime.index.claim_work(STAGE, 1, lease_seconds=0)
    assert item.attempts == MAX_ATTEMPTS + 1

    def must_not_run(*args: object) -> None:
        raise AssertionError("decoded again")

    service.blobs = type("NoBlobs", (), {"get": must_not_run})()  # type: ignore[assignment]
    outcome = service.decode(item)
    assert outcome.state is PixelState.FAILED
    assert "the decoding process died" in (outcome.reason or "")
    assert runtime.index.get_instance(item.sop_instance_uid).pixel_state is PixelState.FAILED  # type: ignore[union-attr]
