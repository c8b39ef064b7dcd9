"""Authentication and authorisation of HTTP requests (typed FastAPI dependencies).

A request presents one credential (:mod:`pipeline.security.accounts`):

- ``Authorization: Bearer <token>``: an OAuth2 bearer token (``lbt_``, from
  ``POST /api/auth/token``) or an API key (``lbk_``), RFC 6750;
- ``X-API-Key: <key>``: an API key, for devices and scripts that cannot set
  an Authorization header;
- the ``lightbox_session`` cookie of a web login (``POST /api/auth/login``).
  A cookie is sent by the browser on its own, so a state-changing request
  (anything but GET, HEAD, OPTIONS) authenticated by it must also carry the
  ``X-CSRF-Token`` header equal to the ``lightbox_csrf`` cookie (the
  double-submit defence against cross-site request forgery; the cookie is
  also ``SameSite=Strict``).

Every route depends on :func:`require` with the :class:`Permission` it needs;
``/health`` and the login routes are the only ones without (a test walks the
application and proves it). An account whose password must change (the
first administrator's one-time password) may only change it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from api.deps import get_runtime
from pipeline.errors import Forbidden, NotAuthenticated
from pipeline.security.accounts import API_KEY, BEARER, SESSION, Principal
from pipeline.security.audit import Action, AuditEvent, EventID, EventType, Outcome
from pipeline.security.roles import Permission, allows

SESSION_COOKIE = "lightbox_session"
CSRF_COOKIE = "lightbox_csrf"
CSRF_HEADER = "x-csrf-token"

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HEADER_KINDS = frozenset({BEARER, API_KEY})
_KEY_KINDS = frozenset({API_KEY})
_COOKIE_KINDS = frozenset({SESSION})

#: Routes an account that must change its password may still call.
PASSWORD_CHANGE_ROUTES = frozenset({"/api/auth/password", "/api/auth/me", "/api/auth/logout"})

#: Routes that need no credential.
PUBLIC_ROUTES = frozenset({"/health", "/api/auth/login", "/api/auth/token"})


def route_template(request: Request) -> str:
    """The matched route's path template (never the concrete path: it may hold UIDs)."""
    return str(getattr(request.scope.get("route"), "path", "?"))


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


async def current_principal(request: Request) -> Principal:
    """Who the request acts as; raises 401 without a valid credential.

    Cached by FastAPI per request: every dependency asking for the principal
    gets this one.
    """
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    accounts = get_runtime(request).accounts
    credential, kinds, by_cookie = _presented(request)
    principal = accounts.resolve_cached(credential, kinds)
    if principal is None:
        principal = await run_in_threadpool(accounts.resolve, credential, kinds)
    if by_cookie and request.method not in _SAFE_METHODS:
        _check_csrf(request)
    if principal.must_change_password and route_template(request) not in PASSWORD_CHANGE_ROUTES:
        raise Forbidden("the password must be changed first: POST /api/auth/password")
    request.state.principal = principal
    return principal


def _presented(request: Request) -> tuple[str, frozenset[str], bool]:
    """The credential of the request, the kinds it may be, and whether it is a cookie."""
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise NotAuthenticated("use 'Authorization: Bearer <token or API key>'")
        return value.strip(), _HEADER_KINDS, False
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key.strip(), _KEY_KINDS, False
    session = request.cookies.get(SESSION_COOKIE)
    if session:
        return session, _COOKIE_KINDS, True
    raise NotAuthenticated("authentication required")


def _check_csrf(request: Request) -> None:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    header = request.headers.get(CSRF_HEADER, "")
    if not cookie or not header or not hmac.compare_digest(cookie, header):
        raise Forbidden(
            f"a state-changing request with a session cookie needs the {CSRF_HEADER} "
            f"header equal to the {CSRF_COOKIE} cookie"
        )


PrincipalDep = Annotated[Principal, Depends(current_principal)]


def require(permission: Permission) -> Callable[[Request, Principal], Awaitable[Principal]]:
    """A dependency that lets the request through if its role has ``permission``.

    The returned callable carries ``permission`` as an attribute, so that the
    route walk of the tests and the documentation can read what each route needs.
    """

    async def dependency(request: Request, principal: PrincipalDep) -> Principal:
        if not allows(principal.role, permission):
            get_runtime(request).audit.record(
                AuditEvent(
                    EventID.SECURITY_ALERT,
                    Action.EXECUTE,
                    "user",
                    principal.username,
                    outcome=Outcome.MINOR_FAILURE,
                    role=principal.role.value,
                    source_address=client_address(request),
                    destination=route_template(request),
                    detail={"refused": permission.value},
                )
            )
            raise Forbidden(f"the role {principal.role.value} may not do this ({permission.value})")
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


def audit_user_event(
    request: Request,
    principal: Principal | None,
    event_id: EventID,
    action: Action,
    *,
    actor: str | None = None,
    outcome: Outcome = Outcome.SUCCESS,
    event_type: EventType = EventType.ASSOCIATION,
    patient_id: str = "",
    study_instance_uid: str = "",
    detail: dict[str, object] | None = None,
) -> None:
    """Record an HTTP event of ``principal`` (or of the named ``actor``) in the trail."""
    get_runtime(request).audit.record(
        AuditEvent(
            event_id,
            action,
            "user",
            actor if actor is not None else (principal.username if principal else ""),
            outcome=outcome,
            event_type=event_type,
            role=principal.role.value if principal else "",
            source_address=client_address(request),
            destination=route_template(request),
            patient_id=patient_id,
            study_instance_uid=study_instance_uid,
            detail=detail or {},
        )
    )
