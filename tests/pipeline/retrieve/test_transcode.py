"""Transcoding stored instances (PS3.18 8.7.3.5, PS3.5 8 and A.4): every
transfer syntax of the corpus to Explicit VR Little Endian equals pydicom's
decode pixel for pixel; as-stored is the input itself; lossy pixels are never
re-labelled lossless."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from pipeline.retrieve.transcode import (
    TranscodeRefused,
    can_transcode,
    is_lossy,
    produced_syntaxes,
    transcode,
)
from tests.pipeline.decode.test_pixels import reference

#: The smallest corpus image of each transfer syntax, plus colour and big
#: endian palette cases (YBR -> RGB, OW LUT data swapped).
BY_SYNTAX = {
    uid.ImplicitVRLittleEndian: "other/rtdose.dcm",
    uid.ExplicitVRLittleEndian: "other/chrRuss.dcm",
    uid.DeflatedExplicitVRLittleEndian: "transfer_syntaxes/deflated/image_dfl.dcm",
    uid.ExplicitVRBigEndian: "transfer_syntaxes/explicit_vr_be/dcm_qa_ts_3.dcm",
    uid.JPEGBaseline8Bit: "transfer_syntaxes/jpeg_baseline/orthanc_1.2.840.10008.1.2.4.50.dcm",
    uid.JPEGExtended12Bit: "transfer_syntaxes/jpeg_extended_12bit/MR1_JPLY",
    uid.JPEGLossless: "transfer_syntaxes/jpeg_lossless_p14/JPEGLossless_1s_1f_u_16_12.dcm",
    uid.JPEGLosslessSV1: "transfer_syntaxes/jpeg_lossless_sv1/CT1_JPLL",
    uid.JPEGLSLossless: "enhanced/emri_small_jpeg_ls_lossless.dcm",
    uid.JPEGLSNearLossless: "transfer_syntaxes/jpeg_ls_near_lossless/MR4_JLSN",
    uid.JPEG2000Lossless: "transfer_syntaxes/jpeg2000_lossless/2022-03-08-RicSmi.dcm",
    uid.JPEG2000: "transfer_syntaxes/jpeg2000_lossy/CT2_J2KI",
    uid.HTJ2KLossless: "transfer_syntaxes/htj2k_lossless/HTJ2KLossless_08_RGB.dcm",
    uid.HTJ2KLosslessRPCL: "transfer_syntaxes/htj2k_lossless_rpcl/CT1_JPH",
    uid.RLELossless: "transfer_syntaxes/rle/emri_small_RLE.dcm",
}
EXTRA = [
    "us/examples_ybr_color.dcm",  # JPEG baseline YBR_FULL_422, 30 frames
    "transfer_syntaxes/jpeg2000_lossless/US1_J2KR.dcm",  # YBR_RCT
    "us/2023-04-21-RLEPlanarConfigurationYBR_FULL.dcm",  # RLE YBR_FULL, planar
    "transfer_syntaxes/explicit_vr_be/gdcm-US-ALOKA-16_big.dcm",  # palette LUTs in OW
]
FILES = sorted(set(BY_SYNTAX.values()) | set(EXTRA))


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(data))


def test_every_corpus_syntax_is_covered(dicom_data: Path) -> None:
    for syntax, rel in BY_SYNTAX.items():
        ds = pydicom.dcmread(dicom_data / rel, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID == syntax, rel


@pytest.mark.parametrize("rel", FILES)
def test_to_explicit_little_equals_pydicom(dicom_data: Path, rel: str) -> None:
    path = dicom_data / rel
    source = pydicom.dcmread(path)
    out = transcode(path.read_bytes(), uid.ExplicitVRLittleEndian)
    ds = _read(out)
    assert ds.file_meta.TransferSyntaxUID == uid.ExplicitVRLittleEndian
    assert ds.SOPInstanceUID == source.SOPInstanceUID
    want = reference(path)
    got = ds.pixel_array.reshape(want.shape)
    assert got.dtype == want.dtype.newbyteorder("=")
    assert np.array_equal(got, want)
    # Native pixel data: the frames' bytes (plus a pad byte to even length).
    if int(ds.BitsAllocated) >= 8:
        assert len(ds.PixelData) in (want.nbytes, want.nbytes + 1)
    tsyntax = source.file_meta.TransferSyntaxUID
    if tsyntax.is_compressed and int(source.SamplesPerPixel) == 3:
        assert ds.PhotometricInterpretation == "RGB"
        assert int(ds.PlanarConfiguration) == 0
    if tsyntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit):
        assert ds.LossyImageCompression == "01"


def test_big_endian_palette_luts_swapped(dicom_data: Path) -> None:
    path = dicom_data / "transfer_syntaxes/explicit_vr_be/gdcm-US-ALOKA-16_big.dcm"
    little = _read(transcode(path.read_bytes(), uid.ExplicitVRLittleEndian))
    source = pydicom.dcmread(path)
    for keyword in ("SegmentedRedPaletteColorLookupTableData",
                    "SegmentedGreenPaletteColorLookupTableData"):  # fmt: skip
        if keyword in source:
            want = np.frombuffer(source[keyword].value, ">u2")
            assert np.array_equal(np.frombuffer(little[keyword].value, "<u2"), want)
    assert np.array_equal(little.pixel_array, source.pixel_array)


@pytest.mark.parametrize("rel", sorted(set(BY_SYNTAX.values())))
def test_as_stored_is_byte_identical(dicom_data: Path, rel: str) -> None:
    data = (dicom_data / rel).read_bytes()
    stored = pydicom.dcmread(dicom_data / rel, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert transcode(data, stored) is data
    assert can_transcode(stored, stored)
    assert produced_syntaxes(stored)[0] == stored


@pytest.mark.parametrize(
    ("rel", "target"),
    [
        ("transfer_syntaxes/jpeg_baseline/orthanc_1.2.840.10008.1.2.4.50.dcm", uid.JPEG2000Lossless),
        ("transfer_syntaxes/jpeg2000_lossy/CT2_J2KI", uid.RLELossless),
        ("transfer_syntaxes/jpeg_ls_near_lossless/MR4_JLSN", uid.JPEGLSLossless),
    ],
)
def test_lossy_to_lossless_refused(dicom_data: Path, rel: str, target: str) -> None:
    data = (dicom_data / rel).read_bytes()
    stored = pydicom.dcmread(dicom_data / rel, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert is_lossy(stored)
    assert not can_transcode(stored, target)
    assert target not in produced_syntaxes(stored)
    with pytest.raises(TranscodeRefused) as caught:
        transcode(data, target)
    assert caught.value.http_status == 406


def test_unencodable_targets_refused(dicom_data: Path) -> None:
    data = (dicom_data / BY_SYNTAX[uid.ExplicitVRLittleEndian]).read_bytes()
    for target in (uid.JPEGBaseline8Bit, uid.HTJ2KLossless, uid.ExplicitVRBigEndian, "1.2.3.4"):
        assert not can_transcode(uid.ExplicitVRLittleEndian, target)
        with pytest.raises(TranscodeRefused):
            transcode(data, target)


@pytest.mark.parametrize("target", [uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLSLossless])
def test_lossless_round_trip(dicom_data: Path, target: str) -> None:
    """Native -> lossless compressed -> native keeps every pixel (MR slice, 16/12 bit)."""
    path = dicom_data / "transfer_syntaxes/explicit_vr_le/dcm_qa_ts_1.dcm"
    assert can_transcode(uid.ExplicitVRLittleEndian, target)
    compressed = transcode(path.read_bytes(), target)
    ds = _read(compressed)
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.get("LossyImageCompression") != "01"
    back = _read(transcode(compressed, uid.ExplicitVRLittleEndian))
    assert np.array_equal(back.pixel_array, pydicom.dcmread(path).pixel_array)


def test_named_lossy_target_is_marked(dicom_data: Path) -> None:
    path = dicom_data / "transfer_syntaxes/explicit_vr_le/dcm_qa_ts_1.dcm"
    ds = _read(transcode(path.read_bytes(), uid.JPEG2000))
    assert ds.LossyImageCompression == "01"
    methods = ds["LossyImageCompressionMethod"]
    ratios = ds["LossyImageCompressionRatio"]
    assert list(methods.value if methods.VM > 1 else [methods.value])[-1] == "ISO_15444_1"
    last = ratios.value[-1] if ratios.VM > 1 else ratios.value
    assert 5 < float(last) < 20  # 10:1 asked


def test_size_limit_refuses_before_decoding(dicom_data: Path) -> None:
    data = (dicom_data / BY_SYNTAX[uid.JPEG2000Lossless]).read_bytes()
    with pytest.raises(TranscodeRefused, match="over the limit"):
        transcode(data, uid.ExplicitVRLittleEndian, max_decoded_bytes=1000)


def test_no_pixel_data_any_named_syntax(dicom_data: Path) -> None:
    data = (dicom_data / "other/test-SR.dcm").read_bytes()
    out = _read(transcode(data, uid.ImplicitVRLittleEndian))
    assert out.file_meta.TransferSyntaxUID == uid.ImplicitVRLittleEndian
    assert out.ContentSequence == pydicom.dcmread(dicom_data / "other/test-SR.dcm").ContentSequence


def test_garbage_refused() -> None:
    with pytest.raises(TranscodeRefused):
        transcode(b"\x00" * 10, uid.ImplicitVRLittleEndian)
