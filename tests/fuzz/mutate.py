"""The mutation engine: hostile variants of the shared corpus's files, as hypothesis strategies.

A mutated input is a seed file (a Part-10 file, or for DIMSE its dataset)
with a few mutations applied in turn. Byte-level mutations know nothing of
DICOM (flips, truncation, insertion, deletion); structural ones find the
elements first, with a tolerant walk of the bytes (:func:`layout`), and then
break one of them the way a broken or hostile sender would:

* element lengths (PS3.5 7.1: 0, odd, one past, undefined, 2**31...) and VRs;
* duplicated elements, deep sequence nesting (PS3.5 7.5, defined and
  undefined lengths, thousands of levels);
* absurd Image Pixel Module values (Rows, Columns, Number of Frames, Bits
  Allocated, Samples per Pixel) and UIDs (PS3.5 9.1: bad characters, 65
  characters, path traversal, or a fresh valid UID so that the instance is new);
* encapsulated pixel data (PS3.5 A.4): item lengths, truncated or garbage
  fragments, a missing delimiter, stray items, and the codestreams' own
  headers (JPEG SOF, JPEG 2000 SIZ, RLE header) patched to other sizes;
* the File Meta Information (PS3.10 7.1): group length, transfer syntax,
  VRs, lengths, the ``DICM`` prefix.

A Deflated seed is mutated inflated and deflated again, so its dataset is
fuzzed too, besides byte mutations of the deflate stream itself.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from hypothesis import strategies as st

from pipeline.ingest.parse import dataset_encoding
from pipeline.ingest.part10 import split_part10

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_PIXEL_TAGS = {0x7FE00008, 0x7FE00009, 0x7FE00010}
_LONG_VRS = {
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV",
}  # fmt: skip
_ALL_VRS = sorted(
    _LONG_VRS
    | {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }  # fmt: skip
)
DEFLATED = "1.2.840.10008.1.2.1.99"


# -- seeds ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Seed:
    """A corpus file the mutations start from."""

    name: str
    part10: bytes
    dataset_offset: int
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    #: Patient name/ID values of the seed: no refusal reason may quote them.
    phi: tuple[str, ...] = field(default=())

    @property
    def dataset(self) -> bytes:
        return self.part10[self.dataset_offset :]

    @property
    def deflated(self) -> bool:
        return self.transfer_syntax_uid == DEFLATED


#: Small corpus files covering every encoding and codec, each quick to decode.
SEED_FILES = (
    "transfer_syntaxes/implicit_vr_le/MR_small_implicit.dcm",
    "edge_cases/SC_rgb_small_odd.dcm",
    "transfer_syntaxes/jpeg2000_lossy/CT2_J2KI",
    "transfer_syntaxes/htj2k_lossless_rpcl/CT1_JPH",
    "edge_cases/SC_jpeg_no_color_transform.dcm",
    "edge_cases/JPEG-lossy.dcm",
    "edge_cases/Issue140.dcm",
    "transfer_syntaxes/rle/emri_small_RLE.dcm",
    "enhanced/emri_small_jpeg_ls_lossless.dcm",
    "transfer_syntaxes/deflated/image_dfl.dcm",
    "transfer_syntaxes/explicit_vr_be/dcm_qa_ts_3.dcm",
    "other/test-SR.dcm",
    "other/rtdose.dcm",
    "other/chrH31.dcm",
    "other/sample-pdf.dcm",
    "cr_dx/dx_image.dcm",
    "edge_cases/PrivateMDNTags.dcm",
)


def load_seeds(root: Path, names: tuple[str, ...] = SEED_FILES) -> list[Seed]:
    """The seeds present under ``root`` (the corpus), read once."""
    seeds = []
    for name in names:
        path = root / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        part = split_part10(data)
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        phi = tuple(
            v
            for v in (str(ds.get("PatientName", "") or ""), str(ds.get("PatientID", "") or ""))
            if len(v.strip()) >= 5
        )
        seeds.append(
            Seed(
                name=name,
                part10=data,
                dataset_offset=part.dataset_offset,
                transfer_syntax_uid=part.transfer_syntax_uid,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                phi=phi,
            )
        )
    return seeds


# -- a tolerant walk ----------------------------------------------------------------


@dataclass(frozen=True)
class Element:
    """Where one element's parts are in the bytes (PS3.5 7.1)."""

    offset: int
    tag: int
    vr: bytes | None
    length_at: int
    length_size: int
    value_at: int
    length: int
    depth: int

    @property
    def end(self) -> int:
        return self.value_at + (0 if self.length == _UNDEFINED else self.length)


@dataclass
class Layout:
    """The elements (top level and nested) and encapsulated items of a dataset."""

    implicit: bool
    little: bool
    elements: list[Element] = field(default_factory=list)
    #: (offset of the item's tag, its length) of each encapsulated item, Basic Offset Table first.
    fragments: list[tuple[int, int]] = field(default_factory=list)
    #: Offset just after the encapsulated Pixel Data's sequence delimiter.
    pixel_end: int | None = None

    @property
    def top(self) -> list[Element]:
        return [e for e in self.elements if e.depth == 0]


def _looks_implicit(buf: bytes, pos: int) -> bool:
    vr = buf[pos + 4 : pos + 6]
    return not (len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)


def layout(buf: bytes, implicit: bool, little: bool) -> Layout:
    """Walk ``buf`` as far as it makes sense; never raises, stops at the first fault."""
    out = Layout(implicit, little)
    order = "<" if little else ">"

    def item_at(pos: int, end: int) -> bool:
        return pos + 4 <= end and struct.unpack_from(order + "HH", buf, pos) == (0xFFFE, 0xE000)

    def walk(pos: int, end: int, implicit: bool, depth: int, delimited: bool) -> int:
        if depth > 24:
            return end
        if pos + 6 <= end and not (delimited and implicit):
            implicit = _looks_implicit(buf, pos)
        while pos + 8 <= end:
            group, element = struct.unpack_from(order + "HH", buf, pos)
            tag = group << 16 | element
            if tag == _ITEM_DELIMITER:
                return pos + 8 if delimited else end
            vr = None
            if implicit or group == 0xFFFE or _looks_implicit(buf, pos):
                length_at, size, value_at = pos + 4, 4, pos + 8
            elif buf[pos + 4 : pos + 6] in _LONG_VRS:
                if pos + 12 > end:
                    return end
                vr, length_at, size, value_at = buf[pos + 4 : pos + 6], pos + 8, 4, pos + 12
            else:
                vr, length_at, size, value_at = buf[pos + 4 : pos + 6], pos + 6, 2, pos + 8
            length = struct.unpack_from(order + ("I" if size == 4 else "H"), buf, length_at)[0]
            out.elements.append(Element(pos, tag, vr, length_at, size, value_at, length, depth))
            if length != _UNDEFINED:
                if value_at + length > end:
                    return end
                if vr in (b"SQ", b"UN", None) and length >= 8 and item_at(value_at, end):
                    sequence(value_at, value_at + length, implicit, depth, defined=True)
                pos = value_at + length
            elif tag in _PIXEL_TAGS:
                p = value_at
                while p + 8 <= end:
                    g, e, n = struct.unpack_from("<HHI", buf, p)
                    if (g << 16 | e) == _SEQUENCE_DELIMITER:
                        out.pixel_end = p + 8
                        break
                    if (g << 16 | e) != _ITEM or n == _UNDEFINED or p + 8 + n > end:
                        return end
                    out.fragments.append((p, n))
                    p += 8 + n
                else:
                    return end
                pos = p + 8
            elif vr in (b"SQ", b"UN") or (vr is None and item_at(value_at, end)):
                pos = sequence(value_at, end, implicit, depth, defined=False)
            else:
                found = buf.find(struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0), value_at, end)
                if found < 0:
                    return end
                pos = found + 8
        return end if delimited else pos

    def sequence(pos: int, end: int, implicit: bool, depth: int, defined: bool) -> int:
        while pos + 8 <= end:
            g, e, n = struct.unpack_from(order + "HHI", buf, pos)
            tag = g << 16 | e
            if tag == _SEQUENCE_DELIMITER:
                return pos + 8
            if tag != _ITEM:
                return end
            if n == _UNDEFINED:
                pos = walk(pos + 8, end, implicit, depth + 1, True)
            else:
                if pos + 8 + n > end:
                    return end
                walk(pos + 8, pos + 8 + n, implicit, depth + 1, False)
                pos += 8 + n
        return end

    try:
        walk(0, len(buf), implicit, 0, False)
    except (struct.error, IndexError):
        pass
    return out


# -- encoding helpers -----------------------------------------------------------------


def encode_element(tag: int, vr: bytes, value: bytes, implicit: bool, little: bool) -> bytes:
    """One element with a defined length (PS3.5 7.1.1-7.1.3)."""
    order = "<" if little else ">"
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack(order + "I", len(value)) + value
    if vr in _LONG_VRS:
        return head + vr + b"\0\0" + struct.pack(order + "I", len(value)) + value
    return head + vr + struct.pack(order + "H", len(value) & 0xFFFF) + value


def _pad(value: bytes, vr: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    return value


def put_element(buf: bytes, lay: Layout, tag: int, element: bytes) -> bytes:
    """Replace the top-level element ``tag`` by ``element``, or insert it in tag order."""
    for e in lay.top:
        if e.tag == tag and e.length != _UNDEFINED:
            return buf[: e.offset] + element + buf[e.end :]
    at = next((e.offset for e in lay.top if e.tag > tag), None)
    if at is None:
        at = len(buf)
    return buf[:at] + element + buf[at:]


def nested_sequence(
    depth: int, implicit: bool, little: bool, defined: bool, tag: int = 0x0040A730
) -> bytes:
    """``depth`` sequences each in the one item of the one above (PS3.5 7.5), built without recursion."""
    order = "<" if little else ">"
    inner = encode_element(0x00080100, b"SH", b"FUZZ", implicit, little)
    tag_bytes = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    sq_head = tag_bytes if implicit else tag_bytes + b"SQ\0\0"
    item_tag = struct.pack(order + "HH", 0xFFFE, 0xE000)
    if not defined:
        prefix = (sq_head + struct.pack(order + "I", _UNDEFINED) + item_tag + struct.pack(order + "I", _UNDEFINED)) * depth
        suffix = (struct.pack(order + "HHI", 0xFFFE, 0xE00D, 0) + struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)) * depth
        return prefix + inner + suffix
    # Sizes from the inside out, then the headers from the outside in.
    sizes = []
    size = len(inner)
    for _ in range(depth):
        sizes.append(size)  # the item's content
        size = len(sq_head) + 4 + 8 + size
    parts = [
        sq_head + struct.pack(order + "I", item + 8) + item_tag + struct.pack(order + "I", item)
        for item in reversed(sizes)
    ]
    return b"".join(parts) + inner


# -- the mutations ------------------------------------------------------------------

_LENGTHS = (0, 1, 2, 3, 7, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, _UNDEFINED)
_US = (0, 1, 2, 3, 4, 7, 12, 15, 24, 255, 256, 32768, 65534, 65535)
_IS = (b"0", b"-1", b"1", b"2", b"100000", b"2147483647", b"99999999999", b"1.5", b"abc", b"",
       b"1\\2", b" 3 ", b"+4", b"\xd9\xa1")  # fmt: skip
_BAD_UIDS = (
    b"", b"1.2.abc", b"../../../../etc/passwd", b"1.2.3/../../x", b"..", b"1..2", b".1.2",
    b"1." + b"2" * 70, b"\0", b"1.2\\3.4", b"C:\\Windows\\x", b"1.2.3 4", b"1.2.3\n", b"%2e%2e",
    b"1.2.840.10008.5.1.4.1.1.2", b"0" * 64,
)  # fmt: skip
_TRANSFER_SYNTAXES = (
    b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.2", DEFLATED.encode(),
    b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.5",
    b"1.2.840.10008.1.2.4.100", b"1.2.3.4", b"junk", b"", b"1." + b"9" * 80,
)  # fmt: skip
_IMAGE_US = {
    "Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101, "HighBit": 0x00280102, "SamplesPerPixel": 0x00280002,
    "PixelRepresentation": 0x00280103, "PlanarConfiguration": 0x00280006,
}  # fmt: skip
_UID_TAGS = {
    "SOPClassUID": 0x00080016, "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D, "SeriesInstanceUID": 0x0020000E,
}  # fmt: skip


class Mutator:
    """Applies mutations to one input; ``steps`` says what was done (for reports)."""

    def __init__(self, draw: st.DrawFn, seed: Seed, part10: bool) -> None:
        self.draw = draw
        self.seed = seed
        self.part10 = part10
        self.data = seed.part10 if part10 else seed.dataset
        self.steps: list[str] = []

    # -- byte level (no DICOM knowledge) --
    def flip(self) -> None:
        if not self.data:
            return
        at = self.draw(st.integers(0, len(self.data) - 1))
        mask = self.draw(st.integers(1, 255))
        self.data = self.data[:at] + bytes([self.data[at] ^ mask]) + self.data[at + 1 :]
        self.steps.append(f"flip@{at}^{mask}")

    def truncate(self) -> None:
        at = self.draw(st.integers(0, len(self.data)))
        self.data = self.data[:at]
        self.steps.append(f"truncate@{at}")

    def insert(self) -> None:
        at = self.draw(st.integers(0, len(self.data)))
        extra = self.draw(st.binary(min_size=1, max_size=16))
        self.data = self.data[:at] + extra + self.data[at:]
        self.steps.append(f"insert@{at}+{len(extra)}")

    def delete(self) -> None:
        at = self.draw(st.integers(0, len(self.data)))
        n = self.draw(st.integers(1, 64))
        self.data = self.data[:at] + self.data[at + n :]
        self.steps.append(f"delete@{at}-{n}")

    # -- structure --
    def _dataset_op(self, name: str, op) -> None:  # type: ignore[no-untyped-def]
        """Apply ``op(dataset, layout) -> dataset`` to the dataset of the current bytes."""
        start = self._dataset_start()
        if start is None:
            return
        dataset = self.data[start:]
        if self.seed.deflated:
            try:
                stream = zlib.decompressobj(-zlib.MAX_WBITS)
                dataset = stream.decompress(dataset, 64 << 20)
            except zlib.error:
                return
        implicit, little = dataset_encoding(self.seed.transfer_syntax_uid)
        new = op(dataset, layout(dataset, implicit, little))
        if new is None:
            return
        if self.seed.deflated:
            raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            new = raw.compress(new) + raw.flush()
        self.data = self.data[:start] + new
        self.steps.append(name)

    def _dataset_start(self) -> int | None:
        if not self.part10:
            return 0
        data = self.data
        if data[128:132] != b"DICM":
            return 0 if not data.startswith(b"\x02\x00") else None
        pos = 132
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > len(data):
                    return None
                pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
            else:
                pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
        return pos if pos <= len(data) else None

    def _pick(self, elements: list[Element]) -> Element | None:
        if not elements:
            return None
        return elements[self.draw(st.integers(0, len(elements) - 1))]

    def element_length(self) -> None:
        def op(buf: bytes, lay: Layout) -> bytes | None:
            e = self._pick(lay.elements)
            if e is None:
                return None
            choice = self.draw(
                st.sampled_from(_LENGTHS + (e.length + 1, e.length - 1, e.length + 2, len(buf)))
                | st.integers(0, 0xFFFFFFFF)
            )
            order = "<" if lay.little else ">"
            packed = struct.pack(order + ("I" if e.length_size == 4 else "H"), choice % (1 << (8 * e.length_size)))
            return buf[: e.length_at] + packed + buf[e.length_at + e.length_size :]

        self._dataset_op("element_length", op)

    def element_vr(self) -> None:
        def op(buf: bytes, lay: Layout) -> bytes | None:
            e = self._pick([x for x in lay.elements if x.vr is not None])
            if e is None:
                return None
            vr = self.draw(st.sampled_from(_ALL_VRS + [b"\0\0", b"ZZ", b"ab"]) | st.binary(min_size=2, max_size=2))
            return buf[: e.offset + 4] + vr + buf[e.offset + 6 :]

        self._dataset_op("element_vr", op)

    def duplicate(self) -> None:
        def op(buf: bytes, lay: Layout) -> bytes | None:
            e = self._pick([x for x in lay.elements if x.length != _UNDEFINED])
            if e is None:
                return None
            copy = buf[e.offset : e.end]
            at = self.draw(st.sampled_from([e.end, e.offset, 0, len(buf)]))
            return buf[:at] + copy + buf[at:]

        self._dataset_op("duplicate", op)

    def nest(self) -> None:
        def op(buf: bytes, lay: Layout) -> bytes | None:
            depth = self.draw(st.sampled_from([15, 16, 17, 64, 65, 1000]) | st.integers(1, 3000))
            defined = self.draw(st.booleans())
            tag = self.draw(st.sampled_from([0x0040A730, 0x00091010, 0x00081115]))
            blob = nested_sequence(depth, lay.implicit, lay.little, defined, tag)
            return put_element(buf, lay, tag, blob) if lay.top else buf + blob

        self._dataset_op("nest", op)

    def image_attribute(self) -> None:
        def op(buf: bytes, lay: Layout) -> bytes | None:
            order = "<" if lay.little else ">"
            if self.draw(st.booleans()):
                tag = 0x00280008  # Number of Frames (IS)
                value = _pad(self.draw(st.sampled_from(_IS)), b"IS")
                return put_element(buf, lay, tag, encode_element(tag, b"IS", value, lay.implicit, lay.little))
            tag = self.draw(st.sampled_from(sorted(_IMAGE_US.values())))
            if self.draw(st.integers(0, 3)) == 0:  # a value US cannot hold, as UL
                value = struct.pack(order + "I", self.draw(st.sampled_from([65536, 0x7FFFFFFF, 0xFFFFFFFF])))
                return put_element(buf, lay, tag, encode_element(tag, b"UL", value, lay.implicit, lay.little))
            value = struct.pack(order + "H", self.draw(st.sampled_from(_US) | st.integers(0, 65535)))
            return put_element(buf, lay, tag, encode_element(tag, b"US", value, lay.implicit, lay.little))

        self._dataset_op("image_attribute", op)

    def uid(self) -> None:
        def op(buf: bytes, lay: Layout) -> bytes | None:
            tag = self.draw(st.sampled_from(sorted(_UID_TAGS.values())))
            if self.draw(st.booleans()):
                value = f"2.25.{self.draw(st.integers(1, 2**120))}".encode()  # a new instance
            else:
                value = self.draw(st.sampled_from(_BAD_UIDS))
            element = encode_element(tag, b"UI", _pad(value, b"UI"), lay.implicit, lay.little)
            return put_element(buf, lay, tag, element)

        self._dataset_op("uid", op)

    def new_instance(self) -> None:
        """A fresh SOP Instance UID (2.25 + a random integer, PS3.5 B.2)."""

        def op(buf: bytes, lay: Layout) -> bytes | None:
            value = _pad(f"2.25.{self.draw(st.integers(1, 2**120))}".encode(), b"UI")
            tag = _UID_TAGS["SOPInstanceUID"]
            return put_element(buf, lay, tag, encode_element(tag, b"UI", value, lay.implicit, lay.little))

        self._dataset_op("new_instance", op)

    def fragment(self) -> None:
        def op(buf: bytes, lay: Layout) -> bytes | None:
            if not lay.fragments:
                return None
            index = self.draw(st.integers(0, len(lay.fragments) - 1))
            at, n = lay.fragments[index]
            kind = self.draw(st.integers(0, 5))
            if kind == 0:  # the item's length
                length = self.draw(st.sampled_from(_LENGTHS + (n + 1, n - 1, n + 2)) | st.integers(0, 0xFFFFFFFF))
                return buf[: at + 4] + struct.pack("<I", length % (1 << 32)) + buf[at + 8 :]
            if kind == 1 and n > 0:  # fewer bytes, lengths kept consistent
                keep = self.draw(st.integers(0, n - 1))
                keep -= keep % 2
                return buf[: at + 4] + struct.pack("<I", keep) + buf[at + 8 : at + 8 + keep] + buf[at + 8 + n :]
            if kind == 2 and lay.pixel_end is not None:  # no sequence delimiter
                return buf[: lay.pixel_end - 8] + buf[lay.pixel_end :]
            if kind == 3:  # a stray item or element among the items
                stray = self.draw(
                    st.sampled_from(
                        [
                            struct.pack("<HHI", 0xFFFE, 0xE000, _UNDEFINED),
                            struct.pack("<HHI", 0xFFFE, 0xE00D, 0),
                            struct.pack("<HHI", 0x0008, 0x0018, 4) + b"1.2\0",
                        ]
                    )
                )
                return buf[:at] + stray + buf[at:]
            if kind == 4 and n > 0:  # garbage after the first bytes of the codestream
                keep = self.draw(st.integers(0, min(n, 256)))
                garbage = self.draw(st.binary(min_size=n - keep, max_size=n - keep)) if n - keep <= 512 else bytes(
                    (b * 37 + 11) & 0xFF for b in range(n - keep)
                )
                return buf[: at + 8 + keep] + garbage + buf[at + 8 + n :]
            return patch_codestream(self.draw, buf, at + 8, n)

        self._dataset_op("fragment", op)

    def meta(self) -> None:
        if not self.part10 or self.data[128:132] != b"DICM":
            return
        kind = self.draw(st.integers(0, 5))
        data = self.data
        elements = []
        pos = 132
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
            vr = data[pos + 4 : pos + 6]
            long = vr in _LONG_VRS
            if long and pos + 12 > len(data):
                break
            length = struct.unpack_from("<I" if long else "<H", data, pos + (8 if long else 6))[0]
            elements.append((pos, struct.unpack_from("<H", data, pos + 2)[0], long, length))
            pos += (12 if long else 8) + length
        if kind == 0:
            self.data = data[:128] + b"DICN" + data[132:]
        elif kind == 1 and elements:
            e = elements[self.draw(st.integers(0, len(elements) - 1))]
            self.data = data[: e[0] + 4] + self.draw(st.sampled_from([b"ZZ", b"UN", b"OB", b"UI", b"\0\0"])) + data[e[0] + 6 :]
        elif kind == 2 and elements:
            e = elements[self.draw(st.integers(0, len(elements) - 1))]
            at, size = (e[0] + 8, 4) if e[2] else (e[0] + 6, 2)
            value = self.draw(st.integers(0, (1 << (8 * size)) - 1))
            self.data = data[:at] + value.to_bytes(size, "little") + data[at + size :]
        elif kind in (3, 4):  # another transfer syntax, or none
            ts = next((e for e in elements if e[1] == 0x0010), None)
            if ts is None:
                return
            end = ts[0] + (12 if ts[2] else 8) + ts[3]
            if kind == 4:
                self.data = data[: ts[0]] + data[end:]
            else:
                value = _pad(self.draw(st.sampled_from(_TRANSFER_SYNTAXES)), b"UI")
                self.data = data[: ts[0]] + encode_element(0x00020010, b"UI", value, False, True) + data[end:]
        elif elements and elements[0][1] == 0x0000:  # the group length
            value = self.draw(st.sampled_from([0, 1, 0xFFFFFFFF, len(data)]) | st.integers(0, 0xFFFFFFFF))
            at = elements[0][0] + 8
            self.data = data[:at] + struct.pack("<I", value) + data[at + 4 :]
        else:
            return
        self.steps.append(f"meta{kind}")


def patch_codestream(draw: st.DrawFn, buf: bytes, start: int, n: int) -> bytes | None:
    """Change the size a fragment's codestream declares (JPEG SOF/SOF55, J2K SIZ, RLE header)."""
    frag = buf[start : start + n]
    big = draw(st.sampled_from([0, 1, 2, 255, 256, 4097, 65535]))
    if frag[:4] == b"\xff\x4f\xff\x51" and n >= 42:  # J2K SIZ (15444-1 A.5.1)
        field_at = draw(st.sampled_from([8, 12, 24, 28, 40, 42]))  # Xsiz, Ysiz, XTsiz, YTsiz, Csiz, Ssiz
        if field_at == 40:
            value = struct.pack(">H", draw(st.sampled_from([0, 2, 3, 4, 16384, 65535])))
        elif field_at == 42:
            value = bytes([draw(st.sampled_from([0x00, 0x07, 0x0F, 0x25, 0x7F, 0xFF]))])
        else:
            value = struct.pack(">I", draw(st.sampled_from([0, 1, 65535, 0xFFFFFFFF]) | st.just(big)))
        at = start + field_at
        return buf[:at] + value + buf[at + len(value) :]
    if frag[:2] == b"\xff\xd8":  # JPEG: the first SOFn or SOF55 (10918-1 B.2.2)
        for i in range(2, min(n - 9, 4096)):
            if frag[i] == 0xFF and frag[i + 1] in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xF7):
                field_at = draw(st.sampled_from([4, 5, 7, 9]))  # P, Y, X, Nf
                if field_at in (4, 9):
                    value = bytes([draw(st.sampled_from([0, 1, 2, 3, 4, 8, 12, 16, 17, 255]))])
                else:
                    value = struct.pack(">H", big)
                at = start + i + field_at
                return buf[:at] + value + buf[at + len(value) :]
        return None
    if n >= 64:  # RLE header (PS3.5 G.3.1)
        index = draw(st.integers(0, 15))
        value = struct.pack("<I", draw(st.sampled_from([0, 1, 2, 3, 15, 16, 64, n, n + 1, 0xFFFFFFFF])))
        at = start + 4 * index
        return buf[:at] + value + buf[at + 4 :]
    return None


_STRUCTURAL = (
    "element_length", "element_vr", "duplicate", "nest", "image_attribute", "image_attribute",
    "uid", "fragment", "fragment", "fragment", "meta",
)  # fmt: skip
#: Flips mostly land in values (pixel data): the instance is stored and its
#: codestream fuzzed; insertions and deletions shift what follows.
_BYTES = ("flip", "flip", "flip", "truncate", "insert", "delete")


@dataclass(frozen=True, repr=False)
class FuzzInput:
    """One mutated input: its bytes, its seed, what was done to it."""

    seed: Seed
    data: bytes
    steps: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.seed.name}: {' '.join(self.steps) or '(unchanged)'}"

    def __repr__(self) -> str:  # hypothesis prints failing examples: not 100 kB of bytes
        return f"FuzzInput({self.describe()!r}, {len(self.data)} bytes)"


@st.composite
def fuzz_inputs(draw: st.DrawFn, seeds: list[Seed], part10: bool = True) -> FuzzInput:
    """A seed, most often given a new SOP Instance UID, then 0 to 3 structural and
    0 to 2 byte-level mutations.

    The new UID makes the input a new instance, so that what survives ingest
    is stored and decoded; the others re-send a stored instance (the archive
    must keep it intact). ``part10``: mutate the whole file (import, STOW-RS),
    else only the dataset (DIMSE carries no File Meta Information).
    """
    seed = draw(st.sampled_from(seeds))
    m = Mutator(draw, seed, part10)
    if draw(st.integers(0, 3)) > 0:
        m.new_instance()
    structural = _STRUCTURAL if part10 else tuple(s for s in _STRUCTURAL if s != "meta")
    for _ in range(draw(st.integers(0, 3))):
        getattr(m, draw(st.sampled_from(structural)))()
    for _ in range(draw(st.integers(0, 2))):
        getattr(m, draw(st.sampled_from(_BYTES)))()
    return FuzzInput(seed, m.data, tuple(m.steps))
