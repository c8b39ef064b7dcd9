"""Reading an encapsulated frame's own header, cheaply, before any decoder sees it.

A decoder allocates what the *codestream* declares, not what the dataset
declares: a JPEG frame whose Start Of Frame says 65535 x 65535 makes libjpeg
allocate gigabytes even if Rows and Columns say 512 x 512, and a JPEG 2000
codestream of one-pixel tiles makes OpenJPEG allocate a structure per tile.
So before decoding, every frame's header is read here (a few bytes, no
allocation beyond the frame itself) and a frame is refused with
:class:`~pipeline.errors.DecodeFailed` when what it declares differs from the
dataset's Rows, Columns and Samples per Pixel, or when its samples are wider
than Bits Allocated (PS3.5 8.2: the codestream's and the dataset's image
must agree). Ingest has already bounded Rows x Columns x Frames x Samples x
bytes by ``max_decoded_bytes`` (:func:`pipeline.ingest.parse.check_pixel_limits`),
so a frame that agrees with the dataset cannot make a decoder allocate more.

Headers read (the rules cited are the ones checked):

* JPEG (ISO/IEC 10918-1 B.2.2): the first Start Of Frame marker segment
  (SOF0-SOF3, SOF5-SOF7, SOF9-SOF11, SOF13-SOF15): sample precision P, number
  of lines Y, samples per line X, components Nf. Y = 0 (the height given
  later by a DNL marker, B.2.5) is refused: the decoder could not be held to
  the dataset's height before it allocates.
* JPEG-LS (ISO/IEC 14495-1 C.2.2): SOF55 (FFF7), the same fields.
* JPEG 2000 and HTJ2K (ISO/IEC 15444-1 A.5.1, 15444-15): the SIZ marker
  segment that must follow SOC: image and tile sizes and offsets, and per
  component Ssiz (precision) and sub-sampling, with A.5.1's constraints on
  them; the number of tiles is at most 65535 (Isot, A.4.2, is 0 to 65534).
  A codestream wrapped in a JP2 file (15444-1 Annex I) is read from its
  ``jp2c`` box.
* RLE Lossless (PS3.5 G.3.1): the 64-byte header: 1 to 15 segments, as many
  as Samples per Pixel x bytes per sample (G.2), each offset inside the frame
  and after the previous one.

Encapsulation itself (PS3.5 A.4: the Basic or Extended Offset Table and the
fragments of each frame) is split by pydicom, as its decoders do.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom import uid
from pydicom.dataset import Dataset

from pipeline.errors import DecodeFailed

__all__ = [
    "FrameHeader",
    "check_encapsulated_frames",
    "j2k_header",
    "jpeg_header",
    "rle_segments",
]

#: JPEG processes (PS3.5 A.4.1, 8.2.1) and JPEG-LS (A.4.3, 8.2.3).
JPEG_SYNTAXES = frozenset(
    {uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1}
)
JPEG_LS_SYNTAXES = frozenset({uid.JPEGLSLossless, uid.JPEGLSNearLossless})
#: JPEG 2000 (A.4.4) and HTJ2K (A.4.11): the same SIZ marker segment.
J2K_SYNTAXES = frozenset(
    {
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.JPEG2000MCLossless,
        uid.JPEG2000MC,
        uid.HTJ2KLossless,
        uid.HTJ2KLosslessRPCL,
        uid.HTJ2K,
    }
)

#: Start Of Frame markers of ISO/IEC 10918-1 Table B.1 (C4 is DHT, C8 JPG, CC DAC).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOF55 = 0xF7  # JPEG-LS, ISO/IEC 14495-1 Table C.1
_SOS = 0xDA
#: Markers without a length (B.1.1.3): TEM, RSTm, SOI, EOI.
_STANDALONE = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9})
_MAX_TILES = 65535
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """What one codestream declares about its image.

    Attributes
    ----------
    rows, columns : int
        Height and width in samples.
    components : int
        Components (the dataset's Samples per Pixel).
    precision : int
        Bits per sample, the largest over the components.
    """

    rows: int
    columns: int
    components: int
    precision: int


def jpeg_header(frame: bytes, sof: frozenset[int] = _SOF) -> FrameHeader:
    """The frame header of a JPEG or JPEG-LS codestream.

    Walks the marker segments from SOI (ISO/IEC 10918-1 B.1.1, B.2) to the
    first Start Of Frame: each segment's length is read and skipped, nothing
    is decoded.

    Parameters
    ----------
    frame : bytes
        One frame's codestream.
    sof : frozenset of int
        The Start Of Frame markers to look for (second byte): the JPEG ones
        (B.2.2), or ``{0xF7}`` for JPEG-LS (ISO/IEC 14495-1 C.2.2).

    Returns
    -------
    FrameHeader

    Raises
    ------
    DecodeFailed
        No SOI, no Start Of Frame before the first scan, a segment running
        past the end, or a frame header shorter than B.2.2 requires.
    """
    end = len(frame)
    if frame[:2] != b"\xff\xd8":
        raise DecodeFailed("frame is not a JPEG codestream (no SOI marker)")
    pos = 2
    while pos + 4 <= end:
        if frame[pos] != 0xFF:
            raise DecodeFailed("JPEG codestream: marker expected before the frame header")
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte (B.1.1.2)
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(frame[pos + 2 : pos + 4], "big")
        if length < 2 or pos + 2 + length > end:
            raise DecodeFailed("JPEG codestream: a marker segment runs past the frame")
        if marker in sof:
            # B.2.2: Lf, P, Y, X, Nf, then Nf x (C, H/V, Tq).
            if length < 8:
                raise DecodeFailed("JPEG codestream: the frame header is too short")
            precision, rows, columns, components = struct.unpack_from(">BHHB", frame, pos + 4)
            if length < 8 + 3 * components:
                raise DecodeFailed("JPEG codestream: the frame header is too short")
            return FrameHeader(rows, columns, components, precision)
        if marker == _SOS:
            break
        pos += 2 + length
    raise DecodeFailed("JPEG codestream: no frame header (SOF) before the scan")


def j2k_header(frame: bytes) -> tuple[FrameHeader, int]:
    """The image of a JPEG 2000 / HTJ2K codestream, from its SIZ marker segment.

    Parameters
    ----------
    frame : bytes
        One frame: a codestream (SOC then SIZ, ISO/IEC 15444-1 A.3, A.5.1),
        or a JP2 file whose ``jp2c`` box holds one.

    Returns
    -------
    tuple of (FrameHeader, int)
        The image (width Xsiz - XOsiz, height Ysiz - YOsiz, Csiz components,
        the largest Ssiz precision) and the number of tiles.

    Raises
    ------
    DecodeFailed
        No SOC/SIZ, a SIZ shorter than its components need, or values that
        break A.5.1 (sizes and offsets, Csiz 1 to 16384, sub-sampling 1 to
        255, precision 1 to 38) or A.4.2 (at most 65535 tiles).
    """
    codestream = _jp2_codestream(frame) if frame.startswith(_JP2_SIGNATURE) else frame
    if codestream[:4] != b"\xff\x4f\xff\x51":
        raise DecodeFailed("frame is not a JPEG 2000 codestream (no SOC and SIZ markers)")
    if len(codestream) < 4 + 38:
        raise DecodeFailed("JPEG 2000 codestream: SIZ is truncated")
    (lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz, csiz) = struct.unpack_from(
        ">HHIIIIIIIIH", codestream, 4
    )
    if not 1 <= csiz <= 16384 or lsiz != 38 + 3 * csiz or len(codestream) < 4 + lsiz:
        raise DecodeFailed("JPEG 2000 codestream: SIZ is malformed")
    if not (xsiz > xosiz and ysiz > yosiz and xtsiz > 0 and ytsiz > 0):
        raise DecodeFailed("JPEG 2000 codestream: SIZ declares an empty image or tile")
    if not (xtosiz <= xosiz and ytosiz <= yosiz and xtsiz + xtosiz > xosiz and ytsiz + ytosiz > yosiz):
        raise DecodeFailed("JPEG 2000 codestream: SIZ tile offsets break ISO/IEC 15444-1 A.5.1")
    precision = 0
    for i in range(csiz):
        ssiz, xrsiz, yrsiz = struct.unpack_from(">BBB", codestream, 4 + 38 + 3 * i)
        depth = (ssiz & 0x7F) + 1
        if depth > 38 or xrsiz == 0 or yrsiz == 0:
            raise DecodeFailed("JPEG 2000 codestream: SIZ component is malformed")
        precision = max(precision, depth)
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return FrameHeader(ysiz - yosiz, xsiz - xosiz, csiz, precision), tiles


def _jp2_codestream(frame: bytes) -> bytes:
    """The contiguous codestream box (``jp2c``) of a JP2 file (ISO/IEC 15444-1 I.5.4)."""
    pos, end = 0, len(frame)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", frame, pos)
        header = 8
        if length == 1:  # XLBox: a 64-bit length follows
            if pos + 16 > end:
                break
            length = struct.unpack_from(">Q", frame, pos + 8)[0]
            header = 16
        elif length == 0:  # the last box: to the end
            length = end - pos
        if length < header:
            break
        if kind == b"jp2c":
            return frame[pos + header : pos + length]
        pos += length
    raise DecodeFailed("JP2 file without a codestream box")


def rle_segments(frame: bytes) -> int:
    """The number of segments of an RLE frame, its header checked (PS3.5 G.3.1).

    Returns
    -------
    int
        1 to 15.

    Raises
    ------
    DecodeFailed
        A header shorter than 64 bytes, a segment count outside 1 to 15, or
        offsets that do not start at 64, do not increase, or point past the frame.
    """
    if len(frame) < 64:
        raise DecodeFailed("RLE frame is shorter than its 64-byte header")
    header = struct.unpack_from("<16I", frame, 0)
    segments = header[0]
    if not 1 <= segments <= 15:
        raise DecodeFailed("RLE header: the number of segments must be 1 to 15 (PS3.5 G.3.1)")
    offsets = header[1 : 1 + segments]
    if offsets[0] != 64:
        raise DecodeFailed("RLE header: the first segment must start at offset 64")
    if any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(frame):
        raise DecodeFailed("RLE header: segment offsets out of order or past the frame")
    return segments


def _frames(ds: Dataset, frames: int) -> Iterator[bytes]:
    """The encoded frames of ``ds`` (PS3.5 A.4), split the way pydicom's decoders split them."""
    from pydicom.encaps import generate_frames

    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    yield from generate_frames(ds.PixelData, number_of_frames=frames, extended_offsets=extended)


def check_encapsulated_frames(
    ds: Dataset,
    transfer_syntax_uid: str,
    rows: int,
    columns: int,
    samples: int,
    bits_allocated: int,
    frames: int,
    max_decoded_bytes: int,
) -> None:
    """Refuse, before decoding, any frame that declares another image than the dataset.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The whole dataset, with its encapsulated Pixel Data.
    transfer_syntax_uid : str
        Which header to read (see the module docstring); other syntaxes are
        not checked here.
    rows, columns, samples, bits_allocated, frames : int
        The dataset's Image Pixel Module (checked by the caller).
    max_decoded_bytes : int
        No single frame may declare more (rows x columns x components x bytes
        per sample); with the dataset's frames already bounded this only
        matters for a frame that agrees with the dataset.

    Raises
    ------
    DecodeFailed
        A frame's header is unreadable or declares other rows, columns or
        components than the dataset, samples wider than Bits Allocated, more
        than 65535 JPEG 2000 tiles, or an RLE segment count other than
        Samples per Pixel x bytes per sample; or there are fewer frames than
        Number of Frames.
    """
    tsyntax = str(transfer_syntax_uid)
    if tsyntax not in JPEG_SYNTAXES | JPEG_LS_SYNTAXES | J2K_SYNTAXES | {uid.RLELossless}:
        return
    count = 0
    try:
        for index, frame in enumerate(_frames(ds, frames)):
            if index >= frames:
                break  # pydicom may split more frames from JPEG markers: never decoded
            _check_frame(
                frame, tsyntax, index, rows, columns, samples, bits_allocated, max_decoded_bytes
            )
            count += 1
    except DecodeFailed:
        raise
    except Exception as exc:  # pydicom's splitter: bad offsets, items, lengths
        raise DecodeFailed(
            f"cannot split encapsulated pixel data into frames ({type(exc).__name__})"
        ) from None
    if count < frames:
        raise DecodeFailed(f"encapsulated pixel data holds {count} frames, {frames} declared")


def _check_frame(
    frame: bytes,
    tsyntax: str,
    index: int,
    rows: int,
    columns: int,
    samples: int,
    bits_allocated: int,
    max_decoded_bytes: int,
) -> None:
    bytes_per_sample = max(1, bits_allocated // 8)
    where = f"frame {index + 1}"
    if tsyntax == uid.RLELossless:
        segments = rle_segments(frame)
        # G.2: one segment per byte of each sample; the decoder allocates one
        # Rows x Columns plane per segment.
        if segments != samples * bytes_per_sample:
            raise DecodeFailed(
                f"{where}: RLE header has {segments} segments, Samples per Pixel x bytes "
                f"per sample is {samples * bytes_per_sample}"
            )
        return
    if tsyntax in J2K_SYNTAXES:
        header, tiles = j2k_header(frame)
        if tiles > _MAX_TILES:
            raise DecodeFailed(f"{where}: JPEG 2000 codestream has {tiles} tiles, over 65535")
        kind = "JPEG 2000 SIZ"
    else:
        sof = frozenset({_SOF55}) if tsyntax in JPEG_LS_SYNTAXES else _SOF
        header = jpeg_header(frame, sof)
        kind = "JPEG-LS SOF55" if tsyntax in JPEG_LS_SYNTAXES else "JPEG SOF"
    if (header.rows, header.columns, header.components) != (rows, columns, samples):
        raise DecodeFailed(
            f"{where}: {kind} declares {header.rows}x{header.columns} with "
            f"{header.components} components, the dataset {rows}x{columns} with {samples}"
        )
    if not 1 <= header.precision <= max(8, bits_allocated):
        raise DecodeFailed(
            f"{where}: {kind} declares {header.precision}-bit samples, "
            f"Bits Allocated is {bits_allocated}"
        )
    declared = header.rows * header.columns * header.components * ((header.precision + 7) // 8)
    if declared > max_decoded_bytes:
        raise DecodeFailed(
            f"{where}: {kind} declares {declared} bytes, over the limit of {max_decoded_bytes}"
        )
