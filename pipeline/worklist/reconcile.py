"""Reconciliation: link each stored study to its order, or put it on the reconciliation list.

IHE Scheduled Workflow (RAD TF-1 4) has the modality copy the order's keys
from the worklist into the images: the Study Instance UID the registration
generated for the Requested Procedure (RAD TF-2 4.5.4.1.2.2) and the
Accession Number. A uni-directional device has no worklist: its images carry
whatever the operator typed. Patient Information Reconciliation (RAD TF-1 5)
then corrects the archive's record from the registration's.

A study is linked to an order, in this order of preference, by

1. its Study Instance UID, equal to a Requested Procedure's;
2. its Accession Number (0008,0050), equal to an order's;
3. its Patient ID (and issuer, when the study names one), a modality of its
   series and its Study Date equal to a Scheduled Procedure Step's Modality
   and Start Date, when exactly one order fits (several: a person decides).

Cancelled orders never match. What matches nothing goes on the
reconciliation list (``study_links`` row in state ``unmatched``) until a user
links it (:meth:`Reconciler.link`, ``POST /api/reconciliation/{study}/link``).

Linking corrects the index, not the files: the study moves to the patient
row of the registered Patient ID and issuer (created, or given the
registered name, birth date and sex), and takes the order's Accession Number
and Referring Physician's Name. C-FIND and QIDO-RS answer from the index, so
they return the corrected values; the stored bytes stay as received (the
received values are kept in ``study_links.received``). Retrieval (WADO-RS,
C-MOVE, C-GET) sends the stored bytes unchanged: see the README.

When it runs: :class:`StudyLinker`. The ingest service notices a study after
its instance is committed and hands its UID to a background thread of the
same process; the C-STORE answer never waits for the matching nor fails with
it. Each study is looked at once (the ``study_links`` row makes it
idempotent); a study that a crash left without a row is found by the sweep
(:meth:`Reconciler.reconcile_pending`) the thread runs when it starts.

Nothing here logs a patient's name, ID or birth date, nor a UID.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.errors import InvalidState, NotFound
from pipeline.index.records import person_name_key
from pipeline.index.schema import (
    LinkState,
    OrderState,
    orders,
    patients,
    registered_patients,
    requested_procedures,
    scheduled_procedure_steps,
    series,
    studies,
    study_links,
)
from pipeline.worklist.history import record_change
from pipeline.worklist.records import utc

if TYPE_CHECKING:
    from pipeline.index.sql import SqlIndex

log = logging.getLogger(__name__)

#: The actor of an automatic link, in ``study_links.actor`` and the history.
SYSTEM = "system"

#: How a study was linked (``study_links.method``).
BY_STUDY_UID = "study_uid"
BY_ACCESSION = "accession"
BY_PATIENT_MODALITY_DATE = "patient_modality_date"
MANUAL = "manual"

#: A write that met another process's concurrent insert is tried once more.
_ATTEMPTS = (1, 2)

#: The patient and study attributes reconciliation corrects (and keeps as
#: received): index column -> DICOM keyword, the one list retrieval applies
#: too (:mod:`pipeline.retrieve.corrections`).
CORRECTED: dict[str, str] = {
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "accession_number": "AccessionNumber",
    "referring_physician_name": "ReferringPhysicianName",
}


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StudyLink:
    """Where a stored study stands: linked to an order, or on the reconciliation list."""

    study_instance_uid: str
    state: LinkState
    order_id: int | None
    accession_number: str  # the order's when linked, else the study's
    method: str
    reason: str
    actor: str
    #: The attributes as the images carried them before any correction.
    received: dict[str, str]
    updated_at: datetime


@dataclass(frozen=True)
class UnmatchedStudy:
    """A study on the reconciliation list, with what the index says of it."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    accession_number: str
    referring_physician_name: str
    study_date: str
    study_time: str
    study_description: str
    modalities_in_study: str
    number_of_instances: int
    calling_ae: str
    reason: str
    since: datetime


_STUDY_COLUMNS = (
    studies.c.pk,
    studies.c.study_instance_uid,
    studies.c.patient_pk,
    studies.c.study_date,
    studies.c.accession_number,
    studies.c.referring_physician_name,
    patients.c.patient_id,
    patients.c.issuer_of_patient_id,
    patients.c.patient_name,
    patients.c.patient_birth_date,
    patients.c.patient_sex,
)


class Reconciler:
    """Match stored studies to orders; keep the reconciliation list; link by hand.

    Parameters
    ----------
    index
        The index whose database holds the studies and the registration
        (reads through ``index.engine``, writes in ``index.write_transaction()``).
    """

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    # -- automatic ----------------------------------------------------------------------

    def reconcile_study(self, study_uid: str) -> StudyLink | None:
        """Link the stored study ``study_uid`` to its order or list it as unmatched.

        A study already looked at is left as it is (a manual link is never
        undone by a later instance). Returns its link, or None when the study
        is not in the index.
        """
        for attempt in _ATTEMPTS:
            try:
                with self.index.write_transaction() as conn:
                    study = self._study(conn, study_uid)
                    if study is None:
                        return None
                    if conn.execute(
                        select(study_links.c.pk).where(study_links.c.study_pk == study.pk)
                    ).first() is None:
                        self._reconcile(conn, study)
                break
            except IntegrityError:
                # Another process wrote in between (PostgreSQL; SQLite writers
                # are serialised): the study's link (then the retry finds it
                # and leaves it), or the index row of the registered patient
                # that _correct was about to insert (then the retry moves the
                # study onto it). Not retrying left the study without a link
                # until the next sweep, which runs only when a process starts.
                if attempt == _ATTEMPTS[-1]:
                    raise
        return self.link_of(study_uid)

    def reconcile_pending(self, limit: int = 500) -> int:
        """Look at up to ``limit`` stored studies that have no link yet; how many.

        The sweep that catches a study whose notice a crash lost.
        """
        with self.index.engine.connect() as conn:
            uids = conn.execute(
                select(studies.c.study_instance_uid)
                .where(~select(study_links.c.pk).where(study_links.c.study_pk == studies.c.pk).exists())
                .order_by(studies.c.pk)
                .limit(limit)
            ).scalars().all()
        for uid in uids:
            self.reconcile_study(uid)
        return len(uids)

    def sweep(self, batch: int = 500) -> int:
        """:meth:`reconcile_pending` until no study is left without a link; how many."""
        total = 0
        while True:
            done = self.reconcile_pending(batch)
            total += done
            if done < batch:
                return total

    def _reconcile(self, conn: Connection, study: Any) -> None:
        order_pk, method, reason = self._match(conn, study)
        now = _now()
        received = {k: getattr(study, k) for k in CORRECTED}
        conn.execute(
            insert(study_links).values(
                study_pk=study.pk,
                order_pk=order_pk,
                state=(LinkState.LINKED if order_pk is not None else LinkState.UNMATCHED).value,
                method=method,
                reason=reason,
                actor=SYSTEM,
                received=json.dumps(received, sort_keys=True),
                created_at=now,
                updated_at=now,
            )
        )
        if order_pk is not None:
            self._correct(conn, study, order_pk, now)
            record_change(
                conn, SYSTEM, "order", order_pk, "link", None,
                {"study_instance_uid": study.study_instance_uid, "method": method},
            )  # fmt: skip
        log.info("study reconciled state=%s method=%s", "linked" if order_pk else "unmatched", method or "-")

    def _match(self, conn: Connection, study: Any) -> tuple[int | None, str, str]:
        """(order pk, method, "") for a match, (None, "", why) for none."""
        open_order = orders.c.state != OrderState.CANCELLED.value
        by_uid = conn.execute(
            select(requested_procedures.c.order_pk)
            .join(orders, orders.c.pk == requested_procedures.c.order_pk)
            .where(requested_procedures.c.study_instance_uid == study.study_instance_uid, open_order)
        ).scalar()
        if by_uid is not None:
            return by_uid, BY_STUDY_UID, ""
        if study.accession_number:
            by_accession = conn.execute(
                select(orders.c.pk).where(
                    orders.c.accession_number == study.accession_number, open_order
                )
            ).scalar()
            if by_accession is not None:
                return by_accession, BY_ACCESSION, ""
        if not (study.patient_id and study.study_date):
            return None, "", "no order has its Study Instance UID or Accession Number"
        modalities = conn.execute(
            select(series.c.modality)
            .where(series.c.study_pk == study.pk, series.c.modality != "")
            .distinct()
        ).scalars().all()
        if not modalities:
            return None, "", "no order has its Study Instance UID or Accession Number"
        query = (
            select(orders.c.pk)
            .join(registered_patients, registered_patients.c.pk == orders.c.patient_pk)
            .join(requested_procedures, requested_procedures.c.order_pk == orders.c.pk)
            .join(
                scheduled_procedure_steps,
                scheduled_procedure_steps.c.procedure_pk == requested_procedures.c.pk,
            )
            .where(
                open_order,
                registered_patients.c.patient_id == study.patient_id,
                scheduled_procedure_steps.c.modality.in_(modalities),
                scheduled_procedure_steps.c.start_date == study.study_date,
            )
            .distinct()
        )
        if study.issuer_of_patient_id:
            # A study that names its issuer is only that issuer's patient;
            # one that does not may be any issuer's (PS3.3 C.7.1.1).
            query = query.where(
                registered_patients.c.issuer_of_patient_id == study.issuer_of_patient_id
            )
        candidates = conn.execute(query.limit(2)).scalars().all()
        if len(candidates) == 1:
            return candidates[0], BY_PATIENT_MODALITY_DATE, ""
        if candidates:
            return None, "", "several orders match its Patient ID, modality and date"
        return None, "", "no order matches its Study Instance UID, Accession Number, or Patient ID, modality and date"

    # -- by hand ------------------------------------------------------------------------

    def link(self, study_uid: str, order_id: int, *, actor: str) -> StudyLink:
        """Link the study to the order ``order_id`` by hand, and correct the index.

        Also re-links a study linked to another order (a wrong automatic
        link); the attributes as received are those of the first look.

        Raises
        ------
        NotFound
            No such study, or no such order.
        InvalidState
            The order is cancelled.
        """
        for attempt in _ATTEMPTS:
            try:
                self._link(study_uid, order_id, actor)
                break
            except IntegrityError:
                # As in reconcile_study: another process inserted the study's
                # link or the registered patient's index row meanwhile; the
                # retry sees it (without it the caller got a 500).
                if attempt == _ATTEMPTS[-1]:
                    raise
        log.info("study linked by hand order=%d", order_id)
        link = self.link_of(study_uid)
        assert link is not None
        return link

    def _link(self, study_uid: str, order_id: int, actor: str) -> None:
        """:meth:`link`'s transaction."""
        now = _now()
        with self.index.write_transaction() as conn:
            study = self._study(conn, study_uid)
            if study is None:
                raise NotFound("no such study")
            state = conn.execute(select(orders.c.state).where(orders.c.pk == order_id)).scalar()
            if state is None:
                raise NotFound("no such order")
            if state == OrderState.CANCELLED.value:
                raise InvalidState("the order is cancelled: a study is not linked to it")
            existing = conn.execute(
                select(study_links).where(study_links.c.study_pk == study.pk)
            ).first()
            values = dict(
                order_pk=order_id,
                state=LinkState.LINKED.value,
                method=MANUAL,
                reason="",
                actor=actor,
                updated_at=now,
            )
            if existing is None:
                received = {k: getattr(study, k) for k in CORRECTED}
                conn.execute(
                    insert(study_links).values(
                        study_pk=study.pk,
                        received=json.dumps(received, sort_keys=True),
                        created_at=now,
                        **values,
                    )
                )
            else:
                conn.execute(
                    update(study_links).where(study_links.c.pk == existing.pk).values(**values)
                )
            self._correct(conn, study, order_id, now)
            record_change(
                conn, actor, "order", order_id, "link",
                None if existing is None or existing.order_pk is None
                else {"order_pk": existing.order_pk},
                {"study_instance_uid": study_uid, "method": MANUAL},
            )  # fmt: skip

    def _correct(self, conn: Connection, study: Any, order_pk: int, now: datetime) -> None:
        """Give the study the registration's patient, accession number and referring physician.

        The index's patient rows are keyed by Patient ID and issuer: the
        study moves to the registered patient's row (the registration's
        demographics win, IHE RAD TF-1 5); the received patient row goes when
        no study is left on it.
        """
        order = conn.execute(
            select(
                orders.c.accession_number,
                orders.c.referring_physician_name,
                registered_patients.c.patient_id,
                registered_patients.c.issuer_of_patient_id,
                registered_patients.c.patient_name,
                registered_patients.c.patient_birth_date,
                registered_patients.c.patient_sex,
            )
            .join(registered_patients, registered_patients.c.pk == orders.c.patient_pk)
            .where(orders.c.pk == order_pk)
        ).one()
        demographics = dict(
            patient_name=order.patient_name,
            # As the ingest path writes it (pipeline.index.sql): the query's PN key.
            patient_name_search=order.patient_name.upper(),
            patient_birth_date=order.patient_birth_date,
            patient_sex=order.patient_sex,
        )
        target = conn.execute(
            select(patients.c.pk).where(
                patients.c.patient_id == order.patient_id,
                patients.c.issuer_of_patient_id == order.issuer_of_patient_id,
            )
        ).scalar()
        if target is None:
            target = conn.execute(
                insert(patients)
                .values(
                    patient_id=order.patient_id,
                    issuer_of_patient_id=order.issuer_of_patient_id,
                    created_at=now,
                    **demographics,
                )
                .returning(patients.c.pk)
            ).scalar_one()
        else:
            conn.execute(update(patients).where(patients.c.pk == target).values(**demographics))
        conn.execute(
            update(studies)
            .where(studies.c.pk == study.pk)
            .values(
                patient_pk=target,
                accession_number=order.accession_number,
                referring_physician_name=order.referring_physician_name,
                referring_physician_search=person_name_key(order.referring_physician_name),
                updated_at=now,
            )
        )
        if study.patient_pk != target:
            left = conn.execute(
                select(func.count()).select_from(studies).where(studies.c.patient_pk == study.patient_pk)
            ).scalar_one()
            if left == 0:
                conn.execute(delete(patients).where(patients.c.pk == study.patient_pk))

    # -- reads --------------------------------------------------------------------------

    def link_of(self, study_uid: str) -> StudyLink | None:
        """The study's link (None: not looked at yet, or no such study)."""
        with self.index.engine.connect() as conn:
            row = conn.execute(
                select(
                    study_links,
                    orders.c.accession_number.label("order_accession"),
                    studies.c.accession_number.label("study_accession"),
                )
                .join(studies, studies.c.pk == study_links.c.study_pk)
                .outerjoin(orders, orders.c.pk == study_links.c.order_pk)
                .where(studies.c.study_instance_uid == study_uid)
            ).first()
        if row is None:
            return None
        return StudyLink(
            study_instance_uid=study_uid,
            state=LinkState(row.state),
            order_id=row.order_pk,
            accession_number=row.order_accession or row.study_accession,
            method=row.method,
            reason=row.reason,
            actor=row.actor,
            received=json.loads(row.received or "{}"),
            updated_at=utc(row.updated_at),
        )

    def unmatched(self, *, limit: int = 100, offset: int = 0) -> builtins.list[UnmatchedStudy]:
        """The reconciliation list: unmatched studies, longest waiting first."""
        from pipeline.index.schema import instances

        calling_ae = (
            select(instances.c.calling_ae)
            .join(series, series.c.pk == instances.c.series_pk)
            .where(series.c.study_pk == studies.c.pk)
            .order_by(instances.c.pk)
            .limit(1)
            .scalar_subquery()
        )
        query = (
            select(
                *_STUDY_COLUMNS,
                studies.c.study_time,
                studies.c.study_description,
                studies.c.modalities_in_study,
                studies.c.number_of_instances,
                study_links.c.reason,
                study_links.c.created_at.label("since"),
                calling_ae.label("calling_ae"),
            )
            .join(study_links, study_links.c.study_pk == studies.c.pk)
            .join(patients, patients.c.pk == studies.c.patient_pk)
            .where(study_links.c.state == LinkState.UNMATCHED.value)
            .order_by(study_links.c.pk)
            .limit(limit)
            .offset(offset)
        )
        with self.index.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            UnmatchedStudy(
                study_instance_uid=r.study_instance_uid,
                patient_id=r.patient_id,
                issuer_of_patient_id=r.issuer_of_patient_id,
                patient_name=r.patient_name,
                patient_birth_date=r.patient_birth_date,
                patient_sex=r.patient_sex,
                accession_number=r.accession_number,
                referring_physician_name=r.referring_physician_name,
                study_date=r.study_date,
                study_time=r.study_time,
                study_description=r.study_description,
                modalities_in_study=r.modalities_in_study,
                number_of_instances=r.number_of_instances,
                calling_ae=r.calling_ae or "",
                reason=r.reason,
                since=utc(r.since),
            )
            for r in rows
        ]

    @staticmethod
    def _study(conn: Connection, study_uid: str) -> Any:
        return conn.execute(
            select(*_STUDY_COLUMNS)
            .join(patients, patients.c.pk == studies.c.patient_pk)
            .where(studies.c.study_instance_uid == study_uid)
        ).first()


class StudyLinker:
    """Run :class:`Reconciler` beside ingest: one background thread per process.

    :meth:`notice` is what the ingest service calls after each commit: a
    look-up in a set of recently seen studies and, for a new one, an append
    to a queue. The thread does the matching and the write, so that the
    C-STORE answer neither waits for it nor fails with it (a failure is
    logged and the study is looked at again on its next instance or the
    next sweep). The thread starts with the first notice and first sweeps
    the studies left without a link.
    """

    def __init__(self, index: SqlIndex, *, remember: int = 10_000) -> None:
        self.reconciler = Reconciler(index)
        self._remember = remember
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._queue: deque[str] = deque()
        self._busy = 0  # notices queued or being worked on
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def notice(self, study_uid: str) -> None:
        """A study got an instance: look at it once (never blocks on the database)."""
        with self._cond:
            if study_uid in self._seen:
                self._seen.move_to_end(study_uid)
                return
            self._seen[study_uid] = None
            while len(self._seen) > self._remember:
                self._seen.popitem(last=False)
            self._queue.append(study_uid)
            self._busy += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="lightbox-reconcile", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every noticed study has been looked at; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout)

    def _run(self) -> None:
        try:
            self.reconciler.sweep()
        except Exception as exc:  # the sweep is retried when the process starts again
            log.warning("reconciliation sweep failed: %s", type(exc).__name__)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue))
                uid = self._queue.popleft()
            try:
                self.reconciler.reconcile_study(uid)
            except Exception as exc:
                log.warning("reconciliation of a study failed: %s", type(exc).__name__)
                with self._cond:
                    self._seen.pop(uid, None)  # its next instance tries again
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()
