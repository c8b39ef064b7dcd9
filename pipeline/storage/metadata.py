"""The metadata store: each instance's DICOM JSON document (PS3.18 F.2), by blob key.

WADO-RS metadata of a series is the documents of its instances side by side
(:mod:`pipeline.retrieve.metadata`); reading and converting every Part-10 file
at request time would cost about a millisecond of CPU per instance (Orthanc's
300-instance series takes 240-341 ms, ``FIELD-NOTES.md``). The decode stage
writes the document once after an instance is stored; a document that is not
there yet is built on demand and saved.

A cache in the strict sense: every document can be built again from the blob,
so writes are atomic (temporary name, rename; one PUT on object stores) but
not fsynced. A blob key names immutable bytes, so a document never goes
stale; a replaced instance has a new key. Layout under the storage root::

    metadata/<blob key without .dcm>.json

The document is UTF-8 JSON, one object (not an array), compact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import fsspec

from pipeline.storage.blobs import check_key

METADATA_FOLDER = "metadata"


@runtime_checkable
class MetadataStore(Protocol):
    """Precomputed DICOM JSON documents of instances, by blob storage key."""

    url: str

    def put(self, key: str, document: bytes) -> None:
        """Store the document of ``key`` (replacing any); whole or absent to readers."""

    def get(self, key: str) -> bytes | None:
        """The document, or None when there is none yet (build it on demand)."""

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """:meth:`get` of every key, in order (object stores fetch them concurrently)."""

    def delete(self, key: str) -> None:
        """Remove the document of ``key``; no error if there is none."""


def relative_path(key: str) -> str:
    """``2026/12/03/17/<hex>.dcm`` -> ``metadata/2026/12/03/17/<hex>.json``, key checked."""
    return f"{METADATA_FOLDER}/{check_key(key).removesuffix('.dcm')}.json"


class LocalMetadataStore:
    """Documents as files under ``<root>/metadata``; a reader sees a whole file or none."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"

    def put(self, key: str, document: bytes) -> None:
        path = self.root / relative_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(document)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / relative_path(key)).read_bytes()
        except FileNotFoundError:
            return None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def delete(self, key: str) -> None:
        (self.root / relative_path(key)).unlink(missing_ok=True)

    def sweep_temporary(self) -> int:
        """Remove temporary files a crash left mid-write; returns how many."""
        removed = 0
        folder = self.root / METADATA_FOLDER
        if folder.is_dir():
            for tmp in folder.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)
                removed += 1
        return removed

    def clear(self) -> None:
        """Remove every document (they are rebuilt on demand)."""
        shutil.rmtree(self.root / METADATA_FOLDER, ignore_errors=True)


class FsspecMetadataStore:
    """Documents on any fsspec file system (an object PUT is atomic)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.url)

    def _path(self, key: str) -> str:
        return f"{self._root}/{relative_path(key)}"

    def put(self, key: str, document: bytes) -> None:
        self.fs.pipe_file(self._path(key), document)

    def get(self, key: str) -> bytes | None:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        paths = [self._path(key) for key in keys]
        # One call: async file systems (s3, gcs, http) fetch the paths concurrently.
        found = self.fs.cat(paths, on_error="omit")
        if not isinstance(found, dict):  # a single path comes back as bytes
            found = {paths[0]: found}
        by_path = {self.fs._strip_protocol(p): v for p, v in found.items()}
        return [by_path.get(self.fs._strip_protocol(p)) for p in paths]

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm_file(path)


def open_metadata_store(storage_url: str) -> MetadataStore:
    """The metadata store under the storage root ``storage_url`` (the blob store's URL)."""
    protocol = fsspec.core.split_protocol(storage_url)[0]
    if protocol in (None, "file", "local"):
        return LocalMetadataStore(
            fsspec.core.strip_protocol(storage_url) if protocol else storage_url
        )
    return FsspecMetadataStore(storage_url)
