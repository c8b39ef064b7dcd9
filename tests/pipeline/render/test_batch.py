"""Batch re-rendering: selection, resumability, the Ray path and the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.decode.service import DecodeService
from pipeline.index.records import Provenance
from pipeline.render.batch import render_spec, run_batch
from pipeline.render.pipeline import render
from pipeline.runtime import Runtime
from tests.corpus import SERIES


@pytest.fixture
def archive(runtime: Runtime, dicom_data: Path) -> Runtime:
    files = [
        *sorted((dicom_data / SERIES["ct"]).iterdir())[:4],
        *sorted((dicom_data / SERIES["mr"]).iterdir())[:2],
    ]
    for path in files:
        runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once(limit=50)
    return runtime


def test_specs() -> None:
    assert render_spec().variant == "default.jpg"
    assert render_spec(preset="lung").variant == "preset-lung.jpg"
    assert render_spec(window="40,400", fmt="png").variant == "window-40_400-q90.png"
    assert render_spec(window="-600,1500,sigmoid").window == (-600.0, 1500.0)
    for bad in ({"window": "40"}, {"preset": "nope"}, {"fmt": "gif"}, {"window": "1,2", "preset": "lung"}):
        with pytest.raises(ValueError):
            render_spec(**bad)  # type: ignore[arg-type]


def test_selection_render_and_resume(archive: Runtime) -> None:
    selected = archive.index.select_instances(modality="CT")
    assert len(selected) == 4 and len(archive.index.select_instances()) == 6
    spec = render_spec(window="40,400", fmt="png")
    first = run_batch(archive.settings, selected, spec, use_ray=False)
    assert (first.rendered, first.frames, first.skipped, first.failures) == (4, 4, 0, [])
    for _, key, _ in selected:
        png = archive.renders.get(key, spec.variant, 1)
        assert png is not None
        frame = archive.pixels.read_frame(key, 0)[np.newaxis]
        expected = render(frame, archive.pixels.description(key), window=(40, 400))[0]
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    again = run_batch(archive.settings, selected, spec, use_ray=False)
    assert (again.rendered, again.skipped) == (0, 4)  # resumable: nothing done twice


@pytest.mark.slow
def test_cli_runs_ray_tasks(archive: Runtime) -> None:
    env = {**os.environ, "LIGHTBOX_DATA_DIR": str(archive.settings.data_dir), "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "rerender", "--modality", "MR", "--preset", "brain"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    assert "rendered 2 instances (2 frames) as preset-brain.jpg; 0 already done; 0 failed" in result.stdout
    for _, key, _ in archive.index.select_instances(modality="MR"):
        assert archive.renders.get(key, "preset-brain.jpg", 1) is not None
