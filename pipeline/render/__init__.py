"""Render stage: windowed renders, thumbnails and tiles from the Zarr pixels (issue 4)."""

from pipeline.render.pipeline import (
    FUNCTIONS,
    apply_palette,
    get_xp,
    modality_values,
    render,
    voi_window,
)

__all__ = ["FUNCTIONS", "apply_palette", "get_xp", "modality_values", "render", "voi_window"]
