"""Decoding every image of the corpus: the frames equal pydicom's, the
description carries what the renderer needs, broken files fail cleanly."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_color_lut, convert_color_space, pixel_array

from pipeline.decode import registry
from pipeline.decode.pixels import DecodedPixels, decode_instance
from pipeline.decode.registry import decoder_for, module_available
from pipeline.errors import DecodeFailed, MissingDecoder
from pipeline.ingest.part10 import build_file_meta, split_part10

#: Large enough for every corpus image (the mammogram is 28.6 MB decoded).
LIMIT = 1 << 30

_DEFAULT_ROOT = Path(__file__).resolve().parents[4] / "shared" / "data" / "dicom"
_ROOT = Path(os.environ.get("LIGHTBOX_TEST_DATA", _DEFAULT_ROOT))

#: Corpus files without pixel data (outside edge_cases/).
NO_PIXELS = {"other/test-SR.dcm", "other/waveform_ecg.dcm", "other/sample-pdf.dcm"}

#: Every file of edge_cases/: None when it decodes (then it equals pydicom),
#: else a fragment of the DecodeFailed reason.
EDGE_CASES: dict[str, str | None] = {
    "12bitUnsigned_0x0F0F.dcm": None,
    "2026-05-26-oob-monochrome-65535.dcm": "over the limit",
    "ExplVR_LitEndNoMeta.dcm": "no pixel data",  # an RT Ion Plan fragment
    "Issue140.dcm": None,
    "JPEG-lossy.dcm": None,  # 12-bit JPEG Extended with Se = 0: GDCM decodes it
    "MR_truncated.dcm": "pixel data is shorter than declared: 8130 of 8192 bytes",
    "PrivateMDNTags.dcm": None,  # no File Meta: stored with one written by ingest
    "SC_jpeg_no_color_transform.dcm": None,
    "SC_rgb_small_odd.dcm": None,
    "UnknownSopClassUid.dcm": None,
    "emri_small_jpeg_2k_lossless_too_short.dcm": "pixel data is truncated or unreadable",
    "explicit_VR-UN.dcm": None,
    "meta_missing_tsyntax.dcm": "Rows is missing",
    "no_meta.dcm": "pixel data is truncated or unreadable",  # a stray byte before the dataset
    "priv_SQ.dcm": "no pixel data",
}


def _corpus_images() -> list[str]:
    if not (_ROOT / "MANIFEST.md").is_file():
        return ["<corpus missing>"]  # the dicom_data fixture skips (or fails in CI)
    return sorted(
        str(p.relative_to(_ROOT))
        for p in _ROOT.rglob("*")
        if p.is_file()
        and p.name not in ("MANIFEST.md", "SHA256SUMS")
        and p.relative_to(_ROOT).parts[0] != "edge_cases"
        and str(p.relative_to(_ROOT)) not in NO_PIXELS
    )


IMAGES = _corpus_images()


def stored_blob(path: Path) -> bytes:
    """The blob ingest stores for ``path``: as it is, or with a File Meta written for it."""
    data = path.read_bytes()
    part = split_part10(data)
    if part.has_meta:
        return data
    meta = build_file_meta("1.2.3", "1.2.3.4", part.transfer_syntax_uid)
    return meta + bytes(part.dataset)


@pytest.fixture(scope="session")
def decoded(dicom_data: Path) -> Callable[[str], DecodedPixels]:
    """Decode a corpus file at most once per session (the mammogram is large)."""
    cache: dict[str, DecodedPixels] = {}

    def get(rel: str) -> DecodedPixels:
        if rel not in cache:
            cache[rel] = decode_instance(stored_blob(dicom_data / rel), LIMIT)
        return cache[rel]

    return get


def _frames_shape(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    shape = (frames, int(ds.Rows), int(ds.Columns)) + ((samples,) if samples > 1 else ())
    return arr.reshape(shape)


def _gdcm_reference(path: Path, ds: Dataset) -> np.ndarray:
    """JPEG Extended decoded by GDCM's own reader (the IJG library), masked to
    Bits Stored (PS3.5 8.1.1): an independent path to the same backend."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read()
    raw = reader.GetImage().GetBuffer().encode("utf-8", "surrogateescape")
    assert int(ds.BitsAllocated) == 16 and int(ds.PixelRepresentation) == 0
    arr = np.frombuffer(raw, dtype="<u2") & np.uint16((1 << int(ds.BitsStored)) - 1)
    return _frames_shape(ds, arr)


def reference(path: Path) -> np.ndarray:
    """What pydicom decodes, with the backend the registry picks, shaped like ours."""
    ds = pydicom.dcmread(path, force=True)
    tsyntax = split_part10(path.read_bytes()).transfer_syntax_uid
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    if tsyntax == uid.JPEGExtended12Bit:
        return _gdcm_reference(path, ds)
    return _frames_shape(ds, pixel_array(ds, decoding_plugin=decoder_for(tsyntax).plugin))


def assert_equal_frames(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype == want.dtype.newbyteorder("=")
    for index in range(want.shape[0]):
        assert np.array_equal(got[index], want[index]), f"frame {index} differs"


@pytest.mark.parametrize("rel", IMAGES)
def test_image_equals_pydicom(
    dicom_data: Path, decoded: Callable[[str], DecodedPixels], rel: str
) -> None:
    path = dicom_data / rel
    result = decoded(rel)
    want = reference(path)
    assert_equal_frames(result.frames, want)

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    d = result.description
    assert d["rows"] == ds.Rows and d["columns"] == ds.Columns
    assert d["number_of_frames"] == int(ds.get("NumberOfFrames") or 1) == result.frames.shape[0]
    assert d["samples_per_pixel"] == int(ds.SamplesPerPixel)
    assert d["photometric_interpretation"] == ds.PhotometricInterpretation
    assert d["bits_allocated"] == ds.BitsAllocated and d["bits_stored"] == ds.BitsStored
    assert d["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
    assert d["sop_class_uid"] == ds.SOPClassUID
    assert (
        len(d["rescale_slope"])
        == len(d["rescale_intercept"])
        == len(d["windows"])
        == d["number_of_frames"]
    )
    assert d["decoded"]["dtype"] == result.frames.dtype.name
    json.dumps(d)  # JSON-serialisable


#: (file, source photometric, decoded photometric)
COLOUR = [
    ("us/Issue16.dcm", "YBR_FULL_422", "RGB"),
    ("us/examples_ybr_color.dcm", "YBR_FULL_422", "RGB"),
    ("us/2023-04-21-RLEPlanarConfigurationYBR_FULL.dcm", "YBR_FULL", "RGB"),
    ("us/US1_J2KI.dcm", "YBR_ICT", "RGB"),
    ("transfer_syntaxes/jpeg2000_lossless/US1_J2KR.dcm", "YBR_RCT", "RGB"),
    ("transfer_syntaxes/rle/2022-11-14-RLEPlanarConfiguration.dcm", "RGB", "RGB"),
    ("us/gdcm-US-ALOKA-16.dcm", "PALETTE COLOR", "PALETTE COLOR"),
    ("cr_dx/dx_image.dcm", "MONOCHROME1", "MONOCHROME1"),
]


@pytest.mark.parametrize(("rel", "source", "stored"), COLOUR)
def test_photometric_source_and_stored(
    decoded: Callable[[str], DecodedPixels], rel: str, source: str, stored: str
) -> None:
    d = decoded(rel).description
    assert d["photometric_interpretation"] == source
    assert d["decoded"]["photometric_interpretation"] == stored
    if d["samples_per_pixel"] == 3:
        assert d["decoded"]["planar_configuration"] == 0
        assert decoded(rel).frames.shape[-1] == 3


def test_ybr_full_is_stored_as_pydicoms_rgb(
    dicom_data: Path, decoded: Callable[[str], DecodedPixels]
) -> None:
    """Native YBR_FULL (here RLE, planar): pydicom's raw YBR, converted per PS3.3 C.7.6.3.1.2."""
    rel = "us/2023-04-21-RLEPlanarConfigurationYBR_FULL.dcm"
    raw = pixel_array(dicom_data / rel, raw=True, decoding_plugin="pylibjpeg")
    rgb = convert_color_space(raw, "YBR_FULL", "RGB")
    assert_equal_frames(decoded(rel).frames, rgb[np.newaxis])
    assert decoded(rel).description["planar_configuration"] == 1


def test_12_bit_garbage_is_masked(
    dicom_data: Path, decoded: Callable[[str], DecodedPixels]
) -> None:
    rel = "edge_cases/12bitUnsigned_0x0F0F.dcm"
    ds = pydicom.dcmread(dicom_data / rel)
    raw = np.frombuffer(ds.PixelData, dtype="<u2").reshape(1, ds.Rows, ds.Columns)
    assert raw.max() > 4095  # the garbage is there
    frames = decoded(rel).frames
    assert frames.dtype == np.uint16 and 0 <= frames.min() and frames.max() <= 4095
    assert np.array_equal(frames, raw & 0x0FFF)


def _blob(ds: Dataset, tsyntax: str = uid.ExplicitVRLittleEndian) -> bytes:
    ds.SOPClassUID = ds.get("SOPClassUID", uid.SecondaryCaptureImageStorage)
    ds.SOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3.4")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _image(rows: int, columns: int, pixels: bytes, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels
    return ds


def test_signed_values_are_sign_extended_from_bits_stored() -> None:
    # 12-bit signed in 16: -2048 with clean bits, -1 and 2047 and 5 with garbage above bit 11.
    raw = np.array([0xF800, 0x0FFF, 0xA7FF, 0x5005], dtype="<u2")
    ds = _image(2, 2, raw.tobytes(), BitsStored=12, HighBit=11, PixelRepresentation=1)
    result = decode_instance(_blob(ds), LIMIT)
    assert result.frames.dtype == np.int16
    assert result.frames.ravel().tolist() == [-2048, -1, 2047, 5]


def test_big_endian_signed(dicom_data: Path) -> None:
    ds = _image(1, 2, np.array([-5, 300], dtype=">i2").tobytes(), PixelRepresentation=1)
    result = decode_instance(_blob(ds, uid.ExplicitVRBigEndian), LIMIT)
    assert result.frames.dtype == np.dtype("int16") and result.frames.dtype.isnative
    assert result.frames.ravel().tolist() == [-5, 300]


def test_planar_configuration_is_undone() -> None:
    # 1x2 RGB, colour-by-plane: R R G G B B.
    ds = _image(
        1,
        2,
        bytes([10, 11, 20, 21, 30, 31]),
        SamplesPerPixel=3,
        PlanarConfiguration=1,
        PhotometricInterpretation="RGB",
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
    )
    result = decode_instance(_blob(ds), LIMIT)
    assert result.frames.shape == (1, 1, 2, 3)
    assert result.frames[0, 0].tolist() == [[10, 20, 30], [11, 21, 31]]
    assert result.description["planar_configuration"] == 1
    assert result.description["decoded"]["planar_configuration"] == 0


def test_palette_lut_matches_pydicom(
    dicom_data: Path, decoded: Callable[[str], DecodedPixels]
) -> None:
    """Segmented palette, little and big endian (PS3.3 C.7.9.2): our expanded LUT
    applied to the stored indices gives pydicom's apply_color_lut."""
    for rel in (
        "us/gdcm-US-ALOKA-16.dcm",
        "transfer_syntaxes/explicit_vr_be/gdcm-US-ALOKA-16_big.dcm",
    ):
        result = decoded(rel)
        palette = result.description["palette"]
        assert palette["segmented"] and not palette["supplemental"]
        ds = pydicom.dcmread(dicom_data / rel)
        assert palette["descriptor"]["red"] == list(ds.RedPaletteColorLookupTableDescriptor)
        first = palette["descriptor"]["red"][1]
        index = np.clip(
            result.frames[0].astype(np.int64) - first, 0, len(result.luts["palette_red"]) - 1
        )
        ours = np.stack(
            [result.luts[palette["luts"][c]][index] for c in ("red", "green", "blue")], -1
        )
        assert np.array_equal(ours, apply_color_lut(pixel_array(ds), ds))


def test_supplemental_palette_is_described(decoded: Callable[[str], DecodedPixels]) -> None:
    result = decoded("enhanced/eCT_Supplemental.dcm")
    palette = result.description["palette"]
    assert palette["supplemental"] and not palette["segmented"]
    assert palette["descriptor"]["red"] == [100, 1024, 16]
    assert [len(result.luts[palette["luts"][c]]) for c in ("red", "green", "blue")] == [100] * 3


def _group_value(ds: Dataset, frame: int, sequence: str, keyword: str) -> float:
    for item in (ds.PerFrameFunctionalGroupsSequence[frame], ds.SharedFunctionalGroupsSequence[0]):
        if sequence in item and keyword in item[sequence][0]:
            return float(
                item[sequence][0][keyword].value
                if not isinstance(item[sequence][0][keyword].value, list)
                else item[sequence][0][keyword].value[0]
            )
    raise AssertionError(f"{keyword} not found")


@pytest.mark.parametrize(
    "rel", ["enhanced/philips_IM_0027_fMAP.dcm", "enhanced/eCT_Supplemental.dcm"]
)
def test_enhanced_rescale_and_windows_per_frame(
    dicom_data: Path, decoded: Callable[[str], DecodedPixels], rel: str
) -> None:
    ds = pydicom.dcmread(dicom_data / rel, stop_before_pixels=True)
    d = decoded(rel).description
    frames = int(ds.NumberOfFrames)
    pvt = "PixelValueTransformationSequence"
    assert d["rescale_slope"] == [_group_value(ds, i, pvt, "RescaleSlope") for i in range(frames)]
    assert d["rescale_intercept"] == [
        _group_value(ds, i, pvt, "RescaleIntercept") for i in range(frames)
    ]
    voi = "FrameVOILUTSequence"
    assert [w[0]["center"] for w in d["windows"]] == [
        _group_value(ds, i, voi, "WindowCenter") for i in range(frames)
    ]
    assert [w[0]["width"] for w in d["windows"]] == [
        _group_value(ds, i, voi, "WindowWidth") for i in range(frames)
    ]
    assert d["pixel_spacing_source"] == "PixelMeasuresSequence"
    groups = (ds.PerFrameFunctionalGroupsSequence[0], ds.SharedFunctionalGroupsSequence[0])
    spacing = next(
        g.PixelMeasuresSequence[0].PixelSpacing for g in groups if "PixelMeasuresSequence" in g
    )
    assert d["pixel_spacing"] == [float(v) for v in spacing]


def test_philips_rescale_varies_per_frame(decoded: Callable[[str], DecodedPixels]) -> None:
    d = decoded("enhanced/philips_IM_0027_fMAP.dcm").description
    assert len(d["rescale_slope"]) == 64
    assert len({w[0]["center"] for w in d["windows"]}) > 1  # per-frame windows


def test_classic_ct_description(decoded: Callable[[str], DecodedPixels]) -> None:
    d = decoded("series/ct_philips_ingenuity_headphantom_54sl/I10").description
    assert d["rescale_slope"] == [1.0] and d["rescale_intercept"] == [-1024.0]
    assert d["windows"][0][0]["center"] == 40.0 and d["windows"][0][0]["width"] == 80.0
    assert d["pixel_spacing_source"] == "PixelSpacing"
    assert (
        d["transfer_syntax_lossy"] is False and d["modality_lut"] is None and d["voi_lut"] is None
    )


def test_lossy_flags(decoded: Callable[[str], DecodedPixels]) -> None:
    assert decoded("mg/MG1_J2KI").description["transfer_syntax_lossy"] is True
    assert decoded("mg/MG1_J2KI").description["lossy_image_compression"] is True
    assert (
        decoded("transfer_syntaxes/jpeg_ls_lossless/CT2_JLSL").description["transfer_syntax_lossy"]
        is False
    )


def test_lut_sequences_are_lists() -> None:
    voi_item = Dataset()
    voi_item.LUTDescriptor = [3, 0, 16]
    voi_item["LUTData"] = pydicom.DataElement(0x00283006, "US", [0, 1000, 65535])
    voi_item.LUTExplanation = "SOFT"
    mod_item = Dataset()
    mod_item.LUTDescriptor = [2, 0, 12]
    mod_item["LUTData"] = pydicom.DataElement(
        0x00283006, "OW", np.array([7, 4095], "<u2").tobytes()
    )
    mod_item.ModalityLUTType = "OD"
    ds = _image(
        1,
        1,
        b"\0\0",
        VOILUTSequence=[voi_item],
        ModalityLUTSequence=[mod_item],
        WindowCenter=[40, 400],
        WindowWidth=[80, 2000],
        WindowCenterWidthExplanation=["BRAIN", "BONE"],
        ImagerPixelSpacing=[0.1, 0.2],
    )
    d = decode_instance(_blob(ds), LIMIT).description
    assert d["voi_lut"] == [
        {"descriptor": [3, 0, 16], "data": [0, 1000, 65535], "LUTExplanation": "SOFT"}
    ]
    assert d["modality_lut"] == [
        {
            "descriptor": [2, 0, 12],
            "data": [7, 4095],
            "ModalityLUTType": "OD",
            "LUTExplanation": None,
        }
    ]
    assert d["windows"] == [
        [
            {"center": 40.0, "width": 80.0, "explanation": "BRAIN", "function": "LINEAR"},
            {"center": 400.0, "width": 2000.0, "explanation": "BONE", "function": "LINEAR"},
        ]
    ]
    assert d["pixel_spacing"] == [0.1, 0.2] and d["pixel_spacing_source"] == "ImagerPixelSpacing"
    json.dumps(d)


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_case(dicom_data: Path, name: str) -> None:
    path = dicom_data / "edge_cases" / name
    expected = EDGE_CASES[name]
    if expected is None:
        result = decode_instance(stored_blob(path), LIMIT)
        assert_equal_frames(result.frames, reference(path))
        json.dumps(result.description)
    else:
        with pytest.raises(DecodeFailed) as caught:
            decode_instance(stored_blob(path), LIMIT)
        assert caught.value.reason and expected in caught.value.reason


def test_edge_case_table_is_complete(dicom_data: Path) -> None:
    assert {p.name for p in (dicom_data / "edge_cases").iterdir()} == set(EDGE_CASES)


@pytest.mark.parametrize("rel", sorted(NO_PIXELS))
def test_no_pixel_data(dicom_data: Path, rel: str) -> None:
    with pytest.raises(DecodeFailed, match="^no pixel data$"):
        decode_instance(stored_blob(dicom_data / rel), LIMIT)


def test_allocation_bomb_fails_fast_without_allocating(dicom_data: Path) -> None:
    """65535 x 65535 declared, a few bytes there: refused before any allocation,
    by the size limit, and with no limit by the length check."""
    blob = stored_blob(dicom_data / "edge_cases/2026-05-26-oob-monochrome-65535.dcm")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeFailed, match="over the limit"):
            decode_instance(blob, LIMIT)
        with pytest.raises(DecodeFailed, match="shorter than declared"):
            decode_instance(blob, 1 << 62)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2.0
    assert peak < 16 << 20


def test_size_limit_is_checked_before_decoding(dicom_data: Path) -> None:
    blob = stored_blob(dicom_data / "transfer_syntaxes/jpeg2000_lossless/dcm_qa_ts_9.dcm")
    with pytest.raises(DecodeFailed, match=r"would be 294912 bytes, over the limit of 294911"):
        decode_instance(blob, 384 * 384 * 2 - 1)
    assert decode_instance(blob, 384 * 384 * 2).frames.nbytes == 384 * 384 * 2


def test_codec_errors_are_wrapped_without_values(dicom_data: Path) -> None:
    ds = pydicom.dcmread(dicom_data / "transfer_syntaxes/jpeg2000_lossy/CT2_J2KI")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:64]])  # a codestream cut short
    ds.PatientName = "SECRET^PATIENT"
    with pytest.raises(DecodeFailed) as caught:
        decode_instance(_blob(ds, uid.JPEG2000), LIMIT)
    reason = caught.value.reason
    assert reason.startswith("JPEG 2000: cannot decode pixel data (") and "SECRET" not in reason


def test_missing_codec_is_missing_decoder(
    dicom_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module_available.cache_clear()
    real = registry.importlib.util.find_spec
    monkeypatch.setattr(
        registry.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "jpeg_ls" else real(name, *a),
    )
    try:
        with pytest.raises(MissingDecoder, match=r"pip install pyjpegls"):
            decode_instance(
                stored_blob(dicom_data / "transfer_syntaxes/jpeg_ls_lossless/CT2_JLSL"), LIMIT
            )
    finally:
        module_available.cache_clear()


def test_bad_headers_are_refused() -> None:
    ds = _image(2, 2, bytes(8))
    del ds.PhotometricInterpretation
    with pytest.raises(DecodeFailed, match="PhotometricInterpretation is missing"):
        decode_instance(_blob(ds), LIMIT)
    ds = _image(2, 2, bytes(8), BitsAllocated=12)
    with pytest.raises(DecodeFailed, match="Bits Allocated"):
        decode_instance(_blob(ds), LIMIT)
    ds = _image(2, 2, bytes(8), SamplesPerPixel=2)
    with pytest.raises(DecodeFailed, match="Samples per Pixel"):
        decode_instance(_blob(ds), LIMIT)
    with pytest.raises(DecodeFailed, match="not a DICOM file"):
        decode_instance(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00ZZ", LIMIT)
