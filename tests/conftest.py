"""Shared fixtures: the test corpus, settings on a temporary data dir, a runtime.

In CI (``CI=true``) a missing corpus or peer fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings, get_settings
from pipeline.runtime import Runtime, open_runtime

pytest_plugins = ["tests.phi_scan"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip (on a developer's machine) or fail (in CI) when ``what`` is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"missing in CI: {what}")
    pytest.skip(f"missing: {what}")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the program {name!r} (Debian package dcmtk/orthanc)")
    assert path is not None
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def dicom_data() -> Path:
    """The shared corpus: ``$LIGHTBOX_TEST_DATA`` or ``../shared/data/dicom``."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"
    root = Path(os.environ.get("LIGHTBOX_TEST_DATA", default))
    require((root / "MANIFEST.md").is_file(), f"the DICOM test corpus at {root}")
    return root


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return get_settings(
        data_dir=tmp_path / "data",
        dicom_host="127.0.0.1",
        dicom_port=free_port(),
        http_host="127.0.0.1",
        http_port=free_port(),
        ingest_actors=1,
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = open_runtime(settings, run_migrations=True)
    yield rt
    rt.close()
