"""Helpers over the shared DICOM corpus used by several test modules."""

from __future__ import annotations

from pathlib import Path

from pipeline.ingest.part10 import split_part10

SERIES = {
    "ct": "series/ct_philips_ingenuity_headphantom_54sl",
    "mr": "series/mr_siemens_prisma_t1_fl2d_sag_35sl",
}


def corpus_files(root: Path) -> list[Path]:
    """Every DICOM file of the corpus (not the manifest or checksums)."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.name not in ("MANIFEST.md", "SHA256SUMS")
    )


def single_files(root: Path) -> list[Path]:
    """Every single-file entry outside ``series/`` and ``edge_cases/``."""
    return [
        p
        for p in corpus_files(root)
        if not p.relative_to(root).parts[0] in ("series", "edge_cases")
    ]


def dataset_bytes(path: Path) -> bytes:
    """Everything after the File Meta Information: what DIMSE carries unchanged."""
    part = split_part10(path.read_bytes())
    return bytes(part.dataset)
