"""The Alembic migrations build exactly ``schema.py``, and unwind cleanly, on every backend."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from pipeline.index.migrate import alembic_config, migrate
from pipeline.index.schema import metadata
from pipeline.index.sql import make_engine

TABLES = {"patients", "studies", "series", "instances", "work_items"}
ENUM_TYPES = {"pixel_state", "work_state"}


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _enum_types(url: str) -> set[str]:
    """Enum types left in PostgreSQL (SQLite has none)."""
    if not url.startswith("postgresql"):
        return set()
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                    "WHERE n.nspname = 'public' AND t.typtype = 'e'"
                )
            )
            return {r[0] for r in rows}
    finally:
        engine.dispose()


def _version(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def _drift(url: str) -> list:
    """What autogenerate would write to go from the database to ``schema.metadata``."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_upgrade_matches_schema_and_downgrade_unwinds(index_url: str) -> None:
    assert _tables(index_url) == set()

    migrate(index_url)
    assert TABLES <= _tables(index_url)
    assert _version(index_url) == "0001"
    if index_url.startswith("postgresql"):
        assert _enum_types(index_url) == ENUM_TYPES
    assert _drift(index_url) == []

    command.downgrade(alembic_config(index_url), "base")
    # Only Alembic's own (now empty) version table may remain; no enum type either.
    assert _tables(index_url) - {"alembic_version"} == set()
    assert _enum_types(index_url) == set()
    assert _version(index_url) is None

    migrate(index_url)
    assert TABLES <= _tables(index_url)
    assert _drift(index_url) == []
    assert _version(index_url) == "0001"


def test_upgrade_is_idempotent(index_url: str) -> None:
    migrate(index_url)
    migrate(index_url)  # already at head: nothing to do, nothing fails
    assert _version(index_url) == "0001"
    assert _drift(index_url) == []


def test_schema_metadata_covers_the_tables() -> None:
    # If a table is added to schema.py without a migration, the drift check above
    # fails; this guards the list it is compared against.
    assert set(metadata.tables) == TABLES
