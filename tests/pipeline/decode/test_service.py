"""The decode service and dispatcher over real stores: queue -> Zarr -> pixel state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pipeline.decode.actors import DecodeDispatcher
from pipeline.decode.service import MAX_ATTEMPTS, STAGE, DecodeService
from pipeline.index.records import Provenance
from pipeline.index.schema import PixelState
from pipeline.runtime import Runtime
from tests.corpus import SERIES
from tests.pipeline.decode.test_codestream import jpeg_bomb


@pytest.fixture
def service(runtime: Runtime) -> DecodeService:
    return DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs)


def store(runtime: Runtime, *paths: Path) -> None:
    for path in paths:
        runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))


def test_queue_to_zarr_to_ready(runtime: Runtime, service: DecodeService, dicom_data: Path) -> None:
    files = sorted((dicom_data / SERIES["ct"]).iterdir())[:6]
    store(runtime, *files)
    outcomes = service.run_once(limit=100)
    assert [o.state for o in outcomes] == [PixelState.READY] * 6
    counts = runtime.index.counts()
    assert counts.pixel_states == {"ready": 6}
    assert counts.work[STAGE] == {"done": 6}
    for path in files:
        ds = pydicom.dcmread(path)
        row = runtime.index.get_instance(ds.SOPInstanceUID)
        assert row is not None and row.pixel_state is PixelState.READY
        frame = service.pixels.read_frame(row.storage_key, 0)
        assert np.array_equal(frame, ds.pixel_array)
    assert service.run_once() == []  # nothing left


def test_undecodable_instance_is_failed_with_reason_and_stays_stored(
    runtime: Runtime, service: DecodeService, dicom_data: Path, tmp_path: Path
) -> None:
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(jpeg_bomb(dicom_data))
    good = sorted((dicom_data / SERIES["mr"]).iterdir())[0]
    store(runtime, bomb, good)
    outcomes = {o.state for o in service.run_once(limit=10)}
    assert outcomes == {PixelState.READY, PixelState.FAILED}
    failures = runtime.index.pixel_failures()
    assert len(failures) == 1 and failures[0][1]
    uid = failures[0][0]
    row = runtime.index.get_instance(uid)
    assert row is not None and row.pixel_state is PixelState.FAILED and row.pixel_error
    assert runtime.blobs.get(row.storage_key) == bomb.read_bytes()  # still retrievable
    assert not service.pixels.exists(row.storage_key)
    # redecode queues it again; it fails again, for the same reason.
    assert runtime.index.requeue_pixels(STAGE, (PixelState.FAILED,)) == 1
    assert runtime.index.get_instance(uid).pixel_state is PixelState.PENDING  # type: ignore[union-attr]
    assert [o.state for o in service.run_once()] == [PixelState.FAILED]


def test_storage_errors_are_retried_then_given_up(
    runtime: Runtime, service: DecodeService, dicom_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store(runtime, sorted((dicom_data / SERIES["mr"]).iterdir())[0])

    def broken(*args: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(service.pixels, "write", broken)
    for attempt in range(1, MAX_ATTEMPTS):
        (item,) = runtime.index.claim_work(STAGE, 1, lease_seconds=0)
        assert item.attempts == attempt
        with pytest.raises(OSError):
            service.decode(item)
    (item,) = runtime.index.claim_work(STAGE, 1, lease_seconds=0)
    outcome = service.decode(item)
    assert outcome.state is PixelState.FAILED and "OSError" in (outcome.reason or "")


def test_dispatcher_bounds_in_flight_work(runtime: Runtime, service: DecodeService, dicom_data: Path) -> None:
    store(runtime, *sorted((dicom_data / SERIES["mr"]).iterdir())[:7])
    seen_in_flight: list[int] = []

    def wait(handles: list, num_returns: int, timeout: float) -> tuple[list, list]:
        seen_in_flight.append(len(handles))
        return handles[:num_returns], handles[num_returns:]

    dispatcher = DecodeDispatcher(
        runtime.index, service.decode, wait, lambda outcome: outcome, max_in_flight=3
    )
    in_flight: list = []
    for _ in range(20):
        in_flight = dispatcher.step(in_flight)
    assert dispatcher.decoded == 7 and dispatcher.failed == 0
    assert max(seen_in_flight) == 3
    assert runtime.index.counts().pixel_states == {"ready": 7}
