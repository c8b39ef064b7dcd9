"""Fixtures of the HTTP tests: the application on the ``runtime`` fixture, a
TestClient, and a real uvicorn server in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from pipeline.config import Settings
from pipeline.runtime import Runtime

BOUNDARY = "lightbox-test-boundary-7c1e"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def multipart_body(
    parts: list[bytes | tuple[str | None, bytes]], boundary: str = BOUNDARY
) -> bytes:
    """A multipart/related body; a part is its bytes (as application/dicom) or
    (Content-Type or None for no header, bytes)."""
    out = bytearray()
    for part in parts:
        content_type, data = part if isinstance(part, tuple) else ("application/dicom", part)
        out += f"\r\n--{boundary}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


@pytest.fixture
def app(settings: Settings, runtime: Runtime) -> FastAPI:
    return create_app(settings, runtime)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def live_url(app: FastAPI, settings: Settings) -> Iterator[str]:
    """A real uvicorn server for ``app`` on ``settings.http_port``; its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=settings.http_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("the uvicorn test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.http_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "the uvicorn test server did not stop"
