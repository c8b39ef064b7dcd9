"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

``GET /dicom-web/studies``, ``/studies/{study}/series``, ``/series``,
``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances``
and ``/instances``, answered as ``application/dicom+json`` (PS3.18 F.2) from
the index alone (:class:`pipeline.query.QueryService`, the engine of C-FIND
too). Parameters and answers: :mod:`api.qido`.

* No match: 200 with ``[]`` (PS3.18 10.6.3.2 allows 204 too; an empty array
  is what Orthanc answers and what every client reads without a special case).
* A parameter that is unknown or malformed: 400 with the reason.
* More matches than the page: the page, and a ``Warning: 299`` header saying
  that more can be requested (with ``offset``).
* ``fuzzymatching=true``: each word of a person name key must begin a
  component or a word of the name, in any order, without case
  (:mod:`pipeline.query.matching`); without it, names still match without case.

Security: ``images:read``; a route naming a study checks the referring
physician's scope and audits the access (:func:`api.access.study_access`);
a search across studies is restricted to the referring physician's own
studies when ``referring_own_studies_only`` is on. Every search is audited
(Query, action E) with the level, the keys given and the number of matches.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from api.access import study_access
from api.auth import PrincipalDep, audit_user_event, require
from api.deps import RuntimeDep
from api.dicom_json import DicomJsonResponse
from api.qido import Search, parse_search, to_dicom_json
from pipeline.index.records import person_name_key
from pipeline.ingest.parse import is_valid_uid
from pipeline.query import Level, QueryService, Root
from pipeline.query.matching import is_single_value
from pipeline.runtime import Runtime
from pipeline.security.accounts import Principal
from pipeline.security.audit import Action, EventID
from pipeline.security.roles import Permission, Role

PREFIX = "/dicom-web"
router = APIRouter(
    prefix=PREFIX, tags=["qido"], dependencies=[Depends(require(Permission.READ_IMAGES))]
)
_STUDY = [Depends(study_access)]

#: Media types a client may accept (PS3.18 10.6.2: JSON; XML is not offered).
_ACCEPTABLE = {"*/*", "application/*", "application/dicom+json", "application/json"}


@router.get("/studies")
async def search_for_studies(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """Search for studies (PS3.18 10.6, Table 10.6.3-3 attributes)."""
    return await _search(request, runtime, principal, Level.STUDY, {}, None)


@router.get("/studies/{study}/series", dependencies=_STUDY)
async def search_for_study_series(
    study: str, request: Request, runtime: RuntimeDep, principal: PrincipalDep
) -> Response:
    """Search for the series of a study (Table 10.6.3-4 attributes)."""
    return await _search(
        request, runtime, principal, Level.SERIES, {"StudyInstanceUID": study}, Level.STUDY
    )


@router.get("/series")
async def search_for_series(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """Search for series of all studies (with their study's attributes)."""
    return await _search(request, runtime, principal, Level.SERIES, {}, None)


@router.get("/studies/{study}/series/{series}/instances", dependencies=_STUDY)
async def search_for_series_instances(
    study: str, series: str, request: Request, runtime: RuntimeDep, principal: PrincipalDep
) -> Response:
    """Search for the instances of a series (Table 10.6.3-5 attributes)."""
    if not is_valid_uid(series):
        raise HTTPException(400, "the series in the URL is not a valid UID (PS3.5 9.1)")
    fixed = {"StudyInstanceUID": study, "SeriesInstanceUID": series}
    return await _search(request, runtime, principal, Level.IMAGE, fixed, Level.SERIES)


@router.get("/studies/{study}/instances", dependencies=_STUDY)
async def search_for_study_instances(
    study: str, request: Request, runtime: RuntimeDep, principal: PrincipalDep
) -> Response:
    """Search for the instances of a study (with their series' attributes)."""
    return await _search(
        request, runtime, principal, Level.IMAGE, {"StudyInstanceUID": study}, Level.STUDY
    )


@router.get("/instances")
async def search_for_instances(request: Request, runtime: RuntimeDep, principal: PrincipalDep) -> Response:
    """Search for instances of all studies (with their study's and series' attributes)."""
    return await _search(request, runtime, principal, Level.IMAGE, {}, None)


async def _search(
    request: Request,
    runtime: Runtime,
    principal: Principal,
    level: Level,
    fixed: dict[str, str],
    scope: Level | None,
) -> Response:
    _check_accept(request.headers.get("accept"))
    search = parse_search(request.query_params.multi_items(), level, fixed, scope)
    settings = request.app.state.settings
    referring = None
    if principal.role is Role.REFERRING_PHYSICIAN and settings.referring_own_studies_only:
        referring = person_name_key(principal.referring_physician_name)
    base = str(request.base_url).rstrip("/") + PREFIX
    body, more = await run_in_threadpool(
        _run, runtime, search, referring, base, settings.ae_title
    )
    patient_id = search.keys.get("PatientID", "")
    audit_user_event(
        request,
        principal,
        EventID.QUERY,
        Action.EXECUTE,
        patient_id=patient_id if is_single_value(patient_id) else "",
        study_instance_uid=fixed.get("StudyInstanceUID", ""),
        detail={
            "level": level.value,
            "keys": sorted(k for k, v in search.keys.items() if v.strip()),
            "matches": len(body),
        },
    )
    headers = {}
    if more:
        next_offset = search.offset + len(body)
        if search.client_limit is not None and search.client_limit <= search.limit:
            text = f"There are more matches: request them with offset={next_offset}."
        else:
            # PS3.18 8.3.4.4's words for results cut at the server's maximum.
            text = (
                "The number of results exceeded the maximum supported by the server. "
                f"Additional results can be requested (offset={next_offset})."
            )
        headers["Warning"] = f"299 {base}: {text}"
    return DicomJsonResponse(body, headers=headers)


def _run(
    runtime: Runtime, search: Search, referring: str | None, base: str, ae_title: str
) -> tuple[list[dict[str, Any]], bool]:
    """The page of matches as DICOM JSON, and whether more matches follow it."""
    rows = QueryService(runtime.index).search(
        search.level,
        search.keys,
        root=Root.STUDY,
        limit=search.limit + 1,  # one more tells whether the page is the last
        offset=search.offset,
        referring_physician=referring,
        fields=search.fields,
        fuzzy=search.fuzzy,
    )
    more = len(rows) > search.limit
    return [to_dicom_json(row, search, base, ae_title) for row in rows[: search.limit]], more


def _check_accept(accept: str | None) -> None:
    if not accept:
        return
    types = {part.split(";", 1)[0].strip().lower() for part in accept.split(",")}
    if not types & _ACCEPTABLE:
        raise HTTPException(406, "QIDO-RS answers application/dicom+json (PS3.18 10.6.2)")
