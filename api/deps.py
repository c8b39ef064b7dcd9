"""Typed FastAPI dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pipeline.config import Settings
from pipeline.errors import OutOfResources
from pipeline.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    """The application's :class:`~pipeline.runtime.Runtime` (``app.state.runtime``).

    Raises
    ------
    OutOfResources
        When no runtime is open (the lifespan has not run or has ended): 503.
    """
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise OutOfResources("the server's stores are not open")
    return runtime


def get_settings(request: Request) -> Settings:
    """The application's :class:`~pipeline.config.Settings` (``app.state.settings``)."""
    settings: Settings = request.app.state.settings
    return settings


# The dependencies are ``async def`` though they await nothing: FastAPI runs
# a plain ``def`` dependency in the thread pool, a trip of ~0.1 ms on every
# request for an attribute read.


async def _runtime_dependency(request: Request) -> Runtime:
    return get_runtime(request)


async def _settings_dependency(request: Request) -> Settings:
    return get_settings(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime_dependency)]
SettingsDep = Annotated[Settings, Depends(_settings_dependency)]
