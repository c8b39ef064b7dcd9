"""Decoding a stored Part-10 instance's pixel data into one numpy array.

:func:`decode_instance` is the decoding half of the decode stage: it takes the
stored blob (PS3.10 file, always with a File Meta Information since ingest
writes one) and returns every frame as one array plus the description a
renderer needs (:mod:`pipeline.decode.describe`). It does no I/O.

Pixel semantics (PS3.3 C.7.6.3, PS3.5 8.1.1, 8.2):

* The array is shaped ``(frames, rows, columns)`` for one sample per pixel and
  ``(frames, rows, columns, samples)`` for colour, native byte order, with the
  dtype pydicom gives for the source: ``uint8``/``int8`` for Bits Allocated 1
  (unpacked) and 8, ``uint16``/``int16`` for 16, ``uint32``/``int32`` for 32,
  ``float32``/``float64`` for Float / Double Float Pixel Data.
* Bits above Bits Stored are not part of the value (PS3.5 8.1.1): unsigned
  samples are masked to ``0 .. 2**BitsStored - 1`` and signed samples are
  sign-extended from bit ``BitsStored - 1`` (pydicom's ``correct_unused_bits``,
  on by default, applied to native and encapsulated data alike). Lossy codecs'
  overshoot past Bits Stored is masked the same way, as GDCM and DCMTK do.
* Colour is stored colour-by-pixel whatever the Planar Configuration
  (C.7.6.3.1.3); YBR_FULL and YBR_FULL_422 are converted to RGB (pydicom's
  default, PS3.3 C.7.6.3.1.2 equations), as are JPEG 2000's YBR_ICT / YBR_RCT
  (undone by the codec). The description records both the source photometric
  interpretation and ``decoded.photometric_interpretation`` (``RGB`` then).
  Other photometric interpretations are stored as decoded.
* PALETTE COLOR stays as indices; the LUTs are in ``description["palette"]``
  and the renderer applies them (C.7.6.3.1.5). Modality and VOI LUTs are not
  applied either: the stored values are the stored pixel values.

Refusals, all :class:`~pipeline.errors.DecodeFailed` (reasons name attributes,
sizes and exception kinds, never values, so they are free of PHI):

* no Pixel Data, Float Pixel Data or Double Float Pixel Data: ``"no pixel
  data"`` (an exception, not ``None``: the caller marks the instance's pixel
  state ``none``);
* an Image Pixel Module that is missing or out of range (C.7.6.3);
* a decoded size (rows x columns x frames x samples x bytes per sample) over
  ``max_decoded_bytes``, checked before anything is allocated;
* native pixel data shorter than its declared size (PS3.5 A.1/8.1);
* an encapsulated frame whose own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000
  SIZ, RLE header) declares another image than the dataset, checked before
  any decoder runs (:mod:`pipeline.decode.codestream`): no decoder allocates
  more than the dataset declares;
* a Deflated dataset that inflates past ``max_decoded_bytes`` plus
  :data:`INFLATE_HEADROOM` (a decompression bomb);
* any error of pydicom or a codec, wrapped with the exception's class name
  (so is any other exception while decoding: a garbage frame fails its
  instance, never the worker);
* :class:`~pipeline.errors.MissingDecoder` when the codec is not installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from pipeline.decode.codestream import check_encapsulated_frames
from pipeline.decode.describe import describe
from pipeline.decode.registry import Decoder, decoder_for
from pipeline.errors import DecodeFailed, LightboxError, TooLarge
from pipeline.ingest.parse import dataset_encoding, inflate
from pipeline.ingest.part10 import split_part10

__all__ = ["DecodedPixels", "declared_decoded_bytes", "decode_instance"]

#: Not errors of the data: never turned into DecodeFailed.
_INTERRUPTS = (KeyboardInterrupt, SystemExit, GeneratorExit)

#: What an inflated Deflated dataset (PS3.5 A.5) may hold besides its pixel
#: data (bounded by ``max_decoded_bytes``): the rest of the header.
INFLATE_HEADROOM = 64 << 20

_PIXEL_KEYWORDS = {
    "PixelData": None,
    "FloatPixelData": 32,
    "DoubleFloatPixelData": 64,
}

#: An explicit VR little endian Pixel Data element header (PS3.5 7.1.2), or
#: Float / Double Float Pixel Data: found in the bytes but not in the parsed
#: dataset, it was cut short.
_PIXEL_DATA_HEADERS = re.compile(rb"\xe0\x7f[\x08\x09\x10]\x00(OB|OW|OF|OD)\x00\x00", re.DOTALL)


@dataclass(frozen=True, slots=True)
class DecodedPixels:
    """One instance's decoded frames and their description.

    Attributes
    ----------
    frames : numpy.ndarray
        ``(frames, rows, columns)`` or ``(frames, rows, columns, samples)``.
    description : dict
        JSON-serialisable; see :func:`pipeline.decode.describe.describe`.
    luts : dict of str to numpy.ndarray
        Lookup tables too large for the description, by name (the palette's
        ``palette_red``, ``palette_green``, ``palette_blue``: up to 65536
        entries each); the description names them.
    """

    frames: np.ndarray
    description: dict[str, Any]
    luts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Geometry:
    rows: int
    columns: int
    frames: int
    samples: int
    bits_allocated: int
    keyword: str

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.bits_allocated <= 8 else self.bits_allocated // 8

    @property
    def decoded_bytes(self) -> int:
        return self.rows * self.columns * self.frames * self.samples * self.bytes_per_sample


def _read(part10: bytes, max_inflated_bytes: int | None = None) -> tuple[Dataset, str]:
    """The dataset and its transfer syntax (from the File Meta, PS3.10 7.1).

    Read the way ingest split it (:func:`pipeline.ingest.part10.split_part10`):
    the File Meta's syntax, or the one inferred for a dataset without one.
    """
    try:
        part = split_part10(part10)
        tsyntax = part.transfer_syntax_uid
        dataset = bytes(part.dataset)
        if tsyntax == DeflatedExplicitVRLittleEndian:
            dataset = inflate(dataset, max_inflated_bytes)
    except TooLarge as exc:  # a Deflated dataset inflating past the limit
        raise DecodeFailed(exc.reason) from None
    except LightboxError as exc:
        raise DecodeFailed(f"not a DICOM file: {exc.reason}") from None
    implicit, little = dataset_encoding(tsyntax)
    try:
        ds = read_dataset(BytesIO(dataset), implicit, little)
    except Exception as exc:  # pydicom raises many kinds for bad bytes
        raise DecodeFailed(f"cannot parse dataset ({type(exc).__name__})") from None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    if not any(k in ds for k in _PIXEL_KEYWORDS) and _PIXEL_DATA_HEADERS.search(dataset):
        # pydicom drops an element cut short by the end of the bytes.
        raise DecodeFailed("pixel data is truncated or unreadable")
    return ds, tsyntax


def _int_attribute(ds: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            if default is None:
                raise DecodeFailed(f"{keyword} is missing")
            return default
        return int(value)
    except DecodeFailed:
        raise
    except Exception as exc:
        raise DecodeFailed(f"{keyword} is not an integer ({type(exc).__name__})") from None


def _geometry(ds: Dataset) -> _Geometry:
    """The Image Pixel Module's sizes, checked (PS3.3 C.7.6.3, C.7.6.6)."""
    keyword = next((k for k in _PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        raise DecodeFailed("no pixel data")
    rows = _int_attribute(ds, "Rows")
    columns = _int_attribute(ds, "Columns")
    samples = _int_attribute(ds, "SamplesPerPixel", 1)
    bits_allocated = _int_attribute(ds, "BitsAllocated", _PIXEL_KEYWORDS[keyword])
    frames = _int_attribute(ds, "NumberOfFrames", 1) or 1  # 0: one frame, as pydicom reads it
    if not (0 < rows <= 0xFFFF and 0 < columns <= 0xFFFF):
        raise DecodeFailed("Rows and Columns must be 1 to 65535")
    if frames < 0:
        raise DecodeFailed("Number of Frames is negative")
    if samples not in (1, 3):
        raise DecodeFailed("Samples per Pixel must be 1 or 3")
    if bits_allocated != 1 and (bits_allocated % 8 or not 8 <= bits_allocated <= 64):
        raise DecodeFailed("Bits Allocated must be 1 or a multiple of 8 up to 64")
    if keyword == "PixelData":
        bits_stored = _int_attribute(ds, "BitsStored", bits_allocated)
        if not 0 < bits_stored <= bits_allocated:
            raise DecodeFailed("Bits Stored must be 1 to Bits Allocated")
        if "PhotometricInterpretation" not in ds:
            raise DecodeFailed("PhotometricInterpretation is missing")
    return _Geometry(rows, columns, frames, samples, bits_allocated, keyword)


def declared_decoded_bytes(ds: Dataset) -> int:
    """Bytes the decoded array of ``ds`` would take, from its header alone."""
    return _geometry(ds).decoded_bytes


def _check_native_length(ds: Dataset, geometry: _Geometry) -> None:
    """Native pixel data must hold every declared frame (PS3.5 8.1, A.1)."""
    from pydicom.pixels.utils import get_expected_length

    try:
        expected = get_expected_length(ds, "bytes")
    except Exception as exc:
        raise DecodeFailed(f"cannot compute the pixel data length ({type(exc).__name__})") from None
    actual = len(ds[geometry.keyword].value or b"")
    if actual < expected:
        raise DecodeFailed(f"pixel data is shorter than declared: {actual} of {expected} bytes")


def _decode(ds: Dataset, decoder: Decoder) -> tuple[np.ndarray, dict[str, Any]]:
    from pydicom.pixels import get_decoder

    try:
        arr, meta = get_decoder(decoder.uid).as_array(ds, decoding_plugin=decoder.plugin)
    except _INTERRUPTS:
        raise
    except BaseException as exc:  # every plugin raises its own kinds; messages may quote values
        # BaseException: a Rust codec's panic (pylibjpeg-rle on a segment that
        # decodes past its plane) is a pyo3 PanicException, not an Exception.
        raise DecodeFailed(
            f"{decoder.name}: cannot decode pixel data ({type(exc).__name__})"
        ) from None
    return arr, dict(meta)


def decode_instance(part10: bytes, max_decoded_bytes: int) -> DecodedPixels:
    """Decode every frame of a stored instance; never raises anything but DecodeFailed.

    Parameters
    ----------
    part10 : bytes
        The stored blob: a PS3.10 file with File Meta Information.
    max_decoded_bytes : int
        Refuse, before decoding, an instance whose decoded array would be
        larger than this.

    Returns
    -------
    DecodedPixels

    Raises
    ------
    MissingDecoder
        The transfer syntax's codec is not installed (the reason names it).
    DecodeFailed
        No pixel data (reason ``"no pixel data"``), an unknown transfer
        syntax, a header out of range, over the size limit, pixel data shorter
        than declared, a frame whose codestream header disagrees with the
        dataset, or a codec error; and, with the exception's class name, any
        other error while decoding (the function does no I/O: whatever goes
        wrong in it is about the data).
    """
    try:
        return _decode_instance(part10, max_decoded_bytes)
    except (LightboxError, *_INTERRUPTS):
        raise
    except BaseException as exc:  # MemoryError, a codec's own kinds or panics, a bug on odd data
        raise DecodeFailed(f"unexpected error while decoding ({type(exc).__name__})") from None


def _decode_instance(part10: bytes, max_decoded_bytes: int) -> DecodedPixels:
    ds, tsyntax = _read(part10, max_decoded_bytes + INFLATE_HEADROOM)
    geometry = _geometry(ds)  # "no pixel data" before "no decoder" for SR, PDF, ...
    decoder = decoder_for(tsyntax)
    if geometry.decoded_bytes > max_decoded_bytes:
        raise DecodeFailed(
            f"decoded pixel data would be {geometry.decoded_bytes} bytes, over the limit of "
            f"{max_decoded_bytes} ({geometry.rows}x{geometry.columns}x{geometry.frames} frames, "
            f"{geometry.samples} samples, {geometry.bits_allocated} bits allocated)"
        )
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        _check_native_length(ds, geometry)
    elif geometry.keyword == "PixelData":
        # The codestream's own header, before a decoder allocates what it says.
        check_encapsulated_frames(
            ds,
            tsyntax,
            geometry.rows,
            geometry.columns,
            geometry.samples,
            geometry.bits_allocated,
            geometry.frames,
            max_decoded_bytes,
        )

    arr, meta = _decode(ds, decoder)
    frames = int(meta.get("number_of_frames") or 1)
    samples = int(meta.get("samples_per_pixel") or 1)
    shape = (frames, geometry.rows, geometry.columns) + ((samples,) if samples > 1 else ())
    if arr.size != int(np.prod(shape)):
        raise DecodeFailed(
            f"{decoder.name}: decoded array has {arr.size} samples, expected {int(np.prod(shape))}"
        )
    arr = arr.reshape(shape)
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr)
    try:
        description = describe(ds, decoder, frames, meta, arr.dtype.name)
    except Exception as exc:  # a malformed header value the renderer would need
        raise DecodeFailed(f"cannot describe pixel data ({type(exc).__name__})") from None
    return DecodedPixels(frames=arr, description=description, luts=_lift_palette(description))


def _lift_palette(description: dict[str, Any]) -> dict[str, np.ndarray]:
    """Move the palette's LUT data out of the description into arrays.

    A 16-bit palette is 3 x 65536 entries: as JSON in the group's metadata it
    would be parsed on every frame read. The description keeps the descriptors
    and the names of the arrays (``palette["luts"]``).
    """
    palette = description.get("palette")
    if not palette:
        return {}
    luts = {}
    for colour in ("red", "green", "blue"):
        luts[f"palette_{colour}"] = np.asarray(palette.pop(colour), dtype=np.uint16)
    palette["luts"] = {colour: f"palette_{colour}" for colour in ("red", "green", "blue")}
    return luts
