"""The index: metadata of every stored instance, behind :class:`Index`."""

from pipeline.index.migrate import migrate
from pipeline.index.protocol import Index
from pipeline.index.sql import SqlIndex


def open_index(url: str) -> SqlIndex:
    """Open the index at ``url`` (the schema must be migrated: :func:`migrate`)."""
    return SqlIndex(url)


__all__ = ["Index", "SqlIndex", "migrate", "open_index"]
