"""A decode killed with SIGKILL in the middle of writing its Zarr group.

The decoding process writes the whole group into a temporary folder; it is
killed just before the rename that would make the group visible. Nothing
partial may be visible afterwards, and the work resumes: a restart sweeps the
temporary folder, releases the dead process's claim, and decodes again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom

from pipeline.config import Settings
from pipeline.decode.service import STAGE, DecodeService
from pipeline.index.records import Provenance
from pipeline.index.schema import PixelState
from pipeline.runtime import open_runtime
from pipeline.storage.pixels import open_pixel_store

DECODE_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from pipeline.config import Settings
    from pipeline.decode.service import DecodeService
    from pipeline.runtime import open_runtime
    from pipeline.storage import pixels

    fsync_tree = pixels._fsync_tree

    def then_hang(folder):
        fsync_tree(folder)  # the group is complete in its temporary folder...
        print("WRITTEN", flush=True)
        time.sleep(600)  # ...and the process dies before renaming it into place

    pixels._fsync_tree = then_hang
    settings = Settings(data_dir=sys.argv[1])
    runtime = open_runtime(settings)
    service = DecodeService(runtime.index, runtime.blobs,
                            pixels.open_pixel_store(settings.resolved_storage_url),
                            settings.max_decoded_bytes)
    service.run_once(limit=1)
    """
)


def test_sigkill_mid_write_leaves_nothing_partial_and_work_resumes(tmp_path: Path, dicom_data: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir)
    source = dicom_data / "mg" / "MG1_J2KI"
    runtime = open_runtime(settings, run_migrations=True)
    result = runtime.ingest.store_part10(source.read_bytes(), Provenance("import"))
    runtime.close()

    child = subprocess.Popen(
        [sys.executable, "-c", DECODE_AND_HANG, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "WRITTEN"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)

    runtime = open_runtime(settings)
    pixels = open_pixel_store(settings.resolved_storage_url)
    try:
        row = runtime.index.get_instance(result.sop_instance_uid)
        assert row is not None and row.pixel_state is PixelState.PENDING
        assert not pixels.exists(row.storage_key)  # nothing partial is visible
        assert list((data_dir / "blobs" / "pixels").rglob("*.tmp"))  # the dead write's folder
        assert runtime.index.counts().work[STAGE] == {"claimed": 1}

        # What `lightbox serve` does when it starts again.
        assert pixels.sweep_temporary() == 1
        assert runtime.index.release_claims() == 1
        service = DecodeService(runtime.index, runtime.blobs, pixels, settings.max_decoded_bytes)
        (outcome,) = service.run_once()
        assert outcome.state is PixelState.READY
        frame = pixels.read_frame(row.storage_key, 0)
        assert np.array_equal(frame, pydicom.dcmread(source).pixel_array)
        assert not list((data_dir / "blobs" / "pixels").rglob("*.tmp"))
    finally:
        runtime.close()
