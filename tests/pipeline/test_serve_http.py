"""The HTTP server ``lightbox serve`` runs: HTTPS with a configured certificate.

Uses :func:`pipeline.serve.http_config` and :func:`listening_socket` exactly as
``serve`` does, with a real uvicorn on a real socket and httpx as the client.
"""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from api.main import create_app
from pipeline.config import Settings
from pipeline.runtime import Runtime
from pipeline.serve import http_config, listening_socket
from tests.pipeline.security.test_tls import Pki, pki  # noqa: F401  (the session fixture)


def test_https_with_a_configured_certificate(settings: Settings, runtime: Runtime, pki: Pki) -> None:  # noqa: F811
    tls = settings.model_copy(update={"http_tls_cert": pki.server_cert, "http_tls_key": pki.server_key})
    server = uvicorn.Server(http_config(tls, create_app(tls, runtime)))
    sock = listening_socket("127.0.0.1", tls.http_port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        url = f"https://127.0.0.1:{tls.http_port}"
        response = httpx.get(f"{url}/health", verify=ssl.create_default_context(cafile=pki.ca))
        assert response.status_code == 200
        assert response.headers["strict-transport-security"].startswith("max-age=")
        trusted = ssl.create_default_context(cafile=pki.ca)
        assert httpx.get(f"{url}/api/status", verify=trusted).status_code == 401
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the HTTPS port
            httpx.get(f"http://127.0.0.1:{tls.http_port}/health", timeout=5)
        with pytest.raises(httpx.ConnectError):  # a client that does not trust our CA
            httpx.get(f"{url}/health")
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def test_missing_certificate_stops_the_start(settings: Settings, tmp_path: Path) -> None:
    bad = settings.model_copy(
        update={"http_tls_cert": tmp_path / "absent.crt", "http_tls_key": tmp_path / "absent.key"}
    )
    with pytest.raises(SystemExit, match="http_tls_cert"):
        http_config(bad, object())
