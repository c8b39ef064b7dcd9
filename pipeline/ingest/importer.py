"""``lightbox import``: files, folders (recursively) and zip archives into the archive.

Each file goes through :meth:`IngestService.store_part10`, as STOW-RS does.
A file that fails is reported with its reason and changes nothing else.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import LightboxError, TooLarge
from pipeline.index.records import Provenance, RecordOutcome
from pipeline.ingest.service import IngestService

#: Files that are never instances: DICOMDIR is the media's directory (PS3.10 8.6).
_SKIPPED_NAMES = {"DICOMDIR"}


@dataclass(frozen=True, slots=True)
class Source:
    """One file to import: a display name (path, or archive!member) and a reader."""

    name: str
    size: int
    read: Callable[[], bytes]


@dataclass
class ImportSummary:
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def stored(self) -> int:
        return self.outcomes[RecordOutcome.STORED.value] + self.outcomes[RecordOutcome.REPLACED.value]


def iter_sources(paths: list[Path], max_bytes: int) -> Iterator[Source | tuple[str, str]]:
    """Yield a :class:`Source` per file, or ``(name, reason)`` for what cannot be read."""
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from _file_sources(child, max_bytes)
        elif path.is_file():
            yield from _file_sources(path, max_bytes)
        else:
            yield (str(path), "no such file or folder")


def _file_sources(path: Path, max_bytes: int) -> Iterator[Source | tuple[str, str]]:
    if path.name.upper() in _SKIPPED_NAMES:
        return
    if zipfile.is_zipfile(path):
        yield from _zip_sources(path, max_bytes)
        return
    yield Source(str(path), path.stat().st_size, path.read_bytes)


def _zip_sources(path: Path, max_bytes: int) -> Iterator[Source | tuple[str, str]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield (str(path), f"unreadable zip archive: {exc}")
        return
    # The archive stays open for the readers (listed before they run); it
    # closes when the last reader is gone.
    for info in archive.infolist():
        if info.is_dir() or Path(info.filename).name.upper() in _SKIPPED_NAMES:
            continue
        name = f"{path}!{info.filename}"
        if info.file_size > max_bytes:
            yield (name, f"{info.file_size} bytes is over the limit of {max_bytes}")
            continue
        yield Source(name, info.file_size, _zip_reader(archive, info, max_bytes))


def _zip_reader(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> Callable[[], bytes]:
    def read() -> bytes:
        # The size in the archive's directory can lie: read one byte past the
        # limit so that a decompression bomb is caught, not inflated.
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise TooLarge(f"member inflates past the limit of {max_bytes} bytes")
        return data

    return read


def import_sources(
    service: IngestService,
    sources: list[Source | tuple[str, str]],
    on_progress: Callable[[], None] | None = None,
) -> ImportSummary:
    """Import ``sources`` (from :func:`iter_sources`); ``on_progress`` is called per item."""
    summary = ImportSummary()
    for item in sources:
        if isinstance(item, tuple):
            summary.failures.append(item)
        else:
            _import_one(service, item, summary)
        if on_progress is not None:
            on_progress()
    return summary


def _import_one(service: IngestService, item: Source, summary: ImportSummary) -> None:
    try:
        result = service.store_part10(item.read(), Provenance("import"))
    except LightboxError as exc:
        summary.failures.append((item.name, exc.reason))
    except (OSError, zipfile.BadZipFile) as exc:
        summary.failures.append((item.name, f"cannot read: {exc}"))
    else:
        summary.outcomes[result.outcome.value] += 1
        summary.bytes += result.size
