"""The Waiting list over HTTP: ``GET /api/waiting-list``.

A thin adapter over :class:`~pipeline.worklist.waitinglist.WaitingList`, for
the viewer's "Operation -> Waiting list" page: orders and studies with their
workflow state, filtered, sorted and paged. Needs ``images:read``; a
referring physician sees only the entries naming them as Referring Physician
when ``referring_own_studies_only`` is on (as :mod:`api.access` does for
studies). Every call is a Query event of the audit trail.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, audit_user_event, require
from api.deps import RuntimeDep
from pipeline.index.records import person_name_key
from pipeline.security.audit import Action, EventID
from pipeline.security.roles import Permission, Role
from pipeline.worklist.waitinglist import (
    SortKey,
    WaitingEntry,
    WaitingFilter,
    WaitingList,
    WorkflowState,
)

router = APIRouter(
    prefix="/api", tags=["waiting list"], dependencies=[Depends(require(Permission.READ_IMAGES))]
)


class WaitingEntryOut(BaseModel):
    state: WorkflowState
    study_instance_uid: str
    order_id: int | None
    accession_number: str
    patient_id: str
    patient_name: str
    modality: str
    #: DA (YYYYMMDD): the study's date, or the scheduled step's.
    date: str
    time: str
    description: str
    referring_physician_name: str
    number_of_instances: int


class WaitingListOut(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[WaitingEntryOut]


def _entry_out(e: WaitingEntry) -> WaitingEntryOut:
    return WaitingEntryOut(**e.__dict__)


@router.get("/waiting-list")
async def waiting_list(
    request: Request,
    principal: PrincipalDep,
    runtime: RuntimeDep,
    state: Annotated[list[WorkflowState], Query(max_length=7)] = [],  # noqa: B006 - FastAPI reads it
    modality: Annotated[str, Query(max_length=16, pattern=r"^[A-Za-z0-9_ ]*$")] = "",
    patient: Annotated[str, Query(max_length=64)] = "",
    referring_physician: Annotated[str, Query(max_length=200)] = "",
    date_from: date | None = None,
    date_to: date | None = None,
    sort: SortKey = SortKey.DATE,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> WaitingListOut:
    """Orders and studies with their workflow state (scheduled, in_progress,
    acquired, unmatched; reading, reported and final once reports exist).

    ``patient`` matches a Patient ID or the start of a name (without case);
    ``referring_physician`` the start of the name; ``date_from``/``date_to``
    the study date or scheduled date, inclusive. Sorted by ``sort``
    (date, modality, state, patient, referring_physician) in ``order``.
    """
    settings = request.app.state.settings
    scope = None
    if principal.role is Role.REFERRING_PHYSICIAN and settings.referring_own_studies_only:
        scope = person_name_key(principal.referring_physician_name)
    filters = WaitingFilter(
        states=tuple(state),
        modality=modality,
        patient=patient,
        referring_physician=referring_physician,
        date_from=date_from,
        date_to=date_to,
        scope=scope,
    )
    page = await run_in_threadpool(
        lambda: WaitingList(runtime.index).entries(
            filters, sort=sort, descending=order == "desc", limit=limit, offset=offset
        )
    )
    audit_user_event(
        request, principal, EventID.QUERY, Action.EXECUTE,
        detail={
            "list": "waiting",
            "filters": sorted(k for k in ("state", "modality", "patient", "referring_physician",
                                          "date_from", "date_to") if request.query_params.get(k)),
            "matches": len(page.entries),
        },
    )  # fmt: skip
    return WaitingListOut(
        total=page.total, limit=limit, offset=offset, items=[_entry_out(e) for e in page.entries]
    )
