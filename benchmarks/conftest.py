"""Fixtures of the micro-benchmarks: a runtime on a temporary data folder and
datasets as a C-STORE delivers them (the bytes after the File Meta Information).

Run with ``pytest benchmarks/ -p no:cacheprovider --benchmark-only``; the
test suite (``tests/``) never collects this folder (``testpaths``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from benchmarks.datasets import ct_dataset, ct_pixels, small_dataset, small_pixels
from pipeline.config import Settings
from pipeline.ingest.part10 import split_part10
from pipeline.runtime import Runtime, open_runtime

#: Fixed-width SOP Instance UIDs: the template's UID is swapped for a fresh one
#: of the same length, so every round stores a new instance.
_UID_ROOT = "1.2.826.0.1.3680043.8.498.99.1."
_uid_counter = itertools.count(10**11)


def fresh_uid() -> str:
    return f"{_UID_ROOT}{next(_uid_counter)}"


@dataclass(frozen=True)
class Template:
    """One dataset's bytes and a way to make copies with a new SOP Instance UID."""

    name: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str
    data: bytes

    def fresh(self) -> tuple[str, bytes]:
        uid = fresh_uid()
        assert len(uid) == len(self.sop_instance_uid)
        copy = self.data.replace(self.sop_instance_uid.encode(), uid.encode())
        assert copy != self.data
        return uid, copy


def _template(name: str, ds: Dataset) -> Template:
    uid = fresh_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    part = split_part10(buffer.getvalue())
    return Template(name, ds.SOPClassUID, part.transfer_syntax_uid, uid, bytes(part.dataset))


@pytest.fixture(scope="session")
def ct_slice() -> Template:
    """One 512x512 int16 CT slice (525 kB), explicit VR little endian."""
    return _template("ct", ct_dataset(1, 3, ct_pixels(0, 3)[1]))


@pytest.fixture(scope="session")
def small_image() -> Template:
    """One 64x64 uint16 MR image (9.5 kB), explicit VR little endian."""
    return _template("small", small_dataset(0, 1, 1, small_pixels(0, 1)[0]))


@pytest.fixture(params=["ct", "small"])
def template(request: pytest.FixtureRequest) -> Template:
    return request.getfixturevalue({"ct": "ct_slice", "small": "small_image"}[request.param])


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    rt = open_runtime(Settings(data_dir=tmp_path / "data"), run_migrations=True)
    yield rt
    rt.close()


@pytest.fixture
def rounds() -> Callable[[Template], int]:
    """Rounds per benchmark: fewer for the big dataset (each one fsyncs a file)."""
    return lambda t: 60 if t.name == "ct" else 200


# -- throughput figures (decode benchmarks) ---------------------------------------

#: (label, frames/s, MB/s, mean s, median s, rounds) of each benchmark that
#: called :func:`report_throughput`, printed at the end of the session.
THROUGHPUT: list[tuple[str, float, float, float, float, int]] = []


def report_throughput(benchmark, label: str, *, frames: int, decoded_bytes: int) -> None:  # type: ignore[no-untyped-def]
    """Put frames/s and MB/s (decoded bytes, 1 MB = 10^6 bytes) of one round in ``extra_info``.

    Computed from the mean round time (throughput over every round, slow ones
    included); ``*_median`` from the median round. ``frames`` and
    ``decoded_bytes`` are what one round produces. Nothing is recorded when
    benchmarking is disabled (``--benchmark-disable``: one plain call).
    """
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is None or not stats.mean:
        return
    info = benchmark.extra_info
    info["frames_per_round"] = frames
    info["decoded_bytes_per_round"] = decoded_bytes
    info["frames_per_s"] = round(frames / stats.mean, 2)
    info["mb_per_s"] = round(decoded_bytes / 1e6 / stats.mean, 2)
    info["frames_per_s_median"] = round(frames / stats.median, 2)
    info["mb_per_s_median"] = round(decoded_bytes / 1e6 / stats.median, 2)
    THROUGHPUT.append(
        (label, info["frames_per_s"], info["mb_per_s"], stats.mean, stats.median, stats.rounds)
    )


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not THROUGHPUT:
        return
    tr = terminalreporter
    tr.section("throughput (from the mean round; decoded bytes, 1 MB = 10^6 B)")
    tr.write_line(
        f"{'benchmark':<44} {'frames/s':>10} {'MB/s':>9} {'mean ms':>10} {'median ms':>10} "
        f"{'rounds':>6}"
    )
    for label, fps, mbps, mean, median, rounds in THROUGHPUT:
        tr.write_line(
            f"{label:<44} {fps:>10.1f} {mbps:>9.1f} {mean * 1e3:>10.3f} {median * 1e3:>10.3f} "
            f"{rounds:>6}"
        )
