"""Reading the header of a received dataset, and checking that its bytes are whole.

Only the header is parsed (up to Pixel Data); the Pixel Data element's length,
or for encapsulated pixel data every item (PS3.5 A.4), is checked against the
bytes that are there, and the elements after it are parsed too, so that a
truncated or mis-encoded dataset is refused instead of stored.

The same walk bounds what a hostile sender can make a parser do: sequences
nested deeper than a limit are refused (PS3.5 7.5), a Deflated dataset may not
inflate past a limit (PS3.5 A.5), and :func:`check_pixel_limits` refuses an
Image Pixel Module whose declared size is nonsense or over the decoded size
limit, before anything is stored or decoded.
"""

from __future__ import annotations

import re
import struct
import zlib
from io import BytesIO
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from pipeline.errors import DatasetMismatch, InvalidDataset, TooLarge
from pipeline.index.records import (
    InstanceAttributes,
    ParsedHeader,
    PatientAttributes,
    SeriesAttributes,
    StudyAttributes,
)

#: PS3.5 9.1: digits and dots, components without leading zeros, 64 characters at most.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
#: Older devices write components with leading zeros; we accept those (the
#: instance is still identified exactly) but nothing outside digits and dots.
_UID_LENIENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")

_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
}  # fmt: skip

#: The default of ``settings.max_sequence_depth``: deepest nesting of sequences
#: accepted (PS3.5 7.5). Real objects nest a few levels (SR content trees,
#: enhanced functional groups: 3 to 8); hostile ones nest thousands.
DEFAULT_MAX_SEQUENCE_DEPTH = 16
#: Bits Allocated of an Image Pixel Module (PS3.3 C.7.6.3.1, PS3.5 8.1.1) and
#: of Float / Double Float Pixel Data (C.7.6.24): anything else is nonsense.
_BITS_ALLOCATED = frozenset({1, 8, 16, 32, 64})
#: An IS value (PS3.5 6.2): an optional sign and digits, nothing else.
_INTEGER_STRING = re.compile(r"[+-]?[0-9]{1,12}")


def is_valid_uid(value: str, strict: bool = False) -> bool:
    """Whether ``value`` is a UID (PS3.5 9.1).

    PS3.5 9.1: a UID is at most 64 characters, components of ASCII digits
    separated by single dots, no leading, trailing or empty component, and a
    component other than ``0`` does not start with ``0``. Nothing else (no
    padding, no separator, no path characters) passes, so a UID that passed
    can be written to logs and compared safely; it still never names a file
    (storage keys are generated, :func:`pipeline.storage.blobs.new_storage_key`).

    Parameters
    ----------
    value : str
        The value with its padding (trailing NUL or space, PS3.5 6.2) removed.
    strict : bool
        Also refuse components with leading zeros. Off by default: older
        devices write them, and the instance is still identified exactly.

    Returns
    -------
    bool
    """
    pattern = _UID if strict else _UID_LENIENT
    # fullmatch: ``$`` alone would also accept a UID followed by a newline.
    return 0 < len(value) <= 64 and bool(pattern.fullmatch(value))


def dataset_encoding(transfer_syntax_uid: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax's dataset (PS3.5 10, A)."""
    if transfer_syntax_uid == ImplicitVRLittleEndian:
        return True, True
    if transfer_syntax_uid == ExplicitVRBigEndian:
        return False, False
    # Every other transfer syntax, native or encapsulated, is explicit VR little endian.
    return False, True


def inflate(dataset: bytes, max_bytes: int | None = None) -> bytes:
    """The dataset of the Deflated transfer syntax, inflated (PS3.5 A.5: raw deflate).

    Parameters
    ----------
    dataset : bytes
        The deflate stream; bytes after its end (padding) are ignored.
    max_bytes : int, optional
        Refuse a stream that inflates to more: a few kilobytes of deflate can
        inflate to gigabytes (a decompression bomb), so inflating stops after
        ``max_bytes + 1`` bytes of output whatever the stream holds.

    Returns
    -------
    bytes

    Raises
    ------
    InvalidDataset
        Not a deflate stream, or one cut short.
    TooLarge
        The stream inflates past ``max_bytes``.
    """
    stream = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = stream.decompress(dataset, 0 if max_bytes is None else max_bytes + 1)
    except zlib.error as exc:
        raise InvalidDataset(f"deflated dataset does not inflate: {exc}") from None
    if max_bytes is not None and (len(out) > max_bytes or stream.unconsumed_tail):
        raise TooLarge(f"deflated dataset inflates past the limit of {max_bytes} bytes")
    if not stream.eof:
        raise InvalidDataset("deflated dataset does not inflate: the stream is truncated")
    return out


def read_header(
    dataset: bytes,
    transfer_syntax_uid: str,
    *,
    max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
    max_inflated_bytes: int | None = None,
) -> tuple[Dataset, bool]:
    """Parse ``dataset`` (the bytes after the File Meta Information).

    The structure is walked first (:func:`check_element_lengths`: every
    length, the nesting depth, the encapsulated items), so that pydicom, which
    parses undefined length sequences recursively, never sees a hostile
    nesting; then the header is parsed up to the pixel data.

    Parameters
    ----------
    dataset : bytes
        The dataset, as received.
    transfer_syntax_uid : str
        Its transfer syntax (the encoding, PS3.5 10).
    max_sequence_depth : int
        Deepest sequence nesting accepted (PS3.5 7.5).
    max_inflated_bytes : int, optional
        For the Deflated transfer syntax: the largest inflated dataset.

    Returns
    -------
    tuple of (pydicom.dataset.Dataset, bool)
        The dataset without its pixel data, and whether pixel data was present.

    Raises
    ------
    InvalidDataset
        The bytes are not a whole dataset, or nest sequences too deeply.
    TooLarge
        A Deflated dataset inflates past ``max_inflated_bytes``.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        dataset = inflate(dataset, max_inflated_bytes)
    implicit, little = dataset_encoding(transfer_syntax_uid)
    found: list[int] = []

    def stop_at_pixels(tag: Any, _vr: Any, _length: Any) -> bool:
        if int(tag) in _PIXEL_TAGS:
            found.append(int(tag))
            return True
        return False

    fp = BytesIO(dataset)
    try:
        # pydicom reads a value cut short by the end of the bytes without a word,
        # stops quietly at a partial element header, and recurses once per
        # nested undefined length sequence: check every length and the depth
        # before it reads anything.
        check_element_lengths(dataset, implicit, little, max_sequence_depth)
        ds = read_dataset(fp, implicit, little, stop_when=stop_at_pixels)
        if found:
            end = _skip_pixel_element(dataset, fp.tell(), implicit, little)
            fp.seek(end)
            trailing = read_dataset(fp, implicit, little)
            if fp.tell() != len(dataset):
                raise InvalidDataset("bytes after the last element")
            del trailing
        elif fp.tell() != len(dataset):
            raise InvalidDataset("dataset ends in the middle of an element")
    except InvalidDataset:
        raise
    except Exception as exc:  # pydicom raises many kinds for bad bytes
        # Only the kind: pydicom's messages can quote values (PHI) and the
        # reason goes to logs and to the peer.
        raise InvalidDataset(f"cannot parse dataset ({type(exc).__name__})") from None
    if len(ds) == 0:
        raise InvalidDataset("empty dataset")
    return ds, bool(found)


def _skip_pixel_element(buf: bytes, offset: int, implicit: bool, little: bool) -> int:
    """Offset just after the Pixel Data element at ``offset``, checking its length."""
    end = len(buf)
    order = "<" if little else ">"
    if implicit:
        if offset + 8 > end:
            raise InvalidDataset("Pixel Data element header is truncated")
        length = struct.unpack_from(order + "I", buf, offset + 4)[0]
        header = 8
    else:
        if offset + 12 > end:
            raise InvalidDataset("Pixel Data element header is truncated")
        length = struct.unpack_from(order + "I", buf, offset + 8)[0]
        header = 12
    pos = offset + header
    if length != 0xFFFFFFFF:
        if pos + length > end:
            raise InvalidDataset(
                f"Pixel Data is truncated: {length} bytes declared, {end - pos} present"
            )
        return pos + length
    # Encapsulated (PS3.5 A.4): items, then a sequence delimiter.
    while True:
        if pos + 8 > end:
            raise InvalidDataset("encapsulated Pixel Data ends without a sequence delimiter")
        group, element, item_length = struct.unpack_from("<HHI", buf, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_DELIMITER:
            return pos
        if tag != _ITEM or item_length == 0xFFFFFFFF:
            raise InvalidDataset("encapsulated Pixel Data holds something other than items")
        if pos + item_length > end:
            raise InvalidDataset("encapsulated Pixel Data item is truncated")
        pos += item_length


class _TooDeep(InvalidDataset):
    """Nesting over the limit; passes through the lenient walk of defined length values."""


def check_element_lengths(
    buf: bytes,
    implicit: bool,
    little: bool,
    max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
) -> None:
    """Walk every element of the dataset ``buf``, and every nested sequence.

    The encoding is chosen the way pydicom reads: a dataset (or a sequence item
    of an explicit VR dataset) whose first element has no valid VR is implicit VR.

    Undefined length sequences and items (PS3.5 7.5.1, 7.5.2) must be whole:
    they are what pydicom parses as it reads. Defined length values that hold
    items (SQ; UN, whose sequences are implicit VR little endian, PS3.5 6.2.2;
    implicit VR elements) are walked too, for their depth only: pydicom parses
    them when a value is used, and a structure it cannot read there is not
    refused here (it never was).

    Parameters
    ----------
    buf : bytes
        The dataset.
    implicit, little : bool
        Its encoding (:func:`dataset_encoding`).
    max_sequence_depth : int
        Deepest nesting accepted: a sequence at the top level is at depth 1, a
        sequence in one of its items at depth 2. The walk recurses once per
        level and stops at the limit, so its own recursion is bounded by it.

    Raises
    ------
    InvalidDataset
        A declared length runs past the bytes there; the bytes end inside an
        element header, an undefined length sequence or item; or sequences
        nest deeper than ``max_sequence_depth``.
    """
    _walk_dataset(buf, 0, len(buf), implicit, little, False, 0, max_sequence_depth)


def _looks_implicit(buf: bytes, pos: int) -> bool:
    vr = buf[pos + 4 : pos + 6]
    return not (len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)


def _deeper(depth: int, limit: int) -> int:
    """The depth of a sequence in a dataset at ``depth``, refused over ``limit`` (PS3.5 7.5)."""
    if depth + 1 > limit:
        raise _TooDeep(f"sequences nest deeper than {limit} levels")
    return depth + 1


def _walk_dataset(
    buf: bytes,
    pos: int,
    end: int,
    implicit: bool,
    little: bool,
    in_item: bool,
    depth: int,
    limit: int,
    delimited: bool | None = None,
) -> int:
    """Offset after the dataset at ``pos``: ``end``, or after the item delimiter.

    ``depth`` is the number of sequences around the dataset; ``delimited``
    (default: ``in_item``) says whether it ends with an item delimiter.
    """
    if delimited is None:
        delimited = in_item
    order = "<" if little else ">"
    if pos + 6 <= end and not (in_item and implicit):
        implicit = _looks_implicit(buf, pos)
    while pos < end:
        if pos + 8 > end:
            raise InvalidDataset("dataset ends in the middle of an element header")
        group, element = struct.unpack_from(order + "HH", buf, pos)
        tag = (group << 16) | element
        if tag == _ITEM_DELIMITER:
            if delimited:
                return pos + 8
            raise InvalidDataset("item delimiter outside a sequence item")
        vr = None
        if implicit or group == 0xFFFE:
            length = struct.unpack_from(order + "I", buf, pos + 4)[0]
            pos += 8
        else:
            raw = buf[pos + 4 : pos + 6]
            if raw in _LONG_VRS:
                if pos + 12 > end:
                    raise InvalidDataset("dataset ends in the middle of an element header")
                length = struct.unpack_from(order + "I", buf, pos + 8)[0]
                pos += 12
                vr = raw
            elif not _looks_implicit(buf, pos):
                length = struct.unpack_from(order + "H", buf, pos + 6)[0]
                pos += 8
                vr = raw
            else:  # no VR: pydicom reads this one element as implicit VR
                length = struct.unpack_from(order + "I", buf, pos + 4)[0]
                pos += 8
        if length != _UNDEFINED:
            if pos + length > end:
                if tag in _PIXEL_TAGS:  # the reason _skip_pixel_element gives
                    raise InvalidDataset(
                        f"Pixel Data is truncated: {length} bytes declared, {end - pos} present"
                    )
                raise InvalidDataset(
                    f"element ({group:04X},{element:04X}) is truncated: "
                    f"{length} bytes declared, {end - pos} present"
                )
            if length >= 8 and vr in (b"SQ", b"UN", None) and tag not in _PIXEL_TAGS:
                if vr == b"UN":  # PS3.5 6.2.2: a UN sequence is implicit VR little endian
                    _walk_defined(buf, pos, pos + length, True, True, depth, limit)
                else:
                    _walk_defined(buf, pos, pos + length, implicit, little, depth, limit)
            pos += length
        elif tag in _PIXEL_TAGS:
            # Encapsulated pixel data (PS3.5 A.4): fragments, not datasets.
            header = 8 if vr is None else 12
            pos = _skip_pixel_element(buf, pos - header, vr is None, little)
        elif vr in (b"SQ", b"UN") or (vr is None and _next_is_item(buf, pos, order)):
            pos = _walk_sequence(buf, pos, end, implicit, little, _deeper(depth, limit), limit)
        else:  # another undefined length value: up to the sequence delimiter
            delimiter = struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)
            found = buf.find(delimiter, pos, end)
            if found < 0:
                raise InvalidDataset(
                    f"element ({group:04X},{element:04X}) ends without a sequence delimiter"
                )
            pos = found + 8
    if delimited:
        raise InvalidDataset("sequence item ends without an item delimiter")
    return pos


def _next_is_item(buf: bytes, pos: int, order: str) -> bool:
    if pos + 4 > len(buf):
        return True  # let the sequence walk report the truncation
    group, element = struct.unpack_from(order + "HH", buf, pos)
    return ((group << 16) | element) in (_ITEM, _SEQUENCE_DELIMITER)


def _walk_defined(
    buf: bytes, pos: int, end: int, implicit: bool, little: bool, depth: int, limit: int
) -> None:
    """The depth of the defined length value ``buf[pos:end]`` if it holds items.

    Only the depth is refused here (see :func:`check_element_lengths`): any
    other fault in the value leaves it to pydicom, as before.
    """
    order = "<" if little else ">"
    if struct.unpack_from(order + "HH", buf, pos) != (_ITEM >> 16, _ITEM & 0xFFFF):
        return  # not items: an OB, a text, a private value...
    try:
        _walk_sequence(buf, pos, end, implicit, little, _deeper(depth, limit), limit, defined=True)
    except _TooDeep:
        raise
    except (InvalidDataset, struct.error):
        pass


def _walk_sequence(
    buf: bytes,
    pos: int,
    end: int,
    implicit: bool,
    little: bool,
    depth: int,
    limit: int,
    defined: bool = False,
) -> int:
    """Offset after the sequence whose first item is at ``pos`` (PS3.5 7.5).

    An undefined length sequence ends with its delimiter; a ``defined`` one at
    ``end``. Items of defined length are walked (for depth) within their length.
    """
    order = "<" if little else ">"
    while True:
        if defined and pos >= end:
            return pos
        if pos + 8 > end:
            raise InvalidDataset("sequence ends without a sequence delimiter")
        group, element, length = struct.unpack_from(order + "HHI", buf, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_DELIMITER:
            return pos
        if tag != _ITEM:
            raise InvalidDataset("sequence holds something other than items")
        if length == _UNDEFINED:
            pos = _walk_dataset(buf, pos, end, implicit, little, True, depth, limit)
        elif pos + length > end:
            raise InvalidDataset(
                f"sequence item is truncated: {length} bytes declared, {end - pos} present"
            )
        else:
            _walk_item(buf, pos, pos + length, implicit, little, depth, limit)
            pos += length


def _walk_item(
    buf: bytes, pos: int, end: int, implicit: bool, little: bool, depth: int, limit: int
) -> None:
    """A defined length item (PS3.5 7.5.1): walked for depth only, like :func:`_walk_defined`."""
    try:
        _walk_dataset(buf, pos, end, implicit, little, True, depth, limit, delimited=False)
    except _TooDeep:
        raise
    except (InvalidDataset, struct.error):
        pass


def _text(ds: Dataset, keyword: str) -> str:
    """A text attribute as stored (multiple values joined by backslashes).

    Plain ASCII values are read straight from the raw element: converting
    every element through pydicom's value classes costs more than the rest of
    the ingest path together. Anything else (other character sets, a value
    pydicom already converted) goes through pydicom.
    """
    try:
        elem = ds.get_item(_TAGS[keyword])
    except Exception:  # an undecodable value must not refuse the instance
        return ""
    if elem is None:
        return ""
    raw = elem.value
    if raw is None:
        return ""
    if isinstance(raw, bytes) and raw.isascii():
        return raw.decode("ascii").strip("\0 ")
    try:
        value = ds[_TAGS[keyword]].value
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int_string(ds: Dataset, keyword: str) -> int | None:
    """An IS attribute (text) as an int; None when absent or not a number."""
    try:
        return int(float(_text(ds, keyword).split("\\")[0]))
    except ValueError:
        return None


def _int(ds: Dataset, keyword: str) -> int | None:
    """A binary integer attribute (US) through pydicom; None when absent or bad."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        return int(value)
    except Exception:
        return None


def _uid(ds: Dataset, keyword: str) -> str:
    value = _text(ds, keyword).rstrip("\0 ")
    if not value:
        raise DatasetMismatch(f"{keyword} is missing")
    if not is_valid_uid(value):
        raise DatasetMismatch(f"{keyword} is not a valid UID (PS3.5 9.1)")
    return value


_KEYWORDS = (
    "PatientID IssuerOfPatientID PatientName PatientBirthDate PatientSex StudyInstanceUID "
    "StudyDate StudyTime AccessionNumber StudyID StudyDescription ReferringPhysicianName "
    "SeriesInstanceUID Modality SeriesNumber SeriesDescription SeriesDate SeriesTime "
    "BodyPartExamined PerformedProcedureStepStartDate PerformedProcedureStepStartTime "
    "SOPInstanceUID SOPClassUID InstanceNumber NumberOfFrames PhotometricInterpretation "
    "ContentDate ContentTime"
).split()
_TAGS = {keyword: tag_for_keyword(keyword) for keyword in _KEYWORDS}


def extract_header(ds: Dataset, has_pixel_data: bool) -> ParsedHeader:
    """The index attributes of ``ds`` (PS3.4 C.6.1.1); raises when a key UID is bad."""
    return ParsedHeader(
        patient=PatientAttributes(
            patient_id=_text(ds, "PatientID"),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
            patient_name=_text(ds, "PatientName"),
            patient_birth_date=_text(ds, "PatientBirthDate"),
            patient_sex=_text(ds, "PatientSex"),
        ),
        study=StudyAttributes(
            study_instance_uid=_uid(ds, "StudyInstanceUID"),
            study_date=_text(ds, "StudyDate"),
            study_time=_text(ds, "StudyTime"),
            accession_number=_text(ds, "AccessionNumber"),
            study_id=_text(ds, "StudyID"),
            study_description=_text(ds, "StudyDescription"),
            referring_physician_name=_text(ds, "ReferringPhysicianName"),
        ),
        series=SeriesAttributes(
            series_instance_uid=_uid(ds, "SeriesInstanceUID"),
            modality=_text(ds, "Modality"),
            series_number=_int_string(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription"),
            series_date=_text(ds, "SeriesDate"),
            series_time=_text(ds, "SeriesTime"),
            body_part_examined=_text(ds, "BodyPartExamined"),
            performed_procedure_step_start_date=_text(ds, "PerformedProcedureStepStartDate"),
            performed_procedure_step_start_time=_text(ds, "PerformedProcedureStepStartTime"),
        ),
        instance=InstanceAttributes(
            sop_instance_uid=_uid(ds, "SOPInstanceUID"),
            sop_class_uid=_uid(ds, "SOPClassUID"),
            instance_number=_int_string(ds, "InstanceNumber"),
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int_string(ds, "NumberOfFrames") or (1 if has_pixel_data else None),
            bits_allocated=_int(ds, "BitsAllocated"),
            photometric_interpretation=_text(ds, "PhotometricInterpretation"),
            content_date=_text(ds, "ContentDate"),
            content_time=_text(ds, "ContentTime"),
            has_pixel_data=has_pixel_data,
        ),
    )


def check_pixel_limits(ds: Dataset, has_pixel_data: bool, max_decoded_bytes: int) -> int:
    """Refuse an Image Pixel Module that is nonsense or declares too large an array.

    Checked at ingest, from the header alone, so that nothing is stored that
    the decode stage would have to allocate more than ``max_decoded_bytes``
    for, and no decoder is ever handed sizes it must not trust. The declared
    size is Rows x Columns x Number of Frames x Samples per Pixel x bytes per
    sample, where a sample of Bits Allocated 1 (unpacked) or 8 takes one byte
    and one of 16, 32 or 64 takes ``BitsAllocated / 8`` (the decoded array's
    dtype, :mod:`pipeline.decode.pixels`).

    An attribute that is absent (or has no value) is not refused here: an
    instance without Rows cannot be decoded and is stored as it came, its
    decode failing with that reason (``Rows is missing``), as before; nothing
    is allocated for it. Absent Samples per Pixel counts as 1, absent Number
    of Frames as one frame.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The header (:func:`read_header`).
    has_pixel_data : bool
        Whether Pixel Data, Float or Double Float Pixel Data follows; without
        it nothing is checked (an SR, a PDF, a waveform).
    max_decoded_bytes : int
        The largest decoded array accepted (``settings.max_decoded_bytes``).

    Returns
    -------
    int
        The declared decoded size in bytes (0 without pixel data, or when
        Rows, Columns or Bits Allocated is absent).

    Raises
    ------
    InvalidDataset
        Rows or Columns 0, over 65535 or not a number (US, PS3.3 C.7.6.3.1);
        Number of Frames not a positive integer (IS, PS3.3 C.7.6.6); Samples
        per Pixel 0 or not a number; Bits Allocated other than 1, 8, 16, 32 or
        64 (PS3.5 8.1.1, PS3.3 C.7.6.24).
    TooLarge
        The declared decoded size is over ``max_decoded_bytes``. Reasons name
        the attributes and sizes, never a value that could be PHI.
    """
    if not has_pixel_data:
        return 0
    rows = _us(ds, "Rows")
    columns = _us(ds, "Columns")
    for keyword, value in (("Rows", rows), ("Columns", columns)):
        if value is not None and not 0 < value <= 0xFFFF:
            raise InvalidDataset(f"{keyword} must be 1 to 65535 with pixel data")
    frames = _frame_count(ds)
    samples = _us(ds, "SamplesPerPixel")
    if samples == 0:
        raise InvalidDataset("SamplesPerPixel must be a positive integer")
    bits_allocated = _us(ds, "BitsAllocated")
    if bits_allocated is not None and bits_allocated not in _BITS_ALLOCATED:
        raise InvalidDataset("BitsAllocated must be 1, 8, 16, 32 or 64 (PS3.5 8.1.1)")
    if rows is None or columns is None or bits_allocated is None:
        return 0  # no size declared: the decode stage refuses it, allocating nothing
    samples = samples or 1
    bytes_per_sample = max(1, bits_allocated // 8)
    declared = rows * columns * frames * samples * bytes_per_sample
    if declared > max_decoded_bytes:
        raise TooLarge(
            f"declared pixel data of {rows}x{columns}x{frames} frames x {samples} samples x "
            f"{bits_allocated} bits is {declared} bytes, over the limit of {max_decoded_bytes}"
        )
    return declared


def _us(ds: Dataset, keyword: str) -> int | None:
    """An integer attribute of the Image Pixel Module: None when absent or without a value.

    Raises :class:`InvalidDataset` when there is a value but not one integer
    (a wrong length, several values, another VR's bytes).
    """
    elem = ds.get_item(tag_for_keyword(keyword))
    if elem is None or elem.value in (None, b"", ""):
        return None
    value = _int(ds, keyword)
    if value is None:
        raise InvalidDataset(f"{keyword} is not a number")
    return value


def _frame_count(ds: Dataset) -> int:
    """Number of Frames (IS, PS3.3 C.7.6.6): absent or empty is one frame."""
    text = _text(ds, "NumberOfFrames")
    if not text:
        return 1
    if not _INTEGER_STRING.fullmatch(text) or int(text) < 1:
        # int() alone would also take "1_000", "١٢" or " 7 " written as text.
        raise InvalidDataset("NumberOfFrames must be a positive integer")
    return int(text)
