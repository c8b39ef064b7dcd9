"""/api/patients and /api/orders: registration over HTTP, its permission and audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from tests.api.conftest import api_key_for, bearer
from tests.pipeline.security.test_tls import audit_rows

PATIENT = {
    "patient_id": "API-1",
    "issuer_of_patient_id": "HOSP",
    "patient_name": "Poe^Edgar",
    "patient_birth_date": "1970-01-19",
    "patient_sex": "M",
}


def order_body(patient: int, **extra: Any) -> dict[str, Any]:
    return {
        "patient": patient,
        "referring_physician_name": "Ref^Rita",
        "procedures": [
            {
                "modality": "CT",
                "scheduled_start": "2026-12-04T09:30:00",
                "description": "CT head",
                "code": {"value": "CTHEAD", "scheme": "99LB", "meaning": "CT head"},
                "station_ae_title": "CT01",
                "protocol_code": {"value": "P1", "scheme": "99LB", "meaning": "Head routine"},
            },
            {
                "modality": "MR",
                "scheduled_start": "2026-12-04T11:00:00+01:00",
                "description": "MR knee",
            },
        ],
        **extra,
    }


def test_register_a_patient_and_an_order(client: TestClient, runtime: Runtime) -> None:
    created = client.post("/api/patients", json=PATIENT)
    assert created.status_code == 201, created.text
    patient = created.json()["patient"]
    assert created.json()["warnings"] == []
    assert (patient["patient_birth_date"], patient["patient_sex"]) == ("1970-01-19", "M")
    assert client.post("/api/patients", json=PATIENT).status_code == 409
    twin = client.post("/api/patients", json={**PATIENT, "patient_id": "API-2"}).json()
    assert [w["id"] for w in twin["warnings"]] == [patient["id"]]

    made = client.post("/api/orders", json=order_body(patient["id"]))
    assert made.status_code == 201, made.text
    order = made.json()
    assert order["state"] == "SCHEDULED" and len(order["accession_number"]) == 12
    ct, mr = order["procedures"]
    assert ct["steps"][0]["scheduled_start"] == "2026-12-04T09:30:00"
    # An offset is dropped: the wall-clock reading is what the modality shows.
    assert mr["steps"][0]["scheduled_start"] == "2026-12-04T11:00:00"
    assert ct["steps"][0]["protocol_code"] == {
        "value": "P1",
        "scheme": "99LB",
        "meaning": "Head routine",
    }
    assert client.get(f"/api/orders/{order['id']}").json() == order
    listed = client.get(
        "/api/orders", params={"accession_number": order["accession_number"]}
    ).json()
    assert [o["id"] for o in listed] == [order["id"]]
    assert [
        p["id"] for p in client.get("/api/patients", params={"patient_name": "poe"}).json()
    ] == [twin["patient"]["id"], patient["id"]]

    sps = ct["steps"][0]["sps_id"]
    moved = client.patch(
        f"/api/orders/{order['id']}",
        json={
            "steps": [
                {
                    "sps_id": sps,
                    "scheduled_start": "2026-12-05T08:00:00",
                    "station_ae_title": "CT02",
                }
            ]
        },
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["procedures"][0]["steps"][0]["station_ae_title"] == "CT02"
    cancelled = client.post(f"/api/orders/{order['id']}/cancel", json={"reason": "declined"})
    assert cancelled.json()["state"] == "CANCELLED"
    assert {s["status"] for p in cancelled.json()["procedures"] for s in p["steps"]} == {"CANCELED"}
    assert client.post(f"/api/orders/{order['id']}/cancel", json={}).status_code == 409
    history = client.get(f"/api/orders/{order['id']}/history").json()
    assert {h["actor"] for h in history} == {"user:test-admin"}
    assert [h["action"] for h in history if h["entity"] == "order"] == ["create", "cancel"]

    # Audited, with the patient concerned.
    events = {(r["event_id"], r["action"]) for r in audit_rows(runtime, patient_id="API-1")}
    assert {("110110", "C"), ("110109", "C"), ("110109", "U"), ("110109", "D")} <= events


def test_update_patient(client: TestClient) -> None:
    pk = client.post("/api/patients", json=PATIENT).json()["patient"]["id"]
    changed = client.patch(
        f"/api/patients/{pk}", json={"patient_name": "Poe^Edgar^Allan", "patient_birth_date": None}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["patient"]["patient_name"] == "Poe^Edgar^Allan"
    assert changed.json()["patient"]["patient_birth_date"] is None
    history = client.get(f"/api/patients/{pk}/history").json()
    assert [h["action"] for h in history] == ["create", "update"]
    assert history[1]["before"] == {"patient_birth_date": "19700119", "patient_name": "Poe^Edgar"}


def test_refusals(client: TestClient) -> None:
    pk = client.post("/api/patients", json=PATIENT).json()["patient"]["id"]
    assert client.get("/api/patients/999999").status_code == 404
    assert client.get("/api/orders/999999").status_code == 404
    assert client.post("/api/orders", json=order_body(999999)).status_code == 404
    assert client.post("/api/orders", json={**order_body(pk), "procedures": []}).status_code == 422
    bad_modality = order_body(pk)
    bad_modality["procedures"][0]["modality"] = "ct"
    answer = client.post("/api/orders", json=bad_modality)
    assert answer.status_code == 400 and "modality" in answer.json()["detail"]
    bad_code = order_body(pk)
    bad_code["procedures"][0]["code"]["meaning"] = ""
    assert client.post("/api/orders", json=bad_code).status_code == 400
    assert (
        client.post(
            "/api/patients", json={**PATIENT, "patient_id": "X", "patient_name": "A\\B"}
        ).status_code
        == 400
    )
    given = client.post("/api/orders", json=order_body(pk, accession_number="RIS-77"))
    assert given.status_code == 201 and given.json()["accession_number"] == "RIS-77"
    assert (
        client.post("/api/orders", json=order_body(pk, accession_number="RIS-77")).status_code
        == 409
    )


def test_permission(app: FastAPI, runtime: Runtime) -> None:
    technologist = bearer(api_key_for(runtime, "tech", Role.TECHNOLOGIST))
    radiologist = bearer(api_key_for(runtime, "rad", Role.RADIOLOGIST))
    with TestClient(app) as anonymous:
        assert (
            anonymous.post("/api/patients", json=PATIENT, headers=technologist).status_code == 201
        )
        for method, path in (
            ("GET", "/api/patients"),
            ("POST", "/api/patients"),
            ("GET", "/api/orders"),
        ):
            response = anonymous.request(method, path, json=PATIENT, headers=radiologist)
            assert response.status_code == 403, (method, path)


def test_time_is_kept_as_wall_clock() -> None:
    from pipeline.worklist.values import dicom_date_time

    assert dicom_date_time(datetime(1, 1, 1, 0, 0)) == ("00010101", "000000")
