"""The FastAPI application factory.

``uvicorn --factory api.main:create_app`` serves Lightbox with the settings of
the environment (see :mod:`pipeline.config`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from api.errors import install_error_handlers
from api.routes import archive, health, rendered, stow
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

    app = FastAPI(title="Lightbox", version=__version__, lifespan=lifespan)
    app.state.settings = resolved
    app.state.runtime = runtime
    # A request holds at least one dataset: never refuse what one part may be.
    app.state.max_request_bytes = max(resolved.max_request_bytes, resolved.max_dataset_bytes)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(stow.router)
    app.include_router(archive.router)
    app.include_router(rendered.router)
    return app
