"""Encoders: decodable, lossless PNG, quality matters for the lossy ones."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.render.encode import JPEG, PNG, WEBP, UnsupportedMediaType, encode


def gradient(rgb: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:128, 0:160]
    grey = ((x + y) % 256).astype(np.uint8)
    return np.stack([grey, grey[::-1], 255 - grey], -1) if rgb else grey


@pytest.mark.parametrize("rgb", [False, True])
def test_png_is_lossless(rgb: bool) -> None:
    image = gradient(rgb)
    decoded = np.asarray(Image.open(io.BytesIO(encode(image, PNG))))
    assert np.array_equal(decoded, image)


@pytest.mark.parametrize("media_type", [JPEG, WEBP])
def test_lossy_quality_trades_size_for_error(media_type: str) -> None:
    image = gradient()
    noisy = np.clip(image.astype(int) + np.random.default_rng(0).integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    low, high = encode(noisy, media_type, quality=20), encode(noisy, media_type, quality=95)
    assert len(low) < len(high)
    err = lambda data: np.abs(np.asarray(Image.open(io.BytesIO(data)).convert("L"), int) - noisy).mean()  # noqa: E731
    assert err(high) < err(low) < 40


def test_refusals() -> None:
    with pytest.raises(UnsupportedMediaType):
        encode(gradient(), "image/gif")
    with pytest.raises(ValueError):
        encode(gradient().astype(np.uint16), PNG)
    with pytest.raises(ValueError):
        encode(gradient(), JPEG, quality=0)
