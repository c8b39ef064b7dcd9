"""The PHI scan of a test run's logs (a pytest plugin, loaded by tests/conftest.py).

Logs must never carry patient names, IDs or birth dates (issue: "a test scans
the logs of a full test run"). For the whole session this plugin

- sends every record of Lightbox's loggers (``pipeline.*``, ``api.*``, at
  DEBUG) and every other logger's records at their configured level to a file;
- at the end, reads that file, the ``*.log`` files the tests left under the
  session's temporary folder (``lightbox serve`` subprocesses, with their Ray
  actors' output), and the logs of the Ray sessions started during the run,
  and looks in them for each patient name, ID and birth date of the test
  corpus;
- fails the run (exit status 1) and lists the offending lines if any is found,
  and prints how much it scanned either way.

Values too short or too common to be told from other text (``HEAD``, a
3-digit ID) are left out; the remaining ones include the IDs of the series
that every ingest test sends (``PLASTIC``, ``crlab``).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

_KEYS = ("PatientName", "PatientID", "PatientBirthDate")
#: Corpus values that are ordinary words or too short to mean a patient here.
_NOT_IDENTIFYING = {"HEAD", "Anonymized", "Anonymous", "Unbekannt", "CARDIO"}
_MIN_LENGTH = 5
_RAY_LOGS = Path(tempfile.gettempdir()) / "ray"


def corpus_phi(root: Path) -> set[str]:
    """The patient names, IDs and birth dates of the corpus files, as they may print."""
    import pydicom

    values: set[str] = set()
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix in (".md", ".txt", ".json", ".py"):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(_KEYS))
        except Exception:
            continue
        for key in _KEYS:
            value = str(ds.get(key, "") or "").strip()
            if len(value) < _MIN_LENGTH or value in _NOT_IDENTIFYING:
                continue
            values.add(value)
            if "^" in value:  # a person name as it would be formatted
                values.add(" ".join(p for p in value.split("^") if p))
    return {v for v in values if len(v) >= _MIN_LENGTH}


def scan_files(files: list[Path], values: set[str]) -> tuple[int, list[str]]:
    """(lines read, "file:line: value in line" for each line holding one of ``values``).

    A value matches as a whole token: ``crlab`` in ``crlab2`` or in a dotted
    UID does not count.
    """
    pattern = re.compile(
        "|".join(rf"(?<![\w.]){re.escape(v)}(?![\w])" for v in sorted(values, key=len, reverse=True))
    )
    lines, hits = 0, []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            lines += 1
            match = pattern.search(line)
            if match:
                hits.append(f"{path}:{number}: {match.group(0)!r} in {line[:200]!r}")
    return lines, hits


class PhiScan:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.time()
        fd, name = tempfile.mkstemp(prefix="lightbox-test-logs-", suffix=".log")
        os.close(fd)
        self.log_file = Path(name)
        self.handler = logging.FileHandler(self.log_file, encoding="utf-8")
        self.handler.setLevel(logging.DEBUG)
        self.handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.summary = ""
        self.hits: list[str] = []

    def start(self) -> None:
        root = logging.getLogger()
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        for name in ("pipeline", "api"):
            logging.getLogger(name).setLevel(logging.DEBUG)
        # httpx is the tests' HTTP client (Starlette's TestClient, dicomweb-client),
        # not part of the server: it logs each request URL at INFO, query
        # string and all (a QIDO-RS search by PatientID). What a client logs
        # is the client's business; the scan is about what Lightbox logs.
        logging.getLogger("httpx").setLevel(logging.WARNING)

    def files(self) -> list[Path]:
        files = [self.log_file]
        basetemp = getattr(self.config, "_tmp_path_factory", None)
        if basetemp is not None:
            try:
                files += sorted(basetemp.getbasetemp().rglob("*.log"))
            except (OSError, ValueError):
                pass
        if _RAY_LOGS.is_dir():
            for path in _RAY_LOGS.glob("session_*/logs/*"):
                try:
                    if path.is_file() and path.stat().st_mtime >= self.started:
                        files.append(path)
                except OSError:
                    continue
        return files

    def finish(self, session: pytest.Session) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.handler.close()
        root = Path(os.environ.get("LIGHTBOX_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom"))
        values = corpus_phi(root) if root.is_dir() else set()
        if not values:
            self.summary = f"PHI log scan: no corpus at {root}, nothing to look for"
            return
        files = self.files()
        lines, self.hits = scan_files(files, values)
        self.summary = (
            f"PHI log scan: {lines} log lines in {len(files)} files, "
            f"{len(values)} patient names/IDs/birth dates looked for: {len(self.hits)} found"
        )
        if self.hits:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        self.log_file.unlink(missing_ok=True)


_SCAN: PhiScan | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _SCAN
    _SCAN = PhiScan(session.config)
    _SCAN.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SCAN is not None:
        _SCAN.finish(session)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SCAN is None:
        return
    terminalreporter.write_line(_SCAN.summary)
    for hit in _SCAN.hits[:50]:
        terminalreporter.write_line(f"  PHI IN LOGS: {hit}", red=True)
