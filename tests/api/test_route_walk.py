"""Every route but /health and login needs a credential: walk the app and prove it.

The walk takes the routes from the application itself (every method of every
route, OpenAPI or not) and from its OpenAPI schema, calls each without a
credential, with a malformed one and with a revoked one, and expects 401.
It also checks that each route declares the permission it needs, so that a
new route cannot be added without one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Route

from api.auth import PASSWORD_CHANGE_ROUTES, PUBLIC_ROUTES, current_principal
from pipeline.runtime import Runtime
from pipeline.security.accounts import API_KEY
from pipeline.security.roles import Role, permission_table

README = Path(__file__).resolve().parents[2] / "README.md"
UID = "1.2.826.0.1.3680043.8.498.1"


def concrete(path: str) -> str:
    """A path template with every parameter filled with a plausible value."""
    path = re.sub(r"\{(study|series|instance|sop_instance_uid)[^}]*\}", UID, path)
    path = re.sub(r"\{(frames|level|tile_row|tile_column)\}", "1", path)
    return re.sub(r"\{[^}]+\}", "x", path)


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    calls = set()
    for route in app.routes:
        if isinstance(route, Route):
            for method in route.methods or ():
                calls.add((method, route.path))
    schema = app.openapi()
    for path, operations in schema["paths"].items():
        for method in operations:
            calls.add((method.upper(), path))
    return sorted(calls)


def test_the_walk_covers_the_api(app: FastAPI) -> None:
    paths = {path for _, path in every_route(app)}
    # A walk that found nothing would prove nothing.
    assert {"/api/status", "/dicom-web/studies", "/api/users", "/health"} <= paths
    assert len(paths) > 20


@pytest.mark.parametrize(
    "credential",
    [
        {},
        {"Authorization": "Bearer lbk_0000000000000000." + "A" * 43},
        {"Authorization": "Bearer not-a-token"},
        {"X-API-Key": "lbt_0000000000000000." + "A" * 43},
        {"Cookie": "lightbox_session=forged"},
    ],
    ids=["none", "unknown-key", "malformed", "wrong-kind", "forged-cookie"],
)
def test_every_route_but_health_and_login_needs_a_credential(
    app: FastAPI, runtime: Runtime, credential: dict[str, str]
) -> None:
    with TestClient(app) as client:
        for method, path in every_route(app):
            if path in PUBLIC_ROUTES or method == "HEAD":
                continue
            response = client.request(method, concrete(path), headers=credential)
            assert response.status_code == 401, (method, path, response.status_code)


def test_a_revoked_key_opens_nothing(app: FastAPI, runtime: Runtime) -> None:
    user = runtime.accounts.create_user("ex-admin", Role.ADMINISTRATOR)
    issued = runtime.accounts.issue(user, API_KEY)
    runtime.accounts.revoke(issued.token_id)
    with TestClient(app, headers={"Authorization": f"Bearer {issued.secret}"}) as client:
        for method, path in every_route(app):
            if path not in PUBLIC_ROUTES and method != "HEAD":
                assert client.request(method, concrete(path)).status_code == 401, (method, path)


def test_public_routes_answer_without_credentials(app: FastAPI) -> None:
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        assert client.post("/api/auth/login", json={"username": "a", "password": "b"}).status_code == 401
        assert client.post("/api/auth/token", data={"grant_type": "password"}).status_code == 400


def _dependency_calls(route: APIRoute) -> list[object]:
    calls = []
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is not None:
            calls.append(dependant.call)
        stack.extend(dependant.dependencies)
    return calls


def test_every_route_declares_its_permission(app: FastAPI) -> None:
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path in PUBLIC_ROUTES:
            continue
        calls = _dependency_calls(route)
        permissions = [c.permission for c in calls if hasattr(c, "permission")]  # type: ignore[attr-defined]
        signed_in_only = route.path in PASSWORD_CHANGE_ROUTES or route.path == "/api/openapi.json"
        assert permissions or (signed_in_only and current_principal in calls), route.path


def test_readme_roles_table_is_the_code_s() -> None:
    assert permission_table() in README.read_text()
