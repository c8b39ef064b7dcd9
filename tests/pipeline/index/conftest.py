"""The ``index_url`` fixture: an empty database on every backend the index supports.

SQLite is a file in ``tmp_path``. PostgreSQL is ``$LIGHTBOX_TEST_POSTGRES_URL``
when set; otherwise a throwaway cluster started once per session from the
PostgreSQL 15 server binaries, run as the ``postgres`` OS user (the server
refuses to run as root), listening on 127.0.0.1 only, with trust
authentication. Each test gets the ``public`` schema dropped and recreated,
so it starts from an empty database (no tables, no enum types).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import free_port, require

PG_BIN = Path(os.environ.get("LIGHTBOX_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_URL_ENV = "LIGHTBOX_TEST_POSTGRES_URL"
PG_DATABASE = "lightbox_test"


def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _as_postgres(*argv: str) -> list[str]:
    """Run as the postgres OS user when we are root (postgres refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return list(argv)


class _Cluster:
    """A throwaway PostgreSQL cluster in a fresh temporary folder."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="lightbox-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = free_port()
        user = _postgres_user()
        if os.geteuid() == 0 and user is not None:
            os.chown(self.dir, user.pw_uid, user.pw_gid)

    def start(self) -> str:
        subprocess.run(
            _as_postgres(
                str(PG_BIN / "initdb"),
                "-D", str(self.data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.dir} -c fsync=off"
        )
        subprocess.run(
            _as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                "-o", options, "-w", "-t", "60", "start",
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        admin = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        try:
            for _ in range(50):
                try:
                    with engine.connect() as conn:
                        conn.execute(text(f"CREATE DATABASE {PG_DATABASE}"))
                    break
                except Exception:  # the server may still be opening its socket
                    time.sleep(0.2)
            else:
                raise RuntimeError(f"PostgreSQL did not come up: {self.log.read_text()}")
        finally:
            engine.dispose()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{PG_DATABASE}"

    def stop(self) -> None:
        if self.data.is_dir():
            stop = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            subprocess.run(
                _as_postgres(*stop),
                check=False,
                capture_output=True,
            )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database for the session (from the environment, or started here)."""
    url = os.environ.get(PG_URL_ENV)
    if url:
        yield url
        return
    require(
        (PG_BIN / "initdb").is_file() and (PG_BIN / "pg_ctl").is_file(),
        f"PostgreSQL server binaries in {PG_BIN} (Debian package postgresql-15)",
    )
    require(
        os.geteuid() != 0 or (_postgres_user() is not None and shutil.which("runuser")),
        "the 'postgres' OS user and runuser (to run PostgreSQL when testing as root)",
    )
    cluster = _Cluster()
    try:
        url = cluster.start()
    except BaseException:
        cluster.stop()
        raise
    try:
        yield url
    finally:
        cluster.stop()


def reset_postgres(url: str) -> None:
    """Empty the database: drop and recreate ``public`` (tables and enum types go)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    url: str = request.getfixturevalue("postgres_url")
    reset_postgres(url)
    return url
