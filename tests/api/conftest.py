"""Fixtures of the HTTP tests: the application on the ``runtime`` fixture, a
TestClient, and a real uvicorn server in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.main import create_app
from pipeline.config import Settings
from pipeline.runtime import Runtime
from pipeline.security.accounts import API_KEY
from pipeline.security.roles import Role

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


def api_key_for(runtime: Runtime, username: str, role: Role | str, **user: Any) -> str:
    """Create an account (without a password) and an API key for it; the key."""
    account = runtime.accounts.create_user(username, role, **user)
    return runtime.accounts.issue(account, API_KEY, name="test").secret


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for an API key or bearer token (RFC 6750)."""
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin_key(runtime: Runtime) -> str:
    """An administrator's API key on the ``runtime`` fixture's database."""
    return api_key_for(runtime, "test-admin", Role.ADMINISTRATOR)


@pytest.fixture
def auth_headers(admin_key: str) -> dict[str, str]:
    """Headers that authenticate as an administrator (RFC 6750 bearer)."""
    return bearer(admin_key)


@pytest.fixture
def client(app: FastAPI, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    """A TestClient signed in as an administrator."""
    with TestClient(app, headers=auth_headers) as test_client:
        yield test_client


@pytest.fixture
def anonymous(app: FastAPI) -> Iterator[TestClient]:
    """A TestClient without any credential."""
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
