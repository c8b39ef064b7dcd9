"""Login, logout, tokens and one's own password: ``/api/auth``.

- ``POST /api/auth/login`` (JSON user name and password): a web session. Sets
  the ``lightbox_session`` cookie (HttpOnly, SameSite=Strict, Secure over
  HTTPS) and the ``lightbox_csrf`` cookie whose value state-changing requests
  repeat in ``X-CSRF-Token``.
- ``POST /api/auth/token``: the OAuth2 Resource Owner Password Credentials
  grant (RFC 6749 4.3; form fields ``grant_type=password``, ``username``,
  ``password``) answering a bearer token (RFC 6750) for API clients.
- ``POST /api/auth/logout``: ends the session or token used.
- ``GET /api/auth/me``: who the request acts as, and what the role allows.
- ``POST /api/auth/password``: change one's own password (the only call an
  account with a one-time password may make besides ``me`` and ``logout``).

Every login, failed or not, and every logout is in the audit trail (PS3.15
A.5.3.11 User Authentication).
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.auth import CSRF_COOKIE, SESSION_COOKIE, PrincipalDep, audit_user_event
from api.deps import RuntimeDep
from pipeline.errors import NotAuthenticated
from pipeline.security.accounts import BEARER, SESSION, Principal, User
from pipeline.security.audit import Action, EventID, EventType, Outcome
from pipeline.security.roles import ROLE_PERMISSIONS

router = APIRouter(prefix="/api/auth", tags=["auth"])

#: Longest user name or password read from a login request (longer: refused).
_MAX_FIELD = 256


class LoginRequest(BaseModel):
    username: str = Field(max_length=_MAX_FIELD)
    password: str = Field(max_length=_MAX_FIELD)


class PasswordChange(BaseModel):
    current_password: str = Field(max_length=_MAX_FIELD)
    new_password: str = Field(max_length=_MAX_FIELD)


class Me(BaseModel):
    username: str
    role: str
    permissions: list[str]
    must_change_password: bool
    credential: str


def _me(principal: Principal) -> Me:
    return Me(
        username=principal.username,
        role=principal.role.value,
        permissions=sorted(p.value for p in ROLE_PERMISSIONS[principal.role]),
        must_change_password=principal.must_change_password,
        credential=principal.kind,
    )


async def _authenticate(request: Request, runtime: RuntimeDep, username: str, password: str) -> User:
    """Check the password; audit the attempt either way."""
    try:
        user = await run_in_threadpool(runtime.accounts.authenticate, username, password)
    except NotAuthenticated:
        locked = await run_in_threadpool(runtime.accounts.is_locked, username)
        audit_user_event(
            request,
            None,
            EventID.USER_AUTHENTICATION,
            Action.EXECUTE,
            actor=username[:64],
            outcome=Outcome.MINOR_FAILURE,
            event_type=EventType.LOGIN,
            detail={"reason": "account locked" if locked else "wrong credentials"},
        )
        raise
    return user


def _audit_login(request: Request, user: User, kind: str) -> None:
    audit_user_event(
        request,
        None,
        EventID.USER_AUTHENTICATION,
        Action.EXECUTE,
        actor=user.username,
        event_type=EventType.LOGIN,
        detail={"credential": kind},
    )


@router.post("/login")
async def login(body: LoginRequest, request: Request, runtime: RuntimeDep) -> JSONResponse:
    """Start a web session (cookies); answers who is logged in and the CSRF token."""
    user = await _authenticate(request, runtime, body.username, body.password)
    issued = await run_in_threadpool(runtime.accounts.issue, user, SESSION)
    _audit_login(request, user, SESSION)
    csrf = secrets.token_urlsafe(32)
    response = JSONResponse(
        {
            "username": user.username,
            "role": user.role.value,
            "must_change_password": user.must_change_password,
            "csrf_token": csrf,
            "expires_at": issued.expires_at.isoformat() if issued.expires_at else None,
        },
        headers={"Cache-Control": "no-store"},
    )
    secure = request.url.scheme == "https"
    max_age = runtime.settings.session_minutes * 60
    response.set_cookie(SESSION_COOKIE, issued.secret, max_age=max_age, httponly=True,
                        secure=secure, samesite="strict", path="/")  # fmt: skip
    # Readable by the page's script (not HttpOnly): it repeats it in X-CSRF-Token.
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, httponly=False,
                        secure=secure, samesite="strict", path="/")  # fmt: skip
    return response


@router.post("/token")
async def token(
    request: Request,
    runtime: RuntimeDep,
    grant_type: Annotated[str, Form(max_length=32)] = "",
    username: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
    password: Annotated[str, Form(max_length=_MAX_FIELD)] = "",
) -> JSONResponse:
    """OAuth2 password grant (RFC 6749 4.3.2); errors as RFC 6749 5.2 says."""
    no_store = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if grant_type != "password":
        return JSONResponse({"error": "unsupported_grant_type"}, 400, headers=no_store)
    try:
        user = await _authenticate(request, runtime, username, password)
    except NotAuthenticated as exc:
        return JSONResponse(
            {"error": "invalid_grant", "error_description": exc.reason}, 400, headers=no_store
        )
    issued = await run_in_threadpool(runtime.accounts.issue, user, BEARER)
    _audit_login(request, user, BEARER)
    expires_in = runtime.settings.token_minutes * 60
    return JSONResponse(
        {
            "access_token": issued.secret,
            "token_type": "bearer",
            "expires_in": expires_in,
            "must_change_password": user.must_change_password,
        },
        headers=no_store,
    )


@router.post("/logout", status_code=204)
async def logout(request: Request, principal: PrincipalDep, runtime: RuntimeDep) -> Response:
    """End the session or bearer token of this request (an API key stays: revoke it
    through ``/api/users/{user}/api-keys``)."""
    if principal.kind != "apikey":
        await run_in_threadpool(runtime.accounts.revoke, principal.token_id)
    audit_user_event(
        request, principal, EventID.USER_AUTHENTICATION, Action.EXECUTE, event_type=EventType.LOGOUT
    )
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/me")
async def me(principal: PrincipalDep) -> Me:
    """The account the request acts as and its permissions."""
    return _me(principal)


@router.post("/password", status_code=204)
async def change_password(
    body: PasswordChange, request: Request, principal: PrincipalDep, runtime: RuntimeDep
) -> Response:
    """Change one's own password; every session and token of the account ends
    (API keys stay), so the client logs in again with the new password."""
    await _authenticate(request, runtime, principal.username, body.current_password)
    await run_in_threadpool(runtime.accounts.set_password, principal.username, body.new_password)
    audit_user_event(
        request,
        principal,
        EventID.SECURITY_ALERT,
        Action.UPDATE,
        event_type=EventType.USER_SECURITY_ATTRIBUTES_CHANGED,
        detail={"changed": "own password"},
    )
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response
