"""The device registry over HTTP, for administrators: ``/api/devices``.

Remote AEs (AE title, host, port, setup, services, TLS) that may query and
retrieve, receive C-MOVE sub-operations and Storage Commitment reports
(:mod:`pipeline.devices.registry`). Every change is in the audit trail as a
Security Alert of type Security Configuration (PS3.15 A.5.3.11, PS3.16
CID 401 110129): the registry decides which services a calling AE may use.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.auth import PrincipalDep, audit_user_event, require
from api.deps import RuntimeDep
from pipeline.devices.registry import SERVICES, Device, DeviceRegistry
from pipeline.index.schema import DeviceSetup
from pipeline.security.audit import Action, EventID, EventType
from pipeline.security.roles import Permission

router = APIRouter(
    prefix="/api/devices",
    tags=["devices"],
    dependencies=[Depends(require(Permission.MANAGE_DEVICES))],
)


class DeviceOut(BaseModel):
    ae_title: str
    host: str
    port: int | None
    setup: DeviceSetup
    #: What the device lists; empty: those of its setup.
    services: list[str]
    #: What it may use now (none while inactive).
    allowed_services: list[str]
    tls: bool
    description: str
    active: bool
    created_at: datetime
    updated_at: datetime


class DeviceCreate(BaseModel):
    ae_title: str = Field(max_length=64)
    host: str = Field("", max_length=253)
    port: int | None = Field(None, ge=1, le=65535)
    setup: DeviceSetup = DeviceSetup.BI_DIRECTIONAL
    services: list[str] = Field(default_factory=list, max_length=len(SERVICES))
    tls: bool = False
    description: str = Field("", max_length=1024)
    active: bool = True


class DeviceUpdate(BaseModel):
    """Fields to change; a field left out stays, ``"port": null`` clears the port."""

    host: str | None = Field(None, max_length=253)
    port: int | None = Field(None, ge=1, le=65535)
    setup: DeviceSetup | None = None
    services: list[str] | None = Field(None, max_length=len(SERVICES))
    tls: bool | None = None
    description: str | None = Field(None, max_length=1024)
    active: bool | None = None


def _ordered(names: frozenset[str]) -> list[str]:
    return [s for s in SERVICES if s in names]


def _out(device: Device) -> DeviceOut:
    return DeviceOut(
        ae_title=device.ae_title,
        host=device.host,
        port=device.port,
        setup=device.setup,
        services=_ordered(device.services),
        allowed_services=_ordered(device.allowed_services),
        tls=device.tls,
        description=device.description,
        active=device.active,
        created_at=device.created_at,
        updated_at=device.updated_at,
    )


def _registry(runtime: RuntimeDep) -> DeviceRegistry:
    return DeviceRegistry(runtime.index)


def _audit(
    request: Request, principal: PrincipalDep, action: Action, ae_title: str, change: str
) -> None:
    audit_user_event(
        request,
        principal,
        EventID.SECURITY_ALERT,
        action,
        event_type=EventType.SECURITY_CONFIGURATION,
        detail={"device": ae_title, "change": change},
    )


@router.get("")
async def list_devices(runtime: RuntimeDep) -> list[DeviceOut]:
    """Every registered device, by AE title."""
    return [_out(d) for d in await run_in_threadpool(_registry(runtime).list)]


@router.post("", status_code=201)
async def add_device(
    body: DeviceCreate, request: Request, principal: PrincipalDep, runtime: RuntimeDep
) -> DeviceOut:
    """Register a device (409 when its AE title is registered)."""
    device = await run_in_threadpool(
        lambda: _registry(runtime).add(
            body.ae_title,
            host=body.host,
            port=body.port,
            setup=body.setup,
            services=body.services,
            tls=body.tls,
            description=body.description,
            active=body.active,
        )
    )
    _audit(request, principal, Action.CREATE, device.ae_title, f"added ({device.setup.value})")
    return _out(device)


@router.get("/{ae_title}")
async def get_device(ae_title: str, runtime: RuntimeDep) -> DeviceOut:
    return _out(await run_in_threadpool(_registry(runtime).get, ae_title))


@router.patch("/{ae_title}")
async def update_device(
    ae_title: str,
    body: DeviceUpdate,
    request: Request,
    principal: PrincipalDep,
    runtime: RuntimeDep,
) -> DeviceOut:
    """Change some fields of a device."""
    changes = body.model_dump(exclude_unset=True)
    # null means "clear" for the port only; elsewhere it means "leave as is".
    changes = {k: v for k, v in changes.items() if v is not None or k == "port"}
    device = await run_in_threadpool(lambda: _registry(runtime).update(ae_title, **changes))
    change = "updated " + ", ".join(sorted(changes))
    _audit(request, principal, Action.UPDATE, device.ae_title, change)
    return _out(device)


@router.delete("/{ae_title}", status_code=204)
async def remove_device(
    ae_title: str, request: Request, principal: PrincipalDep, runtime: RuntimeDep
) -> Response:
    """Remove a device; its AE may still associate if the allow-list admits it."""
    registry = _registry(runtime)
    title = (await run_in_threadpool(registry.get, ae_title)).ae_title
    await run_in_threadpool(registry.remove, title)
    _audit(request, principal, Action.DELETE, title, "removed")
    return Response(status_code=204)
