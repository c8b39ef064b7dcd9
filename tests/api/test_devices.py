"""``/api/devices``: the device registry for administrators (Permission.MANAGE_DEVICES)."""

from __future__ import annotations

import json

from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.devices.registry import DeviceRegistry
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from tests.api.conftest import api_key_for, bearer
from tests.pipeline.security.test_tls import audit_rows


def test_add_list_get_update_remove(client: TestClient, runtime: Runtime) -> None:
    created = client.post("/api/devices", json={"ae_title": "WS1", "host": "10.0.0.5", "port": 104,
                                                "description": "reading room"})  # fmt: skip
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["ae_title"], body["setup"], body["services"], body["active"]) == ("WS1", "bi-directional", [], True)
    assert "move" in body["allowed_services"]
    modality = client.post("/api/devices", json={"ae_title": "CT01", "setup": "uni-directional"}).json()
    assert modality["allowed_services"] == ["echo", "store"]
    assert [d["ae_title"] for d in client.get("/api/devices").json()] == ["CT01", "WS1"]
    assert client.get("/api/devices/WS1").json()["port"] == 104

    changed = client.patch("/api/devices/WS1", json={"services": ["find", "get"], "port": 11112})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["services"], changed.json()["port"], changed.json()["host"]) == (["find", "get"], 11112, "10.0.0.5")
    cleared = client.patch("/api/devices/WS1", json={"port": None, "description": None})
    assert cleared.json()["port"] is None and cleared.json()["description"] == "reading room"
    assert DeviceRegistry(runtime.index).services_for("WS1") == {"find", "get"}

    assert client.delete("/api/devices/WS1").status_code == 204
    assert client.get("/api/devices/WS1").status_code == 404
    assert client.delete("/api/devices/WS1").status_code == 404

    rows = audit_rows(runtime, event_id="110113")
    config = [r for r in rows if r["event_type_code"] == "110129"]
    changes = [json.loads(r["detail"]) for r in config]  # type: ignore[arg-type]
    assert [c["device"] for c in changes] == ["WS1", "CT01", "WS1", "WS1", "WS1"]
    assert changes[0]["change"] == "added (bi-directional)" and changes[-1]["change"] == "removed"
    assert {r["actor"] for r in config} == {"test-admin"}
    assert [r["action"] for r in config] == ["C", "C", "U", "U", "D"]


def test_refusals(client: TestClient) -> None:
    assert client.post("/api/devices", json={"ae_title": "WS1"}).status_code == 201
    assert client.post("/api/devices", json={"ae_title": "WS1 "}).status_code == 409
    for bad in ({"ae_title": "A\\B"}, {"ae_title": "X" * 17}, {"ae_title": ""},
                {"ae_title": "P", "port": 0}, {"ae_title": "S", "services": ["teleport"]},
                {"ae_title": "U", "setup": "uni-directional", "services": ["move"]},
                {"ae_title": "H", "host": "bad host"}):  # fmt: skip
        answer = client.post("/api/devices", json=bad)
        assert answer.status_code in (400, 422), (bad, answer.text)
    assert client.patch("/api/devices/WS1", json={"setup": "uni-directional", "services": ["get"]}).status_code == 400
    assert client.patch("/api/devices/NOPE", json={"port": 104}).status_code == 404
    assert client.get("/api/devices/bad%5Ctitle").status_code in (400, 404)


def test_other_roles_are_forbidden(app: FastAPI, runtime: Runtime, anonymous: TestClient) -> None:
    key = api_key_for(runtime, "rad", Role.RADIOLOGIST)
    with TestClient(app) as radiologist:
        radiologist.headers.update(bearer(key))
        assert radiologist.get("/api/devices").status_code == 403
        assert radiologist.post("/api/devices", json={"ae_title": "WS1"}).status_code == 403
    assert anonymous.get("/api/devices").status_code == 401
    assert DeviceRegistry(runtime.index).list() == []
