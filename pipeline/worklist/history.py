"""The registration history and the named counters, written in the caller's transaction.

Every change of a registered patient, an order, a requested procedure, a
scheduled or performed step is one ``registration_history`` row (who, when,
what, the fields before and after as JSON) written by :func:`record_change`
in the transaction of the change itself: a change is never without its row,
nor a row without its change.

:func:`next_counter` numbers accession numbers, Requested Procedure IDs and
SPS IDs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.dialects import postgresql, sqlite

from pipeline.index.schema import counters, registration_history
from pipeline.worklist.records import HistoryEntry, utc


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def record_change(
    conn: Connection,
    actor: str,
    entity: str,
    entity_pk: int,
    action: str,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
) -> None:
    """Write one ``registration_history`` row in the caller's transaction.

    ``before``/``after`` are the row's fields (only those that changed, for
    an update). The MPPS service writes its changes through this too.
    """
    conn.execute(
        insert(registration_history).values(
            event_time=datetime.now(UTC),
            actor=actor,
            entity=entity,
            entity_pk=entity_pk,
            action=action,
            before=None if before is None else json.dumps(_jsonable(before), sort_keys=True),
            after=None if after is None else json.dumps(_jsonable(after), sort_keys=True),
        )
    )


def next_counter(conn: Connection, name: str) -> int:
    """The next value of the counter ``name`` (1 first), in the caller's transaction.

    One statement (INSERT ... ON CONFLICT DO UPDATE ... RETURNING, SQLite
    3.35+ and PostgreSQL): two writers never get the same value.
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(counters).values(name=name, value=1)
    stmt = stmt.on_conflict_do_update(
        index_elements=[counters.c.name], set_={"value": counters.c.value + 1}
    ).returning(counters.c.value)
    return int(conn.execute(stmt).scalar_one())


def history_entries(rows: Sequence[Any]) -> list[HistoryEntry]:
    """``registration_history`` rows as :class:`HistoryEntry` values."""
    return [
        HistoryEntry(
            utc(r.event_time),
            r.actor,
            r.entity,
            r.entity_pk,
            r.action,
            json.loads(r.before) if r.before else None,
            json.loads(r.after) if r.after else None,
        )
        for r in rows
    ]
