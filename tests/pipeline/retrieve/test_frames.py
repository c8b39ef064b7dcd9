"""Frames for WADO-RS (PS3.18 8.7.3.3): frames cut from native stored files
equal the decode stage's (pydicom's) values; original compressed frames; bulk
data paths."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from pipeline.decode.pixels import decode_instance
from pipeline.errors import NotFound
from pipeline.retrieve.frames import (
    bulk_value,
    encapsulated_frames,
    media_type_of,
    parse_path,
    stored_frame,
)
from tests.pipeline.decode.test_pixels import stored_blob

#: Native little endian images: (file, whether the frame can be cut from the file).
NATIVE = [
    ("series/ct_philips_ingenuity_headphantom_54sl/I10", True),  # 16/12 unsigned
    ("transfer_syntaxes/explicit_vr_le/dcm_qa_ts_1.dcm", True),
    ("transfer_syntaxes/implicit_vr_le/MR_small_implicit.dcm", True),  # implicit VR
    ("enhanced/philips_IM_0027_fMAP.dcm", True),  # 64 frames
    ("enhanced/eCT_Supplemental.dcm", True),
    ("other/2020-11-16-SalimKanounAnonymization.dcm", True),  # PT 16/16
    ("other/KarstenHilbertRF.dcm", True),  # 8 bits
    ("other/rtdose.dcm", True),  # 32 bits, 15 frames
    ("edge_cases/12bitUnsigned_0x0F0F.dcm", True),  # high bits set: cleared
    ("cr_dx/dx_image.dcm", True),  # MONOCHROME1 8 bits
    ("us/US1_UNCR.dcm", False),  # RGB: the decode stage's layout
    ("transfer_syntaxes/explicit_vr_be/dcm_qa_ts_3.dcm", False),  # big endian
    ("transfer_syntaxes/deflated/image_dfl.dcm", False),  # deflated
]


@pytest.mark.parametrize(("rel", "cut"), NATIVE)
def test_stored_frame_equals_decoded(dicom_data: Path, rel: str, cut: bool) -> None:
    blob = stored_blob(dicom_data / rel)
    decoded = decode_instance(blob, 1 << 30)
    frames = decoded.frames
    indexes = sorted({0, frames.shape[0] // 2, frames.shape[0] - 1})
    for index in indexes:
        got = stored_frame(blob, decoded.description, index)
        if not cut:
            assert got is None
            continue
        want = np.ascontiguousarray(frames[index], dtype=frames.dtype.newbyteorder("<")).tobytes()
        assert got == want, (rel, index)
    assert stored_frame(blob, decoded.description, frames.shape[0]) is None  # out of range


def test_signed_sign_extended() -> None:
    """12 bits stored, signed: bit 11 is the sign (PS3.5 8.1.1), high bits ignored."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.5"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    raw = np.array([0x0800, 0xF7FF, 0x07FF, 0x1FFF], dtype="<u2")  # -2048, 2047, 2047, -1
    ds.PixelData = raw.tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        ds.SOPClassUID, ds.SOPInstanceUID)  # fmt: skip
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    blob = out.getvalue()
    decoded = decode_instance(blob, 1 << 20)
    got = np.frombuffer(stored_frame(blob, decoded.description, 0) or b"", "<i2")
    assert got.tolist() == [-2048, 2047, 2047, -1]
    assert np.array_equal(got, decoded.frames[0].ravel())


def test_trailing_element_falls_back(dicom_data: Path) -> None:
    blob = stored_blob(dicom_data / NATIVE[0][0])
    description = decode_instance(blob, 1 << 30).description
    # Data Set Trailing Padding (FFFC,FFFC) after Pixel Data: not cut from the file.
    padded = blob + b"\xfc\xff\xfc\xffOB\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00"
    assert stored_frame(padded, description, 0) is None


@pytest.mark.parametrize(
    ("rel", "media"),
    [("us/Issue16.dcm", "image/jpeg"), ("transfer_syntaxes/rle/emri_small_RLE.dcm", "image/dicom-rle"),
     ("transfer_syntaxes/jpeg2000_lossless/US1_J2KR.dcm", "image/jp2"),
     ("transfer_syntaxes/htj2k_lossless_rpcl/CT1_JPH", "image/jphc"),
     ("transfer_syntaxes/jpeg_ls_near_lossless/MR4_JLSN", "image/jls")],
)  # fmt: skip
def test_encapsulated_frames_are_the_originals(dicom_data: Path, rel: str, media: str) -> None:
    blob = (dicom_data / rel).read_bytes()
    ds = pydicom.dcmread(BytesIO(blob))
    count = int(ds.get("NumberOfFrames") or 1)
    want = list(generate_frames(ds.PixelData, number_of_frames=count))
    syntax, got = encapsulated_frames(blob, [count, 1])
    assert syntax == ds.file_meta.TransferSyntaxUID
    assert media_type_of(syntax) == media
    assert got == [want[count - 1], want[0]]
    with pytest.raises(NotFound):
        encapsulated_frames(blob, [count + 1])
    assert bulk_value(blob, "7FE00010").encapsulated


def test_native_has_no_encapsulated_frames(dicom_data: Path) -> None:
    with pytest.raises(NotFound):
        encapsulated_frames(stored_blob(dicom_data / NATIVE[0][0]), [1])
    assert media_type_of(pydicom.uid.ExplicitVRLittleEndian) is None


def test_bulk_paths() -> None:
    assert parse_path("00880200/1/7FE00010") == [0x00880200, 1, 0x7FE00010]
    for bad in ("", "7FE0", "00880200/1", "00880200/0/7FE00010", "0088020G", "00880200/x/7FE00010",
                "/".join(["00880200/1"] * 17 + ["7FE00010"])):  # fmt: skip
        with pytest.raises(NotFound):
            parse_path(bad)


def test_big_endian_word_bulk_data_is_swapped(dicom_data: Path) -> None:
    rel = "transfer_syntaxes/explicit_vr_be/dcm_qa_ts_3.dcm"
    blob = (dicom_data / rel).read_bytes()
    value = bulk_value(blob, "7FE00010")
    assert not value.encapsulated
    assert value.data == pydicom.dcmread(dicom_data / rel).pixel_array.astype("<u2").tobytes()
    with pytest.raises(NotFound):
        bulk_value(blob, "00080018")  # not binary
