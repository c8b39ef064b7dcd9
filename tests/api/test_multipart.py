"""Unit tests of the multipart/related reader (RFC 2046 5.1, PS3.18 10.5.1)."""

from __future__ import annotations

import mmap
import tempfile

import pytest

from api.multipart import (
    MultipartError,
    check_boundary,
    parse_media_type,
    parse_multipart,
)
from pipeline.errors import TooLarge

B = b"b0und4ry"


def parts_of(body: bytes, boundary: bytes = B, limit: int = 1 << 20) -> list[tuple[dict, bytes]]:
    return [
        (p.headers, p.content(body)) for p in parse_multipart(body, boundary, max_part_bytes=limit)
    ]


def encode(
    *contents: bytes, boundary: bytes = B, preamble: bytes = b"", epilogue: bytes = b""
) -> bytes:
    out = preamble
    for content in contents:
        out += b"\r\n--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + content
    return out + b"\r\n--" + boundary + b"--" + epilogue


class TestMediaType:
    def test_quoted_and_unquoted_parameters(self) -> None:
        media, params = parse_media_type(
            'Multipart/Related; type="application/dicom"; boundary=abc'
        )
        assert media == "multipart/related"
        assert params == {"type": "application/dicom", "boundary": "abc"}

    def test_quoted_boundary_with_separator_and_escape(self) -> None:
        _, params = parse_media_type('multipart/related; boundary="a;b \\"c\\""; TYPE=x/y')
        assert params == {"boundary": 'a;b "c"', "type": "x/y"}

    @pytest.mark.parametrize("value", ["multipart", "", "/x", 'a/b; boundary="open', "a/b; junk"])
    def test_malformed(self, value: str) -> None:
        with pytest.raises(MultipartError):
            parse_media_type(value)

    def test_boundary_rules(self) -> None:
        assert (
            check_boundary("0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1")
            == b"0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
        )
        for bad in (None, "", "x" * 71, "ends in space ", "semi;colon", "non-ascii-é"):
            with pytest.raises(MultipartError):
                check_boundary(bad)


class TestParse:
    def test_two_parts_in_order(self) -> None:
        got = parts_of(encode(b"first", b"second"))
        assert [c for _, c in got] == [b"first", b"second"]
        assert got[0][0] == {"content-type": "application/dicom"}

    def test_first_delimiter_at_start_without_crlf(self) -> None:
        body = b"--" + B + b"\r\nContent-Type: a/b\r\n\r\nX\r\n--" + B + b"--"
        assert parts_of(body) == [({"content-type": "a/b"}, b"X")]

    def test_preamble_and_epilogue_are_ignored(self) -> None:
        body = encode(
            b"data", preamble=b"This is a preamble\r\n--not-it\r\n", epilogue=b"\r\nbye\r\n"
        )
        assert [c for _, c in parts_of(body)] == [b"data"]

    def test_crlf_before_delimiter_belongs_to_delimiter(self) -> None:
        # Content that itself ends in CRLF keeps it; only the delimiter's CRLF is removed.
        content = b"line\r\n\r\n"
        assert parts_of(encode(content))[0][1] == content

    def test_binary_content_with_near_boundaries(self) -> None:
        content = bytes(range(256)) * 4 + b"\r\n--" + B + b"X not a delimiter\r\n--" + B[:-1]
        assert parts_of(encode(content, b""))[0][1] == content
        assert parts_of(encode(content, b""))[1][1] == b""

    def test_transport_padding_after_boundary(self) -> None:
        body = b"--" + B + b" \t\r\n\r\nX\r\n--" + B + b"  \r\n\r\nY\r\n--" + B + b"--"
        assert [c for _, c in parts_of(body)] == [b"X", b"Y"]

    def test_part_without_headers(self) -> None:
        body = b"--" + B + b"\r\n\r\n\r\nstarts with CRLF\r\n--" + B + b"--"
        assert parts_of(body) == [({}, b"\r\nstarts with CRLF")]

    def test_header_names_folded_lower_cased(self) -> None:
        body = (b"--" + B + b"\r\nCONTENT-type: application/dicom;\r\n transfer-syntax=1.2\r\n"
                b"X-Other:v\r\n\r\nZ\r\n--" + B + b"--")  # fmt: skip
        headers, content = parts_of(body)[0]
        assert headers == {"content-type": "application/dicom; transfer-syntax=1.2", "x-other": "v"}
        assert content == b"Z"

    def test_mmap_buffer(self) -> None:
        body = encode(b"A" * 10000, b"B")
        with tempfile.TemporaryFile() as f:
            f.write(body)
            f.flush()
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                parts = parse_multipart(mm, B, max_part_bytes=1 << 20)
                assert [p.content(mm) for p in parts] == [b"A" * 10000, b"B"]
                assert [p.number for p in parts] == [1, 2]


class TestErrors:
    def test_truncated_body(self) -> None:
        body = encode(b"complete", b"cut short")
        for cut in (len(body) - 1, len(body) - 3, len(body) - 20):
            with pytest.raises(MultipartError, match="truncated"):
                parse_multipart(body[:cut], B, max_part_bytes=1 << 20)

    def test_no_boundary_in_body(self) -> None:
        with pytest.raises(MultipartError, match="no multipart boundary"):
            parse_multipart(b"just some bytes", B, max_part_bytes=100)

    def test_other_boundary(self) -> None:
        with pytest.raises(MultipartError):
            parse_multipart(encode(b"x", boundary=b"other"), B, max_part_bytes=100)

    def test_no_parts(self) -> None:
        with pytest.raises(MultipartError, match="no parts"):
            parse_multipart(b"--" + B + b"--\r\n", B, max_part_bytes=100)

    def test_empty_body(self) -> None:
        with pytest.raises(MultipartError):
            parse_multipart(b"", B, max_part_bytes=100)

    def test_bare_lf_is_not_a_line_end(self) -> None:
        body = b"--" + B + b"\nContent-Type: a/b\n\nX\n--" + B + b"--\n"
        with pytest.raises(MultipartError):
            parse_multipart(body, B, max_part_bytes=100)

    def test_header_block_without_end(self) -> None:
        body = b"--" + B + b"\r\nContent-Type: a/b\r\nX" + b"y" * 100 + b"\r\n--" + B + b"--"
        with pytest.raises(MultipartError):
            parse_multipart(body, B, max_part_bytes=1000, max_header_bytes=64)

    def test_malformed_header_line(self) -> None:
        body = b"--" + B + b"\r\nno colon here\r\n\r\nX\r\n--" + B + b"--"
        with pytest.raises(MultipartError, match="Name: value"):
            parse_multipart(body, B, max_part_bytes=100)

    def test_part_over_limit(self) -> None:
        with pytest.raises(TooLarge):
            parse_multipart(encode(b"x" * 11), B, max_part_bytes=10)
        assert len(parse_multipart(encode(b"x" * 10), B, max_part_bytes=10)) == 1
