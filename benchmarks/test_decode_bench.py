"""Micro-benchmarks of the decode stage without the network or Ray.

* ``decode``: :func:`pipeline.decode.pixels.decode_instance` (what a decode
  actor does with a stored blob: parse the Part-10 bytes, decode every frame)
  of the 300-slice 512x512 int16 CT of :mod:`benchmarks.datasets` in three
  transfer syntaxes, one slice per round over the whole series, and of the
  4664x3064 JPEG 2000 (lossy) mammogram in ``/work/shared/data``.
* ``decode service``: :meth:`DecodeService.decode` of one claimed work item
  (what one call to a decode actor costs: blob read, decode, Zarr write of a
  one-frame group, index update), on 60 CT slices stored by ``IngestService``
  into a temporary data folder (SQLite index, local blobs).
* ``zarr write``: :meth:`ZarrPixelStore.write` of the decoded CT volume
  (300x512x512 int16, one chunk per frame), of one slice (the per-instance
  write of the decode stage) and of the mammogram (512x512
  tiles and three downsampled levels), on a local temporary folder: Blosc
  LZ4, every file fsynced, the group renamed into place.
* ``zarr read``: :meth:`ZarrPixelStore.read_frame` of one CT slice and
  :meth:`ZarrPixelStore.read_region` of one 512x512 tile of the mammogram's
  level 0 (aligned on the chunk grid: one chunk; and half a tile off: four
  chunks), after the data was decoded and stored once.

The compressed variants of the CT are made once per session:

* JPEG 2000 Lossless (1.2.840.10008.1.2.4.90): pydicom's own encoder,
  ``Dataset.compress(..., encoding_plugin="pylibjpeg")`` (pylibjpeg-openjpeg);
* JPEG Lossless SV1 (1.2.840.10008.1.2.4.70): pydicom 3.0 has *no* encoder
  for any JPEG process (``get_encoder`` raises ``NotImplementedError``; it
  encodes only RLE, JPEG-LS, JPEG 2000 and Deflated), so GDCM's
  ``gdcm.ImageChangeTransferSyntax`` (python-gdcm) writes it, through a
  temporary file.

Every variant is checked to decode to exactly the generated stored values.

Each benchmark puts ``frames_per_s`` and ``mb_per_s`` (decoded bytes: what
lands in the array, 512x512x2 bytes for a CT slice) in ``extra_info`` (in
``--benchmark-json``), computed from the mean round, and the session ends
with a table of them (see ``conftest.py``).

    pytest benchmarks/test_decode_bench.py -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread, uid

from benchmarks.conftest import report_throughput
from benchmarks.datasets import ct_dataset, ct_pixels, to_jpeg_lossless_sv1
from pipeline.decode.pixels import decode_instance
from pipeline.decode.service import STAGE, DecodeService
from pipeline.index.records import Provenance
from pipeline.index.schema import PixelState
from pipeline.ingest.part10 import split_part10
from pipeline.runtime import Runtime
from pipeline.storage.blobs import new_storage_key
from pipeline.storage.pixels import TILE, ZarrPixelStore, open_pixel_store

SLICES = int(os.environ.get("LIGHTBOX_BENCH_SLICES", "300"))
MAMMOGRAM = Path(
    os.environ.get("LIGHTBOX_BENCH_MAMMOGRAM", "/work/shared/data/dicom/mg/MG1_J2KI")
)
#: Generous: the decode stage's own default is 4 GiB.
MAX_DECODED = 4 * 1024**3


@dataclass(frozen=True)
class Series:
    """The CT series in one transfer syntax, as stored blobs (Part-10 bytes)."""

    name: str
    transfer_syntax_uid: str
    encoder: str
    files: tuple[bytes, ...]

    @property
    def stored_bytes(self) -> int:
        return sum(len(f) for f in self.files)


def _part10(ds: Any) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _gdcm_jpeg_lossless_sv1(native: bytes, scratch: Path) -> bytes:
    """Re-encode a native Part-10 file as JPEG Lossless SV1 with GDCM (through files)."""
    src, dst = scratch / "in.dcm", scratch / "out.dcm"
    src.write_bytes(native)
    to_jpeg_lossless_sv1(src, dst)
    return dst.read_bytes()


@pytest.fixture(scope="session")
def ct_stored() -> np.ndarray:
    """The generated stored values, (SLICES, 512, 512) int16."""
    return np.stack(
        [np.frombuffer(p, "<i2").reshape(512, 512) for p in ct_pixels(0, SLICES)]
    ).astype(np.int16)


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Series]:
    """The CT in every benchmarked syntax (about 20-30 s of encoding on one core)."""
    pixels = ct_pixels(0, SLICES)
    scratch = tmp_path_factory.mktemp("gdcm")
    native, sv1, j2k = [], [], []
    for i in range(SLICES):
        raw = _part10(ct_dataset(i, SLICES, pixels[i]))
        native.append(raw)
        sv1.append(_gdcm_jpeg_lossless_sv1(raw, scratch))
        ds = ct_dataset(i, SLICES, pixels[i])
        ds.compress(uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
        j2k.append(_part10(ds))
    series = [
        Series("explicit-le", uid.ExplicitVRLittleEndian, "pydicom (native)", tuple(native)),
        Series("jpeg-lossless-sv1", uid.JPEGLosslessSV1, "GDCM (no pydicom encoder)", tuple(sv1)),
        Series("j2k-lossless", uid.JPEG2000Lossless, "pydicom + pylibjpeg-openjpeg", tuple(j2k)),
    ]
    for s in series:
        got = dcmread(BytesIO(s.files[0])).file_meta.TransferSyntaxUID
        assert got == s.transfer_syntax_uid, (s.name, got)
    return {s.name: s for s in series}


@pytest.fixture(scope="session")
def mammogram() -> bytes:
    if not MAMMOGRAM.is_file():
        pytest.skip(f"no mammogram at {MAMMOGRAM} (LIGHTBOX_BENCH_MAMMOGRAM)")
    return MAMMOGRAM.read_bytes()


@pytest.fixture(scope="session")
def mammogram_decoded(mammogram: bytes) -> Any:
    return decode_instance(mammogram, MAX_DECODED)


@pytest.fixture(scope="session")
def pixel_store(tmp_path_factory: pytest.TempPathFactory) -> ZarrPixelStore:
    """A local pixel store (the folder's file system: see ``df`` for what it is)."""
    return ZarrPixelStore(str(tmp_path_factory.mktemp("pixels")))


def _cycle(items: tuple[Any, ...] | list[Any]) -> Callable[[], tuple[tuple[Any, ...], dict]]:
    """A pedantic ``setup`` handing out the items in turn, one per round."""
    it = itertools.cycle(items)
    return lambda: ((next(it),), {})


# -- decode -----------------------------------------------------------------------


@pytest.mark.parametrize("syntax", ["explicit-le", "jpeg-lossless-sv1", "j2k-lossless"])
def test_decode_ct(benchmark, ct_series: dict[str, Series], ct_stored: np.ndarray, syntax: str) -> None:  # type: ignore[no-untyped-def]
    """decode_instance of one stored CT slice per round, over the whole series."""
    series = ct_series[syntax]
    benchmark.group = "decode CT 512x512 int16, 1 slice/round"
    benchmark.extra_info.update(
        transfer_syntax=series.transfer_syntax_uid,
        encoder=series.encoder,
        slices=len(series.files),
        stored_mb=round(series.stored_bytes / 1e6, 2),
        ratio=round(ct_stored.nbytes / series.stored_bytes, 2),
    )
    out = benchmark.pedantic(
        lambda data: decode_instance(data, MAX_DECODED),
        setup=_cycle(series.files),
        rounds=len(series.files),
        warmup_rounds=3,
    )
    assert out.frames.shape == (1, 512, 512) and out.frames.dtype == np.int16
    for i in (0, len(series.files) // 2, len(series.files) - 1):
        got = decode_instance(series.files[i], MAX_DECODED).frames[0]
        assert np.array_equal(got, ct_stored[i]), f"{syntax} slice {i} is not lossless"
    report_throughput(benchmark, f"decode CT {syntax}", frames=1, decoded_bytes=512 * 512 * 2)


def test_decode_mammogram(benchmark, mammogram: bytes) -> None:  # type: ignore[no-untyped-def]
    """decode_instance of the 4664x3064 JPEG 2000 (lossy) mammogram."""
    benchmark.group = "decode mammogram 4664x3064 J2K lossy"
    out = benchmark.pedantic(
        decode_instance, args=(mammogram, MAX_DECODED), rounds=5, warmup_rounds=1
    )
    benchmark.extra_info.update(
        transfer_syntax=out.description.get("transfer_syntax_uid", uid.JPEG2000),
        shape=list(out.frames.shape),
        stored_mb=round(len(mammogram) / 1e6, 2),
    )
    report_throughput(benchmark, "decode mammogram J2K", frames=1, decoded_bytes=out.frames.nbytes)


# -- the decode service: what one decode actor call costs ---------------------------

SERVICE_SLICES = 60


@pytest.mark.parametrize("syntax", ["explicit-le", "jpeg-lossless-sv1", "j2k-lossless"])
def test_decode_service_ct(benchmark, runtime: Runtime, ct_series: dict[str, Series], syntax: str) -> None:  # type: ignore[no-untyped-def]
    """DecodeService.decode of one claimed work item: blob get, decode, Zarr write
    (a one-frame group, fsynced, renamed), index update; one instance per round."""
    series = ct_series[syntax]
    benchmark.group = "decode service (1 CT instance: blob -> Zarr -> index)"
    provenance = Provenance("dimse", calling_ae="BENCH")
    for data in series.files[:SERVICE_SLICES]:
        part = split_part10(data)
        runtime.ingest.store_dataset(bytes(part.dataset), part.transfer_syntax_uid, provenance)
    items = runtime.index.claim_work(STAGE, SERVICE_SLICES, 600)
    assert len(items) == min(SERVICE_SLICES, len(series.files))
    service = DecodeService(
        runtime.index, runtime.blobs, open_pixel_store(runtime.settings.resolved_storage_url),
        MAX_DECODED,
    )  # fmt: skip
    outcomes = []
    benchmark.pedantic(
        lambda item: outcomes.append(service.decode(item)),
        setup=_cycle(items),
        rounds=len(items),
        warmup_rounds=0,
    )
    # (--benchmark-disable runs one round only.)
    assert outcomes and all(o.state is PixelState.READY for o in outcomes), outcomes[:3]
    assert runtime.index.counts().pixel_states.get("ready") == len(outcomes)
    benchmark.extra_info.update(transfer_syntax=series.transfer_syntax_uid)
    report_throughput(
        benchmark, f"decode service CT {syntax}", frames=1, decoded_bytes=512 * 512 * 2
    )


# -- Zarr pixel store ---------------------------------------------------------------


def _write_rounds(store: ZarrPixelStore, frames: np.ndarray, description: dict) -> Callable:
    """A setup that removes the previous round's group (untimed) and hands out a new key."""
    written: list[str] = []

    def setup() -> tuple[tuple[Any, ...], dict]:
        while written:
            store.delete(written.pop())
        key = new_storage_key()
        written.append(key)
        return (key, frames, description), {}

    return setup


def test_zarr_write_ct_volume(benchmark, pixel_store: ZarrPixelStore, ct_stored: np.ndarray, ct_series: dict[str, Series]) -> None:  # type: ignore[no-untyped-def]
    """ZarrPixelStore.write of the decoded 300x512x512 int16 volume (one group)."""
    benchmark.group = "zarr write"
    description = decode_instance(ct_series["explicit-le"].files[0], MAX_DECODED).description
    benchmark.pedantic(
        pixel_store.write,
        setup=_write_rounds(pixel_store, ct_stored, description),
        rounds=3,
        warmup_rounds=1,
    )
    benchmark.extra_info["shape"] = list(ct_stored.shape)
    report_throughput(
        benchmark, "zarr write CT volume", frames=ct_stored.shape[0], decoded_bytes=ct_stored.nbytes
    )


def test_zarr_write_ct_slice(benchmark, pixel_store: ZarrPixelStore, ct_stored: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """ZarrPixelStore.write of one 512x512 slice: the per-instance write of the decode stage."""
    benchmark.group = "zarr write"
    frames = ct_stored[:1]
    benchmark.pedantic(
        pixel_store.write,
        setup=_write_rounds(pixel_store, frames, {"bench": "ct slice"}),
        rounds=60,
        warmup_rounds=3,
    )
    report_throughput(benchmark, "zarr write CT slice", frames=1, decoded_bytes=frames.nbytes)


def test_zarr_write_mammogram(benchmark, pixel_store: ZarrPixelStore, mammogram_decoded: Any) -> None:  # type: ignore[no-untyped-def]
    """ZarrPixelStore.write of the decoded mammogram: 512x512 tiles plus 3 levels."""
    benchmark.group = "zarr write"
    frames = mammogram_decoded.frames
    benchmark.pedantic(
        pixel_store.write,
        setup=_write_rounds(pixel_store, frames, mammogram_decoded.description),
        rounds=3,
        warmup_rounds=1,
    )
    benchmark.extra_info["shape"] = list(frames.shape)
    report_throughput(benchmark, "zarr write mammogram", frames=1, decoded_bytes=frames.nbytes)


@pytest.fixture(scope="session")
def stored_ct(pixel_store: ZarrPixelStore, ct_stored: np.ndarray) -> str:
    key = new_storage_key()
    pixel_store.write(key, ct_stored, {"bench": "ct"})
    return key


@pytest.fixture(scope="session")
def stored_mammogram(pixel_store: ZarrPixelStore, mammogram_decoded: Any) -> str:
    key = new_storage_key()
    pixel_store.write(key, mammogram_decoded.frames, mammogram_decoded.description)
    return key


def test_zarr_read_frame_ct(benchmark, pixel_store: ZarrPixelStore, stored_ct: str, ct_stored: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """read_frame of one CT slice (opens the group, reads one chunk), slices in turn."""
    benchmark.group = "zarr read"
    indexes = list(range(0, ct_stored.shape[0], max(1, ct_stored.shape[0] // 100)))
    benchmark.pedantic(
        lambda i: pixel_store.read_frame(stored_ct, i),
        setup=_cycle(indexes),
        rounds=len(indexes),
        warmup_rounds=3,
    )
    for i in (0, indexes[len(indexes) // 2]):
        assert np.array_equal(pixel_store.read_frame(stored_ct, i), ct_stored[i])
    report_throughput(benchmark, "zarr read_frame CT", frames=1, decoded_bytes=512 * 512 * 2)


@pytest.mark.parametrize("offset", [0, TILE // 2], ids=["aligned", "straddling"])
def test_zarr_read_tile_mammogram(benchmark, pixel_store: ZarrPixelStore, stored_mammogram: str, mammogram_decoded: Any, offset: int) -> None:  # type: ignore[no-untyped-def]
    """read_region of a 512x512 tile of level 0: on the chunk grid (1 chunk) or half off (4)."""
    benchmark.group = "zarr read"
    y, x = 4 * TILE + offset, 2 * TILE + offset  # inside the breast, not the background
    tile = benchmark.pedantic(
        pixel_store.read_region,
        args=(stored_mammogram, 0, y, x, TILE, TILE),
        rounds=100,
        warmup_rounds=3,
    )
    assert np.array_equal(tile, mammogram_decoded.frames[0, y : y + TILE, x : x + TILE])
    report_throughput(
        benchmark, f"zarr read_region mammogram {'aligned' if offset == 0 else 'straddling'}",
        frames=1, decoded_bytes=TILE * TILE * mammogram_decoded.frames.itemsize,
    )  # fmt: skip
