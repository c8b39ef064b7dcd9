"""The query engine: one search over the index for C-FIND and QIDO-RS.

:class:`QueryService` turns a level and keys into one SQL statement over the
index tables (:mod:`pipeline.index.schema`) and answers plain dicts, keyword
-> value; no file is ever opened at query time. The protocol rules that
differ between DIMSE and HTTP stay in the adapters
(:mod:`pipeline.query.scp`, :mod:`api.routes.qido`): which keys are
required (the hierarchical model of PS3.4 C.4.1.3.1.1), what is returned
empty, how values are encoded.

Matches are ordered by the primary key of their level (the order they were
first stored), so that ``offset`` pages are stable and :meth:`iter_search`
can walk a large answer in batches (keyset pagination: each batch is a short
read transaction of its own, so a slow C-FIND peer never holds the database).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import Select, and_, exists, func, select
from sqlalchemy.sql.elements import ColumnElement

from pipeline.errors import InvalidRequest
from pipeline.index.schema import instances, patients, series, studies
from pipeline.index.sql import SqlIndex
from pipeline.query.matching import condition, never
from pipeline.query.model import (
    ATTRIBUTES,
    PRIMARY_KEYS,
    UNIQUE_KEYS,
    Attribute,
    Kind,
    Level,
    Root,
    visible_at,
)

#: Rows per read transaction of :meth:`QueryService.iter_search`.
BATCH_SIZE = 500
_PK = "_pk"


class QueryService:
    """Searches the index at a Query/Retrieve level (PS3.4 C.6, PS3.18 10.6).

    Parameters
    ----------
    index
        The index; its engine is used for read-only connections.
    """

    def __init__(self, index: SqlIndex) -> None:
        self.index = index
        self._dialect = index.engine.dialect.name

    # -- public -------------------------------------------------------------------

    def search(
        self,
        level: Level | str,
        keys: Mapping[str, str],
        *,
        root: Root | str = Root.STUDY,
        limit: int | None = None,
        offset: int = 0,
        referring_physician: str | None = None,
        fields: Iterable[str] | None = None,
        fuzzy: bool = False,
    ) -> list[dict[str, Any]]:
        """The matches of ``keys`` at ``level``, as dicts keyword -> value.

        Parameters
        ----------
        level
            PATIENT (Patient Root only), STUDY, SERIES or IMAGE.
        keys
            Keyword -> key value, matched by the rules of PS3.4 C.2.2.2
            (:mod:`pipeline.query.matching`); multiple values joined by
            backslashes; "" is universal matching. Keys of the level and of
            the levels above it only (patient attributes are study attributes
            in Study Root, PS3.4 C.6.2.1).
        root
            The information model (Root or "patient"/"study").
        limit, offset
            A page of the matches, in the order they were stored.
        referring_physician
            When not None, only studies whose Referring Physician's Name has
            this :func:`~pipeline.index.records.person_name_key` (a referring
            physician's scope); "" matches nothing.
        fields
            Keywords to return (of the level and above); None: every one the
            index keeps. The Unique Keys of the level and above are always
            returned. Keywords the index does not keep are left out.
        fuzzy
            Fuzzy matching of person names (:mod:`pipeline.query.matching`).

        Returns
        -------
        list of dict
            One dict per match: keyword -> value ("" or None when empty;
            a list for ModalitiesInStudy and SOPClassesInStudy).

        Raises
        ------
        InvalidRequest
            Unknown level, a key not searchable at this level, a malformed value.
        """
        statement, returned = self._statement(
            level, keys, root, referring_physician, fields, fuzzy
        )
        if limit is not None:
            statement = statement.limit(limit)
        if offset:
            statement = statement.offset(offset)
        with self.index.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(statement)]
        return self._finish(rows, returned)

    def iter_search(
        self,
        level: Level | str,
        keys: Mapping[str, str],
        *,
        root: Root | str = Root.STUDY,
        referring_physician: str | None = None,
        fields: Iterable[str] | None = None,
        fuzzy: bool = False,
        batch_size: int = BATCH_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Every match, as :meth:`search` answers them, read ``batch_size`` at a time.

        The statement is checked before the first match is read, so an
        invalid request raises on the first ``next()``.
        """
        statement, returned = self._statement(
            level, keys, root, referring_physician, fields, fuzzy
        )
        pk = PRIMARY_KEYS[Level(level)]
        last: int | None = None
        while True:
            page = statement if last is None else statement.where(pk > last)
            with self.index.engine.connect() as conn:
                rows = [dict(row._mapping) for row in conn.execute(page.limit(batch_size))]
            if not rows:
                return
            last = rows[-1][_PK]
            yield from self._finish(rows, returned)
            if len(rows) < batch_size:
                return

    def count(
        self,
        level: Level | str,
        keys: Mapping[str, str],
        *,
        root: Root | str = Root.STUDY,
        referring_physician: str | None = None,
        fuzzy: bool = False,
    ) -> int:
        """How many entities match (without reading them)."""
        statement, _ = self._statement(
            level, keys, root, referring_physician, [], fuzzy
        )
        counted = select(func.count()).select_from(statement.order_by(None).subquery())
        with self.index.engine.connect() as conn:
            return int(conn.execute(counted).scalar_one())

    # -- the statement ----------------------------------------------------------------

    def _statement(
        self,
        level: Level | str,
        keys: Mapping[str, str],
        root: Root | str,
        referring_physician: str | None,
        fields: Iterable[str] | None,
        fuzzy: bool,
    ) -> tuple[Select[Any], list[Attribute]]:
        level, root = _level(level), _root(root)
        if level not in root.levels:
            raise InvalidRequest(
                f"the {level.value} level is not part of the Study Root model (PS3.4 C.6.2.1)"
            )
        visible = visible_at(level)
        returned = _returned(level, visible, fields)
        pk = PRIMARY_KEYS[level]
        columns = [pk.label(_PK)]
        columns += [a.value.label(a.keyword) for a in returned if a.value is not None]
        statement = select(*columns).select_from(_tables(level))
        for keyword, value in keys.items():
            attribute = visible.get(keyword)
            if attribute is None:
                raise InvalidRequest(_not_searchable(keyword, level))
            clause = condition(attribute, value, dialect=self._dialect, fuzzy=fuzzy)
            if clause is not None:
                statement = statement.where(clause)
        if referring_physician is not None:
            statement = statement.where(_scope(level, referring_physician))
        return statement.order_by(pk), returned

    # -- results ------------------------------------------------------------------------

    def _finish(self, rows: list[dict[str, Any]], returned: list[Attribute]) -> list[dict[str, Any]]:
        """Split multi-valued columns, add derived values, drop the internal key."""
        keywords = {a.keyword for a in returned}
        if "SOPClassesInStudy" in keywords and rows:
            classes = self._sop_classes({row["StudyInstanceUID"] for row in rows})
            for row in rows:
                row["SOPClassesInStudy"] = classes.get(row["StudyInstanceUID"], [])
        for row in rows:
            del row[_PK]
            if "ModalitiesInStudy" in row:
                row["ModalitiesInStudy"] = [m for m in (row["ModalitiesInStudy"] or "").split("\\") if m]
        return rows

    def _sop_classes(self, study_uids: set[str]) -> dict[str, list[str]]:
        """SOP Classes in Study (0008,0062) of each study, from its instances."""
        found: dict[str, set[str]] = {}
        ordered = sorted(study_uids)
        with self.index.engine.connect() as conn:
            for start in range(0, len(ordered), BATCH_SIZE):
                chunk = ordered[start : start + BATCH_SIZE]
                rows = conn.execute(
                    select(studies.c.study_instance_uid, instances.c.sop_class_uid)
                    .distinct()
                    .select_from(
                        instances.join(series, instances.c.series_pk == series.c.pk).join(
                            studies, series.c.study_pk == studies.c.pk
                        )
                    )
                    .where(studies.c.study_instance_uid.in_(chunk))
                )
                for study_uid, sop_class in rows:
                    found.setdefault(study_uid, set()).add(sop_class)
        return {uid: sorted(classes) for uid, classes in found.items()}


# -- helpers --------------------------------------------------------------------------


def _level(level: Level | str) -> Level:
    if isinstance(level, Level):
        return level
    try:
        return Level(level.strip().upper())
    except ValueError:
        raise InvalidRequest(
            "Query/Retrieve Level is PATIENT, STUDY, SERIES or IMAGE (PS3.4 C.6.1.1)"
        ) from None


def _root(root: Root | str) -> Root:
    if isinstance(root, Root):
        return root
    try:
        return Root(root)
    except ValueError:
        raise InvalidRequest("the information model is 'patient' or 'study' root") from None


def _returned(level: Level, visible: Mapping[str, Attribute], fields: Iterable[str] | None) -> list[Attribute]:
    """The attributes to read: those asked (or all), plus the Unique Keys down to ``level``."""
    wanted = set(visible) if fields is None else {f for f in fields if f in visible}
    wanted |= {UNIQUE_KEYS[lv] for lv in Level if lv.depth <= level.depth}
    if "SOPClassesInStudy" in wanted:
        wanted.add("StudyInstanceUID")
    return [visible[k] for k in visible if k in wanted]


@functools.cache
def _tables(level: Level):  # type: ignore[no-untyped-def]
    """The FROM clause of a level: its table joined up to patients (left-deep).

    Built once per level (a Join is immutable and is shared by statements).
    """
    if level is Level.PATIENT:
        return patients
    joined = {Level.STUDY: studies, Level.SERIES: series, Level.IMAGE: instances}[level]
    if level is Level.IMAGE:
        joined = joined.join(series, instances.c.series_pk == series.c.pk)
    if level.depth >= Level.SERIES.depth:
        joined = joined.join(studies, series.c.study_pk == studies.c.pk)
    return joined.join(patients, studies.c.patient_pk == patients.c.pk)


def _scope(level: Level, referring_physician: str) -> ColumnElement[bool]:
    """Only the studies of one referring physician (their ``person_name_key``)."""
    if not referring_physician:
        # An account without a name would otherwise see every study without one.
        return never()
    mine = studies.c.referring_physician_search == referring_physician
    if level is Level.PATIENT:
        return exists(select(studies.c.pk).where(and_(studies.c.patient_pk == patients.c.pk, mine)))
    return mine


def _not_searchable(keyword: str, level: Level) -> str:
    attribute = ATTRIBUTES.get(keyword)
    if attribute is None:
        return f"{keyword} is not kept in the index: it cannot be matched"
    if attribute.kind is Kind.NONE:
        return f"{keyword} is returned but cannot be matched"
    return (
        f"{keyword} is a {attribute.level.value} attribute: it cannot be matched "
        f"at the {level.value} level"
    )
