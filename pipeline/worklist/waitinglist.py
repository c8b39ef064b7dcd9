"""The Waiting list: every order and every stored study, with its workflow state.

What the viewer's "Operation -> Waiting list" page shows: the work of the
department from the order to the report. One entry is either

* an order (not cancelled) whose images have not arrived: **scheduled**
  while its Scheduled Procedure Steps wait, **in_progress** once a modality
  reported an MPPS IN PROGRESS (PS3.4 F.7.1; also after its MPPS COMPLETED
  while the images are still on their way);
* a stored study: **in_progress** when it is linked to an order whose MPPS
  is still IN PROGRESS (images arriving), **acquired** when it is linked and
  the acquisition is done (MPPS COMPLETED or DISCONTINUED, or no MPPS at all
  from a uni-directional device), **unmatched** when no order is linked
  (on the reconciliation list, or not yet looked at by
  :mod:`pipeline.worklist.reconcile`).

**reading**, **reported** and **final** are the states the reporting
workflow will add (IHE RAD TF-1 4: the report's steps); Lightbox has no
reports yet, so no entry reaches them. They are defined here so that the API
and the page know them already.

An order with several requested procedures is one entry (its first
procedure's study, step and modality); an order with a linked study is shown
by its studies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Integer,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    union_all,
)

from pipeline.errors import InvalidRequest
from pipeline.index.records import person_name_key
from pipeline.index.schema import (
    LinkState,
    OrderState,
    orders,
    patients,
    registered_patients,
    requested_procedures,
    scheduled_procedure_steps,
    studies,
    study_links,
)

if TYPE_CHECKING:
    from pipeline.index.sql import SqlIndex


class WorkflowState(str, enum.Enum):
    """Where an entry of the Waiting list stands, in workflow order."""

    SCHEDULED = "scheduled"
    IN_PROGRESS = "in_progress"
    ACQUIRED = "acquired"
    UNMATCHED = "unmatched"
    #: Reporting states: defined, not reachable until reports exist.
    READING = "reading"
    REPORTED = "reported"
    FINAL = "final"


#: The workflow order, for sorting by state.
_RANK = {s.value: i for i, s in enumerate(WorkflowState)}


class SortKey(str, enum.Enum):
    DATE = "date"
    MODALITY = "modality"
    STATE = "state"
    PATIENT = "patient"
    REFERRING_PHYSICIAN = "referring_physician"


@dataclass(frozen=True)
class WaitingEntry:
    """One line of the Waiting list."""

    state: WorkflowState
    #: The stored study's, or the one the order's procedure expects.
    study_instance_uid: str
    #: The linked order (None for an unmatched study).
    order_id: int | None
    accession_number: str
    patient_id: str
    patient_name: str
    #: Modalities in Study (backslash-separated) or the scheduled step's modality.
    modality: str
    #: Study Date and Time, or the step's scheduled start (DA, TM).
    date: str
    time: str
    description: str
    referring_physician_name: str
    number_of_instances: int


@dataclass(frozen=True)
class WaitingPage:
    entries: list[WaitingEntry]
    total: int


@dataclass(frozen=True)
class WaitingFilter:
    """What to show; every field given narrows the list.

    ``patient`` matches a Patient ID exactly or the start of a patient's
    name without case; ``referring_physician`` the start of the name;
    ``scope`` (a :func:`person_name_key`, "" matching nothing) restricts a
    referring physician to their own entries (``api.access``).
    """

    states: tuple[WorkflowState, ...] = ()
    modality: str = ""
    patient: str = ""
    referring_physician: str = ""
    date_from: date | None = None
    date_to: date | None = None
    scope: str | None = None


def _studies_part() -> Any:
    linked = study_links.c.state == LinkState.LINKED.value
    return (
        select(
            studies.c.study_instance_uid.label("study_instance_uid"),
            case((linked, study_links.c.order_pk), else_=None).label("order_id"),
            studies.c.accession_number.label("accession_number"),
            patients.c.patient_id.label("patient_id"),
            patients.c.patient_name.label("patient_name"),
            patients.c.patient_name_search.label("patient_key"),
            studies.c.modalities_in_study.label("modality"),
            studies.c.study_date.label("date"),
            studies.c.study_time.label("time"),
            studies.c.study_description.label("description"),
            studies.c.referring_physician_name.label("referring_physician_name"),
            studies.c.referring_physician_search.label("referring_key"),
            studies.c.number_of_instances.label("number_of_instances"),
            case(
                (
                    and_(linked, orders.c.state == OrderState.IN_PROGRESS.value),
                    WorkflowState.IN_PROGRESS.value,
                ),
                (linked, WorkflowState.ACQUIRED.value),
                else_=WorkflowState.UNMATCHED.value,
            ).label("state"),
        )
        .select_from(studies)
        .join(patients, patients.c.pk == studies.c.patient_pk)
        .outerjoin(study_links, study_links.c.study_pk == studies.c.pk)
        .outerjoin(orders, orders.c.pk == study_links.c.order_pk)
    )


def _orders_part() -> Any:
    rp = requested_procedures
    sps = scheduled_procedure_steps
    inner = rp.alias("first_rp")
    first_procedure = (
        select(func.min(inner.c.pk)).where(inner.c.order_pk == orders.c.pk).scalar_subquery()
    )
    has_images = (
        select(study_links.c.pk)
        .where(
            study_links.c.order_pk == orders.c.pk,
            study_links.c.state == LinkState.LINKED.value,
        )
        .exists()
    )
    return (
        select(
            rp.c.study_instance_uid,
            orders.c.pk,
            orders.c.accession_number,
            registered_patients.c.patient_id,
            registered_patients.c.patient_name,
            registered_patients.c.patient_name_search,
            sps.c.modality,
            sps.c.start_date,
            sps.c.start_time,
            rp.c.description,
            orders.c.referring_physician_name,
            orders.c.referring_physician_search,
            literal(0, Integer),
            case(
                (orders.c.state == OrderState.SCHEDULED.value, WorkflowState.SCHEDULED.value),
                else_=WorkflowState.IN_PROGRESS.value,
            ),
        )
        .select_from(orders)
        .join(registered_patients, registered_patients.c.pk == orders.c.patient_pk)
        .join(rp, rp.c.pk == first_procedure)
        .join(sps, sps.c.procedure_pk == rp.c.pk)
        .where(
            orders.c.state.in_(
                [OrderState.SCHEDULED.value, OrderState.IN_PROGRESS.value, OrderState.COMPLETED.value]
            ),
            ~has_images,
        )
    )


class WaitingList:
    """The Waiting list over the index and the registration (both in the index's database)."""

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def entries(
        self,
        filters: WaitingFilter = WaitingFilter(),
        *,
        sort: SortKey | str = SortKey.DATE,
        descending: bool = True,
        limit: int = 100,
        offset: int = 0,
    ) -> WaitingPage:
        """A page of the list, filtered and sorted; ``total`` counts every match.

        Raises
        ------
        InvalidRequest
            An unknown sort key.
        """
        try:
            key = SortKey(sort)
        except ValueError:
            raise InvalidRequest(f"sort: one of {', '.join(k.value for k in SortKey)}") from None
        w = union_all(_studies_part(), _orders_part()).subquery("waiting")
        where = self._where(w, filters)
        rank = case(*((w.c.state == s, r) for s, r in _RANK.items()), else_=len(_RANK))
        primary = {
            SortKey.DATE: [w.c.date, w.c.time],
            SortKey.MODALITY: [w.c.modality],
            SortKey.STATE: [rank],
            SortKey.PATIENT: [w.c.patient_key],
            SortKey.REFERRING_PHYSICIAN: [w.c.referring_key],
        }[key]
        ordering = [c.desc() if descending else c.asc() for c in primary]
        # Ties: newest first, then a stable order for paging.
        ordering += [w.c.date.desc(), w.c.time.desc(), w.c.study_instance_uid]
        query = select(w).where(*where).order_by(*ordering).limit(limit).offset(offset)
        count = select(func.count()).select_from(w).where(*where)
        with self.index.engine.connect() as conn:
            rows = conn.execute(query).all()
            total = conn.execute(count).scalar_one()
        return WaitingPage(
            [
                WaitingEntry(
                    state=WorkflowState(r.state),
                    study_instance_uid=r.study_instance_uid,
                    order_id=r.order_id,
                    accession_number=r.accession_number,
                    patient_id=r.patient_id,
                    patient_name=r.patient_name,
                    modality=r.modality,
                    date=r.date,
                    time=r.time,
                    description=r.description,
                    referring_physician_name=r.referring_physician_name,
                    number_of_instances=r.number_of_instances,
                )
                for r in rows
            ],
            int(total),
        )

    def state_of(self, study_uid: str) -> WorkflowState | None:
        """The state of the entry for ``study_uid`` (a study's, or an order's expected study)."""
        w = union_all(_studies_part(), _orders_part()).subquery("waiting")
        with self.index.engine.connect() as conn:
            value = conn.execute(
                select(w.c.state).where(w.c.study_instance_uid == study_uid).limit(1)
            ).scalar()
        return WorkflowState(value) if value is not None else None

    @staticmethod
    def _where(w: Any, f: WaitingFilter) -> list[Any]:
        where: list[Any] = []
        if f.states:
            where.append(w.c.state.in_([WorkflowState(s).value for s in f.states]))
        if f.modality:
            # Modalities in Study is backslash-separated: match one whole value.
            where.append(
                (literal("\\") + w.c.modality + literal("\\")).contains(
                    f"\\{f.modality.strip().upper()}\\", autoescape=True
                )
            )
        if f.patient:
            where.append(
                or_(
                    w.c.patient_id == f.patient,
                    w.c.patient_key.startswith(person_name_key(f.patient), autoescape=True),
                )
            )
        if f.referring_physician:
            where.append(
                w.c.referring_key.startswith(
                    person_name_key(f.referring_physician), autoescape=True
                )
            )
        if f.date_from is not None:
            where.append(w.c.date >= f.date_from.strftime("%Y%m%d"))
        if f.date_to is not None:
            where.append(and_(w.c.date != "", w.c.date <= f.date_to.strftime("%Y%m%d")))
        if f.scope is not None:
            # "" (an account without a name) matches nothing, not every empty name.
            where.append(and_(w.c.referring_key == f.scope, w.c.referring_key != ""))
        return where
