"""Durable folders on a local file system: what makes a rename or a new file survive a crash.

A file's data is durable after ``fsync`` of the file; its *name* (a creation or
a rename) only after ``fsync`` of the folder holding it, and a new folder's
name only after ``fsync`` of its parent (POSIX; ext4 and XFS behave so).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (creations, renames, removals) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableFolders:
    """Create folders under ``root`` once each, with their names made durable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made: set[Path] = set()

    def ensure(self, folder: Path) -> None:
        if folder in self._made:
            return
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if created:
            # Every folder between the root and the new one may be new too.
            for parent in list(folder.relative_to(self.root).parents)[:-1]:
                fsync_dir(self.root / parent)
            fsync_dir(self.root)
        self._made.add(folder)
