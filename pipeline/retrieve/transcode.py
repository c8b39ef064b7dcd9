"""Transcoding a stored instance into another transfer syntax (PS3.18 8.7.3.5, PS3.5 8 and 10).

WADO-RS (``api/routes/wado.py``) and the DIMSE retrieve services (C-MOVE,
C-GET) answer an instance in the transfer syntax the peer asked for; the
blob store holds it as received. This module turns the stored Part-10 bytes
into a Part-10 file of another syntax, and says beforehand whether it can.

What is produced (:func:`can_transcode` answers the same table):

* **as stored**: ``target == source`` returns the input unchanged, byte for
  byte.
* **native targets** (Explicit VR Little Endian, Implicit VR Little Endian,
  Deflated Explicit VR Little Endian; PS3.5 A.1, A.2, A.5) from every syntax
  the decode stage decodes (:mod:`pipeline.decode.registry`: native, big
  endian, deflated, JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE), with the same
  pydicom decoding plugins. Encapsulated pixel data is decompressed with
  ``as_rgb``: YBR_FULL/YBR_FULL_422/YBR_ICT/YBR_RCT become RGB, Photometric
  Interpretation and Planar Configuration are updated (PS3.5 8.2.1 and A.4).
  Big endian sources have every OW/OF/OL/OD/OV value swapped to little
  endian (pydicom re-encodes the numeric VRs itself, but not word data).
* **lossless compressed targets**, through pydicom's encoders when their
  package is installed: RLE Lossless (pylibjpeg-rle, else pydicom's own),
  JPEG-LS Lossless (pyjpegls), JPEG 2000 Lossless (pylibjpeg-openjpeg). Only
  from a lossless or native source: a lossy syntax's pixels re-encoded under a
  "lossless" syntax would tell the receiver they are original (refused).
* **lossy compressed targets** (JPEG-LS Near-Lossless with NEAR = 2, JPEG 2000
  at 10:1), only when the caller names them: nothing here chooses a lossy
  syntax on its own. The result is marked as PS3.3 C.7.6.1.1.5 asks: Lossy
  Image Compression "01", the method and the ratio appended.

Not produced: JPEG baseline/extended/lossless, HTJ2K and video syntaxes
(pydicom has no encoder for them), Explicit VR Big Endian (retired), any
syntax we cannot decode from. Datasets without pixel data can be re-encoded
into any syntax we name (an encapsulated syntax then only changes the File
Meta's Transfer Syntax UID: PS3.5 A.4 encapsulates Pixel Data only).

Decompressing a JPEG baseline/extended source (DCT, always lossy) sets Lossy
Image Compression to "01" when the source did not say so; other sources keep
their own value (JPEG 2000 or JPEG-LS near-lossless may hold a reversible
stream, which only the sender knows).

The SOP Instance UID is kept: a transfer syntax is an encoding of the same
instance (PS3.5 10), also when a named lossy syntax was asked for.
"""

from __future__ import annotations

from functools import cache
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pipeline.decode.pixels import declared_decoded_bytes
from pipeline.decode.registry import decoder_for
from pipeline.errors import DecodeFailed, LightboxError

__all__ = [
    "NATIVE_TARGETS",
    "TranscodeRefused",
    "can_transcode",
    "is_lossy",
    "produced_syntaxes",
    "transcode",
]

#: Native syntaxes we write (PS3.5 A.1, A.2, A.5); big endian is retired.
NATIVE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                            DeflatedExplicitVRLittleEndian})  # fmt: skip
_NATIVE_SOURCES = NATIVE_TARGETS | {ExplicitVRBigEndian}


class TranscodeRefused(LightboxError):
    """The instance cannot be given in the asked syntax (HTTP 406, PS3.18 8.7.3.5).

    DIMSE: the retrieve sub-operation fails with A900H-class "cannot
    convert"; the SCU decides (the C-MOVE/C-GET service maps it).
    """

    dimse_status = 0xA900
    http_status = 406
    failure_reason = 0x0110


# (pydicom encoding plugins in order of preference, lossy, keyword options,
#  PS3.3 C.7.6.1.1.5 Lossy Image Compression Method when lossy)
_ENCODERS: dict[str, tuple[tuple[str, ...], bool, dict[str, Any], str]] = {
    # pylibjpeg-rle is compiled; pydicom's own RLE encoder is pure Python.
    RLELossless: (("pylibjpeg", "pydicom"), False, {}, ""),
    JPEGLSLossless: (("pyjpegls",), False, {}, ""),
    JPEG2000Lossless: (("pylibjpeg",), False, {}, ""),
    # NEAR = 2: dcmcjpls's default for near-lossless.
    JPEGLSNearLossless: (("pyjpegls",), True, {"jls_error": 2}, "ISO_14495_1"),
    # 10:1, the ratio of the NEMA WG04 lossy JPEG 2000 samples.
    JPEG2000: (("pylibjpeg",), True, {"j2k_cr": [10]}, "ISO_15444_1"),
}

#: DCT processes: whatever the quality, the pixels went through quantisation.
_ALWAYS_LOSSY = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})
_LOSSY_METHOD = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1"}
_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _clean(ts: str) -> UID:
    return UID(str(ts).strip("\0 "))


@cache
def _encoder_plugin(target: str) -> str | None:
    """The first installed pydicom plugin that encodes ``target``, or None."""
    entry = _ENCODERS.get(target)
    if entry is None:
        return None
    from pydicom.pixels import get_encoder

    try:
        available = get_encoder(target).available_plugins
    except Exception:  # noqa: BLE001 - no encoder at all in this pydicom
        return None
    return next((p for p in entry[0] if p in available), None)


def is_lossy(ts: str) -> bool:
    """Whether ``ts`` is a syntax that may carry irreversibly compressed pixels (PS3.5 8.2)."""
    ts = _clean(ts)
    if ts in _NATIVE_SOURCES:
        return False
    if ts in _ENCODERS:
        return _ENCODERS[ts][1]
    try:
        return decoder_for(ts).lossy
    except DecodeFailed:  # unknown or video syntax: assume the worst
        return True


def _decodable(ts: str) -> bool:
    try:
        decoder_for(ts)
    except DecodeFailed:  # MissingDecoder included
        return False
    return True


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """Whether an instance stored in ``source_ts`` can be given in ``target_ts``.

    Decided from the two syntaxes alone (see the module docstring): a
    particular dataset may still be refused by :func:`transcode` (e.g. 32-bit
    samples, which the RLE and JPEG-LS encoders do not take).

    Parameters
    ----------
    source_ts, target_ts : str
        Transfer Syntax UIDs (PS3.6 Table A-1).

    Returns
    -------
    bool
    """
    source, target = _clean(source_ts), _clean(target_ts)
    if source == target:
        return True
    if not _decodable(source):
        return False
    if target in NATIVE_TARGETS:
        return True
    if _encoder_plugin(target) is None:
        return False
    # Never a lossy source under a lossless syntax.
    return _ENCODERS[target][1] or not is_lossy(source)


def produced_syntaxes(source_ts: str) -> tuple[str, ...]:
    """Every syntax :func:`can_transcode` allows from ``source_ts``, the source first."""
    source = _clean(source_ts)
    others = [t for t in (*sorted(NATIVE_TARGETS), *_ENCODERS) if t != source]
    return (source, *(t for t in others if can_transcode(source, t)))


def _to_little_endian(ds: Dataset) -> None:
    """Swap the word data of a dataset read as big endian (PS3.5 7.3) to little endian.

    Every element is converted from its raw form first (``ds[tag]``): pydicom
    re-encodes numbers in the writer's byte order, but writes OW/OF/OL/OD/OV
    bytes as they are.
    """
    for tag in list(ds.keys()):
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value or ():
                _to_little_endian(item)
        elif element.VR in _WORD_SIZES and element.value:
            size = _WORD_SIZES[element.VR]
            value = bytes(element.value)
            usable = len(value) - len(value) % size
            swapped = np.frombuffer(value[:usable], dtype=f">u{size}").astype(f"<u{size}")
            element.value = swapped.tobytes() + value[usable:]


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, (str, float, int)) else [str(v) for v in value]


def _mark_lossy(ds: Dataset, method: str, ratio: float | None) -> None:
    """PS3.3 C.7.6.1.1.5: once lossy, always "01"; methods and ratios accumulate."""
    ds.LossyImageCompression = "01"
    methods = _values(ds, "LossyImageCompressionMethod")
    ratios = _values(ds, "LossyImageCompressionRatio")
    if ratio is not None and len(ratios) == len(methods):
        # One ratio per method, when the source kept them in step.
        ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"[:16]]
    ds.LossyImageCompressionMethod = [*methods, method]


def _check_size(ds: Dataset, max_decoded_bytes: int | None) -> None:
    if max_decoded_bytes is None or "PixelData" not in ds:
        return
    try:
        size = declared_decoded_bytes(ds)
    except DecodeFailed as exc:
        raise TranscodeRefused(f"cannot transcode: {exc.reason}") from None
    if size > max_decoded_bytes:
        raise TranscodeRefused(
            f"decoded pixel data would be {size} bytes, over the limit of {max_decoded_bytes}"
        )


def transcode(part10: bytes, target_ts: str, *, max_decoded_bytes: int | None = None) -> bytes:
    """The stored instance ``part10`` as a Part-10 file in ``target_ts``.

    Parameters
    ----------
    part10 : bytes
        A PS3.10 file with File Meta Information (what the blob store holds).
    target_ts : str
        The Transfer Syntax UID wanted.
    max_decoded_bytes : int, optional
        Refuse, before decoding, pixel data that would decode to more.

    Returns
    -------
    bytes
        ``part10`` itself when ``target_ts`` is its syntax; else a new Part-10
        file (File Meta rewritten by pydicom: Transfer Syntax UID and group
        length; the SOP Instance UID kept).

    Raises
    ------
    TranscodeRefused
        ``can_transcode`` says no, the dataset is one the encoder does not
        take (bits, photometric interpretation), it is over
        ``max_decoded_bytes``, or its pixel data cannot be decoded. Reasons
        name syntaxes and exception kinds, never values (no PHI).
    """
    target = _clean(target_ts)
    try:
        ds = dcmread(BytesIO(part10), force=True)
    except Exception as exc:  # pydicom raises many kinds on bad bytes
        raise TranscodeRefused(f"cannot parse the stored instance ({type(exc).__name__})") from None
    source = _clean(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    if source == target:
        return part10
    if not can_transcode(source, target):
        raise TranscodeRefused(
            f"cannot transcode {source.name or 'this syntax'} to {target.name or 'that syntax'}"
        )
    has_pixels = "PixelData" in ds
    if has_pixels and (source.is_encapsulated or target.is_encapsulated):
        _check_size(ds, max_decoded_bytes)
    try:
        original_bytes = len(ds.PixelData) if has_pixels and not source.is_encapsulated else None
        if has_pixels and source.is_encapsulated:
            decoder = decoder_for(source)
            ds.decompress(decoding_plugin=decoder.plugin, as_rgb=True, generate_instance_uid=False)
            original_bytes = len(ds.PixelData)
            if source in _ALWAYS_LOSSY and ds.get("LossyImageCompression") != "01":
                _mark_lossy(ds, _LOSSY_METHOD[source], None)
        elif source == ExplicitVRBigEndian:
            _to_little_endian(ds)
        if has_pixels and target.is_encapsulated:
            plugins, lossy, options, method = _ENCODERS[target]
            ds.compress(
                target,
                encoding_plugin=_encoder_plugin(target) or plugins[0],
                generate_instance_uid=False,
                **options,
            )
            if lossy:
                encoded = max(len(ds.PixelData), 1)
                _mark_lossy(ds, method, (original_bytes or encoded) / encoded)
        ds.file_meta.TransferSyntaxUID = target
        out = BytesIO()
        dcmwrite(out, ds, enforce_file_format=True)
    except LightboxError as exc:
        raise TranscodeRefused(f"cannot transcode: {exc.reason}") from None
    except Exception as exc:  # codec and encoder errors; their messages may quote values
        raise TranscodeRefused(
            f"cannot transcode {source.name or 'this syntax'} to {target.name or 'that syntax'} "
            f"({type(exc).__name__})"
        ) from None
    return out.getvalue()
