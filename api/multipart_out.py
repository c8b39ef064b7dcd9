"""A streaming writer of ``multipart/related`` answers (RFC 2046 5.1, RFC 2387).

WADO-RS answers instances, frames and bulk data as ``multipart/related`` with
the parts' media type in the ``type`` parameter (PS3.18 8.7.3.2, 8.7.3.3,
8.7.4). :class:`MultipartWriter` produces the body piece by piece, so that a
study is streamed one instance at a time instead of being held in memory:

* each part starts with the dash-boundary line, then ``Content-Type`` (with a
  ``transfer-syntax`` parameter when the part has one, PS3.18 8.7.3.5.2),
  ``Content-Location`` when given (PS3.18 8.6.1.2.1: the part's own URL),
  then an empty line and the content as it is (binary: no transfer encoding);
* the delimiter before every part but the first is CRLF + ``--boundary``
  (the CRLF belongs to the delimiter, RFC 2046 5.1.1), and the body ends with
  the close delimiter CRLF + ``--boundary--`` + CRLF.

The boundary is random (128 bits): it cannot be chosen to avoid the content
before the content is known, and the chance that 32 random hex digits occur
in a part is nil for any real body. The parser is :mod:`api.multipart`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fastapi.responses import Response, StreamingResponse

__all__ = ["MultipartWriter", "OutPart", "multipart_response", "multipart_whole_response"]

#: Answers up to this size are sent whole (see :func:`multipart_whole_response`).
WHOLE_BODY_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class OutPart:
    """One part to write: content, its media type, and where it can be fetched alone."""

    content: bytes | memoryview
    content_type: str
    location: str | None = None


def _header_value(value: str) -> str:
    # A header value never spans lines: CR or LF would end it and start another.
    if "\r" in value or "\n" in value:
        raise ValueError("a part header value holds a line break")
    return value


class MultipartWriter:
    """The pieces of one ``multipart/related`` body whose parts are ``part_type``.

    Parameters
    ----------
    part_type
        The media type of the parts, for the ``type`` parameter (RFC 2387 3.1).
    boundary
        For tests; random by default.
    """

    def __init__(self, part_type: str, boundary: str | None = None) -> None:
        self.part_type = part_type
        self.boundary = boundary or f"lightbox-{uuid.uuid4().hex}"
        self._dash = f"--{self.boundary}".encode("ascii")
        self._parts = 0

    @property
    def content_type(self) -> str:
        """The body's Content-Type: ``multipart/related; type="..."; boundary=...``."""
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def part(self, part: OutPart) -> Iterator[bytes | memoryview]:
        """The delimiter and headers of ``part``, then its content (not copied)."""
        lines = [b"\r\n" + self._dash if self._parts else self._dash,
                 b"Content-Type: " + _header_value(part.content_type).encode("latin-1")]  # fmt: skip
        if part.location is not None:
            lines.append(b"Content-Location: " + _header_value(part.location).encode("latin-1"))
        self._parts += 1
        yield b"\r\n".join(lines) + b"\r\n\r\n"
        if len(part.content):
            yield part.content

    def close(self) -> bytes:
        """The close delimiter (after at least one part; RFC 2046 needs one)."""
        return b"\r\n" + self._dash + b"--\r\n"

    def stream(self, parts: Iterable[OutPart]) -> Iterator[bytes | memoryview]:
        """The whole body of ``parts`` (produced lazily, one part at a time)."""
        for part in parts:
            yield from self.part(part)
        yield self.close()

    @property
    def parts_written(self) -> int:
        return self._parts


def multipart_response(
    part_type: str,
    parts: Iterable[OutPart],
    *,
    headers: dict[str, str] | None = None,
    status_code: int = 200,
) -> StreamingResponse:
    """A streamed ``multipart/related`` answer of ``parts``.

    ``parts`` may be a generator doing blocking work (blob reads,
    transcoding): Starlette runs a synchronous iterator in its thread pool,
    one ``next`` at a time, so the event loop never waits on it. An error
    raised by the generator after the first bytes went out ends the body
    without its close delimiter, so the client sees a truncated message and
    never a complete-looking partial one.
    """
    writer = MultipartWriter(part_type)
    return StreamingResponse(
        writer.stream(parts),
        status_code=status_code,
        media_type=writer.content_type,
        headers=headers,
    )


def multipart_whole_response(
    part_type: str,
    parts: list[OutPart],
    *,
    headers: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The ``multipart/related`` answer of ``parts`` already in memory, as one body.

    For small answers (one frame, one instance): a streamed body costs a
    thread-pool round trip per piece, more than the copy made here. Bodies
    over :data:`WHOLE_BODY_BYTES` are streamed by :func:`multipart_response`
    instead, so that a large instance is not held twice.
    """
    if sum(len(part.content) for part in parts) > WHOLE_BODY_BYTES:
        return multipart_response(part_type, parts, headers=headers, status_code=status_code)
    writer = MultipartWriter(part_type)
    body = b"".join(writer.stream(parts))
    return Response(body, status_code=status_code, headers=headers, media_type=writer.content_type)
