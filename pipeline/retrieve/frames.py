"""Frames and bulk data of a stored instance, for WADO-RS (PS3.18 10.4.1.1.3-4, 8.7.3.3).

Two sources:

* **Decoded frames** from the Zarr pixel store (:mod:`pipeline.storage.pixels`),
  as the uncompressed bulk data of PS3.18 8.7.3.3.2: the stored values of one
  frame, little endian, colour pixel-interleaved (RGB for YBR sources, as the
  decode stage stores them and as pydicom's ``pixel_array`` gives them). A
  1-bit frame is packed again, 8 pixels a byte, first pixel in the low bit
  (PS3.5 8.1.1), each frame from a byte boundary. For the common native
  little endian grey image, :func:`stored_frame` cuts the same values out of
  the stored file instead (no decompression: about a third of a frame
  request's CPU).
* **Original frames** of encapsulated pixel data (PS3.5 A.4): the bytes of the
  fragments of one frame, exactly as received (the compressed media types of
  PS3.18 Table 8.7.3-5: a JPEG, JPEG-LS or JPEG 2000 codestream, an RLE
  frame), read from the blob.

:func:`bulk_value` resolves the paths of our BulkDataURIs
(:mod:`pipeline.retrieve.metadata`) in the stored blob.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from pipeline.errors import NotFound
from pipeline.storage.pixels import PixelStore

__all__ = [
    "BulkValue",
    "COMPRESSED_MEDIA_TYPES",
    "NATIVE_LITTLE_ENDIAN",
    "decoded_frame",
    "encapsulated_frames",
    "bulk_value",
    "media_type_of",
    "stored_frame",
]

#: Compressed frame media types and the transfer syntaxes whose frames they are
#: (PS3.18 Table 8.7.3-5). ``image/jphc`` is Supplement 235's name for an HTJ2K
#: codestream; ``image/jph`` (the file format's name) is accepted as well, as
#: are the pre-registration ``x-`` names some clients still send.
COMPRESSED_MEDIA_TYPES: dict[str, frozenset[str]] = {
    "image/jpeg": frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                             "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}),
    "image/jls": frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}),
    "image/x-jls": frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}),
    "image/jp2": frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}),
    "image/jpx": frozenset({"1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"}),
    "image/jphc": frozenset({"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                             "1.2.840.10008.1.2.4.203"}),
    "image/jph": frozenset({"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                            "1.2.840.10008.1.2.4.203"}),
    "image/dicom-rle": frozenset({"1.2.840.10008.1.2.5"}),
    "image/x-dicom-rle": frozenset({"1.2.840.10008.1.2.5"}),
}  # fmt: skip

#: The name we answer with for a stored syntax (the registered one).
_ANSWERED = ("image/jpeg", "image/jls", "image/jp2", "image/jpx", "image/jphc", "image/dicom-rle")

_WORD_SIZES = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_PIXEL_DATA = 0x7FE00010
_MAX_PATH_DEPTH = 16


def media_type_of(transfer_syntax_uid: str) -> str | None:
    """The compressed media type of a syntax's frames, or None (native, video)."""
    for media_type in _ANSWERED:
        if transfer_syntax_uid in COMPRESSED_MEDIA_TYPES[media_type]:
            return media_type
    return None


def _read(part10: bytes) -> tuple[Dataset, UID]:
    try:
        ds = dcmread(BytesIO(part10), force=True)
    except Exception as exc:  # pydicom raises many kinds on bad bytes
        raise NotFound(f"the stored instance cannot be parsed ({type(exc).__name__})") from None
    return ds, UID(str(ds.file_meta.get("TransferSyntaxUID", "")).strip("\0 "))


def _frame_count(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def encapsulated_frames(part10: bytes, numbers: list[int]) -> tuple[str, list[bytes]]:
    """The original bytes of frames ``numbers`` (from 1) of encapsulated pixel data.

    Frames are found with the Basic or Extended Offset Table when there is one,
    else by the fragment count (one fragment per frame when the counts agree)
    or by the codestreams' start markers (pydicom's rules, PS3.5 A.4).

    Returns
    -------
    tuple of (str, list of bytes)
        The transfer syntax UID, and each frame's bytes in the order asked.

    Raises
    ------
    NotFound
        No encapsulated pixel data, or a frame number beyond the frames.
    """
    ds, tsyntax = _read(part10)
    if not tsyntax.is_encapsulated or "PixelData" not in ds:
        raise NotFound("the instance has no encapsulated pixel data")
    count = _frame_count(ds)
    buffer = ds.PixelData
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    out = []
    for number in numbers:
        if not 1 <= number <= count:
            raise NotFound(f"the instance has {count} frame(s)")
        try:
            out.append(
                bytes(get_frame(buffer, number - 1, extended_offsets=extended,
                                number_of_frames=count))  # fmt: skip
            )
        except Exception as exc:  # malformed items or offsets
            raise NotFound(f"frame {number} cannot be found in the pixel data "
                           f"({type(exc).__name__})") from None  # fmt: skip
    return str(tsyntax), out


def decoded_frame(pixels: PixelStore, key: str, index: int, bits_allocated: int | None) -> bytes:
    """Frame ``index`` (from 0) from the pixel store as PS3.18 8.7.3.3.2 bytes.

    Parameters
    ----------
    bits_allocated
        From the pixel description: 1 packs the frame's bits again.

    Raises
    ------
    FileNotFoundError, IndexError
        As :meth:`PixelStore.read_frame`.
    """
    frame = np.asarray(pixels.read_frame(key, index))
    if bits_allocated == 1:
        return np.packbits(frame.ravel().astype(bool), bitorder="little").tobytes()
    little = frame.dtype.newbyteorder("<")
    return np.ascontiguousarray(frame, dtype=little).tobytes()


#: Native little endian syntaxes and the length of their Pixel Data element
#: header (PS3.5 7.1.2: tag, VR, 2 reserved bytes, 32-bit length; 7.1.3: tag, length).
_NATIVE_LITTLE = {ExplicitVRLittleEndian: 12, ImplicitVRLittleEndian: 8}
#: The syntaxes :func:`stored_frame` may cut frames from.
NATIVE_LITTLE_ENDIAN = frozenset(_NATIVE_LITTLE)
_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def _pixel_data_start(part10: bytes, syntax: str, length: int) -> int | None:
    """Where the value of a last-element Pixel Data of ``length`` bytes starts, if it is there.

    The element header is looked for exactly where it must be if Pixel Data
    ends the file (the usual layout); its tag, VR and declared length must
    all match, so pixel values cannot be mistaken for it. Anything after
    Pixel Data (trailing padding, a signature) means None.
    """
    for value_length in (length, length + 1) if length % 2 else (length,):
        start = len(part10) - value_length
        head = part10[start - _NATIVE_LITTLE[syntax] : start]
        size = value_length.to_bytes(4, "little")
        if syntax == ExplicitVRLittleEndian:
            if head[:4] == _PIXEL_TAG and head[4:6] in (b"OW", b"OB") and head[6:] == b"\0\0" + size:
                return start
        elif head == _PIXEL_TAG + size:
            return start
    return None


def stored_frame(part10: bytes, description: dict[str, Any], index: int) -> bytes | None:
    """Frame ``index`` (from 0) cut from the stored file, or None when it cannot be.

    Equal to :func:`decoded_frame` of the decode stage's array (pydicom's
    ``pixel_array``: unused high bits cleared, or the sign extended, PS3.5
    8.1.1), for native little endian, one sample per pixel, 8/16/32 bits
    allocated, Pixel Data last in the file. Other images return None: read
    the pixel store.

    Parameters
    ----------
    part10 : bytes
        The stored blob.
    description : dict
        The pixel description the decode stage wrote (:mod:`pipeline.decode.pixels`).
    index : int
        The frame, from 0; must be below ``number_of_frames``.
    """
    syntax = str(description.get("transfer_syntax_uid") or "")
    decoded = description.get("decoded") or {}
    bits = description.get("bits_allocated")
    stored_bits = description.get("bits_stored")
    try:
        dtype = np.dtype(str(decoded.get("dtype"))).newbyteorder("<")
        rows, columns = int(description["rows"]), int(description["columns"])
        frames = int(description.get("number_of_frames") or 1)
    except (KeyError, TypeError, ValueError):
        return None
    usable = (
        syntax in _NATIVE_LITTLE
        and description.get("samples_per_pixel") == 1
        and bits in (8, 16, 32)
        and isinstance(stored_bits, int) and 0 < stored_bits <= bits
        and dtype.kind in "iu" and dtype.itemsize * 8 == bits
        and decoded.get("photometric_interpretation") == description.get("photometric_interpretation")
        and 0 <= index < frames
    )  # fmt: skip
    if not usable:
        return None
    frame_bytes = rows * columns * dtype.itemsize
    start = _pixel_data_start(part10, syntax, frame_bytes * frames)
    if start is None:
        return None
    data = part10[start + index * frame_bytes : start + (index + 1) * frame_bytes]
    if stored_bits == bits:
        return data
    values = np.frombuffer(data, dtype=dtype)
    if dtype.kind == "u":
        return (values & dtype.type((1 << stored_bits) - 1)).tobytes()
    shift = bits - stored_bits  # signed: bit (stored - 1) is the sign
    return ((values << shift) >> shift).astype(dtype).tobytes()


@dataclass(frozen=True, slots=True)
class BulkValue:
    """One bulk data value: either its bytes, or (encapsulated pixel data) its frames.

    Attributes
    ----------
    data : bytes or None
        The value, little endian (PS3.18 8.7.3.3.2), for everything but
        encapsulated Pixel Data.
    transfer_syntax_uid : str
        The stored syntax.
    encapsulated : bool
        The value is encapsulated Pixel Data: retrieve its frames instead.
    """

    data: bytes | None
    transfer_syntax_uid: str
    encapsulated: bool = False


def parse_path(path: str) -> list[int]:
    """``"00880200/1/7FE00010"`` -> ``[0x00880200, 1, 0x7FE00010]``; NotFound if malformed."""
    parts = path.strip("/").split("/")
    if not parts or len(parts) % 2 == 0 or len(parts) > 2 * _MAX_PATH_DEPTH + 1:
        raise NotFound("no such bulk data")
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if not _TAG.fullmatch(part):
                raise NotFound("no such bulk data")
            out.append(int(part, 16))
        else:
            if not part.isdigit() or int(part) < 1:
                raise NotFound("no such bulk data")
            out.append(int(part))
    return out


def bulk_value(part10: bytes, path: str) -> BulkValue:
    """The value our BulkDataURI ``path`` names in the stored instance.

    Raises
    ------
    NotFound
        A malformed path, an attribute or item that is not there, or a value
        that is not binary.
    """
    steps = parse_path(path)
    ds, tsyntax = _read(part10)
    current: Dataset = ds
    for i in range(0, len(steps) - 1, 2):
        tag, number = steps[i], steps[i + 1]
        element = current.get(tag)
        if element is None or element.VR != "SQ" or not 1 <= number <= len(element.value):
            raise NotFound("no such bulk data")
        current = element.value[number - 1]
    tag = steps[-1]
    element = current.get(tag)
    if element is None or element.VR not in {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}:
        raise NotFound("no such bulk data")
    if tag == _PIXEL_DATA and current is ds and tsyntax.is_encapsulated:
        return BulkValue(None, str(tsyntax), encapsulated=True)
    value = bytes(element.value or b"")
    if tsyntax == ExplicitVRBigEndian and element.VR in _WORD_SIZES:
        size = _WORD_SIZES[element.VR]
        usable = len(value) - len(value) % size
        value = np.frombuffer(value[:usable], f">u{size}").astype(f"<u{size}").tobytes()
    return BulkValue(value, str(tsyntax))
