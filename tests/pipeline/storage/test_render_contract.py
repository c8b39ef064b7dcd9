"""The render store: one contract, local files and fsspec memory://."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.storage.blobs import new_storage_key
from pipeline.storage.renders import (
    FsspecRenderStore,
    LocalRenderStore,
    RenderStore,
    open_render_store,
)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RenderStore]:
    if request.param == "local":
        yield LocalRenderStore(tmp_path / "root")
    else:
        yield FsspecRenderStore(f"memory://renders-{uuid.uuid4().hex}")


def test_round_trip_and_delete(store: RenderStore) -> None:
    key = new_storage_key()
    assert isinstance(store, RenderStore)
    assert store.get(key, "default.jpg", 1) is None
    store.put(key, "default.jpg", 1, b"first")
    store.put(key, "default.jpg", 2, b"second")
    store.put(key, "thumbnail.jpg", 1, b"small")
    assert store.get(key, "default.jpg", 2) == b"second"
    store.put(key, "default.jpg", 2, b"again")
    assert store.get(key, "default.jpg", 2) == b"again"
    store.delete(key)
    assert store.get(key, "default.jpg", 1) is None and store.get(key, "thumbnail.jpg", 1) is None
    store.delete(key)  # nothing left: no error


@pytest.mark.parametrize(
    ("variant", "frame"), [("../x", 1), ("a/b", 1), ("", 1), ("UPPER.jpg", 1), ("ok.jpg", 0)]
)
def test_refusals(store: RenderStore, variant: str, frame: int) -> None:
    with pytest.raises(ValueError):
        store.put(new_storage_key(), variant, frame, b"x")
    with pytest.raises(ValueError):
        store.get("../etc/passwd", "ok.jpg", 1)


def test_local_layout_and_no_partial_files(tmp_path: Path) -> None:
    store = open_render_store(f"file://{tmp_path}")
    assert isinstance(store, LocalRenderStore)
    key = new_storage_key()
    store.put(key, "default.jpg", 3, b"data")
    path = tmp_path / "renders" / key.removesuffix(".dcm") / "default.jpg" / "3"
    assert path.read_bytes() == b"data"
    assert [p.name for p in path.parent.iterdir()] == ["3"]  # the temporary name is gone
