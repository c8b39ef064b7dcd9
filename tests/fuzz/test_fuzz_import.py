"""Fuzzing ``lightbox import``: mutated corpus files through the importer, then decoded.

Every input goes through :func:`pipeline.ingest.importer.import_sources` (as
``lightbox import`` runs it, one file), then the decode stage decodes
whatever it stored; see :mod:`tests.fuzz.harness` for the invariants.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from pipeline.config import Settings
from pipeline.ingest.importer import Source, import_sources
from pipeline.runtime import Runtime
from tests.fuzz.harness import FUZZ_SETTINGS, FuzzArchive, FuzzFailure, check_reason, one_input, run_fuzz
from tests.fuzz.mutate import FuzzInput, Seed, fuzz_inputs

pytestmark = pytest.mark.fuzz


def import_one(archive: FuzzArchive, inp: FuzzInput) -> None:
    """One input through the importer and the decode stage, under the harness's guard."""
    with one_input("import", inp) as tally:
        data = inp.data
        summary = import_sources(archive.runtime.ingest, [Source("fuzz.dcm", len(data), lambda: data)])
        if summary.failures:
            ((_name, reason),) = summary.failures
            check_reason(reason, inp)
            tally.refused += 1
            tally.outcomes[f"refused: {reason.split(':')[0][:60]}"] += 1
        else:
            if sum(summary.outcomes.values()) != 1:
                raise FuzzFailure(f"an import without an outcome for {inp.describe()}")
            tally.outcomes.update(summary.outcomes)
        archive.decode(tally)


def test_fuzz_import(settings: Settings, runtime: Runtime, seeds: list[Seed]) -> None:
    archive = FuzzArchive(settings, runtime, seeds)

    @FUZZ_SETTINGS
    @given(inp=fuzz_inputs(seeds, part10=True))
    def fuzz(inp: FuzzInput) -> None:
        import_one(archive, inp)

    try:
        run_fuzz("import", archive, fuzz)
    finally:
        archive.close()
