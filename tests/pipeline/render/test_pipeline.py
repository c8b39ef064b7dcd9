"""The rendering pipeline (PS3.4 N.2) against DCMTK's dcmj2pnm and the formulas.

Against dcmj2pnm (DCMTK 3.6.7, PGM/PPM output, overlays off): within one grey
level on at least 99.9 % of the pixels. DCMTK truncates where we round half up
(``floor(y + 0.5)``, see :mod:`pipeline.render.pipeline`), so one level is the
expected difference; JPEG decoders differ by a level or two on a few pixels.

Where DCMTK is not the reference, and why:

* **Native copy** (``copy=True``): dcmj2pnm is given a single-frame explicit VR
  little endian copy of our decoded frame, written with pydicom, carrying the
  frame's rescale and first window as top-level attributes. Used for
  - JPEG 2000 / HTJ2K (Debian's dcmj2pnm has no such decoder), and JPEG-LS
    frames DCMTK cannot read ("can't determine PhotometricInterpretation of
    decompressed image" on the enhanced JPEG-LS MR);
  - enhanced multi-frame objects: DCMTK 3.6.7 reads neither the Pixel Value
    Transformation nor the Frame VOI LUT functional groups (it renders
    eCT_Supplemental with slope 1 / intercept 0 and reports "0 VOI windows").
    The standard (PS3.3 C.7.6.16.2.9-10) applies them per frame, so we do,
    and give DCMTK the same values top-level;
  - lossy JPEG YBR colour (DCMTK's IJG decoder and libjpeg-turbo upsample
    chroma differently: 99.66 % within one level), so the render, not the
    codec, is compared.
* **Segmented palettes** (gdcm-US-ALOKA-16): dcmj2pnm says "segmented palettes
  not yet supported"; compared with pydicom's ``apply_color_lut``.
* **LINEAR_EXACT**: dcmj2pnm 3.6.7 has no option for it; checked against the
  formula of PS3.3 C.11.2.1.3.2.
* **Full-range default**: our default when there is no window is the LINEAR
  window (min + max + 1) / 2, max - min + 1, which is what ``+Wm`` computes;
  compared with the file's windows removed from the description.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from pipeline.decode.pixels import DecodedPixels, decode_instance
from pipeline.render import pipeline as rp
from pipeline.render.pipeline import apply_palette, get_xp, modality_values, render, voi_window
from tests.conftest import require_tool
from tests.pipeline.decode.test_pixels import LIMIT, stored_blob

CT = "series/ct_philips_ingenuity_headphantom_54sl/I10"
MR = "series/mr_siemens_prisma_t1_fl2d_sag_35sl/0001_1.3.12.2.1107.5.2.43.67060.2022040715053454597060816.dcm"

#: (file, 0-based frame, VOI mode, native copy for dcmj2pnm).
#: Modes: "file" (+Wi 1), "minmax" (+Wm, windows removed from our description),
#: "c,w[,SIGMOID]" (+Ww c w, the caller's window), "colour" (no VOI).
DCMTK_CASES: list[tuple[str, int, str, bool]] = [
    (CT, 0, "file", False),
    (CT, 0, "40,400", False),
    (CT, 0, "40,400,SIGMOID", False),
    (CT, 0, "minmax", False),
    (MR, 0, "file", False),
    (MR, 0, "minmax", False),
    ("transfer_syntaxes/jpeg_lossless_sv1/CT1_JPLL", 0, "40,400", False),  # signed CT
    ("transfer_syntaxes/jpeg_lossless_sv1/CT1_JPLL", 0, "minmax", False),
    ("cr_dx/Monochrome1-Jpeg.dcm", 0, "file", False),  # MONOCHROME1, JPEG baseline
    ("cr_dx/Monochrome1-Jpeg.dcm", 0, "minmax", False),
    ("cr_dx/dx_image.dcm", 0, "file", False),  # MONOCHROME1 + Presentation LUT INVERSE
    ("cr_dx/dx_image.dcm", 0, "100,150", False),
    ("cr_dx/RG3_JPLY", 0, "file", False),  # MONOCHROME1, 12-bit JPEG Extended
    ("cr_dx/RG3_J2KR.dcm", 0, "file", True),  # MONOCHROME1, JPEG 2000
    ("mg/MG1_J2KI", 0, "file", True),  # 4664 x 3064, JPEG 2000
    ("us/US1_UNCR.dcm", 0, "colour", False),
    ("us/examples_ybr_color.dcm", 3, "colour", True),
    ("enhanced/philips_IM_0027_fMAP.dcm", 0, "file", True),
    ("enhanced/philips_IM_0027_fMAP.dcm", 40, "minmax", True),
    ("enhanced/eCT_Supplemental.dcm", 1, "file", True),
    ("enhanced/emri_small_jpeg_ls_lossless.dcm", 4, "minmax", True),
    ("enhanced/emri_small_jpeg_ls_lossless.dcm", 7, "900,1800", True),
]


# --------------------------------------------------------------------------- helpers

_cache: dict[str, DecodedPixels] = {}


@pytest.fixture
def decoded(dicom_data: Path) -> Callable[[str], DecodedPixels]:
    def get(rel: str) -> DecodedPixels:
        if rel not in _cache:
            _cache.clear()  # keep one (the mammogram is 28.6 MB)
            _cache[rel] = decode_instance(stored_blob(dicom_data / rel), LIMIT)
        return _cache[rel]

    return get


def read_pnm(path: Path) -> np.ndarray:
    """A binary PGM (P5) or PPM (P6) with maxval 255."""
    data = path.read_bytes()
    fields: list[bytes] = []
    i = 0
    while len(fields) < 4:
        while data[i : i + 1].isspace():
            i += 1
        if data[i : i + 1] == b"#":
            i = data.index(b"\n", i) + 1
            continue
        j = i
        while not data[j : j + 1].isspace():
            j += 1
        fields.append(data[i:j])
        i = j
    i += 1  # the single whitespace after maxval
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    assert magic in (b"P5", b"P6") and maxval == 255, (magic, maxval)
    shape = (height, width, 3) if magic == b"P6" else (height, width)
    return np.frombuffer(data, np.uint8, int(np.prod(shape)), i).reshape(shape)


def native_copy(path: Path, pixels: DecodedPixels, frame: int, out: Path) -> Path:
    """One frame of ``path`` as explicit VR little endian, with that frame's
    rescale and first window as top-level attributes (what DCMTK reads)."""
    ds = pydicom.dcmread(path)
    desc = pixels.description
    for keyword in (
        "PerFrameFunctionalGroupsSequence",
        "SharedFunctionalGroupsSequence",
        "NumberOfFrames",
        "FrameIncrementPointer",
        "WindowCenter",
        "WindowWidth",
        "WindowCenterWidthExplanation",
        "VOILUTFunction",
        "ExtendedOffsetTable",
        "ExtendedOffsetTableLengths",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    arr = np.ascontiguousarray(pixels.frames[frame])
    ds.PhotometricInterpretation = desc["decoded"]["photometric_interpretation"]
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    else:
        ds.RescaleSlope = repr(desc["rescale_slope"][frame])[:16]
        ds.RescaleIntercept = repr(desc["rescale_intercept"][frame])[:16]
        presets = desc["windows"][frame]
        if presets:
            ds.WindowCenter = repr(presets[0]["center"])[:16]
            ds.WindowWidth = repr(presets[0]["width"])[:16]
            ds.VOILUTFunction = presets[0]["function"]
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = "OB" if arr.dtype.itemsize == 1 else "OW"
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.save_as(out, implicit_vr=False, little_endian=True)
    return out


def dcmj2pnm(path: Path, frame: int, options: list[str], out: Path) -> np.ndarray:
    tool = require_tool("dcmj2pnm")
    subprocess.run(
        [tool, "-q", "-O", "+F", str(frame + 1), *options, str(path), str(out)],
        check=True,
        timeout=60,
    )
    return read_pnm(out)


def _no_windows(description: dict[str, Any]) -> dict[str, Any]:
    return {**description, "windows": [[] for _ in description["windows"]]}


# --------------------------------------------------------------------------- DCMTK


@pytest.mark.parametrize(
    ("rel", "frame", "mode", "copy"),
    DCMTK_CASES,
    ids=[f"{r.split('/')[-1][:24]}-f{f}-{m}" for r, f, m, _ in DCMTK_CASES],
)
def test_render_matches_dcmj2pnm(
    dicom_data: Path,
    decoded: Callable[[str], DecodedPixels],
    tmp_path: Path,
    rel: str,
    frame: int,
    mode: str,
    copy: bool,
) -> None:
    pixels = decoded(rel)
    description = pixels.description
    window = function = None
    options: list[str] = []
    if mode == "file":
        assert any(description["windows"][frame]), "the case needs a window in the file"
        options = ["+Wi", "1"]
    elif mode == "minmax":
        description = _no_windows(description)
        options = ["+Wm"]
    elif mode != "colour":
        centre, width, *fn = mode.split(",")
        window = (float(centre), float(width))
        function = fn[0] if fn else None
        options = ["+Ww", centre, width] + (["+Wfs"] if function == "SIGMOID" else [])
    source = dicom_data / rel
    dcmtk_frame = frame
    if copy:
        source = native_copy(source, pixels, frame, tmp_path / "copy.dcm")
        dcmtk_frame = 0
    ours = render(
        pixels.frames[frame : frame + 1],
        _frame_description(description, frame),
        window=window,
        function=function,
        luts=pixels.luts,
    )[0]
    theirs = dcmj2pnm(source, dcmtk_frame, options, tmp_path / "out.pnm")
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    within = float((diff <= 1).mean())
    assert within >= 0.999, f"{within:.5f} within one level, max difference {diff.max()}"


def _frame_description(description: dict[str, Any], frame: int) -> dict[str, Any]:
    """The description of one frame (the per-frame lists cut to it)."""
    out = dict(description)
    for key in ("rescale_slope", "rescale_intercept", "rescale_type", "windows"):
        out[key] = description[key][frame : frame + 1]
    return out


# --------------------------------------------------------------------------- formulas


def test_linear_at_chosen_points() -> None:
    # PS3.3 C.11.2.1.2.1, c = 40, w = 400: 0 at x <= 39.5 - 199.5 = -160,
    # 255 above 239.5, ((x - 39.5) / 399 + 0.5) * 255 between.
    x = np.array([-1000.0, -160.0, -159.0, 39.5, 239.0, 239.5, 240.0])
    y = voi_window(x, 40.0, 400.0, "LINEAR")
    expected = [0.0, 0.0, (-198.5 / 399 + 0.5) * 255, 127.5, (199.5 / 399 + 0.5) * 255, 255.0, 255.0]
    np.testing.assert_allclose(y, expected)
    # width 1: a threshold at c - 0.5.
    np.testing.assert_array_equal(voi_window(np.array([9.5, 9.6]), 10.0, 1.0, "LINEAR"), [0, 255])


def test_linear_exact_at_chosen_points() -> None:
    # PS3.3 C.11.2.1.3.2: 0 at x <= c - w/2, 255 above c + w/2, ((x - c) / w + 0.5) * 255.
    x = np.array([-160.0, -159.0, 40.0, 240.0, 240.5])
    y = voi_window(x, 40.0, 400.0, "LINEAR_EXACT")
    np.testing.assert_allclose(y, [0.0, 255 / 400, 127.5, 255.0, 255.0])


def test_sigmoid_at_chosen_points() -> None:
    # PS3.3 C.11.2.1.3.1: 255 / (1 + exp(-4 (x - c) / w)).
    x = np.array([40.0, 240.0, -160.0])
    y = voi_window(x, 40.0, 400.0, "SIGMOID")
    np.testing.assert_allclose(y, [127.5, 255 / (1 + np.exp(-2)), 255 / (1 + np.exp(2))])


def test_rounding_rule_and_inversion() -> None:
    description = _description(np.uint16, slope=1.0, intercept=0.0, windows=[(40.0, 400.0)])
    frames = np.array([[[-160 + 0, 39, 40, 240]]], dtype=np.int16)  # 39.5 is the midpoint
    description["pixel_representation"] = 1
    got = render(frames, description)
    y = voi_window(frames.astype(float), 40.0, 400.0, "LINEAR")
    np.testing.assert_array_equal(got, np.floor(y + 0.5).astype(np.uint8))
    inverted = render(frames, {**description, "photometric_interpretation": "MONOCHROME1"})
    np.testing.assert_array_equal(inverted, np.floor(255 - y + 0.5).astype(np.uint8))
    shape = render(frames, {**description, "presentation_lut_shape": "INVERSE"})
    np.testing.assert_array_equal(shape, inverted)
    both = {**description, "photometric_interpretation": "MONOCHROME1",
            "presentation_lut_shape": "INVERSE"}
    np.testing.assert_array_equal(render(frames, both), inverted)  # one inversion


def test_linear_exact_render_against_formula(decoded: Callable[[str], DecodedPixels]) -> None:
    """dcmj2pnm has no LINEAR_EXACT: the NumPy formula is the reference."""
    pixels = decoded(CT)
    got = render(pixels.frames, pixels.description, window=(40, 400), function="LINEAR_EXACT")
    hu = pixels.frames.astype(np.float64) * 1.0 - 1024.0
    assert pixels.description["rescale_intercept"] == [-1024.0]
    y = np.where(hu <= -160, 0, np.where(hu > 240, 255, ((hu - 40) / 400 + 0.5) * 255))
    np.testing.assert_array_equal(got, np.floor(y + 0.5).astype(np.uint8))


# --------------------------------------------------------------------------- synthetic


def _description(
    dtype: Any,
    *,
    slope: float | list[float] = 1.0,
    intercept: float | list[float] = 0.0,
    windows: list[tuple[float, float]] | None = None,
    frames: int = 1,
    bits: int = 16,
    function: str = "LINEAR",
) -> dict[str, Any]:
    slopes = slope if isinstance(slope, list) else [slope] * frames
    intercepts = intercept if isinstance(intercept, list) else [intercept] * frames
    presets = [
        {"center": c, "width": w, "explanation": None, "function": function}
        for c, w in (windows or [])
    ]
    return {
        "bits_stored": bits,
        "pixel_representation": 1 if np.dtype(dtype).kind == "i" else 0,
        "photometric_interpretation": "MONOCHROME2",
        "decoded": {"photometric_interpretation": "MONOCHROME2"},
        "rescale_slope": slopes,
        "rescale_intercept": intercepts,
        "rescale_type": [None] * frames,
        "windows": [presets] * frames,
        "modality_lut": None,
        "voi_lut": None,
        "palette": None,
        "presentation_lut_shape": None,
    }


def test_per_frame_rescale_enhanced_ct() -> None:
    """Each frame gets its own rescale (PS3.3 C.7.6.16.2.9): the batched render
    equals rendering each frame alone with its own values."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 4096, (3, 16, 16), dtype=np.uint16)
    description = _description(
        np.uint16, slope=[1.0, 0.5, 2.0], intercept=[-1024.0, 0.0, -2048.0],
        windows=[(40.0, 400.0)], frames=3,
    )
    together = render(frames, description)
    for f in range(3):
        alone = render(frames[f : f + 1], _frame_description(description, f))
        np.testing.assert_array_equal(together[f], alone[0])
        hu = frames[f].astype(float) * description["rescale_slope"][f] + description[
            "rescale_intercept"][f]
        want = np.floor(voi_window(hu, 40.0, 400.0, "LINEAR") + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(together[f], want)


def test_per_frame_rescale_of_the_corpus(decoded: Callable[[str], DecodedPixels]) -> None:
    pixels = decoded("enhanced/philips_IM_0027_fMAP.dcm")
    d = pixels.description
    got = render(pixels.frames, d)
    for f in (0, 17, 63):
        hu = pixels.frames[f].astype(float) * d["rescale_slope"][f] + d["rescale_intercept"][f]
        c, w = d["windows"][f][0]["center"], d["windows"][f][0]["width"]
        want = np.floor(voi_window(hu, c, w, "LINEAR") + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(got[f], want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_lut_path_equals_float_path(dtype: Any, function: str) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    frames = rng.integers(info.min, info.max, (4, 32, 32), dtype=dtype, endpoint=True)
    for slope, intercept in ((1.0, 0.0), (0.37, -1024.5), (-2.0, 10.0)):
        for window in ((40.0, 400.0), (0.5, 1.0), (-3.25, 77.7), None):
            for photometric in ("MONOCHROME2", "MONOCHROME1"):
                description = _description(dtype, slope=slope, intercept=intercept, frames=4)
                description["photometric_interpretation"] = photometric
                kwargs = {"window": window, "function": function}
                fast = render(frames, description, **kwargs)
                slow = render(frames, description, fast=False, **kwargs)
                assert fast.dtype == np.uint8 and fast.shape == frames.shape
                np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_saturating_rows_equal_whole_tables(dtype: Any) -> None:
    """A LINEAR or LINEAR_EXACT table is computed around its ramp only and filled
    with its end values; rendered over every stored value the dtype has, it
    must give the float path's bytes, for ordinary and awkward rescales and
    windows (narrow, wide, a threshold, half outside or wholly outside the
    stored range, inverted)."""
    from pipeline.render.pipeline import _frame_column, _saturating_row

    info = np.iinfo(dtype)
    every = np.arange(info.min, info.max + 1, dtype=np.int64).astype(dtype)
    frames = every.reshape(1, 1, -1)
    windows = [(40.0, 400.0), (0.5, 1.0), (1.0, 1.0), (-3.25, 77.7), (float(info.max), 10.0),
               (float(info.min), 3.0), (0.0, 1e9), (1e7, 20.0), (-1e7, 20.0), (120.0, 0.25)]
    used = 0
    for slope, intercept in ((1.0, 0.0), (0.37, -1024.5), (-2.0, 10.0), (1000.0, 3.0),
                             (1e-6, 0.0), (2.5e-5, -0.75)):
        for photometric in ("MONOCHROME2", "MONOCHROME1"):
            description = _description(dtype, slope=slope, intercept=intercept)
            description["photometric_interpretation"] = photometric
            for window in windows:
                for function in ("LINEAR", "LINEAR_EXACT"):
                    fast = render(frames, description, window=window, function=function)
                    slow = render(frames, description, window=window, function=function, fast=False)
                    np.testing.assert_array_equal(
                        fast, slow, err_msg=f"{slope} {intercept} {photometric} {window} {function}"
                    )
                    row = _saturating_row(description, (*window, function), True, np.dtype(dtype),
                                          _frame_column([slope], 1, np, 2),
                                          _frame_column([intercept], 1, np, 2), np)
                    used += row is not None
    # The short cut is taken where the window is within reach of the stored values
    # (72 to 144 of these 240, by dtype); a CT window on 16-bit CT values always.
    assert used >= 60
    if info.bits == 16:
        ct = _description(dtype, intercept=-1024.0)
        one, offset = _frame_column([1.0], 1, np, 2), _frame_column([-1024.0], 1, np, 2)
        assert _saturating_row(ct, (40.0, 400.0, "LINEAR"), False, np.dtype(dtype), one, offset,
                               np) is not None


def test_large_frames_are_looked_up_in_slices() -> None:
    """Frames of more than 256 Ki values are looked up slice by slice (to keep
    numpy's temporary index in the cache): same bytes as the float path, for one
    table and for a table per frame."""
    from pipeline.render.pipeline import _TAKE_SLICE

    rng = np.random.default_rng(11)
    frames = rng.integers(-1024, 3072, (2, 700, 701), dtype=np.int16)
    assert frames[0].size > _TAKE_SLICE
    description = _description(np.int16, intercept=-1024.0, frames=2)
    for window in ((40.0, 400.0), None):
        np.testing.assert_array_equal(render(frames, description, window=window),
                                      render(frames, description, window=window, fast=False))
    description["windows"] = [[{"center": 40.0, "width": 400.0, "function": "LINEAR"}],
                              [{"center": 300.0, "width": 1500.0, "function": "SIGMOID"}]]
    np.testing.assert_array_equal(render(frames, description), render(frames, description, fast=False))


def test_lut_path_equals_float_path_per_frame_windows() -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(-1024, 3000, (3, 20, 20), dtype=np.int16)
    description = _description(np.int16, intercept=-1024.0, frames=3)
    description["windows"] = [
        [{"center": 40.0, "width": 400.0, "function": "LINEAR"}],
        [{"center": 300.0, "width": 1500.0, "function": "SIGMOID"}],
        [],  # full-range default for this frame
    ]
    np.testing.assert_array_equal(render(frames, description), render(frames, description, fast=False))


def test_lut_path_equals_float_path_on_the_corpus(decoded: Callable[[str], DecodedPixels]) -> None:
    for rel in (CT, MR, "cr_dx/Monochrome1-Jpeg.dcm", "transfer_syntaxes/jpeg_lossless_sv1/CT1_JPLL",
                "enhanced/eCT_Supplemental.dcm"):
        pixels = decoded(rel)
        for window in (None, (40.0, 400.0)):
            for description in (pixels.description, _no_windows(pixels.description)):
                fast = render(pixels.frames, description, window=window)
                slow = render(pixels.frames, description, window=window, fast=False)
                np.testing.assert_array_equal(fast, slow, err_msg=rel)


def test_palette_equals_pydicom(dicom_data: Path, decoded: Callable[[str], DecodedPixels]) -> None:
    rel = "us/gdcm-US-ALOKA-16.dcm"
    pixels = decoded(rel)
    ds = pydicom.dcmread(dicom_data / rel)
    want = apply_color_lut(ds.pixel_array, ds)
    got = apply_palette(pixels.frames[0], pixels.description["palette"], pixels.luts)
    np.testing.assert_array_equal(got, want)
    rendered = render(pixels.frames, pixels.description, luts=pixels.luts)
    assert rendered.shape == pixels.frames.shape + (3,) and rendered.dtype == np.uint8
    bits = pixels.description["palette"]["descriptor"]["red"][2]
    scaled = np.floor(want.astype(np.float64) * 255 / ((1 << bits) - 1) + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(rendered[0], scaled)


def test_rgb_passes_through_and_16_bit_is_scaled() -> None:
    rgb8 = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    np.testing.assert_array_equal(render(rgb8, {"bits_stored": 8}), rgb8)
    rgb16 = np.array([[[[0, 65535, 32767], [128, 257, 65280]]]], dtype=np.uint16)
    want = np.floor(rgb16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(render(rgb16, {"bits_stored": 16}), want)


def _blob(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = uid.SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.3.4"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _grey_image(values: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = values.astype("<u2").tobytes()
    return ds


def _lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.LUTData = data
    item["LUTData"].VR = "US"
    return item


def test_modality_lut_sequence() -> None:
    values = np.array([[0, 5, 10, 99], [100, 150, 200, 4095]], dtype=np.uint16)
    ds = _grey_image(values)
    item = _lut_item([200, 100, 16], [(i * 37) % 3000 for i in range(200)])
    item.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [item]
    ds.RescaleSlope, ds.RescaleIntercept = 5, 7  # ignored: the LUT replaces the rescale
    ds.WindowCenter, ds.WindowWidth = 1500, 3000
    pixels = decode_instance(_blob(ds), LIMIT)
    assert pixels.description["modality_lut"] is not None
    want_modality = apply_modality_lut(values, ds).astype(np.float64)
    np.testing.assert_array_equal(modality_values(pixels.frames, pixels.description)[0],
                                  want_modality)
    want = np.floor(voi_window(want_modality, 1500.0, 3000.0, "LINEAR") + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(render(pixels.frames, pixels.description)[0], want)
    np.testing.assert_array_equal(
        render(pixels.frames, pixels.description, fast=False)[0], want
    )


def test_voi_lut_sequence() -> None:
    values = np.array([[0, 5, 10, 99], [100, 150, 200, 4095]], dtype=np.uint16)
    ds = _grey_image(values)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.VOILUTSequence = [_lut_item([256, 10, 12], [min(4095, i * 16) for i in range(256)])]
    ds.WindowCenter, ds.WindowWidth = 100, 50  # not used: the VOI LUT Sequence wins
    pixels = decode_instance(_blob(ds), LIMIT)
    lut_values = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
    want = np.floor(lut_values * 255 / 4095 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(render(pixels.frames, pixels.description)[0], want)
    np.testing.assert_array_equal(render(pixels.frames, pixels.description, fast=False)[0], want)
    # An explicit window replaces the VOI LUT Sequence.
    windowed = render(pixels.frames, pixels.description, window=(100, 50))[0]
    want_window = np.floor(voi_window(values.astype(float), 100.0, 50.0, "LINEAR") + 0.5)
    np.testing.assert_array_equal(windowed, want_window.astype(np.uint8))


def test_get_xp_without_cupy() -> None:
    xp = get_xp()
    assert xp is np or xp.__name__ == "cupy"
    assert get_xp(prefer_gpu=False) is np
    assert rp.FUNCTIONS == ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def test_unknown_function_is_refused() -> None:
    frames = np.zeros((1, 2, 2), dtype=np.uint16)
    with pytest.raises(ValueError, match="VOI LUT Function"):
        render(frames, _description(np.uint16), window=(1, 2), function="LOG")


def test_cached_tables_follow_the_description() -> None:
    """The LUT path keeps recent tables: a second render with the same window is a
    cache hit and equal; the same window on another description (inverted,
    rescaled) must not reuse that table."""
    from pipeline.render.pipeline import _TABLES

    frames = np.arange(-2048, 2048, dtype=np.int16).reshape(1, 64, 64)
    plain = _description(np.int16)
    first = render(frames, plain, window=(40.0, 400.0))
    assert _TABLES.get(np, frames.dtype, "window", [(40.0, 400.0, "LINEAR")], True, plain) is not None
    np.testing.assert_array_equal(render(frames, plain, window=(40.0, 400.0)), first)
    inverted = _description(np.int16)
    inverted["photometric_interpretation"] = "MONOCHROME1"
    np.testing.assert_array_equal(render(frames, inverted, window=(40.0, 400.0)), 255 - first)
    rescaled = _description(np.int16, intercept=-1024.0)
    np.testing.assert_array_equal(
        render(frames, rescaled, window=(40.0, 400.0)),
        render(frames, rescaled, window=(40.0, 400.0), fast=False),
    )
    assert not np.array_equal(render(frames, rescaled, window=(40.0, 400.0)), first)
