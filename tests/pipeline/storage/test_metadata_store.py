"""The metadata store contract (precomputed DICOM JSON documents, PS3.18 F.2):
one suite for every backend (local files, an fsspec ``memory://`` file system),
then the local specifics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.storage.blobs import new_storage_key
from pipeline.storage.metadata import (
    FsspecMetadataStore,
    LocalMetadataStore,
    MetadataStore,
    open_metadata_store,
    relative_path,
)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    if request.param == "local":
        yield LocalMetadataStore(tmp_path / "storage")
        return
    # fsspec's memory file system is one per process: a root of our own per test.
    s = FsspecMetadataStore(f"memory://lightbox-md-{uuid.uuid4().hex}")
    yield s
    if s.fs.exists(s._root):  # noqa: SLF001
        s.fs.rm(s._root, recursive=True)  # noqa: SLF001


def test_is_a_metadata_store(store: MetadataStore) -> None:
    assert isinstance(store, MetadataStore)


def test_round_trip_replace_delete(store: MetadataStore) -> None:
    key = new_storage_key()
    assert store.get(key) is None
    store.put(key, b'{"00100010":{"vr":"PN"}}')
    assert store.get(key) == b'{"00100010":{"vr":"PN"}}'
    store.put(key, "{\"x\":\"\u00e9\"}".encode())
    assert store.get(key) == "{\"x\":\"\u00e9\"}".encode()
    store.delete(key)
    assert store.get(key) is None
    store.delete(key)  # no error when absent


def test_get_many_in_order_with_gaps(store: MetadataStore) -> None:
    keys = [new_storage_key() for _ in range(6)]
    for n, key in enumerate(keys):
        if n % 2 == 0:
            store.put(key, b"{\"n\":%d}" % n)
    assert store.get_many(keys) == [b'{"n":0}', None, b'{"n":2}', None, b'{"n":4}', None]
    assert store.get_many([]) == []
    assert store.get_many([keys[0]]) == [b'{"n":0}']
    assert store.get_many([keys[1]]) == [None]


def test_keys_are_checked(store: MetadataStore) -> None:
    for bad in ("../../etc/passwd", "/abs/key.dcm", "a/../../b.dcm", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"{}")


def test_layout() -> None:
    key = "2026/12/03/17/" + "ab" * 16 + ".dcm"
    assert relative_path(key) == "metadata/2026/12/03/17/" + "ab" * 16 + ".json"


def test_local_write_is_atomic_and_sweepable(tmp_path: Path) -> None:
    store = LocalMetadataStore(tmp_path)
    key = new_storage_key()
    store.put(key, b"{}")
    folder = (tmp_path / relative_path(key)).parent
    assert [p.name for p in folder.iterdir()] == [Path(relative_path(key)).name]
    (folder / ".left.json.1234abcd.tmp").write_bytes(b"{")
    assert store.sweep_temporary() == 1
    assert store.get(key) == b"{}"
    store.clear()
    assert store.get(key) is None


def test_open_by_url(tmp_path: Path) -> None:
    assert isinstance(open_metadata_store(str(tmp_path)), LocalMetadataStore)
    assert isinstance(open_metadata_store(f"file://{tmp_path}"), LocalMetadataStore)
    assert open_metadata_store(f"file://{tmp_path}").url == f"file://{tmp_path.resolve()}"
    memory = open_metadata_store(f"memory://lightbox-md-{uuid.uuid4().hex}")
    assert isinstance(memory, FsspecMetadataStore)
