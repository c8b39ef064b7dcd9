"""The index on SQLAlchemy 2 Core: SQLite (WAL) by default, PostgreSQL by URL.

Durability: SQLite runs in WAL mode with ``synchronous=FULL`` so that a commit
is on disk when :meth:`SqlIndex.record_instance` returns; PostgreSQL's default
``synchronous_commit=on`` gives the same. Write transactions on SQLite begin
with ``BEGIN IMMEDIATE`` so that concurrent ingest processes queue on the write
lock instead of failing on an upgrade from a read lock.
"""

from __future__ import annotations

from dataclasses import replace
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Integer,
    bindparam,
    Engine,
    and_,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.config import DuplicatePolicy
from pipeline.errors import DuplicateInstance, OutOfResources
from pipeline.index.records import (
    IndexCounts,
    InstanceRow,
    ParsedHeader,
    Provenance,
    RecordOutcome,
    RecordResult,
    SeriesRow,
    StoredBlob,
    StudyRow,
    WorkItem,
    person_name_key,
)
from pipeline.index.schema import (
    PixelState,
    WorkState,
    instances,
    patients,
    series,
    studies,
    work_items,
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime. SQLite keeps no offset: an aware value
    must be converted before it is written, and a naive one read back is UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _instance_row(row: Any) -> InstanceRow:
    return replace(InstanceRow(*row), received_at=_utc(row.received_at))


def make_engine(url: str) -> Engine:
    """Create an engine with the pragmas and pooling each backend needs."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own
            # transaction handling cannot do BEGIN IMMEDIATE).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            if conn.get_execution_options().get("lightbox_write"):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.exec_driver_sql("BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True)


# The statements of the per-instance path, built once: building a Core
# statement (and its cache key) costs more CPU than SQLite executing it.
_SELECT_EXISTING = select(
    instances.c.pk, instances.c.sha256, instances.c.storage_key, instances.c.series_pk
).where(instances.c.sop_instance_uid == bindparam("b_uid"))
_SELECT_BLOB = select(
    instances.c.storage_key, instances.c.size, instances.c.sha256, instances.c.transfer_syntax_uid
).where(instances.c.sop_instance_uid == bindparam("b_uid"))
_INSERT_INSTANCE = insert(instances).returning(instances.c.pk)
_INSERT_WORK = insert(work_items)
_COUNT_SERIES = (
    update(series)
    .where(series.c.pk == bindparam("b_pk"))
    .values(
        number_of_instances=series.c.number_of_instances + bindparam("b_delta", type_=Integer),
        updated_at=bindparam("b_now", type_=DateTime(timezone=True)),
    )
)
_COUNT_STUDY = (
    update(studies)
    .where(studies.c.pk == bindparam("b_pk"))
    .values(
        number_of_instances=studies.c.number_of_instances + bindparam("b_delta", type_=Integer),
        updated_at=bindparam("b_now", type_=DateTime(timezone=True)),
    )
)


class SqlIndex:
    """:class:`pipeline.index.protocol.Index` on SQLAlchemy."""

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self._engine = engine or make_engine(url)
        # Series Instance UID -> (series pk, study pk) of committed rows: most
        # instances belong to a series seen a moment ago, and three lookups
        # per instance are most of the index's cost. Filled only after a
        # commit; rows are never deleted yet (a deletion must evict here).
        self._series_pks: dict[str, tuple[int, int]] = {}
        database = self._engine.url.database if self._engine.dialect.name == "sqlite" else None
        self._lock_path = f"{database}.writelock" if database and database != ":memory:" else None
        self._lock_fd: int | None = None
        self._lock_pid = 0
        self._thread_lock = threading.Lock()

    # -- transactions -------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine, for the services that keep their own tables in this database
        (accounts, the audit trail); they write with :meth:`write_transaction`."""
        return self._engine

    def write_transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction taking the same writer turn as the index's own writes."""
        return self._write()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A write transaction, committed (durably) when the block ends."""
        with self._writer_turn():
            conn = self._engine.connect().execution_options(lightbox_write=True)
            with conn, conn.begin():
                yield conn

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """On SQLite, wait for our turn to write on a file lock, not in SQLite.

        SQLite lets one writer in at a time, and a blocked writer polls with
        sleeps of up to 100 ms (its busy handler): with several ingest
        processes most of the time goes to sleeping past a lock that was
        released long ago. A blocking ``flock`` wakes the next writer at once.
        """
        if self._lock_path is None:
            yield
            return
        with self._thread_lock:
            if self._lock_fd is None or self._lock_pid != os.getpid():
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o640)
                self._lock_pid = os.getpid()
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._engine.dispose()
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- ingest -------------------------------------------------------------

    def record_instance(
        self,
        header: ParsedHeader,
        blob: StoredBlob,
        provenance: Provenance,
        duplicate_policy: DuplicatePolicy,
        stages: tuple[str, ...] = ("decode",),
    ) -> RecordResult:
        duplicate_policy = DuplicatePolicy(duplicate_policy)
        try:
            with self._write() as conn:
                result, pks = self._record(conn, header, blob, provenance, duplicate_policy, stages)
        except IntegrityError:
            # Another process created the same patient/study/series/instance
            # between our read and our insert (PostgreSQL only: SQLite writers
            # are serialised). The retry sees their row.
            with self._write() as conn:
                result, pks = self._record(conn, header, blob, provenance, duplicate_policy, stages)
        except OperationalError as exc:
            raise OutOfResources(f"index unavailable: {type(exc.orig).__name__}") from exc
        if pks is not None:
            if len(self._series_pks) > 100_000:
                self._series_pks.clear()
            self._series_pks[header.series.series_instance_uid] = pks
        return result

    def _record(
        self,
        conn: Connection,
        header: ParsedHeader,
        blob: StoredBlob,
        provenance: Provenance,
        policy: DuplicatePolicy,
        stages: tuple[str, ...],
    ) -> tuple[RecordResult, tuple[int, int] | None]:
        """The transaction's body; also returns the (series pk, study pk) used."""
        now = _now()
        inst = header.instance
        existing = conn.execute(_SELECT_EXISTING, {"b_uid": inst.sop_instance_uid}).first()
        if existing is not None:
            if existing.sha256 == blob.sha256:
                return RecordResult(RecordOutcome.IDENTICAL, orphaned_key=blob.storage_key), None
            if policy is DuplicatePolicy.REJECT:
                raise DuplicateInstance("SOP Instance UID already stored with other content")
            if policy is DuplicatePolicy.KEEP:
                return RecordResult(RecordOutcome.KEPT_EXISTING, orphaned_key=blob.storage_key), None

        cached = self._series_pks.get(header.series.series_instance_uid)
        if cached is not None:
            (series_pk, study_pk), new_study, new_series = cached, False, False
        else:
            study_pk, new_study = self._study_pk(conn, header, now)
            series_pk, new_series = self._series_pk(conn, header, study_pk, now)
        pixel_state = PixelState.PENDING if inst.has_pixel_data else PixelState.NONE
        values = dict(
            sop_class_uid=inst.sop_class_uid,
            instance_number=inst.instance_number,
            transfer_syntax_uid=blob.transfer_syntax_uid,
            rows=inst.rows,
            columns=inst.columns,
            number_of_frames=inst.number_of_frames,
            bits_allocated=inst.bits_allocated,
            photometric_interpretation=inst.photometric_interpretation,
            content_date=inst.content_date,
            content_time=inst.content_time,
            size=blob.size,
            sha256=blob.sha256,
            storage_key=blob.storage_key,
            received_at=_utc(provenance.received_at),
            calling_ae=provenance.calling_ae,
            source=provenance.source,
            pixel_state=pixel_state,
            pixel_error=None,
        )
        if existing is None:
            instance_pk = conn.execute(
                _INSERT_INSTANCE,
                {"sop_instance_uid": inst.sop_instance_uid, "series_pk": series_pk, **values},
            ).scalar_one()
            self._count_instance(conn, series_pk, study_pk, now)
            outcome, orphan = RecordOutcome.STORED, None
        else:
            # REPLACED: the row now points at the new blob. If the series moved
            # (a corrected re-send), the counts follow it.
            instance_pk = existing.pk
            conn.execute(
                update(instances)
                .where(instances.c.pk == instance_pk)
                .values(series_pk=series_pk, **values)
            )
            if existing.series_pk != series_pk:
                old_study_pk = conn.execute(
                    select(series.c.study_pk).where(series.c.pk == existing.series_pk)
                ).scalar_one()
                self._count_instance(conn, existing.series_pk, old_study_pk, now, delta=-1)
                self._count_instance(conn, series_pk, study_pk, now)
            conn.execute(
                update(work_items)
                .where(
                    work_items.c.instance_pk == instance_pk,
                    work_items.c.state.in_([WorkState.PENDING, WorkState.CLAIMED]),
                )
                .values(state=WorkState.DONE, updated_at=now, error="superseded")
            )
            outcome, orphan = RecordOutcome.REPLACED, existing.storage_key
        if new_series or new_study:
            self._refresh_study_modalities(conn, study_pk)
        if inst.has_pixel_data and stages:
            conn.execute(
                _INSERT_WORK,
                [
                    dict(
                        instance_pk=instance_pk,
                        stage=stage,
                        state=WorkState.PENDING,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                    for stage in stages
                ],
            )
        return RecordResult(outcome, orphaned_key=orphan), (series_pk, study_pk)

    def _patient_pk(self, conn: Connection, header: ParsedHeader, now: datetime) -> int:
        p = header.patient
        pk = conn.execute(
            select(patients.c.pk).where(
                patients.c.patient_id == p.patient_id,
                patients.c.issuer_of_patient_id == p.issuer_of_patient_id,
            )
        ).scalar()
        if pk is not None:
            return pk
        return conn.execute(
            insert(patients)
            .values(
                patient_id=p.patient_id,
                issuer_of_patient_id=p.issuer_of_patient_id,
                patient_name=p.patient_name,
                patient_name_search=p.patient_name.upper(),
                patient_birth_date=p.patient_birth_date,
                patient_sex=p.patient_sex,
                created_at=now,
            )
            .returning(patients.c.pk)
        ).scalar_one()

    def _study_pk(
        self, conn: Connection, header: ParsedHeader, now: datetime
    ) -> tuple[int, bool]:
        s = header.study
        pk = conn.execute(
            select(studies.c.pk).where(studies.c.study_instance_uid == s.study_instance_uid)
        ).scalar()
        if pk is not None:
            # The patient is looked up only for a new study: a study reconciled
            # to another patient (pipeline.worklist.reconcile) keeps that
            # patient, and a later series must not re-create the received one.
            return pk, False
        patient_pk = self._patient_pk(conn, header, now)
        pk = conn.execute(
            insert(studies)
            .values(
                study_instance_uid=s.study_instance_uid,
                patient_pk=patient_pk,
                study_date=s.study_date,
                study_time=s.study_time,
                accession_number=s.accession_number,
                study_id=s.study_id,
                study_description=s.study_description,
                referring_physician_name=s.referring_physician_name,
                referring_physician_search=person_name_key(s.referring_physician_name),
                modalities_in_study="",
                number_of_series=0,
                number_of_instances=0,
                created_at=now,
                updated_at=now,
            )
            .returning(studies.c.pk)
        ).scalar_one()
        return pk, True

    def _series_pk(
        self, conn: Connection, header: ParsedHeader, study_pk: int, now: datetime
    ) -> tuple[int, bool]:
        s = header.series
        pk = conn.execute(
            select(series.c.pk).where(series.c.series_instance_uid == s.series_instance_uid)
        ).scalar()
        if pk is not None:
            return pk, False
        pk = conn.execute(
            insert(series)
            .values(
                series_instance_uid=s.series_instance_uid,
                study_pk=study_pk,
                modality=s.modality,
                series_number=s.series_number,
                series_description=s.series_description,
                series_date=s.series_date,
                series_time=s.series_time,
                body_part_examined=s.body_part_examined,
                performed_procedure_step_start_date=s.performed_procedure_step_start_date,
                performed_procedure_step_start_time=s.performed_procedure_step_start_time,
                number_of_instances=0,
                created_at=now,
                updated_at=now,
            )
            .returning(series.c.pk)
        ).scalar_one()
        conn.execute(
            update(studies)
            .where(studies.c.pk == study_pk)
            .values(number_of_series=studies.c.number_of_series + 1, updated_at=now)
        )
        return pk, True

    @staticmethod
    def _count_instance(
        conn: Connection, series_pk: int, study_pk: int, now: datetime, delta: int = 1
    ) -> None:
        conn.execute(_COUNT_SERIES, {"b_pk": series_pk, "b_delta": delta, "b_now": now})
        conn.execute(_COUNT_STUDY, {"b_pk": study_pk, "b_delta": delta, "b_now": now})

    @staticmethod
    def _refresh_study_modalities(conn: Connection, study_pk: int) -> None:
        # Modalities in Study (0008,0061) is derived from the series (PS3.4 C.6.1.1.3).
        modalities = conn.execute(
            select(series.c.modality)
            .where(series.c.study_pk == study_pk, series.c.modality != "")
            .distinct()
            .order_by(series.c.modality)
        ).scalars()
        conn.execute(
            update(studies)
            .where(studies.c.pk == study_pk)
            .values(modalities_in_study="\\".join(modalities))
        )

    # -- reads --------------------------------------------------------------

    _instance_columns = (
        instances.c.sop_instance_uid,
        instances.c.sop_class_uid,
        series.c.series_instance_uid,
        studies.c.study_instance_uid,
        patients.c.patient_id,
        instances.c.instance_number,
        instances.c.transfer_syntax_uid,
        instances.c.rows,
        instances.c.columns,
        instances.c.number_of_frames,
        instances.c.size,
        instances.c.sha256,
        instances.c.storage_key,
        instances.c.received_at,
        instances.c.calling_ae,
        instances.c.source,
        instances.c.pixel_state,
        instances.c.pixel_error,
    )

    def _instance_query(self):  # type: ignore[no-untyped-def]
        return (
            select(*self._instance_columns)
            .join(series, instances.c.series_pk == series.c.pk)
            .join(studies, series.c.study_pk == studies.c.pk)
            .join(patients, studies.c.patient_pk == patients.c.pk)
        )

    def stored_blob(self, sop_instance_uid: str) -> StoredBlob | None:
        with self._engine.connect() as conn:
            row = conn.execute(_SELECT_BLOB, {"b_uid": sop_instance_uid}).first()
        return StoredBlob(*row) if row else None

    def get_instance(self, sop_instance_uid: str) -> InstanceRow | None:
        # Every rendered, frame and record request starts here: the statement
        # is built once per index (see _SELECT_BLOB for why).
        statement = self.__dict__.get("_get_instance_statement")
        if statement is None:
            statement = self._instance_query().where(
                instances.c.sop_instance_uid == bindparam("i_uid")
            )
            self.__dict__["_get_instance_statement"] = statement
        with self._engine.connect() as conn:
            row = conn.execute(statement, {"i_uid": sop_instance_uid}).first()
        return _instance_row(row) if row else None

    def list_instances(
        self, study_instance_uid: str | None = None, series_instance_uid: str | None = None
    ) -> list[InstanceRow]:
        query = self._instance_query()
        if study_instance_uid is not None:
            query = query.where(studies.c.study_instance_uid == study_instance_uid)
        if series_instance_uid is not None:
            query = query.where(series.c.series_instance_uid == series_instance_uid)
        # Instances without an Instance Number last, on every backend (PostgreSQL
        # sorts NULL last, SQLite first).
        query = query.order_by(
            instances.c.instance_number.is_(None), instances.c.instance_number, instances.c.pk
        )
        with self._engine.connect() as conn:
            return [_instance_row(row) for row in conn.execute(query)]

    def get_series(self, series_instance_uid: str) -> SeriesRow | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    series.c.series_instance_uid,
                    studies.c.study_instance_uid,
                    series.c.modality,
                    series.c.series_number,
                    series.c.series_description,
                    series.c.number_of_instances,
                )
                .join(studies, series.c.study_pk == studies.c.pk)
                .where(series.c.series_instance_uid == series_instance_uid)
            ).first()
        return SeriesRow(*row) if row else None

    _study_columns = (
        studies.c.study_instance_uid,
        patients.c.patient_id,
        patients.c.patient_name,
        patients.c.patient_birth_date,
        patients.c.patient_sex,
        studies.c.study_date,
        studies.c.study_time,
        studies.c.accession_number,
        studies.c.study_id,
        studies.c.study_description,
        studies.c.referring_physician_name,
        studies.c.modalities_in_study,
        studies.c.number_of_series,
        studies.c.number_of_instances,
    )

    @staticmethod
    def _study_row(row: Any) -> StudyRow:
        values = list(row)
        values[11] = tuple(m for m in values[11].split("\\") if m)
        return StudyRow(*values)

    def get_study(self, study_instance_uid: str) -> StudyRow | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(*self._study_columns)
                .join(patients, studies.c.patient_pk == patients.c.pk)
                .where(studies.c.study_instance_uid == study_instance_uid)
            ).first()
        return self._study_row(row) if row else None

    def search_studies(
        self,
        *,
        patient_id: str | None = None,
        accession_number: str | None = None,
        study_date_from: str | None = None,
        study_date_to: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[StudyRow]:
        query = select(*self._study_columns).join(patients, studies.c.patient_pk == patients.c.pk)
        if patient_id is not None:
            query = query.where(patients.c.patient_id == patient_id)
        if accession_number is not None:
            query = query.where(studies.c.accession_number == accession_number)
        if study_date_from:
            query = query.where(studies.c.study_date >= study_date_from)
        if study_date_to:
            query = query.where(studies.c.study_date <= study_date_to)
        query = query.order_by(studies.c.pk).limit(limit).offset(offset)
        with self._engine.connect() as conn:
            return [self._study_row(row) for row in conn.execute(query)]

    def counts(self) -> IndexCounts:
        with self._engine.connect() as conn:
            n = {
                name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (
                    ("patients", patients),
                    ("studies", studies),
                    ("series", series),
                    ("instances", instances),
                )
            }
            total = conn.execute(select(func.coalesce(func.sum(instances.c.size), 0))).scalar_one()
            pixel = {
                (state.value if isinstance(state, PixelState) else str(state)): count
                for state, count in conn.execute(
                    select(instances.c.pixel_state, func.count()).group_by(instances.c.pixel_state)
                )
            }
            work: dict[str, dict[str, int]] = {}
            for stage, state, count in conn.execute(
                select(work_items.c.stage, work_items.c.state, func.count()).group_by(
                    work_items.c.stage, work_items.c.state
                )
            ):
                key = state.value if isinstance(state, WorkState) else str(state)
                work.setdefault(stage, {})[key] = count
        return IndexCounts(bytes=int(total), pixel_states=pixel, work=work, **n)

    # -- work queue ---------------------------------------------------------

    def claim_work(self, stage: str, limit: int, lease_seconds: float = 300.0) -> list[WorkItem]:
        now = _now()
        claimable = or_(
            work_items.c.state == WorkState.PENDING,
            and_(work_items.c.state == WorkState.CLAIMED, work_items.c.claimed_until < now),
        )
        # A read first: an idle stage polls often, and a write transaction
        # would take the writers' lock from ingest each time for nothing.
        with self._engine.connect() as conn:
            probe = select(work_items.c.pk).where(work_items.c.stage == stage, claimable).limit(1)
            if conn.execute(probe).first() is None:
                return []
        with self._write() as conn:
            query = (
                select(
                    work_items.c.pk,
                    work_items.c.stage,
                    instances.c.sop_instance_uid,
                    instances.c.storage_key,
                    work_items.c.attempts,
                )
                .join(instances, work_items.c.instance_pk == instances.c.pk)
                .where(work_items.c.stage == stage, claimable)
                .order_by(work_items.c.pk)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True, of=work_items)
            rows = conn.execute(query).all()
            if not rows:
                return []
            conn.execute(
                update(work_items)
                .where(work_items.c.pk.in_([r.pk for r in rows]))
                .values(
                    state=WorkState.CLAIMED,
                    attempts=work_items.c.attempts + 1,
                    claimed_until=now + timedelta(seconds=lease_seconds),
                    updated_at=now,
                )
            )
        return [
            WorkItem(r.pk, r.stage, r.sop_instance_uid, r.storage_key, r.attempts + 1, WorkState.CLAIMED)
            for r in rows
        ]

    def complete_work(self, pks: list[int]) -> None:
        if not pks:
            return
        with self._write() as conn:
            conn.execute(
                update(work_items)
                .where(work_items.c.pk.in_(pks))
                .values(state=WorkState.DONE, claimed_until=None, updated_at=_now())
            )

    def fail_work(self, pk: int, reason: str) -> None:
        with self._write() as conn:
            conn.execute(
                update(work_items)
                .where(work_items.c.pk == pk)
                .values(state=WorkState.FAILED, error=reason, claimed_until=None, updated_at=_now())
            )

    # -- pixel state ----------------------------------------------------------

    def finish_pixel_work(
        self, pk: int, sop_instance_uid: str, state: PixelState, error: str | None = None
    ) -> None:
        """Record a decode outcome and close its work item, in one transaction.

        A crash before this commits leaves the item claimed; its lease runs
        out and the (idempotent) decode runs again.
        """
        now = _now()
        work_state = WorkState.FAILED if state is PixelState.FAILED else WorkState.DONE
        with self._write() as conn:
            conn.execute(
                update(instances)
                .where(instances.c.sop_instance_uid == sop_instance_uid)
                .values(pixel_state=state, pixel_error=error)
            )
            conn.execute(
                update(work_items)
                .where(work_items.c.pk == pk)
                .values(state=work_state, error=error, claimed_until=None, updated_at=now)
            )

    def requeue_pixels(self, stage: str, states: tuple[PixelState, ...]) -> int:
        """Queue ``stage`` again for every instance whose pixel state is in ``states``.

        Used by ``lightbox redecode``; returns how many instances were queued.
        """
        now = _now()
        with self._write() as conn:
            pks = list(
                conn.execute(
                    select(instances.c.pk).where(instances.c.pixel_state.in_(states))
                ).scalars()
            )
            if not pks:
                return 0
            conn.execute(
                update(work_items)
                .where(
                    work_items.c.instance_pk.in_(pks),
                    work_items.c.stage == stage,
                    work_items.c.state.in_([WorkState.PENDING, WorkState.CLAIMED]),
                )
                .values(state=WorkState.DONE, error="superseded", updated_at=now)
            )
            conn.execute(
                update(instances)
                .where(instances.c.pk.in_(pks))
                .values(pixel_state=PixelState.PENDING, pixel_error=None)
            )
            conn.execute(
                insert(work_items),
                [
                    dict(
                        instance_pk=pk,
                        stage=stage,
                        state=WorkState.PENDING,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                    for pk in pks
                ],
            )
        return len(pks)

    def pixel_failures(self, limit: int = 100) -> list[tuple[str, str]]:
        """(SOP Instance UID, reason) of instances whose pixels failed to decode."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(instances.c.sop_instance_uid, instances.c.pixel_error)
                .where(instances.c.pixel_state == PixelState.FAILED)
                .order_by(instances.c.pk)
                .limit(limit)
            ).all()
        return [(uid, error or "") for uid, error in rows]

    def release_claims(self) -> int:
        """Make every claimed work item pending again; returns how many.

        For a server starting alone on its index (the embedded default): the
        claims of its previous run died with it, and waiting for their leases
        to run out would only delay the work.
        """
        with self._write() as conn:
            result = conn.execute(
                update(work_items)
                .where(work_items.c.state == WorkState.CLAIMED)
                .values(state=WorkState.PENDING, claimed_until=None, updated_at=_now())
            )
        return int(result.rowcount or 0)

    def select_instances(
        self,
        *,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        modality: str | None = None,
        study_date_from: str | None = None,
        study_date_to: str | None = None,
        pixel_state: PixelState | None = PixelState.READY,
    ) -> list[tuple[str, str, int]]:
        """(SOP Instance UID, storage key, frames) of the instances a batch job selects."""
        query = (
            select(
                instances.c.sop_instance_uid, instances.c.storage_key, instances.c.number_of_frames
            )
            .join(series, instances.c.series_pk == series.c.pk)
            .join(studies, series.c.study_pk == studies.c.pk)
        )
        if study_instance_uid is not None:
            query = query.where(studies.c.study_instance_uid == study_instance_uid)
        if series_instance_uid is not None:
            query = query.where(series.c.series_instance_uid == series_instance_uid)
        if modality is not None:
            query = query.where(series.c.modality == modality)
        if study_date_from:
            query = query.where(studies.c.study_date >= study_date_from)
        if study_date_to:
            query = query.where(studies.c.study_date <= study_date_to)
        if pixel_state is not None:
            query = query.where(instances.c.pixel_state == pixel_state)
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(instances.c.pk)).all()
        return [(uid, key, int(frames or 1)) for uid, key, frames in rows]
