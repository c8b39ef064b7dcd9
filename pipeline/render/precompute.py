"""Renders made right after decoding, so that viewers are served without rendering.

For every frame: the default render (the instance's own window, else the
full range; PS3.18 10.4.1.1.3's default rendition) as JPEG, and a thumbnail
(at most ``THUMBNAIL_SIZE`` pixels on its longer side, PS3.18 10.7). Series
and study thumbnails are those of a representative instance, chosen when
they are asked for. Named CT presets and other windows are rendered on
request and not stored here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from pipeline.render.encode import JPEG, encode
from pipeline.render.pipeline import render
from pipeline.storage.renders import RenderStore

DEFAULT_VARIANT = "default.jpg"
THUMBNAIL_VARIANT = "thumbnail.jpg"
THUMBNAIL_SIZE = 128
DEFAULT_QUALITY = 90
THUMBNAIL_QUALITY = 80


def thumbnail(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """``image`` shrunk to fit ``size`` x ``size``, aspect kept (never enlarged)."""
    picture = Image.fromarray(image)
    picture.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(picture)


def precompute(
    store: RenderStore,
    key: str,
    frames: np.ndarray,
    description: dict[str, Any],
    luts: Mapping[str, np.ndarray] | None = None,
) -> int:
    """Render and store the default render and thumbnail of every frame; returns frames done."""
    images = render(frames, description, luts=dict(luts or {}))
    for number, image in enumerate(images, start=1):
        store.put(key, DEFAULT_VARIANT, number, encode(image, JPEG, DEFAULT_QUALITY))
        store.put(key, THUMBNAIL_VARIANT, number, encode(thumbnail(image), JPEG, THUMBNAIL_QUALITY))
    return len(images)
