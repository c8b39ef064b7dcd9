"""WADO-RS Accept negotiation (PS3.18 8.7.3, RFC 9110 12.5.1) and the
streaming multipart writer (RFC 2046 5.1, RFC 2387), parsed back with
:mod:`api.multipart`."""

from __future__ import annotations

import pytest

from api.multipart import check_boundary, parse_media_type, parse_multipart
from api.multipart_out import MultipartWriter, OutPart
from api.wado_accept import ANY_SYNTAX, EXPLICIT_VR_LE, Range, accepted, split_accept

DICOM = "application/dicom"
OCTET = "application/octet-stream"
J2K = "1.2.840.10008.1.2.4.90"


# ----------------------------------------------------------------- defaults (8.7.3.5.2)


@pytest.mark.parametrize("header", [None, "", "   ", "*/*", "multipart/*", "multipart/related"])
def test_open_accept_is_the_resource_default(header: str | None) -> None:
    for default in (DICOM, OCTET):
        ranges = accepted(header, default)
        assert ranges == [Range(default, None, 1.0)]
        # No transfer-syntax named: Explicit VR Little Endian (PS3.18 8.7.3.5.2).
        assert ranges[0].syntax_or(EXPLICIT_VR_LE) == EXPLICIT_VR_LE


def test_multipart_type_and_syntax() -> None:
    header = f'multipart/related; type="application/dicom"; transfer-syntax={J2K}'
    assert accepted(header, DICOM) == [Range(DICOM, J2K, 1.0)]
    star = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    (only,) = accepted(star, DICOM)
    assert only.transfer_syntax == ANY_SYNTAX and only.syntax_or(EXPLICIT_VR_LE) == ANY_SYNTAX


def test_type_is_case_insensitive_and_bare_type_allowed() -> None:
    assert accepted('Multipart/Related; TYPE="Application/DICOM"', OCTET)[0].media_type == DICOM
    assert accepted("application/dicom", OCTET) == [Range(DICOM, None, 1.0)]
    assert accepted('multipart/related; type="image/jpeg"', OCTET)[0].media_type == "image/jpeg"


def test_quality_orders_then_client_order() -> None:
    header = ", ".join([
        'multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5',
        f'multipart/related; type="application/dicom"; transfer-syntax={J2K}',
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.5; q=0.5',
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_VR_LE}; q=0.9',
    ])  # fmt: skip
    got = [(r.transfer_syntax, r.q) for r in accepted(header, DICOM)]
    assert got == [(J2K, 1.0), (EXPLICIT_VR_LE, 0.9), ("*", 0.5), ("1.2.840.10008.1.2.5", 0.5)]


def test_q_zero_and_bad_q_mean_not_acceptable() -> None:
    header = (f'multipart/related; type="application/dicom"; transfer-syntax={J2K}; q=0, '
              'multipart/related; type="application/dicom"; transfer-syntax=*; q=abc')  # fmt: skip
    assert accepted(header, DICOM) == []
    assert accepted("application/dicom; q=7", DICOM)[0].q == 1.0


def test_malformed_ranges_are_ignored() -> None:
    assert accepted("garbage, ;;;, /x", DICOM) == []
    assert accepted("garbage, application/dicom", DICOM) == [Range(DICOM, None, 1.0)]


def test_split_accept_keeps_quoted_commas() -> None:
    assert split_accept('a/b; x="1,2", c/d,, ') == ['a/b; x="1,2"', "c/d"]
    assert split_accept(r'a/b; x="q\"," , e/f') == [r'a/b; x="q\","', "e/f"]


# ----------------------------------------------------------------- multipart writer


def _parse(writer: MultipartWriter, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    media, params = parse_media_type(writer.content_type)
    assert media == "multipart/related"
    boundary = check_boundary(params["boundary"])
    parts = parse_multipart(body, boundary, max_part_bytes=1 << 30)
    return [(p.headers, p.content(body)) for p in parts]


def test_writer_round_trip_through_our_parser() -> None:
    contents = [b"", b"\r\n--not-the-boundary\r\n", bytes(range(256)) * 300, b"x"]
    parts = [OutPart(c, f"{DICOM}; transfer-syntax={EXPLICIT_VR_LE}", f"http://h/i/{n}")
             for n, c in enumerate(contents)]  # fmt: skip
    parts.append(OutPart(memoryview(b"tail bytes"), OCTET))
    writer = MultipartWriter(DICOM)
    body = b"".join(bytes(piece) for piece in writer.stream(parts))
    assert writer.parts_written == len(parts)
    assert parse_media_type(writer.content_type)[1]["type"] == DICOM
    got = _parse(writer, body)
    assert [c for _, c in got] == [*contents, b"tail bytes"]
    for number, (headers, _) in enumerate(got[:-1]):
        assert headers["content-type"] == f"{DICOM}; transfer-syntax={EXPLICIT_VR_LE}"
        assert headers["content-location"] == f"http://h/i/{number}"
    assert "content-location" not in got[-1][0]
    assert body.endswith(b"--" + writer.boundary.encode() + b"--\r\n")


def test_writer_is_lazy_and_boundaries_random() -> None:
    pulled: list[int] = []

    def parts():
        for n in range(3):
            pulled.append(n)
            yield OutPart(b"%d" % n, OCTET)

    writer = MultipartWriter(OCTET)
    stream = writer.stream(parts())
    next(stream)
    assert pulled == [0]  # one part read before the first bytes go out
    assert MultipartWriter(OCTET).boundary != writer.boundary
    check_boundary(writer.boundary)  # RFC 2046 bchars, <= 70


def test_writer_refuses_header_injection() -> None:
    writer = MultipartWriter(OCTET)
    with pytest.raises(ValueError):
        list(writer.part(OutPart(b"x", OCTET, "http://h/\r\nSet-Cookie: a=b")))
