"""What a render of stored pixels needs from the pixel store: one frame's description, the LUTs."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.storage.pixels import PixelStore

#: The description entries that hold one value per frame (the decode stage's).
PER_FRAME = ("rescale_slope", "rescale_intercept", "rescale_type", "windows")


def frame_description(description: dict[str, Any], index: int) -> dict[str, Any]:
    """``description`` with its per-frame lists cut to frame ``index`` (0-based)."""
    out = dict(description)
    for name in PER_FRAME:
        values = out.get(name)
        if isinstance(values, list) and values:
            out[name] = values[index : index + 1] if index < len(values) else values[-1:]
    out["number_of_frames"] = 1
    return out


def palette_luts(pixels: PixelStore, key: str, description: dict[str, Any]) -> dict[str, np.ndarray]:
    """The palette LUT arrays the description names (empty for non-palette images)."""
    luts: dict[str, np.ndarray] = {}
    for name in ((description.get("palette") or {}).get("luts") or {}).values():
        try:
            luts[name] = pixels.read_lut(key, name)
        except FileNotFoundError:
            pass
    return luts
