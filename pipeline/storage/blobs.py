"""Blob storage: the original Part-10 bytes of each instance, exactly as received.

Storage keys are generated here (a random UUID fanned out over two folder
levels), never taken from a received string, so a hostile UID can never name
a path. Every method checks that a key has the generated shape.
"""

from __future__ import annotations

import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, runtime_checkable

import fsspec

from pipeline.storage.durable import DurableFolders, fsync_dir

_KEY = re.compile(r"\d{4}/\d{2}/\d{2}/\d{2}/[0-9a-f]{32}\.dcm")


def new_storage_key() -> str:
    """A fresh key such as ``2026/12/03/17/3fa2...c1.dcm``: UTC hour of receipt, random id.

    One folder per hour (as dcm4chee's date-based paths): a folder is created
    (and its creation fsynced) once an hour instead of with nearly every
    instance, as random fan-out folders would be, and a day's or an hour's
    instances sit together for backup and tiering.
    """
    now = datetime.now(timezone.utc)
    return f"{now:%Y/%m/%d/%H}/{uuid.uuid4().hex}.dcm"


def check_key(key: str) -> str:
    # fullmatch: ``$`` alone would also accept the key followed by a newline.
    if not _KEY.fullmatch(key):
        raise ValueError("not a storage key made by new_storage_key()")
    return key


@runtime_checkable
class BlobStore(Protocol):
    """Durable, atomic storage of immutable blobs by generated key."""

    url: str

    def put(self, key: str, data: bytes | memoryview) -> None:
        """Store ``data`` under ``key``; durable and complete when this returns."""

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""


class LocalBlobStore:
    """Blobs as files under a folder: write to a temporary name, fsync, rename, fsync dir.

    A reader (or a crash) sees either no file or the whole file, never part of one.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"
        self._folders = DurableFolders(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes | memoryview) -> None:
        path = self._path(key)
        self._folders.ensure(path.parent)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def sweep_temporary(self) -> int:
        """Remove temporary files left by a crash mid-write; returns how many."""
        removed = 0
        for tmp in self.root.glob("*/*/*/*/.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed


class FsspecBlobStore:
    """Blobs on any fsspec file system (``s3://``, ``gs://``, ``memory://``...).

    An object store's PUT is atomic and durable when acknowledged, so a single
    ``pipe_file`` is the whole protocol there.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.url)

    def _path(self, key: str) -> str:
        return f"{self._root}/{check_key(key)}"

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.fs.pipe_file(self._path(key), bytes(data))

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm_file(path)


def open_blob_store(url: str) -> BlobStore:
    """The blob store for ``url``: local files get the fsync'd path, others fsspec."""
    protocol = fsspec.core.split_protocol(url)[0]
    if protocol in (None, "file", "local"):
        return LocalBlobStore(fsspec.core.strip_protocol(url) if protocol else url)
    return FsspecBlobStore(url)
