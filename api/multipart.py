"""A small, strict reader of ``multipart/related`` bodies (RFC 2046 5.1, RFC 2387).

STOW-RS requests (DICOM PS3.18 10.5.1, 8.7.3.1) carry one instance per part of
a ``multipart/related; type="application/dicom"`` body. The reader works on a
whole body held in memory or mapped from a file (anything with ``find``,
``len`` and slicing, such as :class:`bytes` or :class:`mmap.mmap`) and returns
each part's headers and the offsets of its content, so that a part's bytes are
copied only when they are used.

Syntax errors raise :class:`MultipartError` (HTTP 400); a part over the size
limit raises :class:`pipeline.errors.TooLarge` (HTTP 413 through the error table).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from pipeline.errors import TooLarge

#: What the reader can scan: the body in memory, or mapped from a spool file.
Buffer = bytes | mmap.mmap

_CRLF = b"\r\n"
#: RFC 2046 5.1.1: the boundary delimiter may be followed by linear white space.
_PADDING = b" \t"
#: RFC 2046 5.1.1 bchars (besides letters and digits), and 70 characters at most.
_BCHARS = (
    set("'()+_,-./:=? ")
    | set("0123456789")
    | set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
)
_MAX_BOUNDARY = 70


class MultipartError(ValueError):
    """The body or its Content-Type is not a well-formed multipart body (HTTP 400).

    ``reason`` is safe to log and to send back (it never quotes the body).
    """

    http_status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Part:
    """One body part: its header fields (names lower-cased) and where its content is.

    The content is ``buffer[start:end]`` of the buffer that was parsed.
    """

    headers: dict[str, str]
    start: int
    end: int
    #: 1-based position of the part in the body, for messages.
    number: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def content(self, buffer: Buffer) -> bytes:
        """A copy of this part's content from the ``buffer`` that was parsed."""
        return bytes(buffer[self.start : self.end])


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its lower-cased media type and parameters.

    Parameter names are lower-cased; values may be tokens or quoted strings
    (RFC 9110 5.6.6, with backslash escapes); surrounding white space is ignored.

    Raises
    ------
    MultipartError
        When the value has no ``type/subtype`` or a parameter has no ``=``.
    """
    items = _split_unquoted(value, ";")
    media_type = items[0].strip().lower()
    if media_type.count("/") != 1 or not all(media_type.split("/")):
        raise MultipartError("Content-Type is not a media type (type/subtype)")
    params: dict[str, str] = {}
    for item in items[1:]:
        item = item.strip()
        if not item:
            continue
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            raise MultipartError("a Content-Type parameter has no name=value")
        params[name.strip().lower()] = _unquote(raw.strip())
    return media_type, params


def check_boundary(boundary: str | None) -> bytes:
    """The boundary as bytes, if it is a valid RFC 2046 boundary.

    Raises
    ------
    MultipartError
        When it is missing, empty, longer than 70 characters, ends with a space
        or holds characters outside RFC 2046's ``bchars``.
    """
    if boundary is None:
        raise MultipartError("the multipart Content-Type has no boundary parameter")
    if not 0 < len(boundary) <= _MAX_BOUNDARY:
        raise MultipartError("the multipart boundary must be 1 to 70 characters")
    if boundary.endswith(" ") or not set(boundary) <= _BCHARS:
        raise MultipartError("the multipart boundary has characters RFC 2046 does not allow")
    return boundary.encode("ascii")


def parse_multipart(
    buffer: Buffer,
    boundary: bytes,
    *,
    max_part_bytes: int,
    max_header_bytes: int = 16 * 1024,
) -> list[Part]:
    """Find the body parts of a ``multipart`` body.

    Parameters
    ----------
    buffer
        The whole body.
    boundary
        The ``boundary`` parameter of the request's Content-Type (see :func:`check_boundary`).
    max_part_bytes
        A part with more content bytes raises :class:`pipeline.errors.TooLarge`.
    max_header_bytes
        The header block of one part may not be longer than this.

    Returns
    -------
    list of Part
        In body order; never empty.

    Raises
    ------
    MultipartError
        When the body has no delimiter, no part, a malformed part header, or
        ends before the close delimiter (a truncated body).
    TooLarge
        When a part's content is over ``max_part_bytes``.

    Notes
    -----
    A delimiter is CRLF, ``--``, the boundary, optional spaces or tabs, then
    CRLF (or ``--`` for the close delimiter); the CRLF before it belongs to the
    delimiter, not to the previous part (RFC 2046 5.1.1). The first delimiter may
    start the body without a CRLF; anything before it (the preamble) and after
    the close delimiter (the epilogue) is ignored. Bare LF line ends are not
    accepted: binary content could then be cut in the wrong place.
    """
    dash = b"--" + boundary
    delimiter = _CRLF + dash
    opening = _match_end(buffer, len(dash)) if buffer[: len(dash)] == dash else None
    if opening is None:
        found = _next_delimiter(buffer, 0, delimiter)
        if found is None:
            raise MultipartError("the body has no multipart boundary delimiter")
        opening = found[1:]
    pos, closed = opening
    parts: list[Part] = []
    while not closed:
        headers, start = _read_headers(buffer, pos, max_header_bytes)
        found = _next_delimiter(buffer, start, delimiter)
        if found is None:
            raise MultipartError(
                f"part {len(parts) + 1} ends without a boundary delimiter (truncated body?)"
            )
        end, pos, closed = found
        if end - start > max_part_bytes:
            raise TooLarge(
                f"part {len(parts) + 1} is {end - start} bytes, over the limit of {max_part_bytes}"
            )
        parts.append(Part(headers, start, end, len(parts) + 1))
    if not parts:
        raise MultipartError("the multipart body has no parts")
    return parts


def _next_delimiter(buffer: Buffer, start: int, delimiter: bytes) -> tuple[int, int, bool] | None:
    """(content end, position after the delimiter line, whether it closes) or None."""
    search = start
    while True:
        at = buffer.find(delimiter, search)
        if at < 0:
            return None
        matched = _match_end(buffer, at + len(delimiter))
        if matched is not None:
            return at, matched[0], matched[1]
        # "--boundary" followed by other characters is not a delimiter line.
        search = at + 1


def _match_end(buffer: Buffer, pos: int) -> tuple[int, bool] | None:
    """After ``--boundary`` at ``pos``: ``--`` (close) or padding and CRLF, else None."""
    if buffer[pos : pos + 2] == b"--":
        return pos + 2, True
    while buffer[pos : pos + 1] and buffer[pos : pos + 1] in _PADDING:
        pos += 1
    if buffer[pos : pos + 2] == _CRLF:
        return pos + 2, False
    return None


def _read_headers(buffer: Buffer, pos: int, limit: int) -> tuple[dict[str, str], int]:
    """Parse the header block at ``pos``; returns the headers and where content starts."""
    if buffer[pos : pos + 2] == _CRLF:
        return {}, pos + 2
    end = buffer.find(_CRLF + _CRLF, pos, pos + limit + 4)
    if end < 0:
        raise MultipartError("a part's header block is not terminated by an empty line")
    headers: dict[str, str] = {}
    name = ""
    for line in bytes(buffer[pos:end]).decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and name:
            headers[name] += " " + line.strip()  # obsolete line folding (RFC 5322 2.2.3)
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name or any(c in name for c in " \t"):
            raise MultipartError("a part header line is not 'Name: value'")
        headers[name] = value.strip()
    return headers, end + 4


def _split_unquoted(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double-quoted strings."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise MultipartError("a quoted Content-Type parameter is not closed")
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out: list[str] = []
        chars = iter(value[1:-1])
        for char in chars:
            out.append(next(chars, "") if char == "\\" else char)
        return "".join(out)
    return value
