"""``GET /health`` (api/routes/health.py)."""

from __future__ import annotations

import shutil
import sqlite3

from fastapi.testclient import TestClient

from api.main import create_app
from pipeline import __version__
from pipeline.config import Settings
from pipeline.runtime import Runtime
from pipeline.storage.blobs import LocalBlobStore


def test_ok(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "version": __version__,
        "index": "ok",
        "storage": "ok",
    }


def test_storage_root_gone_is_503(client: TestClient, runtime: Runtime) -> None:
    assert isinstance(runtime.blobs, LocalBlobStore)
    shutil.rmtree(runtime.blobs.root)
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["storage"] == "unavailable"
    assert response.json()["index"] == "ok"


def test_index_schema_broken_is_503(
    client: TestClient, runtime: Runtime, settings: Settings
) -> None:
    runtime.index.close()  # drop pooled connections so the change is seen
    db = settings.data_dir / "index.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE instances RENAME TO instances_moved")
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["index"] == "unavailable"
    assert response.json()["storage"] == "ok"


def test_app_opens_and_closes_its_own_runtime(settings: Settings) -> None:
    app = create_app(settings)
    assert app.state.runtime is None
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert app.state.runtime is not None
        assert (settings.data_dir / "index.sqlite").is_file()
    assert app.state.runtime is None


def test_without_runtime_is_503(settings: Settings) -> None:
    app = create_app(settings)
    client = TestClient(app)  # no context manager: the lifespan does not run
    response = client.get("/health")
    assert response.status_code == 503
    assert "not open" in response.json()["detail"]
