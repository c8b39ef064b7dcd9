"""Exception handlers: the one place errors become HTTP answers.

A :class:`~pipeline.errors.LightboxError` answers with its ``http_status`` from
the error table (:mod:`pipeline.errors`); a malformed multipart body
(:class:`api.multipart.MultipartError`) with 400. The body is
``{"detail": reason}``; reasons are PHI-free, so they are logged too.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.multipart import MultipartError
from pipeline.errors import LightboxError

log = logging.getLogger(__name__)


def _route(request: Request) -> str:
    """The route's path template: a concrete path may hold a UID, which we do not log."""
    return str(getattr(request.scope.get("route"), "path", "?"))


async def _lightbox_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LightboxError)
    log.info("%s %s -> %d %s: %s", request.method, _route(request), exc.http_status,
             type(exc).__name__, exc.reason)  # fmt: skip
    headers = None
    if exc.http_status == 401:
        # RFC 6750 3: a 401 names the scheme the client should use.
        headers = {"WWW-Authenticate": 'Bearer realm="lightbox"'}
    return JSONResponse({"detail": exc.reason}, status_code=exc.http_status, headers=headers)


async def _multipart_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MultipartError)
    log.info("%s %s -> 400 malformed multipart body: %s", request.method, _route(request),
             exc.reason)  # fmt: skip
    return JSONResponse({"detail": exc.reason}, status_code=exc.http_status)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(LightboxError, _lightbox_error)
    app.add_exception_handler(MultipartError, _multipart_error)
