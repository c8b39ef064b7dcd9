"""Accounts and API keys, for administrators: ``/api/users``.

Every change is in the audit trail (PS3.15 A.5.3.14 Security Alert, event
type "User Security Attributes Changed"), with who made it and when.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, audit_user_event, require
from api.deps import RuntimeDep
from pipeline.errors import NotFound
from pipeline.security.accounts import API_KEY, User
from pipeline.security.audit import Action, EventID, EventType
from pipeline.security.roles import Permission, Role

router = APIRouter(
    prefix="/api/users", tags=["users"], dependencies=[Depends(require(Permission.MANAGE_USERS))]
)


class UserOut(BaseModel):
    username: str
    display_name: str
    role: Role
    active: bool
    must_change_password: bool
    referring_physician_name: str
    has_password: bool
    locked_until: datetime | None
    created_at: datetime


class UserCreate(BaseModel):
    username: str = Field(max_length=64)
    role: Role
    password: str | None = Field(None, max_length=256)
    display_name: str = Field("", max_length=256)
    referring_physician_name: str = Field("", max_length=320)
    must_change_password: bool = True


class UserUpdate(BaseModel):
    role: Role | None = None
    active: bool | None = None
    display_name: str | None = Field(None, max_length=256)
    referring_physician_name: str | None = Field(None, max_length=320)


class PasswordReset(BaseModel):
    password: str = Field(max_length=256)
    must_change_password: bool = True


class ApiKeyCreate(BaseModel):
    name: str = Field("", max_length=128)


class ApiKeyOut(BaseModel):
    token_id: str
    name: str
    created_at: datetime
    revoked: bool


class ApiKeyIssued(BaseModel):
    token_id: str
    name: str
    key: str


def _out(user: User) -> UserOut:
    return UserOut(
        username=user.username,
        display_name=user.display_name,
        role=user.role,
        active=user.active,
        must_change_password=user.must_change_password,
        referring_physician_name=user.referring_physician_name,
        has_password=user.has_password,
        locked_until=user.locked_until,
        created_at=user.created_at,
    )


def _audit_change(request: Request, principal: PrincipalDep, target: str, change: str) -> None:
    audit_user_event(
        request,
        principal,
        EventID.SECURITY_ALERT,
        Action.UPDATE,
        event_type=EventType.USER_SECURITY_ATTRIBUTES_CHANGED,
        detail={"user": target, "change": change},
    )


@router.get("")
async def list_users(runtime: RuntimeDep) -> list[UserOut]:
    """Every account."""
    return [_out(u) for u in await run_in_threadpool(runtime.accounts.list_users)]


@router.post("", status_code=201)
async def create_user(
    body: UserCreate, request: Request, principal: PrincipalDep, runtime: RuntimeDep
) -> UserOut:
    """Create an account; without a password it signs in with API keys only."""
    user = await run_in_threadpool(
        lambda: runtime.accounts.create_user(
            body.username,
            body.role,
            password=body.password,
            display_name=body.display_name,
            referring_physician_name=body.referring_physician_name,
            must_change_password=body.must_change_password and body.password is not None,
        )
    )
    _audit_change(request, principal, user.username, f"created with role {user.role.value}")
    return _out(user)


@router.get("/{username}")
async def get_user(username: str, runtime: RuntimeDep) -> UserOut:
    return _out(await run_in_threadpool(runtime.accounts.get_user, username))


@router.patch("/{username}")
async def update_user(
    username: str, body: UserUpdate, request: Request, principal: PrincipalDep, runtime: RuntimeDep
) -> UserOut:
    """Change role, display name, referring name or whether the account is active.

    A new role or a disabled account ends every credential issued before.
    """
    user = await run_in_threadpool(
        lambda: runtime.accounts.update_user(
            username,
            role=body.role,
            active=body.active,
            display_name=body.display_name,
            referring_physician_name=body.referring_physician_name,
        )
    )
    changes = sorted(k for k, v in body.model_dump().items() if v is not None)
    _audit_change(request, principal, user.username, "updated " + ", ".join(changes))
    return _out(user)


@router.post("/{username}/password", status_code=204)
async def reset_password(
    username: str,
    body: PasswordReset,
    request: Request,
    principal: PrincipalDep,
    runtime: RuntimeDep,
) -> Response:
    """Set an account's password (by default one the user must change at next login)."""
    await run_in_threadpool(
        lambda: runtime.accounts.set_password(
            username, body.password, must_change_password=body.must_change_password
        )
    )
    _audit_change(request, principal, username.lower(), "password reset")
    return Response(status_code=204)


@router.get("/{username}/api-keys")
async def list_api_keys(username: str, runtime: RuntimeDep) -> list[ApiKeyOut]:
    keys = await run_in_threadpool(runtime.accounts.api_keys, username)
    return [ApiKeyOut(token_id=k.token_id, name=k.name, created_at=k.created_at, revoked=k.revoked)
            for k in keys]  # fmt: skip


@router.post("/{username}/api-keys", status_code=201)
async def create_api_key(
    username: str,
    body: ApiKeyCreate,
    request: Request,
    principal: PrincipalDep,
    runtime: RuntimeDep,
) -> ApiKeyIssued:
    """Issue an API key acting as the account; the key is shown in this answer only."""
    user = await run_in_threadpool(runtime.accounts.get_user, username)
    issued = await run_in_threadpool(
        lambda: runtime.accounts.issue(user, API_KEY, name=body.name)
    )
    _audit_change(request, principal, user.username, f"API key {issued.token_id} issued")
    return ApiKeyIssued(token_id=issued.token_id, name=body.name, key=issued.secret)


@router.delete("/{username}/api-keys/{token_id}", status_code=204)
async def revoke_api_key(
    username: str, token_id: str, request: Request, principal: PrincipalDep, runtime: RuntimeDep
) -> Response:
    user = await run_in_threadpool(runtime.accounts.get_user, username)
    if not await run_in_threadpool(lambda: runtime.accounts.revoke(token_id, user_pk=user.pk)):
        raise NotFound("no such API key of this user")
    _audit_change(request, principal, user.username, f"API key {token_id} revoked")
    return Response(status_code=204)
