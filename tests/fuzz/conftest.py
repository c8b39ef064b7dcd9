"""Fixtures of the fuzz tests: the seeds, and settings for a fuzzed archive."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Settings
from tests.fuzz.harness import SETTINGS_OVERRIDES, TALLY
from tests.fuzz.mutate import Seed, load_seeds


@pytest.fixture(scope="session")
def seeds(dicom_data: Path) -> list[Seed]:
    found = load_seeds(dicom_data)
    assert len(found) >= 10, "the seed files of the corpus"
    return found


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings (a temporary data dir, free ports) with the fuzz limits."""
    return settings.model_copy(update=SETTINGS_OVERRIDES)


def pytest_sessionfinish(session: pytest.Session) -> None:
    if TALLY.targets:
        TALLY.flush()
