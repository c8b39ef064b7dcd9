"""Receiving a request body under a limit (api/body.py)."""

from __future__ import annotations

import mmap
from pathlib import Path

from api.body import RequestBody
from api.multipart import parse_multipart
from tests.api.conftest import BOUNDARY, multipart_body


def test_small_body_stays_in_memory(tmp_path: Path) -> None:
    body = RequestBody(tmp_path / "spool", memory_bytes=100)
    body.write(b"abc")
    body.write(b"def")
    assert body.buffer() == b"abcdef"
    assert body.size == 6
    body.close()
    assert not (tmp_path / "spool").exists()


def test_large_body_is_spooled_and_mapped(tmp_path: Path) -> None:
    data = multipart_body([b"A" * 5000, b"B" * 3000])
    body = RequestBody(tmp_path / "spool", memory_bytes=1000)
    for i in range(0, len(data), 777):
        body.write(data[i : i + 777])
    buffer = body.buffer()
    assert isinstance(buffer, mmap.mmap)
    assert buffer[:] == data
    parts = parse_multipart(buffer, BOUNDARY.encode(), max_part_bytes=10_000)
    assert [p.content(buffer) for p in parts] == [b"A" * 5000, b"B" * 3000]
    body.close()
    assert buffer.closed
    # The temporary file has no name: nothing is left in the spool folder.
    assert list((tmp_path / "spool").iterdir()) == []
