"""Registration: patients and orders ("bills"), each order's requested procedures
and their Scheduled Procedure Steps, the source of the Modality Worklist.

The model is that of PS3.3 C.4.10-C.4.11 and IHE RAD TF-1 4 (Scheduled
Workflow): an order (Filler Order, one Accession Number) holds one or more
Requested Procedures; each Requested Procedure gets a Study Instance UID when
it is ordered (IHE RAD TF-2 4.5.4.1.2.2: the modality copies it into the
images) and one Scheduled Procedure Step, which is what a modality sees in its
worklist (PS3.4 K).

Rules kept here:

* a patient is known by Patient ID and Issuer of Patient ID (PS3.3 C.7.1.1);
  registering the same pair again is :class:`AlreadyExists`; a patient with
  the same name, birth date and sex under another ID is registered but
  reported as a possible duplicate (:class:`DuplicateWarning`), for a person
  to decide (a merge comes with HL7 ADT^A40);
* accession numbers come from the configured scheme (:mod:`.accession`)
  unless the order brings one (from a RIS), which must be unused;
* an order changes (rescheduling, referring physician) only while it is
  SCHEDULED; it is cancelled only while SCHEDULED (once a modality has started
  it, its MPPS ends it: PS3.4 F.7.1);
* every change is written with a ``registration_history`` row (who, when,
  what, the fields before and after) in the same transaction.

Every value is checked against its VR (:mod:`.values`). Nothing here logs a
patient's name, ID or birth date.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection, and_, insert, select, update

from pipeline.errors import AlreadyExists, InvalidRequest, InvalidState, NotFound
from pipeline.index.records import person_name_key
from pipeline.index.schema import (
    OrderState,
    StepStatus,
    orders,
    performed_procedure_steps,
    registered_patients,
    registration_history,
    requested_procedures,
    scheduled_procedure_steps,
)
from pipeline.worklist import accession, values
from pipeline.worklist.history import history_entries, next_counter, record_change
from pipeline.worklist.records import (
    Code,
    DuplicateWarning,
    HistoryEntry,
    Order,
    Patient,
    Procedure,
    ProcedureRequest,
    Registered,
    ScheduledStep,
    StepChange,
    code_or_none,
    patient_from_row,
    utc,
)

if TYPE_CHECKING:
    from pipeline.index.sql import SqlIndex

__all__ = [
    "Code", "DuplicateWarning", "HistoryEntry", "Order", "Patient", "Procedure",
    "ProcedureRequest", "Registered", "RegistrationService", "ScheduledStep", "StepChange",
]  # fmt: skip

log = logging.getLogger(__name__)

#: Steps a cancellation ends; a started or finished one is the MPPS's to end.
_OPEN_STEPS = (StepStatus.SCHEDULED.value, StepStatus.ARRIVED.value, StepStatus.READY.value)


def _now() -> datetime:
    return datetime.now(UTC)


class RegistrationService:
    """Register patients and orders; every change kept with who made it.

    Parameters
    ----------
    index
        The index whose database holds the registration tables (reads
        through ``index.engine``, writes through ``index.write_transaction()``).
    accession_format
        The accession number scheme (setting ``accession_format``).
    """

    def __init__(
        self, index: SqlIndex, accession_format: str = "{date:%Y%m%d}{counter:04d}"
    ) -> None:
        self.index = index
        self.accession_format = accession.check_format(accession_format)

    # -- patients ---------------------------------------------------------------------

    def register_patient(
        self,
        patient_id: str,
        *,
        actor: str,
        issuer_of_patient_id: str = "",
        patient_name: str = "",
        patient_birth_date: date | None = None,
        patient_sex: str = "",
    ) -> Registered:
        """Register a patient.

        Raises
        ------
        InvalidRequest
            An empty Patient ID, or a value that breaks its VR.
        AlreadyExists
            A patient with this Patient ID and issuer is registered.
        """
        fields = self._patient_fields(
            patient_id, issuer_of_patient_id, patient_name, patient_birth_date, patient_sex
        )
        now = _now()
        with self.index.write_transaction() as conn:
            # Checked in the writer's transaction: nobody inserts the pair in between.
            if self._patient_by_key(conn, fields["patient_id"], fields["issuer_of_patient_id"]):
                raise AlreadyExists("a patient with this patient ID and issuer is registered")
            pk = conn.execute(
                insert(registered_patients)
                .values(**fields, created_at=now, updated_at=now)
                .returning(registered_patients.c.pk)
            ).scalar_one()
            record_change(conn, actor, "patient", pk, "create", None, fields)
            warnings = self._duplicates(conn, pk, fields)
            patient = patient_from_row(self._patient_row(conn, pk))
        log.info("patient registered pk=%d possible_duplicates=%d", pk, len(warnings))
        return Registered(patient, warnings)

    def update_patient(self, pk: int, *, actor: str, **changes: Any) -> Registered:
        """Change some of a patient's fields (``patient_id``, ``issuer_of_patient_id``,
        ``patient_name``, ``patient_birth_date``, ``patient_sex``).

        Raises
        ------
        NotFound
            No such patient.
        InvalidRequest
            An unknown field or a value that breaks its VR.
        AlreadyExists
            The new Patient ID and issuer are another patient's.
        """
        allowed = {
            "patient_id",
            "issuer_of_patient_id",
            "patient_name",
            "patient_birth_date",
            "patient_sex",
        }
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise InvalidRequest(f"cannot change {', '.join(unknown)}")
        with self.index.write_transaction() as conn:
            row = self._patient_row(conn, pk)
            current = {k: getattr(row, k) for k in allowed}
            birth = changes.get("patient_birth_date", None)
            fields = self._patient_fields(
                changes.get("patient_id", current["patient_id"]),
                changes.get("issuer_of_patient_id", current["issuer_of_patient_id"]),
                changes.get("patient_name", current["patient_name"]),
                birth if "patient_birth_date" in changes else None,
                changes.get("patient_sex", current["patient_sex"]),
            )
            if "patient_birth_date" not in changes:
                fields["patient_birth_date"] = current["patient_birth_date"]
            changed = {k: v for k, v in fields.items() if k in current and current[k] != v}
            if (fields["patient_id"], fields["issuer_of_patient_id"]) != (
                current["patient_id"],
                current["issuer_of_patient_id"],
            ):
                other = self._patient_by_key(
                    conn, fields["patient_id"], fields["issuer_of_patient_id"]
                )
                if other:
                    raise AlreadyExists("a patient with this patient ID and issuer is registered")
            if changed:
                fields_out = {**changed, "patient_name_search": fields["patient_name_search"]}
                conn.execute(
                    update(registered_patients)
                    .where(registered_patients.c.pk == pk)
                    .values(**fields_out, updated_at=_now())
                )
                record_change(
                    conn, actor, "patient", pk, "update", {k: current[k] for k in changed}, changed
                )
            warnings = self._duplicates(conn, pk, fields)
            patient = patient_from_row(self._patient_row(conn, pk))
        log.info("patient updated pk=%d fields=%s", pk, ",".join(sorted(changed)))
        return Registered(patient, warnings)

    def merge_patients(self, surviving: int, prior: int, *, actor: str) -> Patient:
        """Merge the patient ``prior`` into ``surviving`` (HL7 v2.5 3.3.40, ADT^A40).

        In one transaction: every order of ``prior`` moves to ``surviving``
        (an ``order`` history row each, action ``merge``), and the ``prior``
        record ends: its row is deleted, its last fields kept in a ``merge``
        history row that names the survivor, so that its identifier no longer
        finds a patient (after A40 the prior identifier is not to be used)
        while who it was stays on record. The survivor gets a ``merge`` row
        naming the prior too. Its demographics are left as they are.

        Raises
        ------
        NotFound
            Either patient is not registered.
        InvalidRequest
            ``surviving`` and ``prior`` are the same patient.
        """
        if surviving == prior:
            raise InvalidRequest("a patient is not merged into itself")
        fields = (
            "patient_id",
            "issuer_of_patient_id",
            "patient_name",
            "patient_birth_date",
            "patient_sex",
        )
        now = _now()
        with self.index.write_transaction() as conn:
            survivor_row = self._patient_row(conn, surviving)
            prior_row = self._patient_row(conn, prior)
            moved = (
                conn.execute(
                    select(orders.c.pk).where(orders.c.patient_pk == prior).order_by(orders.c.pk)
                )
                .scalars()
                .all()
            )
            if moved:
                conn.execute(
                    update(orders)
                    .where(orders.c.patient_pk == prior)
                    .values(patient_pk=surviving, updated_at=now)
                )
            for order_pk in moved:
                record_change(
                    conn,
                    actor,
                    "order",
                    order_pk,
                    "merge",
                    {"patient_pk": prior},
                    {"patient_pk": surviving},
                )
            record_change(
                conn,
                actor,
                "patient",
                prior,
                "merge",
                {k: getattr(prior_row, k) for k in fields},
                {"merged_into": surviving},
            )
            conn.execute(
                registered_patients.delete().where(registered_patients.c.pk == prior)
            )
            record_change(
                conn,
                actor,
                "patient",
                surviving,
                "merge",
                None,
                {
                    "merged_from": prior,
                    "prior_patient_id": prior_row.patient_id,
                    "prior_issuer_of_patient_id": prior_row.issuer_of_patient_id,
                    "orders": list(moved),
                },
            )
            conn.execute(
                update(registered_patients)
                .where(registered_patients.c.pk == surviving)
                .values(updated_at=now)
            )
            patient = patient_from_row(self._patient_row(conn, survivor_row.pk))
        log.info("patients merged into pk=%d from pk=%d orders=%d", surviving, prior, len(moved))
        return patient

    def get_patient(self, pk: int) -> Patient:
        """The registered patient ``pk``; :class:`NotFound` if there is none."""
        with self.index.engine.connect() as conn:
            return patient_from_row(self._patient_row(conn, pk))

    def list_patients(
        self,
        *,
        patient_id: str = "",
        issuer_of_patient_id: str | None = None,
        patient_name: str = "",
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Patient]:
        """Patients, newest first; ``patient_name`` matches the start of the name without case."""
        query = select(registered_patients).order_by(registered_patients.c.pk.desc())
        if patient_id:
            query = query.where(registered_patients.c.patient_id == patient_id)
        if issuer_of_patient_id is not None:
            query = query.where(registered_patients.c.issuer_of_patient_id == issuer_of_patient_id)
        if patient_name:
            key = person_name_key(patient_name)
            # A prefix on the upper-cased name; the bound parameter is escaped by LIKE rules.
            escaped = key.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            query = query.where(
                registered_patients.c.patient_name_search.like(escaped + "%", escape="!")
            )
        with self.index.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [patient_from_row(r) for r in rows]

    @staticmethod
    def _patient_fields(
        patient_id: str, issuer: str, name: str, birth_date: date | None, sex: str
    ) -> dict[str, Any]:
        pid = values.long_string(patient_id, "patient_id")
        if not pid:
            raise InvalidRequest("patient_id: a patient needs a Patient ID")
        name = values.person_name(name, "patient_name")
        return {
            "patient_id": pid,
            "issuer_of_patient_id": values.long_string(issuer, "issuer_of_patient_id"),
            "patient_name": name,
            "patient_name_search": person_name_key(name),
            "patient_birth_date": values.dicom_date(birth_date),
            "patient_sex": values.sex(sex),
        }

    @staticmethod
    def _patient_row(conn: Connection, pk: int) -> Any:
        row = conn.execute(
            select(registered_patients).where(registered_patients.c.pk == pk)
        ).first()
        if row is None:
            raise NotFound("no such patient")
        return row

    @staticmethod
    def _patient_by_key(conn: Connection, patient_id: str, issuer: str) -> Any:
        return conn.execute(
            select(registered_patients.c.pk).where(
                registered_patients.c.patient_id == patient_id,
                registered_patients.c.issuer_of_patient_id == issuer,
            )
        ).first()

    @staticmethod
    def _duplicates(
        conn: Connection, pk: int, fields: Mapping[str, Any]
    ) -> builtins.list[DuplicateWarning]:
        """Other patients with this name, birth date and sex (all three known)."""
        if not (fields["patient_name_search"] and fields["patient_birth_date"]):
            return []
        rows = conn.execute(
            select(
                registered_patients.c.pk,
                registered_patients.c.patient_id,
                registered_patients.c.issuer_of_patient_id,
            )
            .where(
                registered_patients.c.patient_name_search == fields["patient_name_search"],
                registered_patients.c.patient_birth_date == fields["patient_birth_date"],
                registered_patients.c.patient_sex == fields["patient_sex"],
                registered_patients.c.pk != pk,
            )
            .order_by(registered_patients.c.pk)
        ).all()
        return [DuplicateWarning(r.pk, r.patient_id, r.issuer_of_patient_id) for r in rows]

    # -- orders -----------------------------------------------------------------------

    def create_order(
        self,
        patient: int,
        procedures: Sequence[ProcedureRequest],
        *,
        actor: str,
        accession_number: str | None = None,
        placer_order_number: str = "",
        referring_physician_name: str = "",
        reason: str = "",
    ) -> Order:
        """Order ``procedures`` for the registered patient ``patient``.

        Each procedure gets a Requested Procedure ID, a Study Instance UID
        and one Scheduled Procedure Step (status SCHEDULED) with its own SPS ID.

        Raises
        ------
        NotFound
            No such patient.
        InvalidRequest
            No procedure, or a value that breaks its VR.
        AlreadyExists
            The given accession number is another order's.
        """
        if not procedures:
            raise InvalidRequest("procedures: an order needs at least one procedure")
        given = None
        if accession_number is not None:
            given = values.short_string(accession_number, "accession_number")
            if not given:
                raise InvalidRequest("accession_number: empty (leave it out to have one generated)")
        referring = values.person_name(referring_physician_name, "referring_physician_name")
        order_fields = {
            "placer_order_number": values.long_string(placer_order_number, "placer_order_number"),
            "referring_physician_name": referring,
            "referring_physician_search": person_name_key(referring),
            "reason": values.long_string(reason, "reason"),
        }
        checked = [self._checked_procedure(p, i) for i, p in enumerate(procedures)]
        now = _now()
        with self.index.write_transaction() as conn:
            self._patient_row(conn, patient)
            if given is not None:
                if self._order_by_accession(conn, given) is not None:
                    raise AlreadyExists("an order with this accession number exists")
                number = given
            else:
                number = self._generate_accession(conn)
            order_pk = conn.execute(
                insert(orders)
                .values(
                    accession_number=number,
                    patient_pk=patient,
                    state=OrderState.SCHEDULED.value,
                    created_at=now,
                    updated_at=now,
                    **order_fields,
                )
                .returning(orders.c.pk)
            ).scalar_one()
            record_change(
                conn,
                actor,
                "order",
                order_pk,
                "create",
                None,
                {"accession_number": number, "patient_pk": patient, **order_fields},
            )
            for procedure_fields, step_fields in checked:
                rp_id = f"RP{next_counter(conn, 'requested_procedure')}"
                rp_values = {
                    **procedure_fields,
                    "requested_procedure_id": rp_id,
                    "study_instance_uid": generate_uid(),
                }
                rp_pk = conn.execute(
                    insert(requested_procedures)
                    .values(order_pk=order_pk, created_at=now, **rp_values)
                    .returning(requested_procedures.c.pk)
                ).scalar_one()
                record_change(conn, actor, "procedure", rp_pk, "create", None, rp_values)
                sps_values = {
                    **step_fields,
                    "sps_id": f"SPS{next_counter(conn, 'scheduled_procedure_step')}",
                    "status": StepStatus.SCHEDULED.value,
                }
                sps_pk = conn.execute(
                    insert(scheduled_procedure_steps)
                    .values(procedure_pk=rp_pk, created_at=now, updated_at=now, **sps_values)
                    .returning(scheduled_procedure_steps.c.pk)
                ).scalar_one()
                record_change(conn, actor, "step", sps_pk, "create", None, sps_values)
            order = self._order(conn, order_pk)
        log.info("order created pk=%d procedures=%d", order_pk, len(checked))
        return order

    def update_order(
        self,
        pk: int,
        *,
        actor: str,
        referring_physician_name: str | None = None,
        placer_order_number: str | None = None,
        reason: str | None = None,
        steps: Sequence[StepChange] = (),
    ) -> Order:
        """Change a SCHEDULED order: its referring physician, placer number,
        reason, and the time, place and modality of its steps.

        Raises
        ------
        NotFound
            No such order, or a step ``sps_id`` not of this order.
        InvalidState
            The order is no longer SCHEDULED.
        InvalidRequest
            A value that breaks its VR.
        """
        changes: dict[str, Any] = {}
        if referring_physician_name is not None:
            name = values.person_name(referring_physician_name, "referring_physician_name")
            changes["referring_physician_name"] = name
            changes["referring_physician_search"] = person_name_key(name)
        if placer_order_number is not None:
            changes["placer_order_number"] = values.long_string(
                placer_order_number, "placer_order_number"
            )
        if reason is not None:
            changes["reason"] = values.long_string(reason, "reason")
        step_changes = [(c.sps_id, self._checked_step_change(c)) for c in steps]
        now = _now()
        with self.index.write_transaction() as conn:
            row = self._order_row(conn, pk)
            if row.state != OrderState.SCHEDULED.value:
                raise InvalidState(f"the order is {row.state}: only a SCHEDULED order changes")
            changed = {k: v for k, v in changes.items() if getattr(row, k) != v}
            if changed:
                conn.execute(
                    update(orders).where(orders.c.pk == pk).values(**changed, updated_at=now)
                )
                record_change(
                    conn,
                    actor,
                    "order",
                    pk,
                    "update",
                    {k: getattr(row, k) for k in changed},
                    changed,
                )
            for sps_id, fields in step_changes:
                step = conn.execute(
                    select(scheduled_procedure_steps)
                    .join(
                        requested_procedures,
                        requested_procedures.c.pk == scheduled_procedure_steps.c.procedure_pk,
                    )
                    .where(
                        requested_procedures.c.order_pk == pk,
                        scheduled_procedure_steps.c.sps_id == sps_id,
                    )
                ).first()
                if step is None:
                    raise NotFound("no such scheduled procedure step in this order")
                diff = {k: v for k, v in fields.items() if getattr(step, k) != v}
                if diff:
                    conn.execute(
                        update(scheduled_procedure_steps)
                        .where(scheduled_procedure_steps.c.pk == step.pk)
                        .values(**diff, updated_at=now)
                    )
                    record_change(
                        conn,
                        actor,
                        "step",
                        step.pk,
                        "update",
                        {k: getattr(step, k) for k in diff},
                        diff,
                    )
            if changed or step_changes:
                conn.execute(update(orders).where(orders.c.pk == pk).values(updated_at=now))
            order = self._order(conn, pk)
        log.info(
            "order updated pk=%d fields=%s steps=%d",
            pk,
            ",".join(sorted(changed)),
            len(step_changes),
        )
        return order

    def cancel_order(self, pk: int, *, actor: str, reason: str = "") -> Order:
        """Cancel a SCHEDULED order: its steps become CANCELED and leave the worklist.

        Raises
        ------
        NotFound
            No such order.
        InvalidState
            The order is not SCHEDULED (started, done or cancelled already).
        """
        note = values.long_string(reason, "reason")
        now = _now()
        with self.index.write_transaction() as conn:
            row = self._order_row(conn, pk)
            if row.state != OrderState.SCHEDULED.value:
                raise InvalidState(f"the order is {row.state}: only a SCHEDULED order is cancelled")
            conn.execute(
                update(orders)
                .where(orders.c.pk == pk)
                .values(state=OrderState.CANCELLED.value, updated_at=now)
            )
            record_change(
                conn,
                actor,
                "order",
                pk,
                "cancel",
                {"state": row.state},
                {"state": OrderState.CANCELLED.value, "reason": note},
            )
            steps = conn.execute(
                select(scheduled_procedure_steps.c.pk, scheduled_procedure_steps.c.status)
                .join(
                    requested_procedures,
                    requested_procedures.c.pk == scheduled_procedure_steps.c.procedure_pk,
                )
                .where(
                    requested_procedures.c.order_pk == pk,
                    scheduled_procedure_steps.c.status.in_(_OPEN_STEPS),
                )
            ).all()
            for step in steps:
                conn.execute(
                    update(scheduled_procedure_steps)
                    .where(scheduled_procedure_steps.c.pk == step.pk)
                    .values(status=StepStatus.CANCELED.value, updated_at=now)
                )
                record_change(
                    conn,
                    actor,
                    "step",
                    step.pk,
                    "cancel",
                    {"status": step.status},
                    {"status": StepStatus.CANCELED.value},
                )
            order = self._order(conn, pk)
        log.info("order cancelled pk=%d steps=%d", pk, len(steps))
        return order

    def get_order(self, pk: int) -> Order:
        """The order ``pk``; :class:`NotFound` if there is none."""
        with self.index.engine.connect() as conn:
            return self._order(conn, pk)

    def list_orders(
        self,
        *,
        patient: int | None = None,
        accession_number: str = "",
        state: OrderState | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Order]:
        """Orders, newest first, filtered by patient, accession number and state."""
        query = select(orders.c.pk).order_by(orders.c.pk.desc())
        if patient is not None:
            query = query.where(orders.c.patient_pk == patient)
        if accession_number:
            query = query.where(orders.c.accession_number == accession_number)
        if state is not None:
            query = query.where(orders.c.state == OrderState(state).value)
        with self.index.engine.connect() as conn:
            pks = conn.execute(query.limit(limit).offset(offset)).scalars().all()
            return [self._order(conn, pk) for pk in pks]

    def history(self, entity: str, pk: int) -> builtins.list[HistoryEntry]:
        """The changes of one row (``entity`` patient, order, procedure, step, mpps), oldest first."""
        with self.index.engine.connect() as conn:
            rows = conn.execute(
                select(registration_history)
                .where(
                    and_(
                        registration_history.c.entity == entity,
                        registration_history.c.entity_pk == pk,
                    )
                )
                .order_by(registration_history.c.pk)
            ).all()
        return history_entries(rows)

    def order_history(self, pk: int) -> builtins.list[HistoryEntry]:
        """The changes of an order, its procedures, scheduled and performed steps, oldest first."""
        with self.index.engine.connect() as conn:
            self._order_row(conn, pk)
            rp = select(requested_procedures.c.pk).where(requested_procedures.c.order_pk == pk)
            sps = select(scheduled_procedure_steps.c.pk).where(
                scheduled_procedure_steps.c.procedure_pk.in_(rp)
            )
            pps = select(performed_procedure_steps.c.pk).where(
                performed_procedure_steps.c.order_pk == pk
            )
            h = registration_history.c
            rows = conn.execute(
                select(registration_history)
                .where(
                    (and_(h.entity == "order", h.entity_pk == pk))
                    | (and_(h.entity == "procedure", h.entity_pk.in_(rp)))
                    | (and_(h.entity == "step", h.entity_pk.in_(sps)))
                    | (and_(h.entity == "mpps", h.entity_pk.in_(pps)))
                )
                .order_by(h.pk)
            ).all()
        return history_entries(rows)

    # -- helpers ------------------------------------------------------------------------

    def _generate_accession(self, conn: Connection) -> str:
        """The next number of the scheme not yet used (an order given one by a
        RIS may have taken the next number already)."""
        when = datetime.now()  # the registration's local day
        key = "accession:" + accession.scope(self.accession_format, when)
        while True:
            number = accession.render(self.accession_format, when, next_counter(conn, key[:64]))
            if self._order_by_accession(conn, number) is None:
                return number

    @staticmethod
    def _order_by_accession(conn: Connection, number: str) -> int | None:
        return conn.execute(select(orders.c.pk).where(orders.c.accession_number == number)).scalar()

    @staticmethod
    def _checked_procedure(p: ProcedureRequest, i: int) -> tuple[dict[str, Any], dict[str, Any]]:
        where = f"procedures[{i}]"
        code = p.code
        protocol = p.protocol_code
        start_date, start_time = values.dicom_date_time(p.scheduled_start)
        procedure = {
            "description": values.long_string(p.description, f"{where}.description"),
            "code_value": code.value if code else "",
            "coding_scheme": code.scheme if code else "",
            "code_meaning": code.meaning if code else "",
        }
        step = {
            "modality": values.code_string(p.modality, f"{where}.modality"),
            "station_ae_title": values.ae_title(p.station_ae_title, f"{where}.station_ae_title"),
            "station_name": values.short_string(p.station_name, f"{where}.station_name"),
            "start_date": start_date,
            "start_time": start_time,
            "performing_physician_name": values.person_name(
                p.performing_physician_name, f"{where}.performing_physician_name"
            ),
            "description": values.long_string(
                p.step_description or p.description, f"{where}.step_description"
            ),
            "protocol_code_value": protocol.value if protocol else "",
            "protocol_coding_scheme": protocol.scheme if protocol else "",
            "protocol_code_meaning": protocol.meaning if protocol else "",
        }
        return procedure, step

    @staticmethod
    def _checked_step_change(c: StepChange) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if c.scheduled_start is not None:
            fields["start_date"], fields["start_time"] = values.dicom_date_time(c.scheduled_start)
        if c.modality is not None:
            fields["modality"] = values.code_string(c.modality, "modality")
        if c.station_ae_title is not None:
            fields["station_ae_title"] = values.ae_title(c.station_ae_title, "station_ae_title")
        if c.station_name is not None:
            fields["station_name"] = values.short_string(c.station_name, "station_name")
        if c.performing_physician_name is not None:
            fields["performing_physician_name"] = values.person_name(
                c.performing_physician_name, "performing_physician_name"
            )
        return fields

    @staticmethod
    def _order_row(conn: Connection, pk: int) -> Any:
        row = conn.execute(select(orders).where(orders.c.pk == pk)).first()
        if row is None:
            raise NotFound("no such order")
        return row

    def _order(self, conn: Connection, pk: int) -> Order:
        row = self._order_row(conn, pk)
        patient = patient_from_row(self._patient_row(conn, row.patient_pk))
        rps = conn.execute(
            select(requested_procedures)
            .where(requested_procedures.c.order_pk == pk)
            .order_by(requested_procedures.c.pk)
        ).all()
        steps = conn.execute(
            select(scheduled_procedure_steps)
            .where(scheduled_procedure_steps.c.procedure_pk.in_([rp.pk for rp in rps]))
            .order_by(scheduled_procedure_steps.c.pk)
        ).all()
        by_rp: dict[int, builtins.list[ScheduledStep]] = {}
        for s in steps:
            by_rp.setdefault(s.procedure_pk, []).append(
                ScheduledStep(
                    s.sps_id,
                    s.modality,
                    s.station_ae_title,
                    s.station_name,
                    s.start_date,
                    s.start_time,
                    s.performing_physician_name,
                    s.description,
                    code_or_none(
                        s.protocol_code_value, s.protocol_coding_scheme, s.protocol_code_meaning
                    ),
                    StepStatus(s.status),
                )
            )
        procedures = [
            Procedure(
                rp.requested_procedure_id,
                rp.description,
                code_or_none(rp.code_value, rp.coding_scheme, rp.code_meaning),
                rp.study_instance_uid,
                by_rp.get(rp.pk, []),
            )
            for rp in rps
        ]
        return Order(
            id=row.pk,
            accession_number=row.accession_number,
            patient=patient,
            placer_order_number=row.placer_order_number,
            referring_physician_name=row.referring_physician_name,
            reason=row.reason,
            state=OrderState(row.state),
            procedures=procedures,
            created_at=utc(row.created_at),
            updated_at=utc(row.updated_at),
        )
