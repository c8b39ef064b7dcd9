"""Encoding rendered 8-bit frames for the web: JPEG, PNG, WebP (PS3.18 8.7.4 media types).

Pillow does the work: its JPEG is libjpeg-turbo (measured here: 512x512 q90
about 2,400 frames/s on one core), its PNG zlib and its WebP libwebp. PNG's
compression level is the speed knob: level 1 is about three times faster than
zlib's default 6 for ~20% more bytes (FIELD-NOTES), and a viewer on a LAN
wants the former.
"""

from __future__ import annotations

import io
from typing import Final

import numpy as np
from PIL import Image

JPEG: Final = "image/jpeg"
PNG: Final = "image/png"
WEBP: Final = "image/webp"

#: Media types we render to, in our order of preference for ``Accept: */*``.
MEDIA_TYPES: Final = (JPEG, PNG, WEBP)

#: PS3.18 8.3.5.1.3: quality is 1..100, and applies to lossy media types.
DEFAULT_QUALITY: Final = 90
PNG_COMPRESS_LEVEL: Final = 1


class UnsupportedMediaType(ValueError):
    """A media type we do not render to."""


def encode(image: np.ndarray, media_type: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encode one rendered frame.

    Parameters
    ----------
    image : numpy.ndarray
        uint8, ``(rows, columns)`` grey or ``(rows, columns, 3)`` RGB.
    media_type : str
        ``image/jpeg``, ``image/png`` or ``image/webp``.
    quality : int
        1..100, for JPEG and WebP (PS3.18 8.3.5.1.3); PNG is lossless.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError("a rendered frame is uint8, (rows, columns[, 3])")
    if not 1 <= quality <= 100:
        raise ValueError("quality is 1..100 (PS3.18 8.3.5.1.3)")
    picture = Image.fromarray(np.ascontiguousarray(image), mode="L" if image.ndim == 2 else "RGB")
    out = io.BytesIO()
    if media_type == JPEG:
        picture.save(out, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    elif media_type == PNG:
        picture.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif media_type == WEBP:
        picture.save(out, format="WEBP", quality=quality, method=0)
    else:
        raise UnsupportedMediaType(f"cannot render to {media_type!r}; offered: {', '.join(MEDIA_TYPES)}")
    return out.getvalue()
