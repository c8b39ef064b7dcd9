"""The blob store contract: one suite for every :class:`BlobStore`, then the local specifics."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.storage import blobs as blobs_module
from pipeline.storage.blobs import (
    BlobStore,
    FsspecBlobStore,
    LocalBlobStore,
    new_storage_key,
    open_blob_store,
)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalBlobStore(tmp_path / "blobs")
        return
    # fsspec's memory file system is one per process: a root of our own per test.
    url = f"memory://lightbox-test-{uuid.uuid4().hex}"
    s = FsspecBlobStore(url)
    yield s
    if s.fs.exists(s._root):  # noqa: SLF001
        s.fs.rm(s._root, recursive=True)  # noqa: SLF001


def test_is_a_blob_store(store: BlobStore) -> None:
    assert isinstance(store, BlobStore)


def test_new_storage_key_shape() -> None:
    keys = {new_storage_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        year, month, day, hour, name = key.split("/")
        assert 2026 <= int(year) and 1 <= int(month) <= 12 and 1 <= int(day) <= 31
        assert 0 <= int(hour) <= 23
        assert name.endswith(".dcm") and len(name) == 32 + 4
        int(name[:32], 16)


def test_round_trip(store: BlobStore) -> None:
    key = new_storage_key()
    data = bytes(range(256)) * 41 + b"\x00tail"
    assert not store.exists(key)
    store.put(key, data)
    assert store.exists(key)
    assert store.get(key) == data
    assert store.size(key) == len(data)

    # A memoryview is accepted as well as bytes.
    other = new_storage_key()
    store.put(other, memoryview(b"0123456789")[2:6])
    assert store.get(other) == b"2345"
    assert store.size(other) == 4

    store.delete(key)
    assert not store.exists(key)
    assert store.get(other) == b"2345"  # the other blob is untouched
    with pytest.raises(FileNotFoundError):
        store.get(key)


def test_put_empty_blob(store: BlobStore) -> None:
    key = new_storage_key()
    store.put(key, b"")
    assert store.exists(key)
    assert store.size(key) == 0
    assert store.get(key) == b""


def test_delete_missing_key_is_fine(store: BlobStore) -> None:
    key = new_storage_key()
    store.delete(key)
    store.put(key, b"x")
    store.delete(key)
    store.delete(key)
    assert not store.exists(key)


BAD_KEYS = [
    "../etc/passwd",
    "ab/cd/../../x.dcm",
    "/etc/passwd",
    "/tmp/ab/cd/" + "0" * 32 + ".dcm",
    "1.2.840.113619.2.55.3.604688119.868.1234567890.123",
    "",
    "ab/cd/" + "0" * 32,  # no suffix
    "AB/CD/" + "A" * 32 + ".dcm",  # upper case
    "ab/cd/" + "0" * 31 + ".dcm",  # one digit short
    "ab/cd/../" + "0" * 32 + ".dcm",
    "ab\\cd\\" + "0" * 32 + ".dcm",
    "ab/cd/" + "0" * 32 + ".dcm\n",  # a trailing newline
    "ab/cd/" + "0" * 32 + ".dcm/..",
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_foreign_keys_are_refused_by_every_method(store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    with pytest.raises(ValueError):
        store.exists(key)
    with pytest.raises(ValueError):
        store.size(key)
    with pytest.raises(ValueError):
        store.delete(key)


def test_open_blob_store_picks_the_local_store(tmp_path: Path) -> None:
    by_url = open_blob_store(f"file://{tmp_path / 'a'}")
    assert isinstance(by_url, LocalBlobStore)
    assert by_url.root == (tmp_path / "a").resolve()

    by_path = open_blob_store(str(tmp_path / "b"))
    assert isinstance(by_path, LocalBlobStore)
    assert by_path.root == (tmp_path / "b").resolve()

    # Both write where they say.
    key = new_storage_key()
    by_url.put(key, b"data")
    assert (tmp_path / "a" / key).read_bytes() == b"data"


def test_open_blob_store_uses_fsspec_for_other_urls() -> None:
    url = f"memory://lightbox-test-{uuid.uuid4().hex}"
    s = open_blob_store(url)
    assert isinstance(s, FsspecBlobStore)
    key = new_storage_key()
    s.put(key, b"abc")
    assert open_blob_store(url).get(key) == b"abc"
    s.delete(key)


# -- LocalBlobStore -------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LocalBlobStore(tmp_path / "blobs")
    key = new_storage_key()
    real_write = os.write
    calls = []

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:1000]))  # a first, partial chunk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobs_module.os, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        s.put(key, b"x" * 100_000)
    monkeypatch.undo()

    assert len(calls) == 2  # the store did write, then got the error
    assert not s.exists(key)
    assert not (s.root / key).exists()
    assert _files(s.root) == []  # no temporary file either

    # The store still works afterwards.
    s.put(key, b"ok")
    assert s.get(key) == b"ok"


def test_partial_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LocalBlobStore(tmp_path / "blobs")
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:777]))  # the OS may write less than asked

    monkeypatch.setattr(blobs_module.os, "write", short_write)
    key = new_storage_key()
    data = os.urandom(10_000)
    s.put(key, data)
    monkeypatch.undo()
    assert s.get(key) == data


def test_sweep_temporary_removes_leftovers_only(tmp_path: Path) -> None:
    s = LocalBlobStore(tmp_path / "blobs")
    keep = new_storage_key()
    s.put(keep, b"real blob")
    folder = (s.root / keep).parent
    leftovers = [
        folder / f".{Path(keep).name}.deadbeef.tmp",
        s.root / "2026" / "01" / "01" / "00" / f".{'0' * 32}.dcm.01234567.tmp",
    ]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a blob")
    assert s.sweep_temporary() == 2
    assert not any(p.exists() for p in leftovers)
    assert s.get(keep) == b"real blob"
    assert s.sweep_temporary() == 0


def test_files_are_not_world_readable(tmp_path: Path) -> None:
    s = LocalBlobStore(tmp_path / "blobs")
    key = new_storage_key()
    s.put(key, b"PHI inside")
    mode = stat.S_IMODE((s.root / key).stat().st_mode)
    assert mode & 0o007 == 0, oct(mode)
    assert mode & 0o600 == 0o600


def test_local_store_url(tmp_path: Path) -> None:
    s = LocalBlobStore(tmp_path / "blobs")
    assert s.url == f"file://{(tmp_path / 'blobs').resolve()}"
    assert isinstance(open_blob_store(s.url), LocalBlobStore)
