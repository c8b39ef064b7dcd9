"""The whole decode stage over the corpus: import, decode, read back from Zarr.

Every image outside edge_cases/ is imported into one archive and decoded by
:class:`DecodeService`; each Zarr array must equal what pydicom decodes with
the same backend, frame by frame. The edge cases join the same archive: each
ends ready (and equal) or failed with its reason, and the others are untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.config import get_settings
from pipeline.decode.service import DecodeService
from pipeline.errors import LightboxError
from pipeline.index.records import Provenance
from pipeline.index.schema import PixelState
from pipeline.runtime import Runtime, open_runtime
from tests.conftest import free_port
from tests.pipeline.decode.test_pixels import EDGE_CASES, IMAGES, assert_equal_frames, reference


@dataclass
class Archive:
    runtime: Runtime
    service: DecodeService
    #: corpus path (relative) -> SOP Instance UID, for the files that were stored
    stored: dict[str, str]
    #: SOP Instance UID -> the corpus file whose bytes the archive kept
    kept: dict[str, str]


@pytest.fixture(scope="module")
def archive(dicom_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    settings = get_settings(
        data_dir=tmp_path_factory.mktemp("roundtrip"), dicom_port=free_port(), http_port=free_port()
    )
    runtime = open_runtime(settings, run_migrations=True)
    service = DecodeService.from_settings(settings, runtime.index, runtime.blobs)
    stored: dict[str, str] = {}
    kept: dict[str, str] = {}
    rels = [*IMAGES, *(f"edge_cases/{name}" for name in sorted(EDGE_CASES))]
    for rel in rels:
        try:
            result = runtime.ingest.store_part10((dicom_data / rel).read_bytes(), Provenance("import"))
        except LightboxError:
            continue  # refused at ingest (no Study UID, truncated...): nothing to decode
        stored[rel] = result.sop_instance_uid
        kept.setdefault(result.sop_instance_uid, rel)  # "keep": the first copy stays
    while service.run_once(limit=32):
        pass
    yield Archive(runtime, service, stored, kept)
    runtime.close()


@pytest.mark.parametrize("rel", IMAGES)
def test_zarr_equals_pydicom(archive: Archive, dicom_data: Path, rel: str) -> None:
    if rel not in archive.stored:
        # Only a file without Study Instance UID is refused at ingest.
        assert rel.endswith("HTJ2KLossless_08_RGB.dcm")
        return
    uid = archive.stored[rel]
    row = archive.runtime.index.get_instance(uid)
    assert row is not None and row.pixel_state is PixelState.READY, row
    source = dicom_data / archive.kept[uid]
    got = np.stack(
        [
            archive.service.pixels.read_frame(row.storage_key, i)
            for i in range(archive.service.pixels.shape(row.storage_key)[0])
        ]
    )
    assert_equal_frames(got, reference(source))
    description = archive.service.pixels.description(row.storage_key)
    ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
    assert description["rows"] == ds.Rows and description["columns"] == ds.Columns


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_case_ready_or_failed_with_reason(archive: Archive, dicom_data: Path, name: str) -> None:
    rel = f"edge_cases/{name}"
    if rel not in archive.stored:
        return  # refused at ingest: tests/pipeline/ingest covers the reason
    row = archive.runtime.index.get_instance(archive.stored[rel])
    assert row is not None
    if archive.kept[row.sop_instance_uid] != rel:
        return  # the same instance as a file stored before it
    if row.pixel_state is PixelState.READY:
        assert EDGE_CASES[name] is None
        frames = np.stack(
            [
                archive.service.pixels.read_frame(row.storage_key, i)
                for i in range(archive.service.pixels.shape(row.storage_key)[0])
            ]
        )
        assert_equal_frames(frames, reference(dicom_data / rel))
    else:
        assert row.pixel_state in (PixelState.FAILED, PixelState.NONE)
        if row.pixel_state is PixelState.FAILED:
            assert EDGE_CASES[name] is not None and EDGE_CASES[name] in (row.pixel_error or "")
            # The original stays stored and retrievable, byte for byte.
            assert archive.runtime.blobs.get(row.storage_key) == (dicom_data / rel).read_bytes()
            assert not archive.service.pixels.exists(row.storage_key)


def test_nothing_else_is_affected(archive: Archive) -> None:
    counts = archive.runtime.index.counts()
    failed = dict(archive.runtime.index.pixel_failures())
    failed_files = {rel for rel, uid in archive.stored.items() if uid in failed}
    # Only edge cases may fail (since ingest refuses the 8 GiB declaration, none does).
    assert all(rel.startswith("edge_cases/") for rel in failed_files), failed_files
    assert counts.work["decode"].get("pending", 0) == 0
    assert counts.pixel_states.get("pending", 0) == 0
