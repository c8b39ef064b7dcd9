"""Archive state for administrators: counts, decode failures, one instance's record.

``GET /api/status`` is what ``lightbox status`` prints; ``GET
/api/instances/{sop_instance_uid}`` is the index record of one instance,
including its pixel state and, when decoding failed, the reason.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from api.access import check_study
from api.auth import require
from api.deps import RuntimeDep
from pipeline.ingest.parse import is_valid_uid
from pipeline.security.accounts import Principal
from pipeline.security.roles import Permission

router = APIRouter(prefix="/api", tags=["archive"])


@router.get("/status", dependencies=[Depends(require(Permission.READ_ARCHIVE_STATUS))])
async def archive_status(
    runtime: RuntimeDep, failures: int = Query(20, ge=0, le=1000)
) -> dict[str, Any]:
    """Counts of the archive, pixel states, queued work, and the latest decode failures."""

    def read() -> dict[str, Any]:
        counts = asdict(runtime.index.counts())
        counts["pixel_failures"] = [
            {"sop_instance_uid": uid, "reason": reason}
            for uid, reason in runtime.index.pixel_failures(limit=failures)
        ]
        return counts

    return await run_in_threadpool(read)


@router.get("/instances/{sop_instance_uid}")
async def instance_record(
    sop_instance_uid: str,
    request: Request,
    runtime: RuntimeDep,
    principal: Principal = Depends(require(Permission.READ_IMAGES)),
) -> dict[str, Any]:
    """The index record of one instance (PS3.5 9.1 UID in the path)."""
    if not is_valid_uid(sop_instance_uid):
        raise HTTPException(400, "not a valid UID (PS3.5 9.1)")
    row = await run_in_threadpool(runtime.index.get_instance, sop_instance_uid)
    if row is None or await check_study(request, principal, row.study_instance_uid) is None:
        raise HTTPException(404, "no such instance")
    record = asdict(row)
    record["received_at"] = row.received_at.isoformat()
    record["pixel_state"] = row.pixel_state.value
    return record
