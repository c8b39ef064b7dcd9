"""The PHI scan of the logs (tests/phi_scan.py) finds what it must, and only that."""

from __future__ import annotations

import logging
from pathlib import Path

from tests.phi_scan import corpus_phi, scan_files


def test_corpus_values_are_collected(dicom_data: Path) -> None:
    values = corpus_phi(dicom_data)
    # The CT and CR series every ingest test sends, and a person name both ways.
    assert {"PLASTIC", "crlab", "Citizen^Jan", "Citizen Jan", "19700606"} <= values
    assert "HEAD" not in values and not any(len(v) < 5 for v in values)


def test_a_planted_line_is_found_and_lookalikes_are_not(tmp_path: Path) -> None:
    log = tmp_path / "planted.txt"  # not *.log: the session scan must not find it
    log.write_text(
        "pipeline.ingest INFO stored 54 instances\n"
        "api.stow INFO study 1.2.PLASTIC.3 ok\n"  # inside a dotted token: not a name
        "pipeline.ingest INFO crlab2 is another word\n"
        "pipeline.ingest WARNING patient PLASTIC refused\n"
    )
    lines, hits = scan_files([log], {"PLASTIC", "crlab"})
    assert lines == 4
    assert len(hits) == 1 and hits[0].startswith(f"{log}:4:")


def test_the_session_handler_records_lightbox_debug_lines() -> None:
    # The plugin puts Lightbox's loggers at DEBUG for the session, so that the
    # scan sees what an administrator running at DEBUG would see.
    assert logging.getLogger("pipeline").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("api").isEnabledFor(logging.DEBUG)
