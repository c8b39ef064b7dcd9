"""Access to a study's data: the referring physician's scope, and the audit record.

Every route that answers patient data of a study calls :func:`study_access`
(as a router dependency reading the ``study`` path parameter, or directly once
it knows the study). It

1. refuses a referring physician a study that does not name them as Referring
   Physician (0008,0090) when ``referring_own_studies_only`` is on: 404, as
   for a study that does not exist, so that the answer does not reveal it;
2. records a "DICOM Instances Accessed" event (PS3.15 A.5.3.2, action R) with
   the patient and study in the audit trail. The trail coalesces the hundreds
   of tile and frame requests of one viewing into one row.

A study's patient and referring physician are cached for a few seconds per
process: a viewer's requests must not each cost an index query.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, audit_user_event
from api.deps import get_runtime
from pipeline.index.records import person_name_key
from pipeline.ingest.parse import is_valid_uid
from pipeline.runtime import Runtime
from pipeline.security.accounts import Principal
from pipeline.security.audit import Action, EventID
from pipeline.security.roles import Role

_TTL_SECONDS = 10.0
_MAX_ENTRIES = 4096


@dataclass(frozen=True)
class StudyFacts:
    patient_id: str
    referring_physician_name: str


class StudyFactsCache:
    """Study Instance UID -> :class:`StudyFacts`, for a few seconds (one per app)."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[StudyFacts, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_uid: str) -> tuple[bool, StudyFacts | None]:
        with self._lock:
            entry = self._entries.get(study_uid)
            if entry is None or entry[1] < time.monotonic():
                return False, None
            return True, entry[0]

    def put(self, study_uid: str, facts: StudyFacts) -> None:
        with self._lock:
            self._entries[study_uid] = (facts, time.monotonic() + _TTL_SECONDS)
            self._entries.move_to_end(study_uid)
            while len(self._entries) > _MAX_ENTRIES:
                self._entries.popitem(last=False)


def _lookup(runtime: Runtime, study_uid: str) -> StudyFacts | None:
    row = runtime.index.get_study(study_uid)
    if row is None:
        return None
    return StudyFacts(row.patient_id, row.referring_physician_name)


def may_read(principal: Principal, facts: StudyFacts, own_studies_only: bool) -> bool:
    """Whether ``principal`` may read a study with ``facts``."""
    if principal.role is not Role.REFERRING_PHYSICIAN or not own_studies_only:
        return True
    mine = person_name_key(principal.referring_physician_name)
    return bool(mine) and person_name_key(facts.referring_physician_name) == mine


async def study_facts(request: Request, study_uid: str) -> StudyFacts | None:
    cache: StudyFactsCache = request.app.state.study_facts
    known, facts = cache.get(study_uid)
    if not known:
        facts = await run_in_threadpool(_lookup, get_runtime(request), study_uid)
        if facts is not None:
            # An unknown study is not remembered: it may be stored a moment later,
            # and its facts must then be checked.
            cache.put(study_uid, facts)
    return facts


async def check_study(
    request: Request, principal: Principal, study_uid: str, *, action: Action = Action.READ
) -> StudyFacts | None:
    """Refuse (404) a study the principal may not read; audit the access.

    Returns the study's facts, or None when the study is not in the index (the
    route then answers its own 404).
    """
    facts = await study_facts(request, study_uid)
    if facts is None:
        return None
    if not may_read(principal, facts, request.app.state.settings.referring_own_studies_only):
        raise HTTPException(404, "no such study")
    audit_user_event(
        request,
        principal,
        EventID.INSTANCES_ACCESSED,
        action,
        patient_id=facts.patient_id,
        study_instance_uid=study_uid,
    )
    return facts


async def study_access(request: Request, principal: PrincipalDep) -> Principal:
    """Router dependency for routes under ``/studies/{study}``: see module docstring."""
    study_uid = request.path_params.get("study", "")
    if not is_valid_uid(study_uid):
        raise HTTPException(400, "the study in the URL is not a valid UID (PS3.5 9.1)")
    await check_study(request, principal, study_uid)
    return principal
