"""Fixtures of the worklist tests, borrowed from their home conftests.

``client`` (an administrator's TestClient): worklist tests register patients
and orders through the API as a registration desk would. ``index_url`` (an
empty database on SQLite and on PostgreSQL): the services run on both.
"""

from tests.api.conftest import admin_key, app, auth_headers, client  # noqa: F401 - fixtures
from tests.pipeline.index.conftest import index_url, postgres_url  # noqa: F401 - fixtures
