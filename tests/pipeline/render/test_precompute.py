"""Precomputed renders: made by the decode stage for every frame, equal to an on-demand render."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from pipeline.decode.service import DecodeService
from pipeline.index.records import Provenance
from pipeline.render.pipeline import render
from pipeline.render.precompute import DEFAULT_VARIANT, THUMBNAIL_SIZE, THUMBNAIL_VARIANT, thumbnail
from pipeline.runtime import Runtime


def test_decode_stage_renders_every_frame(runtime: Runtime, dicom_data: Path) -> None:
    files = [
        *sorted((dicom_data / "series" / "ct_philips_ingenuity_headphantom_54sl").iterdir())[:3],
        dicom_data / "us" / "examples_ybr_color.dcm",  # multi-frame colour
        dicom_data / "cr_dx" / "Monochrome1-Jpeg.dcm",
    ]
    for path in files:
        runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once(limit=50)
    for path in files:
        row = runtime.index.get_instance(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert row is not None
        frames = runtime.pixels.shape(row.storage_key)[0]
        for number in range(1, frames + 1):
            default = runtime.renders.get(row.storage_key, DEFAULT_VARIANT, number)
            small = runtime.renders.get(row.storage_key, THUMBNAIL_VARIANT, number)
            assert default is not None and small is not None, (path.name, number)
            shown = np.asarray(Image.open(io.BytesIO(default)))
            expected = render(
                runtime.pixels.read_frame(row.storage_key, number - 1)[None],
                runtime.pixels.description(row.storage_key),
            )[0]
            assert shown.shape == expected.shape
            # JPEG q90 of the same render: close, not equal.
            assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 3
            assert max(Image.open(io.BytesIO(small)).size) <= THUMBNAIL_SIZE
        assert runtime.renders.get(row.storage_key, DEFAULT_VARIANT, frames + 1) is None


def test_thumbnail_keeps_aspect_and_never_enlarges() -> None:
    wide = np.zeros((300, 600), np.uint8)
    assert thumbnail(wide).shape == (64, 128)
    tiny = np.zeros((20, 10, 3), np.uint8)
    assert thumbnail(tiny).shape == (20, 10, 3)
