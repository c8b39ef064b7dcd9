"""The reconciliation list over HTTP: ``/api/reconciliation``.

A thin adapter over :class:`~pipeline.worklist.reconcile.Reconciler`
(IHE RAD TF-1 5, Patient Information Reconciliation): the studies no order
matched, and the call that links one to its order by hand, correcting the
index's patient and study attributes from the registration. Every route
needs ``registration:write`` (:attr:`Permission.REGISTER`: administrators and
technologists) and is in the audit trail: reading the list is a Query, a
link a "DICOM Instances Accessed" event with action U (PS3.15 A.5.3.2: the
study's attributes are changed) naming the patient as registered.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.access import StudyFacts, StudyFactsCache
from api.auth import PrincipalDep, audit_user_event, require
from api.deps import RuntimeDep
from pipeline.errors import NotFound
from pipeline.index.schema import LinkState
from pipeline.ingest.parse import is_valid_uid
from pipeline.security.audit import Action, EventID
from pipeline.security.roles import Permission
from pipeline.worklist.reconcile import Reconciler, StudyLink, UnmatchedStudy

router = APIRouter(
    prefix="/api/reconciliation",
    tags=["reconciliation"],
    dependencies=[Depends(require(Permission.REGISTER))],
)

Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]
StudyUid = Annotated[str, Path(max_length=64)]


class UnmatchedOut(BaseModel):
    """A study on the reconciliation list, as the index holds it (as received)."""

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
    #: The AE that sent its first instance.
    calling_ae: str
    #: Why no order matched.
    reason: str
    since: datetime


class LinkIn(BaseModel):
    order_id: int = Field(ge=1, le=2**31 - 1)


class LinkOut(BaseModel):
    study_instance_uid: str
    state: LinkState
    order_id: int | None
    accession_number: str
    #: study_uid, accession, patient_modality_date, manual; "" when unmatched.
    method: str
    reason: str
    actor: str
    #: The patient and study attributes as the images carried them.
    received: dict[str, str]
    updated_at: datetime


def _unmatched_out(u: UnmatchedStudy) -> UnmatchedOut:
    return UnmatchedOut(**u.__dict__)


def _link_out(link: StudyLink) -> LinkOut:
    return LinkOut(**link.__dict__)


def _checked_uid(study_uid: str) -> str:
    if not is_valid_uid(study_uid):
        raise HTTPException(400, "the study in the URL is not a valid UID (PS3.5 9.1)")
    return study_uid


@router.get("")
async def list_unmatched(
    request: Request,
    principal: PrincipalDep,
    runtime: RuntimeDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[UnmatchedOut]:
    """Studies that no order matched, longest waiting first."""
    found = await run_in_threadpool(
        lambda: Reconciler(runtime.index).unmatched(limit=limit, offset=offset)
    )
    audit_user_event(
        request, principal, EventID.QUERY, Action.EXECUTE,
        detail={"list": "reconciliation", "matches": len(found)},
    )  # fmt: skip
    return [_unmatched_out(u) for u in found]


@router.get("/{study_uid}")
async def get_link(
    study_uid: StudyUid, request: Request, principal: PrincipalDep, runtime: RuntimeDep
) -> LinkOut:
    """Whether the study is linked to an order, how, and what it carried as received."""
    link = await run_in_threadpool(Reconciler(runtime.index).link_of, _checked_uid(study_uid))
    if link is None:
        raise NotFound("no such study, or not looked at yet")
    audit_user_event(
        request, principal, EventID.INSTANCES_ACCESSED, Action.READ,
        study_instance_uid=study_uid, detail={"reconciliation": link.state.value},
    )  # fmt: skip
    return _link_out(link)


@router.post("/{study_uid}/link")
async def link_study(
    study_uid: StudyUid,
    body: LinkIn,
    request: Request,
    principal: PrincipalDep,
    runtime: RuntimeDep,
) -> LinkOut:
    """Link the study to the order ``order_id``: its patient, accession number and
    referring physician in the index become the registration's (the stored
    files are not changed). 404 for an unknown study or order, 409 for a
    cancelled order."""
    uid = _checked_uid(study_uid)
    link = await run_in_threadpool(
        lambda: Reconciler(runtime.index).link(uid, body.order_id, actor=f"user:{principal.username}")
    )
    study = await run_in_threadpool(runtime.index.get_study, uid)
    if study is not None:
        # The access checks must see the corrected patient and referring physician now.
        cache: StudyFactsCache = request.app.state.study_facts
        cache.put(uid, StudyFacts(study.patient_id, study.referring_physician_name))
    audit_user_event(
        request, principal, EventID.INSTANCES_ACCESSED, Action.UPDATE,
        patient_id=study.patient_id if study is not None else "",
        study_instance_uid=uid, detail={"order": body.order_id, "reconciled": True},
    )  # fmt: skip
    return _link_out(link)
