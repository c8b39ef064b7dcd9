"""Authentication, roles and the audit of HTTP calls, through the real application."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import create_app
from pipeline.config import Settings
from pipeline.decode.service import DecodeService
from pipeline.index.records import Provenance
from pipeline.index.schema import audit_events
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from tests.api.conftest import CONTENT_TYPE, api_key_for, bearer, multipart_body

PASSWORD = "correct horse battery"
CT_FILE = "series/ct_philips_ingenuity_headphantom_54sl"


def audit_rows(runtime: Runtime, **where: str) -> list[dict[str, object]]:
    runtime.audit.flush()
    query = select(audit_events).order_by(audit_events.c.pk)
    for column, value in where.items():
        query = query.where(audit_events.c[column] == value)
    with runtime.index.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


@pytest.fixture
def ct_bytes(dicom_data: Path) -> bytes:
    return sorted((dicom_data / CT_FILE).iterdir())[0].read_bytes()


def with_referring(data: bytes, name: str, study_uid: str) -> bytes:
    """The instance re-identified into another study with a Referring Physician's Name."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.ReferringPhysicianName = name
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".1"
    ds.SOPInstanceUID = study_uid + ".1.1"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# --- login, sessions, CSRF --------------------------------------------------------------


def test_web_login_session_and_csrf(anonymous: TestClient, runtime: Runtime) -> None:
    runtime.accounts.create_user("alice", Role.ADMINISTRATOR, password=PASSWORD)
    assert anonymous.get("/api/auth/me").status_code == 401
    response = anonymous.post("/api/auth/login", json={"username": "Alice", "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["role"] == "administrator"
    cookie = response.headers.get_list("set-cookie")
    session = next(c for c in cookie if c.startswith("lightbox_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session
    assert response.headers["cache-control"] == "no-store"
    # The TestClient keeps the cookies: GETs work by cookie alone...
    me = anonymous.get("/api/auth/me")
    assert me.status_code == 200 and me.json()["credential"] == "session"
    # ...a state-changing call needs the CSRF header too.
    new_user = {"username": "bob", "role": "technologist"}
    refused = anonymous.post("/api/users", json=new_user)
    assert refused.status_code == 403 and "x-csrf-token" in refused.json()["detail"]
    wrong = anonymous.post("/api/users", json=new_user, headers={"X-CSRF-Token": "forged"})
    assert wrong.status_code == 403
    ok = anonymous.post("/api/users", json=new_user, headers={"X-CSRF-Token": body["csrf_token"]})
    assert ok.status_code == 201, ok.text
    # Logout ends the session in the database, not only in the browser.
    csrf = {"X-CSRF-Token": body["csrf_token"]}
    assert anonymous.post("/api/auth/logout", headers=csrf).status_code == 204
    secret = session.split(";")[0].split("=", 1)[1]
    anonymous.cookies.set("lightbox_session", secret)
    assert anonymous.get("/api/auth/me").status_code == 401


def test_failed_logins_are_401_and_audited(anonymous: TestClient, runtime: Runtime) -> None:
    runtime.accounts.create_user("alice", Role.RADIOLOGIST, password=PASSWORD)
    for body in [
        {"username": "alice", "password": "not the password"},
        {"username": "mallory", "password": PASSWORD},
    ]:
        response = anonymous.post("/api/auth/login", json=body)
        assert response.status_code == 401
        assert response.json()["detail"] == "wrong user name or password"
        assert "set-cookie" not in response.headers
    assert anonymous.post("/api/auth/login", json={"username": "x"}).status_code == 422
    rows = audit_rows(runtime, event_id="110114")
    assert [(r["actor"], r["outcome"], r["event_type_code"]) for r in rows] == [
        ("alice", 4, "110122"),
        ("mallory", 4, "110122"),
    ]
    anonymous.post("/api/auth/login", json={"username": "alice", "password": PASSWORD})
    rows = audit_rows(runtime, event_id="110114", outcome=0)
    assert [(r["actor"], r["source_address"]) for r in rows] == [("alice", "testclient")]


def test_oauth2_password_grant(anonymous: TestClient, runtime: Runtime) -> None:
    runtime.accounts.create_user("alice", Role.RADIOLOGIST, password=PASSWORD)
    form = {"grant_type": "password", "username": "alice", "password": PASSWORD}
    response = anonymous.post("/api/auth/token", data=form)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "bearer" and token["expires_in"] == 3600
    assert response.headers["cache-control"] == "no-store"
    me = anonymous.get("/api/auth/me", headers=bearer(token["access_token"]))
    assert me.json()["username"] == "alice" and me.json()["credential"] == "bearer"
    bad = anonymous.post("/api/auth/token", data={**form, "password": "wrong one!"})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_grant")
    grant = anonymous.post("/api/auth/token", data={**form, "grant_type": "client_credentials"})
    assert grant.json()["error"] == "unsupported_grant_type"
    # A bearer token in a cookie or an API-key header is not accepted.
    assert anonymous.get("/api/auth/me", headers={"X-API-Key": token["access_token"]}).status_code == 401


def test_401_names_the_scheme(anonymous: TestClient) -> None:
    response = anonymous.get("/api/status")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    basic = anonymous.get("/api/status", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
    assert basic.status_code == 401


def test_api_key_header_for_devices(app: FastAPI, runtime: Runtime, client: TestClient) -> None:
    created = client.post("/api/users", json={"username": "ct-scanner", "role": "technologist"})
    assert created.status_code == 201 and created.json()["has_password"] is False
    issued = client.post("/api/users/ct-scanner/api-keys", json={"name": "CT room 2"}).json()
    with TestClient(app) as device:
        me = device.get("/api/auth/me", headers={"X-API-Key": issued["key"]})
        assert me.json()["role"] == "technologist"
        listed = client.get("/api/users/ct-scanner/api-keys").json()
        assert [(k["name"], k["revoked"]) for k in listed] == [("CT room 2", False)]
        assert "key" not in listed[0]  # shown once, at issue
        url = f"/api/users/ct-scanner/api-keys/{issued['token_id']}"
        assert client.delete(url).status_code == 204
        assert client.delete(url).status_code == 404
        assert device.get("/api/auth/me", headers={"X-API-Key": issued["key"]}).status_code == 401


def test_first_administrator_must_change_the_one_time_password(
    anonymous: TestClient, runtime: Runtime
) -> None:
    username, one_time = runtime.accounts.ensure_first_administrator() or ("", "")
    form = {"grant_type": "password", "username": username, "password": one_time}
    token = anonymous.post("/api/auth/token", data=form).json()
    assert token["must_change_password"] is True
    headers = bearer(token["access_token"])
    refused = anonymous.get("/api/status", headers=headers)
    assert refused.status_code == 403 and "password" in refused.json()["detail"]
    assert anonymous.get("/api/auth/me", headers=headers).status_code == 200
    change = {"current_password": one_time, "new_password": "short"}
    assert anonymous.post("/api/auth/password", json=change, headers=headers).status_code == 400
    change["new_password"] = "the administrator's own"
    assert anonymous.post("/api/auth/password", json=change, headers=headers).status_code == 204
    # The old token ended with the change; a new login works with the new password.
    assert anonymous.get("/api/auth/me", headers=headers).status_code == 401
    form["password"] = "the administrator's own"
    token = anonymous.post("/api/auth/token", data=form).json()
    assert token["must_change_password"] is False
    assert anonymous.get("/api/status", headers=bearer(token["access_token"])).status_code == 200


# --- roles -----------------------------------------------------------------------------

#: (method, path, body or None, {role: expected status}); "study" in a path is
#: replaced by the stored study's URL part.
CALLS: list[tuple[str, str, dict[str, object] | None, dict[Role, int]]] = [
    ("GET", "/api/status", None, {
        Role.ADMINISTRATOR: 200, Role.RADIOLOGIST: 200, Role.TECHNOLOGIST: 200,
        Role.REFERRING_PHYSICIAN: 403}),
    ("GET", "/api/users", None, {
        Role.ADMINISTRATOR: 200, Role.RADIOLOGIST: 403, Role.TECHNOLOGIST: 403,
        Role.REFERRING_PHYSICIAN: 403}),
    ("POST", "/api/users", {"username": "new-user", "role": "radiologist"}, {
        Role.ADMINISTRATOR: 201, Role.RADIOLOGIST: 403, Role.TECHNOLOGIST: 403,
        Role.REFERRING_PHYSICIAN: 403}),
    ("GET", "STUDY/thumbnail", None, {
        Role.ADMINISTRATOR: 200, Role.RADIOLOGIST: 200, Role.TECHNOLOGIST: 200,
        Role.REFERRING_PHYSICIAN: 200}),
    ("GET", "INSTANCE", None, {
        Role.ADMINISTRATOR: 200, Role.RADIOLOGIST: 200, Role.TECHNOLOGIST: 200,
        Role.REFERRING_PHYSICIAN: 200}),
    ("POST", "/dicom-web/studies", {}, {
        Role.ADMINISTRATOR: 200, Role.RADIOLOGIST: 403, Role.TECHNOLOGIST: 200,
        Role.REFERRING_PHYSICIAN: 403}),
]  # fmt: skip


@pytest.mark.parametrize("role", list(Role))
def test_each_role_allowed_and_refused_calls(
    app: FastAPI, runtime: Runtime, ct_bytes: bytes, role: Role
) -> None:
    study = "1.2.826.0.1.3680043.8.498.4242"
    data = with_referring(ct_bytes, "Doe^Jane", study)
    runtime.ingest.store_part10(data, Provenance("import"))
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once(limit=10)
    extra = {"referring_physician_name": "DOE^JANE"} if role is Role.REFERRING_PHYSICIAN else {}
    key = api_key_for(runtime, "tester", role, **extra)
    other = with_referring(ct_bytes, "Other^Doctor", "1.2.826.0.1.3680043.8.498.4343")
    with TestClient(app, headers=bearer(key)) as client:
        for method, path, body, expected in CALLS:
            path = path.replace("STUDY", f"/dicom-web/studies/{study}")
            path = path.replace("INSTANCE", f"/api/instances/{study}.1.1")
            if path == "/dicom-web/studies":
                response = client.post(path, content=multipart_body([other]),
                                       headers={"Content-Type": CONTENT_TYPE})  # fmt: skip
            else:
                response = client.request(method, path, json=body)
            assert response.status_code == expected[role], (method, path, response.text)


def test_referring_physician_sees_only_own_studies(
    app: FastAPI, runtime: Runtime, ct_bytes: bytes
) -> None:
    mine, theirs = "1.2.826.0.1.3680043.8.498.51", "1.2.826.0.1.3680043.8.498.52"
    runtime.ingest.store_part10(with_referring(ct_bytes, "Doe^Jane^^Dr", mine), Provenance("import"))
    runtime.ingest.store_part10(with_referring(ct_bytes, "Roe^Rick", theirs), Provenance("import"))
    key = api_key_for(runtime, "dr-doe", Role.REFERRING_PHYSICIAN,
                      referring_physician_name="doe^jane^^dr")  # fmt: skip
    with TestClient(app, headers=bearer(key)) as client:
        # PN compared without case (PS3.4 C.2.2.2.1 allows it for PN).
        assert client.get(f"/api/instances/{mine}.1.1").status_code == 200
        # Another's study is "not found", exactly like a study that does not exist.
        hidden = client.get(f"/api/instances/{theirs}.1.1")
        absent = client.get("/api/instances/1.2.3.4.5")
        assert hidden.status_code == absent.status_code == 404
        assert hidden.json() == absent.json() or "no such" in hidden.json()["detail"]
        assert client.get(f"/dicom-web/studies/{theirs}/thumbnail").status_code == 404


def test_referring_scope_can_be_turned_off(
    settings: Settings, runtime: Runtime, ct_bytes: bytes
) -> None:
    theirs = "1.2.826.0.1.3680043.8.498.53"
    runtime.ingest.store_part10(with_referring(ct_bytes, "Roe^Rick", theirs), Provenance("import"))
    key = api_key_for(runtime, "dr-doe", Role.REFERRING_PHYSICIAN)
    app = create_app(settings.model_copy(update={"referring_own_studies_only": False}), runtime)
    with TestClient(app, headers=bearer(key)) as client:
        assert client.get(f"/api/instances/{theirs}.1.1").status_code == 200


# --- audit of data access --------------------------------------------------------------


def test_reads_and_stores_are_audited_with_patient_and_study(
    client: TestClient, runtime: Runtime, ct_bytes: bytes
) -> None:
    study = "1.2.826.0.1.3680043.8.498.61"
    data = with_referring(ct_bytes, "Doe^Jane", study)
    response = client.post("/dicom-web/studies", content=multipart_body([data]),
                           headers={"Content-Type": CONTENT_TYPE})  # fmt: skip
    assert response.status_code == 200
    patient_id = pydicom.dcmread(io.BytesIO(data)).PatientID
    for _ in range(5):
        assert client.get(f"/api/instances/{study}.1.1").status_code == 200
    stored = audit_rows(runtime, event_id="110104")
    assert [(r["actor"], r["action"], r["patient_id"], r["study_instance_uid"]) for r in stored] == [
        ("test-admin", "C", patient_id, study)
    ]
    read = audit_rows(runtime, event_id="110103")
    # Five reads of one study by one user: coalesced into one row that counts them.
    assert sum(int(r["count"]) for r in read) == 5  # type: ignore[call-overload]
    assert {(r["actor"], r["action"], r["patient_id"], r["destination"]) for r in read} == {
        ("test-admin", "R", patient_id, "/api/instances/{sop_instance_uid}")
    }


def test_refused_role_is_audited(app: FastAPI, runtime: Runtime) -> None:
    key = api_key_for(runtime, "viewer", Role.REFERRING_PHYSICIAN)
    with TestClient(app, headers=bearer(key)) as client:
        assert client.get("/api/users").status_code == 403
    (row,) = audit_rows(runtime, event_id="110113")
    assert (row["actor"], row["outcome"], row["destination"]) == ("viewer", 4, "/api/users")


# --- transport headers -----------------------------------------------------------------


def test_security_headers_on_every_answer(client: TestClient, anonymous: TestClient) -> None:
    for response in (client.get("/health"), anonymous.get("/api/status"), client.get("/api/status")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers  # plain HTTP here
    assert client.get("/api/status").headers["cache-control"] == "no-store"


def test_hsts_over_https(app: FastAPI, auth_headers: dict[str, str]) -> None:
    with TestClient(app, base_url="https://lightbox.test", headers=auth_headers) as client:
        assert client.get("/health").headers["strict-transport-security"].startswith("max-age=")


def test_cors_only_for_configured_origins(settings: Settings, runtime: Runtime) -> None:
    allowed = "https://viewer.example.org"
    app = create_app(settings.model_copy(update={"cors_origins": [allowed]}), runtime)
    preflight = {"Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    with TestClient(app) as client:
        ok = client.options("/api/status", headers={"Origin": allowed, **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == allowed
        assert ok.headers["access-control-allow-credentials"] == "true"
        evil = client.options("/api/status", headers={"Origin": "https://evil.test", **preflight})
        assert "access-control-allow-origin" not in evil.headers
    with TestClient(create_app(settings, runtime)) as client:  # no origins configured
        response = client.get("/health", headers={"Origin": allowed})
        assert "access-control-allow-origin" not in response.headers


def test_openapi_schema_needs_a_login(client: TestClient, anonymous: TestClient) -> None:
    assert anonymous.get("/api/openapi.json").status_code == 401
    for public_default in ("/docs", "/redoc", "/openapi.json"):
        assert anonymous.get(public_default).status_code == 404
    schema = client.get("/api/openapi.json").json()
    assert "/dicom-web/studies" in schema["paths"]
