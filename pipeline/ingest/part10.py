"""DICOM Part-10 files (PS3.10 7.1): splitting the File Meta Information from the
dataset, and writing a File Meta Information for a dataset received over DIMSE.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

from pipeline.errors import InvalidDataset

#: Our Implementation Class UID and Version Name (PS3.7 D.3.3.2), written in
#: every File Meta Information we create. Under pydicom's root until Lightbox
#: has a root of its own.
IMPLEMENTATION_CLASS_UID = PYDICOM_IMPLEMENTATION_UID + ".1"
IMPLEMENTATION_VERSION_NAME = "LIGHTBOX_010"

_PREAMBLE = 128
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_VRS = _LONG_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Part10:
    """A file split in two: ``data[:dataset_offset]`` is preamble and meta."""

    data: bytes
    dataset_offset: int
    transfer_syntax_uid: str
    #: Whether the file had a File Meta Information with a Transfer Syntax UID;
    #: if not, the transfer syntax was inferred from the dataset's first bytes.
    has_meta: bool

    @property
    def dataset(self) -> memoryview:
        return memoryview(self.data)[self.dataset_offset :]


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        # PS3.5 6.2: UI pads with NUL, the text VRs with a space.
        value += b"\0" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def build_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str = ""
) -> bytes:
    """Preamble, ``DICM`` and a File Meta Information group (PS3.10 7.1).

    Written directly (it is on the path of every C-STORE): explicit VR little
    endian, group length first, elements in tag order.
    """
    body = b"".join(
        [
            _meta_element(0x0001, b"OB", b"\0\1"),
            _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii")),
            _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
            _meta_element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
            _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
            _meta_element(0x0016, b"AE", source_ae.encode("ascii")) if source_ae else b"",
        ]
    )
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return b"\0" * _PREAMBLE + b"DICM" + group_length + body


def split_part10(data: bytes) -> Part10:
    """Find the dataset in ``data``: a Part-10 file, or a bare dataset without meta."""
    if len(data) >= _PREAMBLE + 4 and data[_PREAMBLE : _PREAMBLE + 4] == b"DICM":
        return _split_meta(data, _PREAMBLE + 4)
    if len(data) >= 8 and data[:2] == b"\x02\x00":
        # Meta group without preamble (seen from some old writers).
        return _split_meta(data, 0)
    return Part10(data, 0, infer_transfer_syntax(data, 0), has_meta=False)


def _split_meta(data: bytes, start: int) -> Part10:
    """Walk the File Meta elements (always explicit VR little endian, PS3.10 7.1)."""
    pos = start
    transfer_syntax = ""
    end = len(data)
    while pos + 8 <= end:
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise InvalidDataset("File Meta Information is truncated")
            length = struct.unpack_from("<I", data, pos + 8)[0]
            value_at = pos + 12
        elif vr in _VRS:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            value_at = pos + 8
        else:
            raise InvalidDataset("File Meta Information is not explicit VR little endian")
        if value_at + length > end:
            raise InvalidDataset("File Meta Information is truncated")
        if element == 0x0010:
            transfer_syntax = data[value_at : value_at + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = value_at + length
    if pos >= end:
        raise InvalidDataset("file has a File Meta Information but no dataset")
    if transfer_syntax:
        return Part10(data, pos, transfer_syntax, has_meta=True)
    return Part10(data, pos, infer_transfer_syntax(data, pos), has_meta=False)


def infer_transfer_syntax(data: bytes, pos: int) -> str:
    """Guess a native transfer syntax from the first element of a bare dataset.

    The way dcmtk and pydicom read files without meta: if bytes 4-5 are a VR the
    encoding is explicit; the group number's byte order tells the endianness.
    """
    if len(data) - pos < 8:
        raise InvalidDataset("too short to be a DICOM dataset")
    group_le = struct.unpack_from("<H", data, pos)[0]
    group_be = struct.unpack_from(">H", data, pos)[0]
    explicit = data[pos + 4 : pos + 6] in _VRS
    if explicit:
        return ExplicitVRBigEndian if group_be < group_le and group_be == 0x0008 else ExplicitVRLittleEndian
    if group_le > 0x00FF and group_be <= 0x00FF:
        raise InvalidDataset("implicit VR big endian does not exist; not a DICOM dataset")
    return ImplicitVRLittleEndian
