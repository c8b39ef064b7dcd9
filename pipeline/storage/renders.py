"""The render store: encoded renders (default window, thumbnails) by instance, variant and frame.

A cache in the strict sense: everything here can be rendered again from the
Zarr pixels, so writes are atomic (temporary name, rename) but not fsynced.
Layout under the storage root::

    renders/<blob key without .dcm>/<variant>/<frame number, from 1>

Variants are names such as ``default.jpg`` or ``thumbnail.jpg``; the
extension says the media type.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Protocol, runtime_checkable

import fsspec

from pipeline.storage.blobs import check_key

RENDERS_FOLDER = "renders"
_VARIANT = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def check_variant(variant: str) -> str:
    if not _VARIANT.fullmatch(variant) or ".." in variant:
        raise ValueError("a render variant is lower-case letters, digits, '_', '.' and '-'")
    return variant


@runtime_checkable
class RenderStore(Protocol):
    url: str
    #: Reads are local file reads (see PixelStore.local).
    local: bool

    def put(self, key: str, variant: str, frame: int, data: bytes) -> None:
        """Store the encoded render of ``frame`` (1-based, as in PS3.18 frame lists)."""

    def get(self, key: str, variant: str, frame: int) -> bytes | None:
        """The stored render, or None when there is none (render it on demand)."""

    def delete(self, key: str) -> None:
        """Remove every render of an instance (its pixels changed)."""


def _relative(key: str, variant: str | None = None, frame: int | None = None) -> str:
    stem = check_key(key).removesuffix(".dcm")
    parts = [RENDERS_FOLDER, stem]
    if variant is not None:
        parts.append(check_variant(variant))
    if frame is not None:
        if frame < 1:
            raise ValueError("frame numbers start at 1")
        parts.append(str(int(frame)))
    return "/".join(parts)


class LocalRenderStore:
    """Renders as files; a reader sees a whole file or none (rename)."""

    local = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.url = f"file://{self.root}"

    def put(self, key: str, variant: str, frame: int, data: bytes) -> None:
        path = self.root / _relative(key, variant, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, key: str, variant: str, frame: int) -> bytes | None:
        try:
            return (self.root / _relative(key, variant, frame)).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        import shutil

        shutil.rmtree(self.root / _relative(key), ignore_errors=True)


class FsspecRenderStore:
    """Renders on any fsspec file system (an object PUT is atomic)."""

    local = False

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self._root = fsspec.core.url_to_fs(self.url)

    def put(self, key: str, variant: str, frame: int, data: bytes) -> None:
        self.fs.pipe_file(f"{self._root}/{_relative(key, variant, frame)}", data)

    def get(self, key: str, variant: str, frame: int) -> bytes | None:
        try:
            return self.fs.cat_file(f"{self._root}/{_relative(key, variant, frame)}")
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        path = f"{self._root}/{_relative(key)}"
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def open_render_store(storage_url: str) -> RenderStore:
    protocol = fsspec.core.split_protocol(storage_url)[0]
    if protocol in (None, "file", "local"):
        return LocalRenderStore(fsspec.core.strip_protocol(storage_url) if protocol else storage_url)
    return FsspecRenderStore(storage_url)
