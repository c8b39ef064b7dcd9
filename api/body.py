"""Reading a request body under a size limit, in memory when small, else spooled to disk.

A STOW-RS request (DICOM PS3.18 10.5.1) may carry gigabytes; the body is read
as it streams in, refused with 413 as soon as it is over the limit (before
anything is stored), and kept in a temporary file once it is larger than
``memory_bytes``. The parser then scans the file through :mod:`mmap`, so at most
one part at a time is copied into memory.
"""

from __future__ import annotations

import mmap
import tempfile
from pathlib import Path
from typing import IO

from starlette.requests import Request

from api.multipart import Buffer
from pipeline.errors import TooLarge

#: Bodies up to this size stay in memory.
DEFAULT_MEMORY_BYTES = 8 * 1024**2


class RequestBody:
    """A body being received; :meth:`buffer` gives it whole once it is complete.

    Parameters
    ----------
    spool_dir
        Where a large body's temporary file is made (created when needed).
    memory_bytes
        Bodies larger than this go to a temporary file.
    """

    def __init__(self, spool_dir: Path | None, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self._spool_dir = spool_dir
        self._memory_bytes = memory_bytes
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self._map: mmap.mmap | None = None
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._file is None and self.size <= self._memory_bytes:
            self._memory += chunk
            return
        if self._file is None:
            if self._spool_dir is not None:
                self._spool_dir.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115
            self._file.write(self._memory)
            self._memory = bytearray()
        self._file.write(chunk)

    def buffer(self) -> Buffer:
        """The whole body: :class:`bytes`, or a read-only map of the spool file."""
        if self._file is None:
            return bytes(self._memory)
        if self._map is None:
            self._file.flush()
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def close(self) -> None:
        """Release the memory, the map and the temporary file (deleted on close)."""
        self._memory = bytearray()
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None


async def read_body(request: Request, limit: int, spool_dir: Path | None) -> RequestBody:
    """Receive ``request``'s body, refusing it once it is over ``limit`` bytes.

    Raises
    ------
    TooLarge
        When the declared Content-Length, or the bytes received, are over ``limit``
        (HTTP 413 through the error table, PS3.18 8.5 / RFC 9110 15.5.14).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body of {declared} bytes is over the limit of {limit}")
    body = RequestBody(spool_dir)
    try:
        async for chunk in request.stream():
            if body.size + len(chunk) > limit:
                raise TooLarge(f"the request body is over the limit of {limit} bytes")
            body.write(chunk)
    except BaseException:
        body.close()
        raise
    return body
