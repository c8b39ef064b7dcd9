"""``lightbox import``: folders, files and zip archives, through the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom

from pipeline.config import Settings
from pipeline.ingest.importer import import_sources, iter_sources
from pipeline.runtime import Runtime, open_runtime
from tests.corpus import SERIES, single_files


def lightbox(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIGHTBOX_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_import_folder_zip_and_bad_files(tmp_path: Path, dicom_data: Path) -> None:
    data_dir = tmp_path / "data"
    archive = tmp_path / "mr.zip"
    mr_files = sorted((dicom_data / SERIES["mr"]).iterdir())
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in mr_files:
            zf.write(path, f"MR/{path.name}")
        zf.writestr("DICOMDIR", b"skipped: a media directory, not an instance")
    result = lightbox(
        "import",
        str(dicom_data / SERIES["ct"]),
        str(archive),
        str(dicom_data / "edge_cases" / "MR_truncated.dcm"),
        str(tmp_path / "absent"),
        data_dir=data_dir,
    )
    assert result.returncode == 1, result.stderr
    assert "imported 89 instances" in result.stdout
    assert "2 failed" in result.stdout
    assert "MR_truncated.dcm: Pixel Data is truncated" in result.stdout
    assert "absent: no such file or folder" in result.stdout
    assert "100%" in result.stderr  # the progress bar ran to the end

    runtime = open_runtime(Settings(data_dir=data_dir))
    try:
        for path in [*sorted((dicom_data / SERIES["ct"]).iterdir()), *mr_files]:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            row = runtime.index.get_instance(ds.SOPInstanceUID)
            assert row is not None and row.source == "import"
            # A Part-10 file is kept exactly as it was, File Meta included.
            assert runtime.blobs.get(row.storage_key) == path.read_bytes()
    finally:
        runtime.close()

    status = lightbox("status", "--json", data_dir=data_dir)
    counts = json.loads(status.stdout)
    assert counts["instances"] == 89 and counts["studies"] == 2
    assert counts["work"]["decode"] == {"pending": 89}

    again = lightbox("import", "-q", str(dicom_data / SERIES["ct"]), data_dir=data_dir)
    assert again.returncode == 0
    assert "54 identical" in again.stdout


def test_import_every_single_file(runtime: Runtime, dicom_data: Path) -> None:
    files = single_files(dicom_data)
    summary = import_sources(runtime.ingest, list(iter_sources(files, 10**9)))
    assert [name for name, _ in summary.failures] == [
        str(p) for p in files if p.name == "HTJ2KLossless_08_RGB.dcm"
    ]
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "StudyInstanceUID" in ds:
            assert runtime.index.get_instance(ds.SOPInstanceUID) is not None


def test_files_without_meta_get_one(runtime: Runtime, dicom_data: Path) -> None:
    path = dicom_data / "edge_cases" / "PrivateMDNTags.dcm"
    summary = import_sources(runtime.ingest, list(iter_sources([path], 10**9)))
    assert summary.stored == 1
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    row = runtime.index.get_instance(ds.SOPInstanceUID)
    assert row is not None and row.transfer_syntax_uid == "1.2.840.10008.1.2"
    stored = runtime.blobs.get(row.storage_key)
    # Our File Meta Information, then the file's own bytes unchanged.
    assert stored[128:132] == b"DICM" and stored.endswith(path.read_bytes())


def test_zip_member_inflating_past_the_limit_is_refused(runtime: Runtime, tmp_path: Path, settings: Settings) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.dcm", b"\0" * 5_000_000)
    sources = list(iter_sources([archive], max_bytes=1_000_000))
    summary = import_sources(runtime.ingest, sources)
    assert summary.stored == 0
    assert summary.failures and "limit" in summary.failures[0][1]
    assert runtime.index.counts().instances == 0
