"""STOW-RS (DICOM PS3.18 10.5): ``POST /dicom-web/studies[/{study}]``.

The request is ``multipart/related; type="application/dicom"`` with one
instance per part (PS3.18 10.5.1). The answer is the Store Instances Response
Module in DICOM JSON (PS3.18 10.5.3, Annex F) with 200, 202, 400, 409... as
:func:`api.stow.response_status` decides, plus one ``Warning`` header per
failed part with a human-readable reason. Errors of the request as a whole:
415 for another media type, 400 for a malformed body, 413 over the size limits,
406 when the client accepts no JSON.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from api.auth import audit_user_event, require
from api.body import read_body
from api.deps import RuntimeDep
from api.dicom_json import DicomJsonResponse
from api.multipart import Buffer, check_boundary, parse_media_type, parse_multipart
from api.stow import (
    DICOM_MEDIA_TYPE,
    PartOutcome,
    response_body,
    response_status,
    store_parts,
    warning_lines,
)
from pipeline.ingest.parse import is_valid_uid
from pipeline.runtime import Runtime
from pipeline.security.accounts import Principal
from pipeline.security.audit import Action, EventID, Outcome
from pipeline.security.roles import Permission

log = logging.getLogger(__name__)

PREFIX = "/dicom-web"
router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
_STORE = Depends(require(Permission.STORE_IMAGES))

#: Response media types a client may accept (PS3.18 10.5.2; XML is not offered).
_ACCEPTABLE = {"*/*", "application/*", "application/dicom+json", "application/json"}


@router.post("/studies")
async def store_instances(
    request: Request, runtime: RuntimeDep, principal: Principal = _STORE
) -> Response:
    """Store the instances of any studies (PS3.18 10.5, target ``/studies``)."""
    return await _store(request, runtime, principal, None)


@router.post("/studies/{study}")
async def store_study_instances(
    study: str, request: Request, runtime: RuntimeDep, principal: Principal = _STORE
) -> Response:
    """Store instances of one study (target ``/studies/{study}``); others fail with A900."""
    if not is_valid_uid(study):
        raise HTTPException(400, "the study in the URL is not a valid UID (PS3.5 9.1)")
    return await _store(request, runtime, principal, study)


async def _store(
    request: Request, runtime: Runtime, principal: Principal, study: str | None
) -> Response:
    _check_accept(request.headers.get("accept"))
    boundary, root_type = _multipart_params(request.headers.get("content-type"))
    spool_dir = runtime.settings.data_dir / "spool"
    body = await read_body(request, request.app.state.max_request_bytes, spool_dir)
    try:
        # Not cancellable: the body is closed only once the worker thread is done.
        outcomes = await run_in_threadpool(
            _parse_and_store, runtime, body.buffer(), boundary, root_type, study
        )
    finally:
        body.close()
    service_url = str(request.base_url).rstrip("/") + PREFIX
    status = response_status(outcomes)
    response = DicomJsonResponse(response_body(outcomes, service_url, study), status_code=status)
    for line in warning_lines(outcomes, service_url):
        response.headers.append("Warning", line)
    stored = sum(1 for o in outcomes if o.result is not None)
    for study_uid, patient_id, count, failed in await run_in_threadpool(
        _stored_studies, runtime, outcomes
    ):
        audit_user_event(
            request,
            principal,
            EventID.INSTANCES_TRANSFERRED,
            Action.CREATE,
            outcome=Outcome.SUCCESS if not failed else Outcome.MINOR_FAILURE,
            patient_id=patient_id,
            study_instance_uid=study_uid,
            detail={"instances": count, "failed": failed},
        )
    log.info("stow: %d parts, %d stored, %d failed -> %d", len(outcomes), stored,
             len(outcomes) - stored, status)  # fmt: skip
    return response


def _parse_and_store(
    runtime: Runtime, buffer: Buffer, boundary: bytes, root_type: str | None, study: str | None
) -> list[PartOutcome]:
    parts = parse_multipart(buffer, boundary, max_part_bytes=runtime.settings.max_dataset_bytes)
    return store_parts(runtime.ingest, buffer, parts, root_type=root_type, study_instance_uid=study)


def _stored_studies(
    runtime: Runtime, outcomes: list[PartOutcome]
) -> list[tuple[str, str, int, int]]:
    """(study, patient ID, stored, failed) per study of the request, for the audit trail.

    Failed parts whose study could not be read are counted under an empty study.
    """
    counts: dict[str, list[int]] = {}
    for outcome in outcomes:
        study = outcome.result.study_instance_uid if outcome.result else ""
        counts.setdefault(study, [0, 0])[0 if outcome.result else 1] += 1
    rows = []
    for study, (count, failed) in counts.items():
        row = runtime.index.get_study(study) if study else None
        rows.append((study, row.patient_id if row else "", count, failed))
    return rows


def _multipart_params(content_type: str | None) -> tuple[bytes, str | None]:
    """The boundary and ``type`` of a ``multipart/related`` Content-Type.

    Raises HTTP 415 for another media type or a ``type`` other than
    ``application/dicom`` (PS3.18 10.5.1, 10.5.3.1), and
    :class:`api.multipart.MultipartError` (400) for a missing or bad boundary.
    """
    expected = f'multipart/related; type="{DICOM_MEDIA_TYPE}"'
    if not content_type:
        raise HTTPException(415, f"the request has no Content-Type; expected {expected}")
    media_type, params = parse_media_type(content_type)
    if media_type != "multipart/related":
        raise HTTPException(415, f"unsupported media type {media_type[:80]!r}; expected {expected}")
    root_type = params.get("type")
    if root_type is not None and parse_media_type(root_type)[0] != DICOM_MEDIA_TYPE:
        raise HTTPException(
            415, f"unsupported type parameter {root_type[:80]!r}; expected {expected}"
        )
    return check_boundary(params.get("boundary")), root_type


def _check_accept(accept: str | None) -> None:
    """406 unless the client accepts DICOM JSON (RFC 9110 12.5.1; q=0 excludes)."""
    if accept is None or not accept.strip():
        return
    for item in accept.split(","):
        media_range, *params = (p.strip() for p in item.split(";"))
        refused = any(p.replace(" ", "").lower() in ("q=0", "q=0.0", "q=0.00", "q=0.000")
                      for p in params)  # fmt: skip
        if media_range.lower() in _ACCEPTABLE and not refused:
            return
    raise HTTPException(406, "the response is only available as application/dicom+json")
