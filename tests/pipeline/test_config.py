"""Settings: defaults, environment overrides, the example config file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import DuplicatePolicy, Settings, get_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "lightbox.example.toml"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LIGHTBOX_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = get_settings()
    assert s.data_dir == Path("./lightbox-data")
    assert (s.ae_title, s.dicom_port, s.http_port) == ("LIGHTBOX", 11112, 8080)
    assert s.ray_address is None
    assert s.duplicate_policy is DuplicatePolicy.KEEP
    assert s.resolved_index_url.startswith("sqlite:///") and s.resolved_index_url.endswith(
        "lightbox-data/index.sqlite"
    )
    assert s.resolved_storage_url.endswith("lightbox-data/blobs")


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTBOX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LIGHTBOX_DICOM_PORT", "104")
    monkeypatch.setenv("LIGHTBOX_HTTP_PORT", "8042")
    monkeypatch.setenv("LIGHTBOX_ALLOWED_CALLING_AES", '["CT01", "MR01"]')
    s = get_settings()
    assert (s.data_dir, s.dicom_port, s.http_port) == (tmp_path, 104, 8042)
    assert s.allowed_calling_aes == ["CT01", "MR01"]


def test_example_file_documents_every_key_and_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    text = EXAMPLE.read_text()
    for name in Settings.model_fields:
        assert re.search(rf"^#? ?{name} = ", text, re.M), f"{name} is not in {EXAMPLE.name}"
    monkeypatch.setenv("LIGHTBOX_CONFIG", str(EXAMPLE))
    from_file = get_settings()
    # Every value the file sets is the default: the file documents, it does not change.
    assert from_file.model_dump(exclude={"ingest_actors"}) == Settings().model_dump(
        exclude={"ingest_actors"}
    )


def test_config_file_is_read_and_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "lightbox.toml"
    config.write_text('ae_title = "ARCHIVE"\ndicom_port = 4242\n')
    monkeypatch.setenv("LIGHTBOX_CONFIG", str(config))
    monkeypatch.setenv("LIGHTBOX_DICOM_PORT", "5252")
    s = get_settings()
    assert (s.ae_title, s.dicom_port) == ("ARCHIVE", 5252)


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIGHTBOX_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(FileNotFoundError):
        get_settings()


@pytest.mark.parametrize("title", ["", "THIS_TITLE_IS_TOO_LONG", "BACK\\SLASH", "TAB\tX"])
def test_bad_ae_titles_refused(title: str) -> None:
    with pytest.raises(ValueError):
        get_settings(ae_title=title)


def test_unknown_keys_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "lightbox.toml"
    config.write_text('dicom_prot = 4242\n')
    monkeypatch.setenv("LIGHTBOX_CONFIG", str(config))
    with pytest.raises(ValueError):
        get_settings()
