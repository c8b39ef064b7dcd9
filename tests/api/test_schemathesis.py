"""schemathesis against the OpenAPI schema of the application: no server errors.

Every operation of the schema (the document ``/api/openapi.json`` serves) is
called with inputs schemathesis generates from it, valid and invalid, as an
administrator (the role that reaches the most code), through the ASGI
application on a real index and stores holding a few real instances. The
check is "not a server error": every malformed input must get a 4xx with a
reason, never a 5xx. ``LIGHTBOX_SCHEMATHESIS_EXAMPLES`` sets the examples per
operation (25 for ``make test``).

schemathesis' own pytest integration does not run under pytest 9 yet
(``Function._nodeid``), so the operations' Hypothesis strategies are driven
here directly, one parametrised test per operation.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from api.main import create_app
from pipeline.config import get_settings
from pipeline.index.records import Provenance
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from tests.api.conftest import api_key_for, bearer

EXAMPLES = int(os.environ.get("LIGHTBOX_SCHEMATHESIS_EXAMPLES", "25"))


def _operations() -> list[tuple[str, str]]:
    # The schema does not depend on settings or data: read it from a bare app.
    app = create_app(get_settings())
    schema = schemathesis.openapi.from_dict(app.openapi())
    return sorted((op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations())


@pytest.fixture
def populated(runtime: Runtime, dicom_data: Path) -> Runtime:
    """A few real instances, so that calls on stored UIDs reach deep code too."""
    for path in sorted((dicom_data / "series/ct_philips_ingenuity_headphantom_54sl").iterdir())[:3]:
        runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    return runtime


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])  # fmt: skip
@pytest.mark.parametrize(("method", "path"), _operations())
def test_no_server_errors(
    method: str, path: str, mode: GenerationMode, app: FastAPI, populated: Runtime
) -> None:
    schema = schemathesis.openapi.from_asgi(
        "/api/openapi.json", app, headers=bearer(api_key_for(populated, "reader", Role.RADIOLOGIST))
    )
    operation = schema[path][method]
    calls: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def call(case: Any) -> None:
        # A fresh administrator per example: a generated call may disable or
        # demote the account it runs as, which must not end the test's reach.
        key = api_key_for(populated, f"st-{uuid.uuid4().hex[:12]}", Role.ADMINISTRATOR)
        response = case.call_and_validate(headers=bearer(key), checks=[not_a_server_error])
        calls.append(response.status_code)

    try:
        call()
    except Exception as exc:
        # schemathesis cannot make an invalid input for some operations (no
        # parameters to break): nothing to call there.
        if mode is GenerationMode.NEGATIVE and "Unsatisfiable" in type(exc).__name__:
            return
        raise
    assert calls, "no call was made"
    _record(method, path, mode, calls)


def _record(method: str, path: str, mode: GenerationMode, calls: list[int]) -> None:
    """Append the statuses seen to ``LIGHTBOX_SCHEMATHESIS_REPORT`` (JSON lines), if set."""
    report = os.environ.get("LIGHTBOX_SCHEMATHESIS_REPORT")
    if report:
        with open(report, "a") as out:
            out.write(json.dumps({"operation": f"{method} {path}", "mode": mode.value,
                                  "calls": len(calls), "statuses": sorted(set(calls))}) + "\n")  # fmt: skip
