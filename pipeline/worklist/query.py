"""The worklist search: Scheduled Procedure Steps matched against worklist keys.

The Modality Worklist SCP (:mod:`pipeline.worklist.mwl`) hands this service
the key values of a C-FIND Identifier (PS3.4 K.6.1.2) and gets one row per
matching Scheduled Procedure Step, joined with its Requested Procedure,
order (Imaging Service Request) and registered patient.

Matching follows PS3.4 C.2.2.2 with :func:`pipeline.query.matching.condition`
(the rules the Query/Retrieve SCP uses): single values, wild cards, names
without case, DA/TM ranges. Two rules are the worklist's own:

* **Combined date and time** (PS3.4 C.2.2.2.5.1): when both Scheduled
  Procedure Step Start Date and Start Time are given, they are one range of
  date-times: ``20261204-20261205`` with ``0800-1200`` is from 4 December
  08:00 to 5 December 12:00, not two mornings.
* **Steps that are over** (CANCELED, COMPLETED, DISCONTINUED) are not on the
  worklist unless the request asks for a Scheduled Procedure Step Status: a
  modality should not offer a cancelled exam (IHE RAD TF-2 4.5.4.2: the
  worklist reflects the current schedule).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, literal, select

from pipeline.errors import InvalidRequest
from pipeline.index.schema import (
    OrderState,
    StepStatus,
    orders,
    registered_patients,
    requested_procedures,
    scheduled_procedure_steps,
)
from pipeline.query.matching import _time_bounds, condition
from pipeline.query.model import Attribute, Kind, Level

if TYPE_CHECKING:
    from pipeline.index.sql import SqlIndex

sps = scheduled_procedure_steps
rp = requested_procedures
P = registered_patients

#: The steps a worklist shows when the request names no status.
_OVER = (StepStatus.CANCELED.value, StepStatus.COMPLETED.value, StepStatus.DISCONTINUED.value)


def _attr(keyword: str, vr: str, column: Any, kind: Kind, search: Any = None) -> Attribute:
    # The Query/Retrieve model's Attribute, for its matching; the level is unused here.
    return Attribute(keyword, vr, Level.STUDY, column, kind, search)


#: Matching keys of the Identifier's top level (PS3.4 K.6.1.2.2: Patient
#: Identification, Requested Procedure and Imaging Service Request modules).
TOP_KEYS: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        _attr("PatientName", "PN", P.c.patient_name, Kind.PERSON, P.c.patient_name_search),
        _attr("PatientID", "LO", P.c.patient_id, Kind.TEXT),
        _attr("IssuerOfPatientID", "LO", P.c.issuer_of_patient_id, Kind.TEXT),
        _attr("PatientBirthDate", "DA", P.c.patient_birth_date, Kind.DATE),
        _attr("PatientSex", "CS", P.c.patient_sex, Kind.TEXT),
        _attr("AccessionNumber", "SH", orders.c.accession_number, Kind.TEXT),
        _attr(
            "ReferringPhysicianName",
            "PN",
            orders.c.referring_physician_name,
            Kind.PERSON,
            orders.c.referring_physician_search,
        ),
        _attr("RequestedProcedureID", "SH", rp.c.requested_procedure_id, Kind.TEXT),
        _attr("StudyInstanceUID", "UI", rp.c.study_instance_uid, Kind.UID),
    )
}

#: Matching keys of the Scheduled Procedure Step Sequence item (PS3.4 K.6.1.2.2).
STEP_KEYS: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        _attr("ScheduledStationAETitle", "AE", sps.c.station_ae_title, Kind.TEXT),
        _attr("ScheduledStationName", "SH", sps.c.station_name, Kind.TEXT),
        _attr("Modality", "CS", sps.c.modality, Kind.TEXT),
        _attr("ScheduledProcedureStepStartDate", "DA", sps.c.start_date, Kind.DATE),
        _attr("ScheduledProcedureStepStartTime", "TM", sps.c.start_time, Kind.TIME),
        _attr(
            "ScheduledPerformingPhysicianName", "PN", sps.c.performing_physician_name, Kind.PERSON
        ),
        _attr("ScheduledProcedureStepID", "SH", sps.c.sps_id, Kind.TEXT),
        _attr("ScheduledProcedureStepStatus", "CS", sps.c.status, Kind.TEXT),
    )
}

_DATE, _TIME = "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime"


@dataclass(frozen=True)
class WorklistKeys:
    """The key values of a worklist request: keyword -> value (multi-values
    joined by backslashes), for the top level and the step item."""

    top: Mapping[str, str]
    step: Mapping[str, str]


def _universal(value: str) -> bool:
    return value.strip(" \0") in ("", "*")


def _date_time(date_value: str, time_value: str) -> Any:
    """The combined date-time range condition (PS3.4 C.2.2.2.5.1)."""
    d_low, d_dash, d_high = (p.strip() for p in date_value.partition("-"))
    t_low, t_dash, t_high = (p.strip() for p in time_value.partition("-"))
    if not d_dash:
        d_high = d_low
    if not t_dash:
        t_high = t_low
    for part in (d_low, d_high):
        if part and not (len(part) == 8 and part.isdigit()):
            raise InvalidRequest(
                f"{_DATE}: a date is YYYYMMDD or a range of them (PS3.4 C.2.2.2.5)"
            )
    stamp = sps.c.start_date + sps.c.start_time
    clauses = [sps.c.start_date > ""]
    # Times are checked even where an open date bound leaves them unused.
    low_time = _time_bounds(_TIME, t_low)[0][:6] if t_low else "000000"
    high_time = _time_bounds(_TIME, t_high)[1][:6] if t_high else "235959"
    if d_low:
        clauses.append(stamp >= literal(d_low + low_time))
    if d_high:
        clauses.append(stamp <= literal(d_high + high_time))
    return and_(*clauses)


class WorklistQuery:
    """Find Scheduled Procedure Steps for the Modality Worklist.

    Parameters
    ----------
    index
        The index whose database holds the registration tables.
    """

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def search(self, keys: WorklistKeys, *, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The matching steps, by start date and time, as rows of column values.

        Raises
        ------
        InvalidRequest
            A key value that cannot be matched (a malformed date, a wild
            card in a UID).
        """
        dialect = self.index.engine.dialect.name
        clauses = []
        for keyword, value in keys.top.items():
            attribute = TOP_KEYS.get(keyword)
            if attribute is not None and not _universal(value):
                clause = condition(attribute, value, dialect=dialect)
                if clause is not None:
                    clauses.append(clause)
        step = dict(keys.step)
        date_value, time_value = step.pop(_DATE, ""), step.pop(_TIME, "")
        if not _universal(date_value) and not _universal(time_value):
            clauses.append(_date_time(date_value.strip(" \0"), time_value.strip(" \0")))
        else:
            for keyword, value in ((_DATE, date_value), (_TIME, time_value)):
                if not _universal(value):
                    clause = condition(STEP_KEYS[keyword], value, dialect=dialect)
                    if clause is not None:
                        clauses.append(clause)
        for keyword, value in step.items():
            attribute = STEP_KEYS.get(keyword)
            if attribute is not None and not _universal(value):
                clause = condition(attribute, value, dialect=dialect)
                if clause is not None:
                    clauses.append(clause)
        if _universal(keys.step.get("ScheduledProcedureStepStatus", "")):
            clauses.append(sps.c.status.not_in(_OVER))
            clauses.append(orders.c.state != OrderState.CANCELLED.value)
        query = (
            select(
                sps.c.sps_id,
                sps.c.modality,
                sps.c.station_ae_title,
                sps.c.station_name,
                sps.c.start_date,
                sps.c.start_time,
                sps.c.performing_physician_name,
                sps.c.description.label("step_description"),
                sps.c.protocol_code_value,
                sps.c.protocol_coding_scheme,
                sps.c.protocol_code_meaning,
                sps.c.status,
                rp.c.requested_procedure_id,
                rp.c.description.label("procedure_description"),
                rp.c.code_value,
                rp.c.coding_scheme,
                rp.c.code_meaning,
                rp.c.study_instance_uid,
                orders.c.accession_number,
                orders.c.referring_physician_name,
                orders.c.placer_order_number,
                orders.c.reason,
                P.c.patient_id,
                P.c.issuer_of_patient_id,
                P.c.patient_name,
                P.c.patient_birth_date,
                P.c.patient_sex,
            )
            .select_from(
                sps.join(rp, rp.c.pk == sps.c.procedure_pk)
                .join(orders, orders.c.pk == rp.c.order_pk)
                .join(P, P.c.pk == orders.c.patient_pk)
            )
            .where(and_(*clauses))
            .order_by(sps.c.start_date, sps.c.start_time, sps.c.pk)
        )
        if limit is not None:
            query = query.limit(limit)
        # Read at once: the SCP answers one Pending response at a time, and a
        # connection held across the peer's pace would hold a read snapshot.
        with self.index.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        yield from rows
