"""The CuPy path gives the NumPy reference's bytes. Runs where CuPy and a CUDA device are."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.render.pipeline import render

cupy = pytest.importorskip("cupy", reason="CuPy is not installed (no GPU on this machine)")

pytestmark = pytest.mark.gpu


def _device_present() -> bool:
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _case(photometric: str) -> tuple[np.ndarray, dict]:
    """Four frames of a real CT slice (shifted), with its decoded description."""
    import os
    from pathlib import Path

    from pipeline.decode.pixels import decode_instance

    default = Path(__file__).resolve().parents[4] / "shared" / "data" / "dicom"
    root = Path(os.environ.get("LIGHTBOX_TEST_DATA", default))
    path = root / "series" / "ct_philips_ingenuity_headphantom_54sl" / "I10"
    decoded = decode_instance(path.read_bytes(), 1 << 30)
    frames = np.concatenate([decoded.frames + shift for shift in (0, 10, 200, 900)]).astype(np.uint16)
    description = dict(decoded.description)
    for name in ("rescale_slope", "rescale_intercept", "windows"):
        description[name] = description[name] * 4
    description["photometric_interpretation"] = photometric
    description["decoded"] = {**description["decoded"], "photometric_interpretation": photometric}
    return frames, description


@pytest.mark.skipif(not _device_present(), reason="no CUDA device")
@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_cupy_equals_numpy(fast: bool, photometric: str) -> None:
    frames, description = _case(photometric)
    for window in (None, (40.0, 400.0), (-600.0, 1500.0)):
        want = render(frames, description, window=window, fast=fast)
        got = render(cupy.asarray(frames), description, window=window, xp=cupy, fast=fast)
        np.testing.assert_array_equal(cupy.asnumpy(got), want)
