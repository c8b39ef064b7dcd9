"""Performed Procedure Steps: what the modality reports doing (PS3.4 F, MPPS), and
the scheduled steps and orders it moves along.

A modality creates a Modality Performed Procedure Step (N-CREATE, status
IN PROGRESS) when it starts an exam and sets it (N-SET) as it goes, ending
with COMPLETED or DISCONTINUED (PS3.4 F.7.1). This service keeps each one in
``performed_procedure_steps`` (its attributes merged over N-CREATE and the
N-SETs, as DICOM JSON) and, in the same transaction, moves the Scheduled
Procedure Steps it names (Scheduled Step Attributes Sequence, by Scheduled
Procedure Step ID) and their order:

* N-CREATE: the named steps STARTED, their order IN_PROGRESS;
* COMPLETED / DISCONTINUED: the named steps likewise; the order COMPLETED
  when none of its steps is left to do and one was completed, DISCONTINUED
  when all that were not cancelled were discontinued, IN_PROGRESS otherwise.

An MPPS that names no known step (an unscheduled procedure, IHE RAD TF-1
4.3) is kept all the same, linked to the order of its Accession Number if
there is one.

The attribute rules of PS3.4 Table F.7.2-1 enforced here:

* N-CREATE: the Type 1 attributes present with a value (missing: 0120H,
  empty: 0121H), the Type 2 ones present; the status IN PROGRESS (else
  0106H); a SOP Instance UID already created: 0111H;
* N-SET: only on an instance that exists (0112H) and is IN PROGRESS: once
  COMPLETED or DISCONTINUED nothing changes any more (0110H, PS3.4
  F.7.2.2.2); attributes set only by N-CREATE ("Not allowed" in N-SET) are
  refused (0106H); the status is one of IN PROGRESS, COMPLETED, DISCONTINUED;
* the final state (COMPLETED or DISCONTINUED): End Date and End Time have
  values (0121H); a COMPLETED step lists at least one performed series
  with its Series Instance UID (the "Final State" column's Type 1).

Each change is in ``registration_history`` with the calling AE as actor.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import Connection, insert, select, update

from pipeline.errors import (
    DuplicateInstance,
    InvalidAttributeValue,
    InvalidState,
    MissingAttribute,
    MissingAttributeValue,
    NoSuchInstance,
)
from pipeline.index.schema import (
    OrderState,
    PerformedStatus,
    StepStatus,
    orders,
    performed_procedure_steps,
    requested_procedures,
    scheduled_procedure_steps,
)
from pipeline.ingest.parse import is_valid_uid
from pipeline.worklist.history import record_change

if TYPE_CHECKING:
    from pipeline.index.sql import SqlIndex

log = logging.getLogger(__name__)

pps = performed_procedure_steps
sps = scheduled_procedure_steps
rp = requested_procedures

_SCHEDULED_STEP_SEQUENCE = "ScheduledStepAttributesSequence"

#: Table F.7.2-1, N-CREATE Type 1: present with a value.
CREATE_TYPE_1 = (
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "PerformedProcedureStepStatus",
    "Modality",
    _SCHEDULED_STEP_SEQUENCE,
)
#: Table F.7.2-1, N-CREATE Type 2: present, possibly empty.
CREATE_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PerformedStationName",
    "PerformedLocation",
    "PerformedProcedureStepDescription",
    "PerformedProcedureTypeDescription",
    "ProcedureCodeSequence",
    "PerformedProcedureStepEndDate",
    "PerformedProcedureStepEndTime",
    "StudyID",
    "PerformedProtocolCodeSequence",
    "PerformedSeriesSequence",
)
#: The Scheduled Step Attributes Sequence item: Type 1 and Type 2 in N-CREATE.
ITEM_TYPE_1 = ("StudyInstanceUID",)
ITEM_TYPE_2 = (
    "ReferencedStudySequence",
    "AccessionNumber",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
)
#: Table F.7.2-1: set by N-CREATE only ("Not allowed" in N-SET).
NOT_IN_SET = (
    _SCHEDULED_STEP_SEQUENCE,
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
    "PerformedProcedureStepID",
    "PerformedStationAETitle",
    "PerformedStationName",
    "PerformedLocation",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "Modality",
    "StudyID",
    "SOPInstanceUID",
)

_STEP_AFTER = {
    PerformedStatus.IN_PROGRESS: StepStatus.STARTED,
    PerformedStatus.COMPLETED: StepStatus.COMPLETED,
    PerformedStatus.DISCONTINUED: StepStatus.DISCONTINUED,
}
_TO_DO = (
    StepStatus.SCHEDULED.value,
    StepStatus.ARRIVED.value,
    StepStatus.READY.value,
    StepStatus.STARTED.value,
)
_SF = "PS3.4 Table F.7.2-1"


def _now() -> datetime:
    return datetime.now(UTC)


def _has_value(ds: Dataset, keyword: str) -> bool:
    value = ds[keyword].value
    return value is not None and value != "" and not (hasattr(value, "__len__") and len(value) == 0)


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


@dataclass(frozen=True)
class PerformedStep:
    """One Modality Performed Procedure Step as kept."""

    sop_instance_uid: str
    status: PerformedStatus
    calling_ae: str
    #: The SPS IDs of the scheduled steps it is linked to (empty: unscheduled).
    sps_ids: list[str]
    accession_number: str
    attributes: Dataset


class PerformedProcedureSteps:
    """Create and set Performed Procedure Steps; move the scheduled steps and orders.

    Parameters
    ----------
    index
        The index whose database holds the registration tables.
    """

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def create(
        self, sop_instance_uid: str | None, attributes: Dataset, *, calling_ae: str
    ) -> PerformedStep:
        """N-CREATE (PS3.4 F.7.2.1): a new step IN PROGRESS; its SOP Instance UID
        is generated when the request has none (PS3.7 10.1.5.1.4).

        Raises
        ------
        MissingAttribute, MissingAttributeValue, InvalidAttributeValue
            The attribute rules of Table F.7.2-1.
        DuplicateInstance
            A step with this SOP Instance UID exists.
        """
        uid = str(sop_instance_uid or "").strip() or generate_uid()
        if not is_valid_uid(uid):
            raise InvalidAttributeValue("the Affected SOP Instance UID is not a valid UID")
        self._check_create(attributes)
        links = [
            (_text(item, "ScheduledProcedureStepID"), _text(item, "AccessionNumber"))
            for item in attributes[_SCHEDULED_STEP_SEQUENCE].value
        ]
        actor = f"ae:{calling_ae}"
        now = _now()
        with self.index.write_transaction() as conn:
            if conn.execute(select(pps.c.pk).where(pps.c.sop_instance_uid == uid)).first():
                raise DuplicateInstance(
                    "a Performed Procedure Step with this SOP Instance UID exists"
                )
            steps, order_pk = self._linked(conn, links)
            row = {
                "sop_instance_uid": uid,
                "status": PerformedStatus.IN_PROGRESS.value,
                "sps_pk": steps[0].pk if steps else None,
                "order_pk": order_pk,
                "calling_ae": calling_ae[:16],
                "modality": _text(attributes, "Modality")[:16],
                "study_instance_uid": _text(
                    attributes[_SCHEDULED_STEP_SEQUENCE].value[0], "StudyInstanceUID"
                )[:64],
                "start_date": _text(attributes, "PerformedProcedureStepStartDate")[:8],
                "start_time": _text(attributes, "PerformedProcedureStepStartTime")[:16],
            }
            pk = conn.execute(
                insert(pps)
                .values(
                    **row,
                    attributes=json.dumps(attributes.to_json_dict()),
                    created_at=now,
                    updated_at=now,
                )
                .returning(pps.c.pk)
            ).scalar_one()
            record_change(conn, actor, "mpps", pk, "create", None, row)
            self._move(conn, actor, steps, PerformedStatus.IN_PROGRESS, now)
        log.info("MPPS created calling_ae=%s linked_steps=%d", calling_ae, len(steps))
        return self.get(uid)

    def set(
        self, sop_instance_uid: str, modifications: Dataset, *, calling_ae: str
    ) -> PerformedStep:
        """N-SET (PS3.4 F.7.2.2): change an IN PROGRESS step, possibly ending it.

        Raises
        ------
        NoSuchInstance
            No step of this SOP Instance UID.
        InvalidState
            The step is COMPLETED or DISCONTINUED: it may no longer be updated.
        InvalidAttributeValue, MissingAttributeValue, MissingAttribute
            The attribute rules of Table F.7.2-1.
        """
        for keyword in NOT_IN_SET:
            if keyword in modifications:
                raise InvalidAttributeValue(f"{keyword} is set by N-CREATE only ({_SF})", keyword)
        new_status: PerformedStatus | None = None
        if "PerformedProcedureStepStatus" in modifications:
            try:
                new_status = PerformedStatus(_text(modifications, "PerformedProcedureStepStatus"))
            except ValueError:
                raise InvalidAttributeValue(
                    "Performed Procedure Step Status is IN PROGRESS, COMPLETED or DISCONTINUED",
                    "PerformedProcedureStepStatus",
                ) from None
        actor = f"ae:{calling_ae}"
        now = _now()
        with self.index.write_transaction() as conn:
            row = conn.execute(
                select(pps).where(pps.c.sop_instance_uid == sop_instance_uid)
            ).first()
            if row is None:
                raise NoSuchInstance("no Performed Procedure Step with this SOP Instance UID")
            if row.status != PerformedStatus.IN_PROGRESS.value:
                raise InvalidState(
                    f"the Performed Procedure Step is {row.status}: it may no longer be updated"
                )
            merged = Dataset.from_json(row.attributes)
            for elem in modifications:
                merged[elem.tag] = elem  # N-SET replaces whole attributes, sequences too
            status = new_status or PerformedStatus.IN_PROGRESS
            if status is not PerformedStatus.IN_PROGRESS:
                self._check_final(merged, status)
            values = {
                "status": status.value,
                "end_date": _text(merged, "PerformedProcedureStepEndDate")[:8],
                "end_time": _text(merged, "PerformedProcedureStepEndTime")[:16],
            }
            conn.execute(
                update(pps)
                .where(pps.c.pk == row.pk)
                .values(**values, attributes=json.dumps(merged.to_json_dict()), updated_at=now)
            )
            record_change(
                conn,
                actor,
                "mpps",
                row.pk,
                "update",
                {"status": row.status},
                {**values, "attributes": sorted(str(e.keyword or e.tag) for e in modifications)},
            )
            if status is not PerformedStatus.IN_PROGRESS:
                links = [
                    (_text(item, "ScheduledProcedureStepID"), _text(item, "AccessionNumber"))
                    for item in merged[_SCHEDULED_STEP_SEQUENCE].value
                ]
                steps, _ = self._linked(conn, links)
                self._move(conn, actor, steps, status, now)
        log.info("MPPS set calling_ae=%s status=%s", calling_ae, status.value)
        return self.get(sop_instance_uid)

    def get(self, sop_instance_uid: str) -> PerformedStep:
        """The step of this SOP Instance UID; :class:`NoSuchInstance` if there is none."""
        with self.index.engine.connect() as conn:
            row = conn.execute(
                select(pps).where(pps.c.sop_instance_uid == sop_instance_uid)
            ).first()
            if row is None:
                raise NoSuchInstance("no Performed Procedure Step with this SOP Instance UID")
            accession = (
                conn.execute(
                    select(orders.c.accession_number).where(orders.c.pk == row.order_pk)
                ).scalar()
                if row.order_pk is not None
                else ""
            )
        attributes = Dataset.from_json(row.attributes)
        sps_ids = [
            _text(item, "ScheduledProcedureStepID")
            for item in attributes.get(_SCHEDULED_STEP_SEQUENCE, [])
            if _text(item, "ScheduledProcedureStepID")
        ]
        return PerformedStep(
            row.sop_instance_uid,
            PerformedStatus(row.status),
            row.calling_ae,
            sps_ids,
            accession or "",
            attributes,
        )

    # -- rules ------------------------------------------------------------------------------

    @staticmethod
    def _check_create(ds: Dataset) -> None:
        for keyword in CREATE_TYPE_1:
            if keyword not in ds:
                raise MissingAttribute(f"{keyword} is required in N-CREATE ({_SF})", keyword)
            if not _has_value(ds, keyword):
                raise MissingAttributeValue(f"{keyword} needs a value in N-CREATE ({_SF})", keyword)
        for keyword in CREATE_TYPE_2:
            if keyword not in ds:
                raise MissingAttribute(
                    f"{keyword} is required (Type 2) in N-CREATE ({_SF})", keyword
                )
        if _text(ds, "PerformedProcedureStepStatus") != PerformedStatus.IN_PROGRESS.value:
            raise InvalidAttributeValue(
                "PerformedProcedureStepStatus is IN PROGRESS in an N-CREATE",
                "PerformedProcedureStepStatus",
            )
        for item in ds[_SCHEDULED_STEP_SEQUENCE].value:
            for keyword in ITEM_TYPE_1:
                if keyword not in item or not _has_value(item, keyword):
                    raise MissingAttributeValue(
                        f"{keyword} needs a value in every Scheduled Step Attributes item ({_SF})",
                        _SCHEDULED_STEP_SEQUENCE,
                    )
            for keyword in ITEM_TYPE_2:
                if keyword not in item:
                    raise MissingAttribute(
                        f"{keyword} is required (Type 2) in every "
                        f"Scheduled Step Attributes item ({_SF})",
                        _SCHEDULED_STEP_SEQUENCE,
                    )

    @staticmethod
    def _check_final(ds: Dataset, status: PerformedStatus) -> None:
        for keyword in ("PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime"):
            if keyword not in ds or not _has_value(ds, keyword):
                raise MissingAttributeValue(
                    f"{keyword} needs a value to end the step ({_SF})", keyword
                )
        if status is PerformedStatus.COMPLETED:
            series = ds.get("PerformedSeriesSequence") or []
            if not series:
                raise MissingAttributeValue(
                    f"a COMPLETED step lists its performed series ({_SF})",
                    "PerformedSeriesSequence",
                )
            for item in series:
                if "SeriesInstanceUID" not in item or not _has_value(item, "SeriesInstanceUID"):
                    raise MissingAttributeValue(
                        f"every performed series has its Series Instance UID ({_SF})",
                        "PerformedSeriesSequence",
                    )

    # -- scheduled steps and orders -----------------------------------------------------------

    @staticmethod
    def _linked(conn: Connection, links: list[tuple[str, str]]) -> tuple[list[Any], int | None]:
        """The scheduled steps named (by SPS ID) and the order (the first step's,
        else the first Accession Number's)."""
        steps: list[Any] = []
        order_pk: int | None = None
        for sps_id, accession in links:
            if sps_id:
                step = conn.execute(
                    select(sps.c.pk, sps.c.status, rp.c.order_pk)
                    .join(rp, rp.c.pk == sps.c.procedure_pk)
                    .where(sps.c.sps_id == sps_id)
                ).first()
                if step is not None and step.pk not in {s.pk for s in steps}:
                    steps.append(step)
                    order_pk = order_pk or step.order_pk
            if order_pk is None and accession:
                order_pk = conn.execute(
                    select(orders.c.pk).where(orders.c.accession_number == accession)
                ).scalar()
        return steps, order_pk

    @staticmethod
    def _move(
        conn: Connection, actor: str, steps: list[Any], status: PerformedStatus, now: datetime
    ) -> None:
        target = _STEP_AFTER[status].value
        touched: set[int] = set()
        for step in steps:
            current = conn.execute(select(sps.c.status).where(sps.c.pk == step.pk)).scalar_one()
            if current == StepStatus.CANCELED.value or current == target:
                continue  # a cancelled step stays cancelled: the MPPS is kept all the same
            conn.execute(
                update(sps).where(sps.c.pk == step.pk).values(status=target, updated_at=now)
            )
            record_change(
                conn, actor, "step", step.pk, "update", {"status": current}, {"status": target}
            )
            touched.add(step.order_pk)
        for order_pk in touched:
            order = conn.execute(select(orders.c.state).where(orders.c.pk == order_pk)).scalar_one()
            if order == OrderState.CANCELLED.value:
                continue
            statuses = (
                conn.execute(
                    select(sps.c.status)
                    .join(rp, rp.c.pk == sps.c.procedure_pk)
                    .where(rp.c.order_pk == order_pk)
                )
                .scalars()
                .all()
            )
            if any(s in _TO_DO for s in statuses):
                new = OrderState.IN_PROGRESS.value
            elif StepStatus.COMPLETED.value in statuses:
                new = OrderState.COMPLETED.value
            else:
                new = OrderState.DISCONTINUED.value
            if new != order:
                conn.execute(
                    update(orders).where(orders.c.pk == order_pk).values(state=new, updated_at=now)
                )
                record_change(
                    conn, actor, "order", order_pk, "update", {"state": order}, {"state": new}
                )
