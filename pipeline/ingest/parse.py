"""Reading the header of a received dataset, and checking that its bytes are whole.

Only the header is parsed (up to Pixel Data); the Pixel Data element's length,
or for encapsulated pixel data every item (PS3.5 A.4), is checked against the
bytes that are there, and the elements after it are parsed too, so that a
truncated or mis-encoded dataset is refused instead of stored.
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

from pipeline.errors import DatasetMismatch, InvalidDataset
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


def is_valid_uid(value: str, strict: bool = False) -> bool:
    """Whether ``value`` is a UID (PS3.5 9.1); ``strict`` also refuses leading zeros."""
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


def inflate(dataset: bytes) -> bytes:
    """The dataset of the Deflated transfer syntax, inflated (PS3.5 A.5: raw deflate)."""
    try:
        return zlib.decompress(dataset, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise InvalidDataset(f"deflated dataset does not inflate: {exc}") from None


def read_header(dataset: bytes, transfer_syntax_uid: str) -> tuple[Dataset, bool]:
    """Parse ``dataset`` (the bytes after the File Meta Information).

    Returns the dataset without its pixel data, and whether pixel data was present.
    Raises :class:`InvalidDataset` when the bytes are not a whole dataset.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        dataset = inflate(dataset)
    implicit, little = dataset_encoding(transfer_syntax_uid)
    found: list[int] = []

    def stop_at_pixels(tag: Any, _vr: Any, _length: Any) -> bool:
        if int(tag) in _PIXEL_TAGS:
            found.append(int(tag))
            return True
        return False

    fp = BytesIO(dataset)
    try:
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
        # pydicom reads a value cut short by the end of the bytes without a word,
        # and stops quietly at a partial element header: check every length.
        check_element_lengths(dataset, implicit, little)
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


def check_element_lengths(buf: bytes, implicit: bool, little: bool) -> None:
    """Walk every element of the dataset ``buf``; raise :class:`InvalidDataset`
    where a declared length runs past the bytes there, or the bytes end inside
    an element header, an undefined length sequence or item (PS3.5 7.1, 7.5).

    The encoding is chosen the way pydicom reads: a dataset (or a sequence item
    of an explicit VR dataset) whose first element has no valid VR is implicit VR.
    """
    _walk_dataset(buf, 0, len(buf), implicit, little, in_item=False)


def _looks_implicit(buf: bytes, pos: int) -> bool:
    vr = buf[pos + 4 : pos + 6]
    return not (len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)


def _walk_dataset(
    buf: bytes, pos: int, end: int, implicit: bool, little: bool, in_item: bool
) -> int:
    """Offset after the dataset at ``pos``: ``end``, or after the item delimiter."""
    order = "<" if little else ">"
    if pos + 6 <= end and not (in_item and implicit):
        implicit = _looks_implicit(buf, pos)
    while pos < end:
        if pos + 8 > end:
            raise InvalidDataset("dataset ends in the middle of an element header")
        group, element = struct.unpack_from(order + "HH", buf, pos)
        tag = (group << 16) | element
        if tag == _ITEM_DELIMITER:
            if in_item:
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
                raise InvalidDataset(
                    f"element ({group:04X},{element:04X}) is truncated: "
                    f"{length} bytes declared, {end - pos} present"
                )
            pos += length
        elif tag in _PIXEL_TAGS:
            # Encapsulated pixel data (PS3.5 A.4): fragments, not datasets.
            header = 8 if vr is None else 12
            pos = _skip_pixel_element(buf, pos - header, vr is None, little)
        elif vr in (b"SQ", b"UN") or (vr is None and _next_is_item(buf, pos, order)):
            pos = _walk_sequence(buf, pos, end, implicit, little)
        else:  # another undefined length value: up to the sequence delimiter
            delimiter = struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)
            found = buf.find(delimiter, pos, end)
            if found < 0:
                raise InvalidDataset(
                    f"element ({group:04X},{element:04X}) ends without a sequence delimiter"
                )
            pos = found + 8
    if in_item:
        raise InvalidDataset("sequence item ends without an item delimiter")
    return pos


def _next_is_item(buf: bytes, pos: int, order: str) -> bool:
    if pos + 4 > len(buf):
        return True  # let the sequence walk report the truncation
    group, element = struct.unpack_from(order + "HH", buf, pos)
    return ((group << 16) | element) in (_ITEM, _SEQUENCE_DELIMITER)


def _walk_sequence(buf: bytes, pos: int, end: int, implicit: bool, little: bool) -> int:
    """Offset after the undefined length sequence whose first item is at ``pos``."""
    order = "<" if little else ">"
    while True:
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
            pos = _walk_dataset(buf, pos, end, implicit, little, in_item=True)
        elif pos + length > end:
            raise InvalidDataset(
                f"sequence item is truncated: {length} bytes declared, {end - pos} present"
            )
        else:
            pos += length


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
