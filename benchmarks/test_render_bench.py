"""Micro-benchmarks of the render stage (NumPy; CuPy when it imports and a device is present).

* ``render``: :func:`pipeline.render.render` of the 300-slice 512x512 int16 CT
  of :mod:`benchmarks.datasets` (stored values decoded with pydicom into one
  (300, 512, 512) int16 array; description of the generated slices: rescale
  slope 1, intercept -1024, MONOCHROME2) with ``window=(40, 400)``: the LUT path
  (one 64 Ki-entry uint8 table, indexed by the raw uint16 view), the whole
  volume in one call, one slice per call (what an on-demand ``/rendered``
  request does), with one window (its table kept) or a new window on every
  call (its table built, around the window's ramp); the float path
  (``fast=False``) for comparison. The mammogram
  (``/work/shared/data/dicom/mg/MG1_J2KI``, 4664x3064 12-bit, JPEG 2000
  lossy), decoded once with :func:`pipeline.decode.pixels.decode_instance`:
  its own window and window 2047/4095.
* ``render + encode``: one frame rendered and encoded with
  :func:`pipeline.render.encode.encode` (JPEG q90, PNG level 1) per round,
  cycling over the slices; the mammogram as JPEG.
* ``encode``: encoding alone of an already rendered slice.
* ``memory copy``: ``numpy.copyto`` of a (300, 512, 512) int16 array into
  another one: the machine's memory bandwidth, to read the render figures
  against. Its MB/s is the array's size over the time (each byte is read once
  and written once: the traffic is twice that).

Each benchmark puts ``frames_per_s`` and ``mb_per_s`` (MB of *input* stored
values, 1 MB = 10^6 bytes) in ``extra_info``, from the mean round, and the
session ends with a table of them (``conftest.py``).

    pytest benchmarks/test_render_bench.py -p no:cacheprovider --benchmark-only

``LIGHTBOX_BENCH_SLICES`` (default 300) and ``LIGHTBOX_BENCH_MAMMOGRAM`` as in
``test_decode_bench.py``.
"""

from __future__ import annotations

import itertools
import os
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from benchmarks.conftest import report_throughput
from benchmarks.datasets import ct_dataset, ct_pixels
from pipeline.decode.pixels import decode_instance
from pipeline.render import render
from pipeline.render.encode import JPEG, PNG, encode

SLICES = int(os.environ.get("LIGHTBOX_BENCH_SLICES", "300"))
MAMMOGRAM = Path(
    os.environ.get("LIGHTBOX_BENCH_MAMMOGRAM", "/work/shared/data/dicom/mg/MG1_J2KI")
)
WINDOW = (40.0, 400.0)
PER_FRAME = ("rescale_slope", "rescale_intercept", "rescale_type", "windows")


def _cupy() -> Any | None:
    try:
        import cupy  # type: ignore[import-not-found]

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:  # noqa: BLE001 - not installed, no driver, no device
        return None
    return None


CUPY = _cupy()
XPS = [pytest.param(np, id="numpy"), pytest.param(CUPY, id="cupy", marks=pytest.mark.skipif(
    CUPY is None, reason="cupy does not import or sees no CUDA device: GPU figures skipped"))]


def _sync(xp: Any) -> None:
    if xp is not np and xp is not None:
        xp.cuda.Stream.null.synchronize()


def _repeat(description: dict[str, Any], frames: int) -> dict[str, Any]:
    """A one-frame description with its per-frame lists repeated for ``frames`` frames."""
    out = dict(description)
    for name in PER_FRAME:
        values = out.get(name)
        if isinstance(values, list) and values:
            out[name] = values[:1] * frames
    out["number_of_frames"] = frames
    return out


@pytest.fixture(scope="session")
def ct() -> tuple[np.ndarray, dict[str, Any]]:
    """The CT as (SLICES, 512, 512) int16 stored values (pydicom) and its description."""
    pixels = ct_pixels(0, SLICES)
    arrays = []
    first: bytes | None = None
    for i in range(SLICES):
        buffer = BytesIO()
        ct_dataset(i, SLICES, pixels[i]).save_as(buffer, enforce_file_format=True)
        if first is None:
            first = buffer.getvalue()
        buffer.seek(0)
        arrays.append(dcmread(buffer).pixel_array)
    volume = np.ascontiguousarray(np.stack(arrays).astype(np.int16, copy=False))
    assert first is not None
    description = decode_instance(first, 4 * 1024**3).description
    assert description["rescale_slope"] == [1.0]
    assert description["rescale_intercept"] == [-1024.0]
    return volume, _repeat(description, SLICES)


@pytest.fixture(scope="session")
def mammogram() -> tuple[np.ndarray, dict[str, Any]]:
    if not MAMMOGRAM.exists():
        pytest.skip(f"{MAMMOGRAM} is missing")
    decoded = decode_instance(MAMMOGRAM.read_bytes(), 4 * 1024**3)
    return np.ascontiguousarray(decoded.frames), decoded.description


# -- render ---------------------------------------------------------------------------


@pytest.mark.parametrize("xp", XPS)
def test_render_ct_volume_lut(benchmark, ct, xp) -> None:  # type: ignore[no-untyped-def]
    volume, description = ct
    frames = xp.asarray(volume) if xp is not np else volume

    def run() -> Any:
        out = render(frames, description, window=WINDOW, xp=xp)
        _sync(xp)
        return out

    out = benchmark.pedantic(run, rounds=10, warmup_rounds=1)
    assert out.shape == volume.shape and out.dtype == xp.uint8
    report_throughput(benchmark, f"render CT {SLICES} slices, LUT ({xp.__name__})",
                      frames=SLICES, decoded_bytes=volume.nbytes)


@pytest.mark.parametrize("xp", XPS)
def test_render_ct_volume_float(benchmark, ct, xp) -> None:  # type: ignore[no-untyped-def]
    volume, description = ct
    sub = volume[:60]
    frames = xp.asarray(sub) if xp is not np else sub
    desc = _repeat(description, len(sub))

    def run() -> Any:
        out = render(frames, desc, window=WINDOW, xp=xp, fast=False)
        _sync(xp)
        return out

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    report_throughput(benchmark, f"render CT 60 slices, float path ({xp.__name__})",
                      frames=len(sub), decoded_bytes=sub.nbytes)


def test_render_ct_one_slice(benchmark, ct) -> None:  # type: ignore[no-untyped-def]
    """One slice per call with one window: a viewer scrolling a series (the
    window's table is built on the first call and kept, pipeline._TABLES)."""
    volume, description = ct
    one = _repeat(description, 1)
    slices = itertools.cycle(range(volume.shape[0]))
    benchmark.pedantic(
        lambda: render(volume[next(slices)][np.newaxis], one, window=WINDOW),
        rounds=300, warmup_rounds=5,
    )
    report_throughput(benchmark, "render CT 1 slice per call, LUT (numpy)",
                      frames=1, decoded_bytes=volume[0].nbytes)


def test_render_ct_one_slice_new_window(benchmark, ct) -> None:  # type: ignore[no-untyped-def]
    """One slice per call with a window never asked before: a user dragging the
    window (the table is built on every call, around the window's ramp)."""
    volume, description = ct
    one = _repeat(description, 1)
    slices = itertools.cycle(range(volume.shape[0]))
    widths = (400.0 + n * 1e-6 for n in itertools.count(1))
    benchmark.pedantic(
        lambda: render(volume[next(slices)][np.newaxis], one, window=(40.0, next(widths))),
        rounds=300, warmup_rounds=5,
    )
    report_throughput(benchmark, "render CT 1 slice per call, new window (numpy)",
                      frames=1, decoded_bytes=volume[0].nbytes)


def test_render_ct_one_slice_table_only(benchmark, ct) -> None:  # type: ignore[no-untyped-def]
    """The fixed cost of a new window: its table, on a 1x1 frame."""
    volume, description = ct
    one = _repeat(description, 1)
    tiny = np.ascontiguousarray(volume[:1, :1, :1])
    widths = (400.0 + n * 1e-6 for n in itertools.count(1))
    benchmark.pedantic(lambda: render(tiny, one, window=(40.0, next(widths))), rounds=300,
                       warmup_rounds=5)
    report_throughput(benchmark, "render 1x1 frame, new window (the table alone)", frames=1,
                      decoded_bytes=tiny.nbytes)


@pytest.mark.parametrize("window", [None, (2047.0, 4095.0)], ids=["own-window", "window"])
def test_render_mammogram(benchmark, mammogram, window) -> None:  # type: ignore[no-untyped-def]
    frames, description = mammogram
    out = benchmark.pedantic(lambda: render(frames, description, window=window),
                             rounds=5, warmup_rounds=1)
    assert out.shape == frames.shape
    report_throughput(benchmark, f"render mammogram {frames.shape[2]}x{frames.shape[1]}"
                      f" {'own window' if window is None else 'window'}",
                      frames=frames.shape[0], decoded_bytes=frames.nbytes)


# -- render + encode --------------------------------------------------------------------


@pytest.mark.parametrize("media_type", [JPEG, PNG], ids=["jpeg", "png"])
def test_render_encode_ct(benchmark, ct, media_type) -> None:  # type: ignore[no-untyped-def]
    volume, description = ct
    one = _repeat(description, 1)
    slices = itertools.cycle(range(volume.shape[0]))

    def run() -> bytes:
        image = render(volume[next(slices)][np.newaxis], one, window=WINDOW)[0]
        return encode(image, media_type)

    data = benchmark.pedantic(run, rounds=150 if media_type == JPEG else 60, warmup_rounds=3)
    benchmark.extra_info["encoded_bytes"] = len(data)
    report_throughput(benchmark, f"render + {media_type} CT slice ({len(data) // 1000} kB)",
                      frames=1, decoded_bytes=volume[0].nbytes)


@pytest.mark.parametrize("media_type", [JPEG, PNG], ids=["jpeg", "png"])
def test_encode_ct(benchmark, ct, media_type) -> None:  # type: ignore[no-untyped-def]
    volume, description = ct
    images = render(volume[:20], _repeat(description, 20), window=WINDOW)
    frames = itertools.cycle(range(20))
    benchmark.pedantic(lambda: encode(images[next(frames)], media_type),
                       rounds=150 if media_type == JPEG else 60, warmup_rounds=3)
    report_throughput(benchmark, f"encode only {media_type} CT slice", frames=1,
                      decoded_bytes=images[0].nbytes)


def test_render_encode_mammogram(benchmark, mammogram) -> None:  # type: ignore[no-untyped-def]
    frames, description = mammogram

    def run() -> bytes:
        return encode(render(frames, description)[0], JPEG)

    data = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    report_throughput(benchmark, f"render + image/jpeg mammogram ({len(data) // 1000} kB)",
                      frames=1, decoded_bytes=frames.nbytes)


# -- reference ----------------------------------------------------------------------------


def test_memory_copy(benchmark, ct) -> None:  # type: ignore[no-untyped-def]
    volume, _ = ct
    dst = np.empty_like(volume)
    np.copyto(dst, volume)  # fault the pages in
    benchmark.pedantic(lambda: np.copyto(dst, volume), rounds=10, warmup_rounds=1)
    report_throughput(benchmark, f"memory copy {volume.shape} int16 (reference)",
                      frames=volume.shape[0], decoded_bytes=volume.nbytes)
