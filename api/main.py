"""The FastAPI application factory.

``uvicorn --factory api.main:create_app`` serves Lightbox with the settings of
the environment (see :mod:`pipeline.config`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from api.access import StudyFactsCache
from api.auth import current_principal
from api.errors import install_error_handlers
from api.headers import SecurityHeaders
from api.instance_cache import ReadyInstances
from api.render_cache import RecentRenders
from api.routes import (
    archive,
    auth,
    devices,
    health,
    qido,
    reconciliation,
    registration,
    rendered,
    stow,
    users,
    wado,
    waitinglist,
)
from pipeline import __version__
from pipeline.config import Settings, get_settings
from pipeline.runtime import Runtime, open_runtime

#: Largest STOW-RS request body (all parts together) unless ``create_app`` is
#: told otherwise; one part is limited by ``Settings.max_dataset_bytes``.


def create_app(
    settings: Settings | None = None,
    runtime: Runtime | None = None,
) -> FastAPI:
    """Build the Lightbox HTTP application.

    Parameters
    ----------
    settings
        The process's settings; by default the runtime's, else :func:`get_settings`.
    runtime
        Open stores to serve. If None, the application opens a runtime with
        ``open_runtime(settings, run_migrations=True)`` when it starts (lifespan)
        and closes it when it stops. A given runtime is the caller's to close.

    Returns
    -------
    FastAPI
        With ``app.state.settings``, ``app.state.runtime`` (None until started
        when the application opens it) and ``app.state.max_request_bytes``.
    """
    if settings is None:
        settings = runtime.settings if runtime is not None else get_settings()
    resolved: Settings = settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned: Runtime | None = None
        if app.state.runtime is None:
            owned = await run_in_threadpool(open_runtime, resolved, run_migrations=True)
            app.state.runtime = owned
        try:
            yield
        finally:
            if owned is not None:
                app.state.runtime = None
                await run_in_threadpool(owned.close)

    # FastAPI's own /docs and /openapi.json would be public: the schema is
    # served below to authenticated users only.
    app = FastAPI(
        title="Lightbox",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = resolved
    app.state.runtime = runtime
    app.state.study_facts = StudyFactsCache()
    # Bounds the on-demand renders in flight (api.routes.rendered): past the
    # cores, more threads only contend for the GIL and memory bandwidth.
    # The setting is for all HTTP processes (pipeline.serve.start_http_workers).
    share = -(-resolved.render_concurrency // resolved.http_workers)
    app.state.render_limiter = anyio.CapacityLimiter(share)
    app.state.recent_renders = RecentRenders(resolved.render_cache_bytes)
    app.state.ready_instances = ReadyInstances()
    app.state.renders_in_flight = {}  # ETag -> api.routes.rendered._Flight
    # A request holds at least one dataset: never refuse what one part may be.
    app.state.max_request_bytes = max(resolved.max_request_bytes, resolved.max_dataset_bytes)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(users.router)
    app.include_router(stow.router)
    app.include_router(archive.router)
    app.include_router(rendered.router)
    app.include_router(qido.router)
    app.include_router(wado.router)
    app.include_router(registration.router)
    app.include_router(devices.router)
    app.include_router(reconciliation.router)
    app.include_router(waitinglist.router)

    @app.get("/api/openapi.json", tags=["meta"], dependencies=[Depends(current_principal)])
    async def openapi_schema() -> dict[str, Any]:
        """The OpenAPI schema of this API (any signed-in account)."""
        return app.openapi()

    app.add_middleware(SecurityHeaders)
    if resolved.cors_origins:
        # Credentials (cookies, Authorization) cross origins only to listed
        # origins; "*" would let any site read patient data with them.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=resolved.cors_origins,
            allow_credentials="*" not in resolved.cors_origins,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-API-Key",
                           "X-CSRF-Token", "If-None-Match"],  # fmt: skip
            expose_headers=["ETag", "Content-Location", "Location", "Warning"],
            max_age=600,
        )
    return app
