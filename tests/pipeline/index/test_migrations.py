"""The Alembic migrations build exactly ``schema.py``, and unwind cleanly, on every backend."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from pipeline.index.migrate import alembic_config, migrate
from pipeline.index.schema import metadata
from pipeline.index.sql import make_engine

TABLES = {
    "patients", "studies", "series", "instances", "work_items",  # 0001
    "users", "auth_tokens", "audit_events",  # 0002
    "devices",  # 0003
    "registered_patients", "orders", "requested_procedures", "scheduled_procedure_steps",
    "performed_procedure_steps", "registration_history", "counters",  # 0004
    "study_links",  # 0005
}  # fmt: skip
#: The newest revision: every upgrade must end there.
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
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
    assert _version(index_url) == HEAD
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
    assert _version(index_url) == HEAD


def test_upgrade_is_idempotent(index_url: str) -> None:
    migrate(index_url)
    migrate(index_url)  # already at head: nothing to do, nothing fails
    assert _version(index_url) == HEAD
    assert _drift(index_url) == []


def test_schema_metadata_covers_the_tables() -> None:
    # If a table is added to schema.py without a migration, the drift check above
    # fails; this guards the list it is compared against.
    assert set(metadata.tables) == TABLES


def test_0003_fills_the_referring_physician_key(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    migrate(url, "0002")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO patients (pk, patient_id, issuer_of_patient_id, patient_name, "
            "patient_name_search, patient_birth_date, patient_sex, created_at) "
            "VALUES (1, 'P', '', '', '', '', '', '2026-01-01')"
        ))
        for pk, name in ((1, "Doe^Jane^^Dr "), (2, "")):
            conn.execute(text(
                "INSERT INTO studies (pk, study_instance_uid, patient_pk, study_date, study_time, "
                "accession_number, study_id, study_description, referring_physician_name, "
                "modalities_in_study, number_of_series, number_of_instances, created_at, "
                "updated_at) VALUES (:pk, :uid, 1, '', '', '', '', '', :name, '', 0, 0, "
                "'2026-01-01', '2026-01-01')"
            ), {"pk": pk, "uid": f"1.2.{pk}", "name": name})
    migrate(url)
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT referring_physician_search FROM studies ORDER BY pk")).scalars().all()
    engine.dispose()
    assert keys == ["DOE^JANE^^DR", ""]
    assert _drift(url) == []
