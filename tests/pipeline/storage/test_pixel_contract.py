"""The pixel store contract: one suite for the local and an fsspec store, then local specifics."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipeline.storage import PixelStore, ZarrPixelStore, open_pixel_store
from pipeline.storage import pixels as pixels_module
from pipeline.storage.blobs import new_storage_key
from tests.pipeline.storage.test_blob_contract import BAD_KEYS

RNG = np.random.default_rng(20261203)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ZarrPixelStore]:
    if request.param == "local":
        yield ZarrPixelStore(str(tmp_path / "storage"))
        return
    # fsspec's memory file system is one per process: a root of our own per test.
    s = ZarrPixelStore(f"memory://lightbox-test-{uuid.uuid4().hex}")
    yield s
    if s.fs.exists(s._pixels):  # noqa: SLF001
        s.fs.rm(s._pixels, recursive=True)  # noqa: SLF001


def _random(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


def _chunk_path(s: ZarrPixelStore, key: str, *index: int, level: int = 0) -> str:
    name = pixels_module.group_name(key)
    rel = f"{name}/{level}/c/" + "/".join(map(str, index))
    return str(s.pixels / rel) if s.local else f"{s._pixels}/{rel}"  # noqa: SLF001


def _corrupt(s: ZarrPixelStore, path: str) -> None:
    if s.local:
        Path(path).write_bytes(b"not a blosc chunk")
    else:
        s.fs.pipe_file(path, b"not a blosc chunk")


def _hidden_entries(s: ZarrPixelStore) -> list[Path]:
    return sorted(p for p in s.pixels.rglob(".*"))


def test_is_a_pixel_store(store: ZarrPixelStore) -> None:
    assert isinstance(store, PixelStore)


CASES = {
    "int16 CT with negatives": ((2, 64, 48), "i2"),
    "uint16": ((1, 40, 30), "u2"),
    "uint8 RGB": ((2, 32, 40, 3), "u1"),
    "multi-frame int32": ((17, 16, 24), "i4"),
    "int8": ((3, 8, 8), "i1"),
    "uint32": ((2, 9, 7), "u4"),
    "one pixel": ((1, 1, 1), "u2"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_round_trip(store: ZarrPixelStore, case: tuple[tuple[int, ...], str]) -> None:
    shape, dtype = case
    frames = _random(shape, dtype)
    if dtype == "i2":
        frames[:, :10] = -1024  # air
        frames[0, 0, 0] = np.iinfo(np.int16).min
    key = new_storage_key()
    assert not store.exists(key)
    store.write(key, frames, {"case": dtype})
    assert store.exists(key)
    assert store.shape(key) == shape
    for index in range(shape[0]):
        frame = store.read_frame(key, index)
        assert frame.dtype == np.dtype(dtype)  # exactly the source dtype
        np.testing.assert_array_equal(frame, frames[index])
    region = store.read_region(key, shape[0] - 1, 0, 0, shape[1], shape[2])
    np.testing.assert_array_equal(region, frames[-1])


def test_read_region_equals_the_source_slices(store: ZarrPixelStore) -> None:
    frames = _random((2, 3000, 2000, 1), "u2")[..., 0]
    key = new_storage_key()
    store.write(key, frames, {})
    for frame, y, x, height, width in [
        (0, 0, 0, 1, 1),
        (1, 500, 500, 30, 30),  # across four tiles
        (1, 2990, 1990, 10, 10),  # the last, partial tile
        (0, 0, 0, 3000, 2000),  # everything
        (1, 1024, 0, 512, 2000),  # a full row of tiles
    ]:
        region = store.read_region(key, frame, y, x, height, width)
        np.testing.assert_array_equal(region, frames[frame, y : y + height, x : x + width])
    rgb = _random((1, 20, 30, 3), "u1")
    other = new_storage_key()
    store.write(other, rgb, {})
    np.testing.assert_array_equal(store.read_region(other, 0, 3, 4, 5, 6), rgb[0, 3:8, 4:10])


def test_read_region_reads_only_its_tiles(store: ZarrPixelStore) -> None:
    frames = _random((1, 3000, 2000), "i2")
    key = new_storage_key()
    store.write(key, frames, {})
    # A broken tile far from the region: reading the region must not touch it.
    _corrupt(store, _chunk_path(store, key, 0, 5, 3))
    np.testing.assert_array_equal(
        store.read_region(key, 0, 100, 100, 600, 600), frames[0, 100:700, 100:700]
    )
    with pytest.raises(Exception):  # the whole frame does read it
        store.read_frame(key, 0)


def test_local_reads_do_not_go_through_zarr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local store reads frames and regions of its own layout from the chunk
    files (zarr-python costs ~3.5 ms a frame in metadata and event-loop trips):
    one chunk per frame, tiled frames, colour, an all-zero tile that zarr did
    not write, a big-endian source."""
    store = ZarrPixelStore(str(tmp_path / "storage"))  # other stores read through zarr
    tiled = _random((2, 1500, 1100), "i2")
    tiled[1, 512:1024, 0:512] = 0  # an all-fill chunk
    small = _random((3, 40, 30), "u2").astype(">u2")
    rgb = _random((1, 20, 30, 3), "u1")
    keys = [new_storage_key() for _ in range(3)]
    for key, frames in zip(keys, (tiled, small, rgb)):
        store.write(key, frames, {})

    def no_zarr(*_args: Any) -> Any:
        raise AssertionError("read through zarr")

    monkeypatch.setattr(store, "_array", no_zarr)
    for index in range(2):
        np.testing.assert_array_equal(store.read_frame(keys[0], index), tiled[index])
    np.testing.assert_array_equal(store.read_region(keys[0], 1, 500, 1000, 600, 100),
                                  tiled[1, 500:1100, 1000:1100])  # fmt: skip
    got = store.read_frame(keys[1], 2)
    assert got.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(got, small[2])
    np.testing.assert_array_equal(store.read_region(keys[2], 0, 3, 4, 5, 6), rgb[0, 3:8, 4:10])


def test_out_of_range_reads_are_refused(store: ZarrPixelStore) -> None:
    key = new_storage_key()
    store.write(key, _random((2, 10, 10), "u1"), {})
    for bad in (-1, 2):
        with pytest.raises(IndexError):
            store.read_frame(key, bad)
    for frame, y, x, height, width in [
        (2, 0, 0, 1, 1),
        (0, -1, 0, 2, 2),
        (0, 0, 0, 11, 1),
        (0, 5, 5, 6, 5),
        (0, 0, 0, 0, 1),
    ]:
        with pytest.raises(IndexError):
            store.read_region(key, frame, y, x, height, width)
    with pytest.raises(IndexError):
        store.read_frame(key, 0, level=1)


def _array(s: ZarrPixelStore, key: str, level: int = 0) -> zarr.Array:
    return s._array(key, level)  # noqa: SLF001


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [
        ((2, 3000, 2000), (1, 512, 512)),  # tiled
        ((3, 512, 512), (1, 512, 512)),  # one chunk per frame
        ((1, 1024, 1024), (1, 1024, 1024)),  # still one chunk: not larger than 1024
        ((1, 1025, 300), (1, 512, 300)),  # tiled, the narrow side in one tile
        ((1, 1100, 1100, 3), (1, 512, 512, 3)),  # colour samples stay together
        ((4, 256, 256, 3), (1, 256, 256, 3)),
    ],
)
def test_chunking(store: ZarrPixelStore, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    key = new_storage_key()
    store.write(key, np.zeros(shape, np.uint8), {})
    assert _array(store, key).chunks == chunks


def test_description_round_trips(store: ZarrPixelStore) -> None:
    description = {
        "photometric_interpretation": "MONOCHROME2",
        "bits_stored": 12,
        "rescale": {"slope": 1.0, "intercept": -1024.0},
        "frames": [1, 2, 3],
        "name": "Ünïcødé ñame",
        "flag": None,
    }
    key = new_storage_key()
    store.write(key, np.zeros((1, 4, 4), np.int16), description)
    assert store.description(key) == description


def test_a_description_that_is_not_json_is_refused(store: ZarrPixelStore) -> None:
    key = new_storage_key()
    for bad in ({"x": object()}, {"x": float("nan")}, {"x": b"bytes"}):
        with pytest.raises(ValueError, match="JSON"):
            store.write(key, np.zeros((1, 4, 4), np.uint8), bad)
    assert not store.exists(key)


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((1, 4, 4), np.float32),
        np.zeros((1, 4, 4), np.int64),
        np.zeros((1, 4, 4), np.bool_),
    ],
    ids=["float32", "int64", "bool"],
)
def test_other_dtypes_are_refused(store: ZarrPixelStore, frames: np.ndarray) -> None:
    with pytest.raises(TypeError):
        store.write(new_storage_key(), frames, {})


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4, 3, 1), (0, 4, 4), (1, 0, 4)])
def test_other_shapes_are_refused(store: ZarrPixelStore, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        store.write(new_storage_key(), np.zeros(shape, np.uint8), {})


def test_big_endian_frames_are_stored_with_their_values(store: ZarrPixelStore) -> None:
    frames = _random((2, 5, 6), "i2")
    key = new_storage_key()
    store.write(key, frames.astype(">i2"), {})
    out = store.read_frame(key, 1)
    assert out.dtype == np.dtype("i2")
    np.testing.assert_array_equal(out, frames[1])


@pytest.mark.parametrize("key", BAD_KEYS)
def test_foreign_keys_are_refused_by_every_method(store: ZarrPixelStore, key: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: store.write(key, np.zeros((1, 2, 2), np.uint8), {}),
        lambda: store.read_frame(key, 0),
        lambda: store.read_region(key, 0, 0, 0, 1, 1),
        lambda: store.description(key),
        lambda: store.shape(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()


def test_exists_and_delete(store: ZarrPixelStore) -> None:
    key, other = new_storage_key(), new_storage_key()
    assert not store.exists(key)
    store.delete(key)  # nothing there: fine
    store.write(key, np.ones((1, 3, 3), np.uint8), {})
    store.write(other, np.ones((1, 3, 3), np.uint8), {})
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)
    for read in (
        lambda: store.read_frame(key, 0),
        lambda: store.description(key),
        lambda: store.shape(key),
    ):
        with pytest.raises(FileNotFoundError):
            read()
    assert store.exists(other)  # the other group is untouched
    np.testing.assert_array_equal(store.read_frame(other, 0), np.ones((3, 3), np.uint8))


def test_rewrite_replaces(store: ZarrPixelStore) -> None:
    key = new_storage_key()
    store.write(key, _random((3, 3000, 1100), "i2"), {"version": 1})
    new = _random((1, 20, 10, 3), "u1")
    store.write(key, new, {"version": 2})
    assert store.shape(key) == (1, 20, 10, 3)
    assert store.description(key) == {"version": 2}
    np.testing.assert_array_equal(store.read_frame(key, 0), new[0])
    assert _array(store, key).chunks == (1, 20, 10, 3)
    with pytest.raises(IndexError):  # the old second frame is gone
        store.read_frame(key, 1)
    if store.local:
        assert _hidden_entries(store) == []  # the old group was removed


def test_a_rewrite_after_reads_reads_the_new_frames(store: ZarrPixelStore) -> None:
    """Local reads keep each group's array layout; a rewrite (same key, another
    shape and dtype) must be seen at once, frames and description."""
    key = new_storage_key()
    old = _random((3, 64, 48), "i2")
    store.write(key, old, {"version": 1})
    np.testing.assert_array_equal(store.read_frame(key, 2), old[2])
    for version, new in enumerate((_random((1, 20, 10, 3), "u1"), _random((2, 64, 48), "u2")), 2):
        store.write(key, new, {"version": version})
        for index in range(new.shape[0]):
            got = store.read_frame(key, index)
            assert got.dtype == new.dtype and got.flags.writeable
            np.testing.assert_array_equal(got, new[index])
        assert store.description(key) == {"version": version}
        with pytest.raises(IndexError):
            store.read_frame(key, new.shape[0])
    store.delete(key)
    with pytest.raises(FileNotFoundError):
        store.read_frame(key, 0)


def test_failed_write_leaves_no_group(
    store: ZarrPixelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = new_storage_key()
    # The array data is written (zarr for object stores, our own files for a
    # local folder), then the write dies.
    real = pixels_module._write_levels  # noqa: SLF001
    real_files = pixels_module._write_array_files  # noqa: SLF001

    def write_then_fail(group: zarr.Group, frames: np.ndarray) -> None:
        real(group, frames)
        raise OSError(28, "No space left on device")

    def write_files_then_fail(*args: Any) -> None:
        real_files(*args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pixels_module, "_write_levels", write_then_fail)
    monkeypatch.setattr(pixels_module, "_write_array_files", write_files_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.write(key, _random((3, 64, 64), "i2"), {})
    monkeypatch.undo()
    assert not store.exists(key)
    with pytest.raises(FileNotFoundError):
        store.read_frame(key, 0)
    if store.local:
        assert not (store.pixels / pixels_module.group_name(key)).exists()
        assert _hidden_entries(store) == []  # the write removed its temporary folder
    # The store still works afterwards.
    frames = _random((1, 8, 8), "u2")
    store.write(key, frames, {})
    np.testing.assert_array_equal(store.read_frame(key, 0), frames[0])


@pytest.mark.parametrize("rewrite", [False, True], ids=["new", "rewrite"])
def test_no_partial_group_is_visible_during_a_write(
    store: ZarrPixelStore, monkeypatch: pytest.MonkeyPatch, rewrite: bool
) -> None:
    key = new_storage_key()
    old = _random((2, 16, 16), "i2")
    if rewrite:
        store.write(key, old, {"version": 1})
    new = _random((3, 32, 32), "i2")
    real = pixels_module._write_levels  # noqa: SLF001
    real_files = pixels_module._write_array_files  # noqa: SLF001
    seen: list[Any] = []

    def look() -> None:
        # Every array of the new group is written, its metadata not yet final.
        seen.append(store.exists(key))
        if store.exists(key):
            seen.append(store.shape(key))
            seen.append(store.read_frame(key, 1))
        else:
            with pytest.raises(FileNotFoundError):
                store.read_frame(key, 0)

    def write_and_look(group: zarr.Group, frames: np.ndarray) -> None:
        real(group, frames)
        look()

    def write_files_and_look(*args: Any) -> None:
        real_files(*args)
        look()

    monkeypatch.setattr(pixels_module, "_write_levels", write_and_look)
    monkeypatch.setattr(pixels_module, "_write_array_files", write_files_and_look)
    store.write(key, new, {"version": 2})
    monkeypatch.undo()
    if rewrite and store.local:
        # The old group stays whole and readable until the rename swaps it.
        assert seen[0] is True and seen[1] == old.shape
        np.testing.assert_array_equal(seen[2], old[1])
    else:
        # Absent meanwhile: new, or (object stores) the old one withdrawn first.
        assert seen == [False]
    assert store.description(key) == {"version": 2}
    np.testing.assert_array_equal(store.read_frame(key, 2), new[2])


def test_pyramid_levels_for_large_frames(store: ZarrPixelStore) -> None:
    frames = _random((2, 2101, 9), "u2")
    key = new_storage_key()
    store.write(key, frames, {})
    # 2101 -> 1051 -> 526: halved until it fits in 1024.
    assert store.shape(key, 1) == (2, 1051, 5)
    assert store.shape(key, 2) == (2, 526, 3)
    with pytest.raises(IndexError):
        store.shape(key, 3)
    # Level 1 is the rounded 2x2 mean, the odd edge averaged with itself.
    level1 = store.read_frame(key, 1, level=1)
    block = frames[1, 2:4, 4:6].astype(np.int64)
    assert level1[1, 2] == (block.sum() + 2) // 4
    edge = frames[1, 2100, 8].astype(np.int64)
    assert level1[1050, 4] == edge
    assert level1.dtype == np.uint16
    np.testing.assert_array_equal(
        store.read_region(key, 0, 10, 1, 5, 2, level=1), store.read_frame(key, 0, 1)[10:15, 1:3]
    )
    # NGFF 0.5 multiscales for napari / ome-zarr-py.
    ome = store._group(key).attrs["ome"]  # noqa: SLF001
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["frame", "y", "x"]
    assert [d["path"] for d in multiscale["datasets"]] == ["0", "1", "2"]
    assert multiscale["datasets"][2]["coordinateTransformations"][0]["scale"] == [1, 4, 4]


def test_small_and_colour_frames_have_no_levels(store: ZarrPixelStore) -> None:
    key, colour = new_storage_key(), new_storage_key()
    store.write(key, np.zeros((1, 2048, 16), np.uint8), {})
    store.write(colour, np.zeros((1, 4, 4, 3), np.uint8), {})
    assert store._group(key).attrs["lightbox"]["levels"] == 1  # noqa: SLF001
    assert len(store._group(key).attrs["ome"]["multiscales"][0]["datasets"]) == 1  # noqa: SLF001
    # NGFF wants channels before y, x; samples-last colour gets no ome metadata.
    assert "ome" not in store._group(colour).attrs  # noqa: SLF001


def test_open_pixel_store(tmp_path: Path) -> None:
    by_url = open_pixel_store(f"file://{tmp_path / 'a'}")
    assert isinstance(by_url, ZarrPixelStore) and by_url.local
    by_path = open_pixel_store(str(tmp_path / "b"))
    assert isinstance(by_path, ZarrPixelStore) and by_path.local
    key = new_storage_key()
    by_url.write(key, np.ones((1, 2, 2), np.uint8), {})
    # Under the same root as the blobs, in pixels/, named after the blob's key.
    assert (tmp_path / "a" / "pixels" / key.replace(".dcm", ".zarr") / "zarr.json").is_file()

    url = f"memory://lightbox-test-{uuid.uuid4().hex}"
    remote = open_pixel_store(url)
    assert isinstance(remote, ZarrPixelStore) and not remote.local
    remote.write(key, np.ones((1, 2, 2), np.uint8), {})
    assert open_pixel_store(url).exists(key)
    remote.delete(key)


# -- the layout ---------------------------------------------------------------------


def test_the_layout_is_a_plain_zarr_v3_group(tmp_path: Path) -> None:
    s = ZarrPixelStore(str(tmp_path))
    key = new_storage_key()
    frames = _random((2, 30, 20), "i2")
    s.write(key, frames, {"modality": "CT"})
    path = tmp_path / "pixels" / key.replace(".dcm", ".zarr")
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    assert group.attrs["lightbox"] == {
        "layout": pixels_module.LAYOUT_VERSION,
        "complete": True,
        "levels": 1,
        "description": {"modality": "CT"},
    }
    array = group["0"]
    assert isinstance(array, zarr.Array)
    np.testing.assert_array_equal(array[:], frames)
    assert array.metadata.dimension_names == ("frame", "y", "x")
    meta = json.loads((path / "0" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["data_type"] == "int16"
    blosc = [c for c in meta["codecs"] if c["name"] == "blosc"]
    assert blosc and blosc[0]["configuration"]["cname"] == "lz4"
    # The date folders are plain folders, not Zarr groups.
    assert not (tmp_path / "pixels" / "zarr.json").exists()
    assert not (path.parent / "zarr.json").exists()


def test_the_memory_layout_is_a_plain_zarr_v3_group() -> None:
    url = f"memory://lightbox-test-{uuid.uuid4().hex}"
    s = ZarrPixelStore(url)
    key = new_storage_key()
    frames = _random((1, 5, 5, 3), "u1")
    s.write(key, frames, {})
    group = zarr.open_group(f"{url}/pixels/{key.replace('.dcm', '.zarr')}", mode="r")
    np.testing.assert_array_equal(group["0"][:], frames)
    s.fs.rm(s._pixels, recursive=True)  # noqa: SLF001


# -- local specifics ------------------------------------------------------------------


def test_crash_mid_write_leaves_a_temporary_that_sweep_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ZarrPixelStore(str(tmp_path))
    keep, key = new_storage_key(), new_storage_key()
    s.write(keep, np.ones((1, 4, 4), np.uint8), {})

    def crash(folder: Path) -> None:
        raise SystemExit("killed")  # the process dies after the data is written

    # A crash runs no clean-up: the removal of the temporary folder is skipped too.
    monkeypatch.setattr(pixels_module, "_fsync_tree", crash)
    monkeypatch.setattr(pixels_module, "_remove_tree", lambda folder: None)
    with pytest.raises(SystemExit):
        s.write(key, _random((2, 64, 64), "i2"), {})
    monkeypatch.undo()

    assert not s.exists(key)
    final = s.pixels / pixels_module.group_name(key)
    assert not final.exists()
    (leftover,) = _hidden_entries(s)
    assert leftover.name.startswith(f".{final.name}.") and leftover.name.endswith(".tmp")
    assert (leftover / "0" / "zarr.json").is_file()  # the array data was there
    assert s.sweep_temporary() == 1
    assert _hidden_entries(s) == []
    assert s.sweep_temporary() == 0
    assert s.exists(keep)  # a real group is not swept


def test_failed_rewrite_keeps_the_old_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ZarrPixelStore(str(tmp_path))
    key = new_storage_key()
    old = _random((2, 8, 8), "u2")
    s.write(key, old, {"version": 1})

    def fail(folder: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pixels_module, "_fsync_tree", fail)
    with pytest.raises(OSError):
        s.write(key, _random((1, 8, 8), "u2"), {"version": 2})
    monkeypatch.undo()
    assert s.description(key) == {"version": 1}
    np.testing.assert_array_equal(s.read_frame(key, 1), old[1])
    assert _hidden_entries(s) == []


def test_files_are_not_world_readable(tmp_path: Path) -> None:
    s = ZarrPixelStore(str(tmp_path))
    key = new_storage_key()
    s.write(key, np.ones((1, 4, 4), np.uint8), {})
    group = s.pixels / pixels_module.group_name(key)
    entries = [group, *group.rglob("*")]
    assert any(p.is_file() for p in entries)
    for path in entries:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o007 == 0, (path, oct(mode))


def test_local_store_url(tmp_path: Path) -> None:
    s = ZarrPixelStore(f"file://{tmp_path}")
    assert s.url == f"file://{tmp_path.resolve()}"
    assert s.pixels == tmp_path.resolve() / "pixels"


def test_luts_round_trip(store: ZarrPixelStore) -> None:
    key = new_storage_key()
    red = np.arange(65536, dtype=np.uint16)
    store.write(key, np.zeros((1, 4, 4), np.uint16), {"palette": {"luts": {"red": "palette_red"}}},
                luts={"palette_red": red})  # fmt: skip
    assert np.array_equal(store.read_lut(key, "palette_red"), red)
    assert len(json.dumps(store.description(key))) < 200  # the table is not in the metadata
    with pytest.raises(FileNotFoundError):
        store.read_lut(key, "palette_blue")
    with pytest.raises(ValueError):
        store.write(key, np.zeros((1, 4, 4), np.uint16), {}, luts={"../x": red})


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((2, 40, 30), "u1"), ((1, 64, 64, 3), "u1"), ((3, 50, 70), "i2"), ((1, 1300, 700), "u2"), ((1, 2100, 90), "i4")],
)
def test_local_files_are_what_zarr_writes(tmp_path: Path, shape: tuple[int, ...], dtype: str) -> None:
    """The local store writes Zarr v3 files itself: the same metadata and values as zarr-python."""
    frames = _random(shape, dtype)
    local = ZarrPixelStore(str(tmp_path / "local"))
    remote = ZarrPixelStore(f"memory://lightbox-same-{uuid.uuid4().hex}")
    key = new_storage_key()
    luts = {"palette_red": np.arange(300, dtype=np.uint16)}
    for store in (local, remote):
        store.write(key, frames, {"d": 1}, luts=luts)
    mine, theirs = local._group(key), remote._group(key)  # noqa: SLF001
    assert dict(mine.attrs) == dict(theirs.attrs)
    levels = mine.attrs["lightbox"]["levels"]
    for level in range(levels):
        assert mine[str(level)].metadata.to_dict() == theirs[str(level)].metadata.to_dict()
        np.testing.assert_array_equal(mine[str(level)][...], theirs[str(level)][...])
    assert mine["luts"]["palette_red"].metadata.to_dict() == theirs["luts"]["palette_red"].metadata.to_dict()
    np.testing.assert_array_equal(local.read_lut(key, "palette_red"), luts["palette_red"])
