"""Fuzzing STOW-RS: mutated files as parts of ``POST /dicom-web/studies[/{study}]``, then decoded.

The client is the HTTP tests' authenticated one (``client`` of
``tests/api/conftest.py``: an administrator's bearer API key). An answer may
be any STOW-RS status (PS3.18 10.5.3) but a 5xx other than 503 or 507
(resources), and a failed part's Warning names no patient data.
"""

from __future__ import annotations

import pydicom
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.runtime import Runtime

# The HTTP tests' fixtures (an app on ``runtime``, an administrator's key, a
# client that sends it), imported so that this module uses them as they are.
from tests.api.conftest import CONTENT_TYPE, admin_key, app, auth_headers, client, multipart_body  # noqa: F401
from tests.fuzz.harness import FUZZ_SETTINGS, FuzzArchive, FuzzFailure, check_reason, one_input, run_fuzz
from tests.fuzz.mutate import FuzzInput, Seed, fuzz_inputs

pytestmark = pytest.mark.fuzz

#: Statuses of the request as a whole, or of its parts (PS3.18 10.5.3.1).
ALLOWED = {200, 202, 400, 409, 413, 415, 503, 507}


def post_one(archive: FuzzArchive, client: TestClient, inp: FuzzInput, study: str | None) -> None:
    with one_input("stow", inp) as tally:
        url = "/dicom-web/studies" + (f"/{study}" if study else "")
        response = client.post(
            url, content=multipart_body([inp.data]), headers={"Content-Type": CONTENT_TYPE}
        )
        if response.status_code not in ALLOWED:
            raise FuzzFailure(f"crash: HTTP {response.status_code} for {inp.describe()}")
        if response.status_code in (200, 202, 400, 409):
            response.json()  # the Store Instances Response Module, always
        warnings = response.headers.get_list("warning")
        for line in warnings:
            check_reason(line, inp)
        if response.status_code != 200:
            tally.refused += 1
        reason = warnings[0].split(": ", 2)[-1][:50] if warnings else ""
        tally.outcomes[f"{response.status_code} {reason}".strip()] += 1
        archive.decode(tally)


def test_fuzz_stow(
    settings: Settings, runtime: Runtime, seeds: list[Seed], client: TestClient
) -> None:
    archive = FuzzArchive(settings, runtime, seeds)
    studies = {
        s.name: str(pydicom.dcmread(pydicom.filebase.DicomBytesIO(s.part10), force=True,
                                    stop_before_pixels=True).get("StudyInstanceUID", "") or "")
        for s in seeds
    }

    @FUZZ_SETTINGS
    @given(inp=fuzz_inputs(seeds, part10=True), to_study=st.integers(0, 3))
    def fuzz(inp: FuzzInput, to_study: int) -> None:
        # One in four to the seed's study URL: an instance of another study must fail.
        study = studies.get(inp.seed.name) if to_study == 0 else None
        post_one(archive, client, inp, study or None)

    try:
        run_fuzz("stow", archive, fuzz)
    finally:
        archive.close()
