"""``lightbox serve`` end to end: Ray ingest actors on one port, HTTP, and a crash.

The crash test kills every process of the server (driver, Ray's raylet and
GCS, the ingest actors) with SIGKILL while storescu sends a series, restarts
it on the same data, and checks that every instance answered Success is
present and intact and that its queued pipeline work is there to resume.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from pipeline.config import Settings
from pipeline.ingest.part10 import split_part10
from pipeline.runtime import open_runtime
from tests.conftest import free_port, require_tool
from tests.corpus import SERIES, dataset_bytes

pytestmark = pytest.mark.slow

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


class Server:
    """A ``lightbox serve`` process in a session of its own."""

    def __init__(
        self, data_dir: Path, dicom_port: int, http_port: int, actors: int = 2, http_workers: int = 2
    ) -> None:
        self.data_dir = data_dir
        self.dicom_port = dicom_port
        self.http_port = http_port
        env = {
            **os.environ,
            "LIGHTBOX_DATA_DIR": str(data_dir),
            "LIGHTBOX_DICOM_PORT": str(dicom_port),
            "LIGHTBOX_HTTP_PORT": str(http_port),
            "LIGHTBOX_DICOM_HOST": "127.0.0.1",
            "LIGHTBOX_HTTP_HOST": "127.0.0.1",
            "LIGHTBOX_INGEST_ACTORS": str(actors),
            "LIGHTBOX_HTTP_WORKERS": str(http_workers),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self.log = (data_dir.parent / f"serve-{time.time_ns()}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_text()
            if self.echo() and self.health():
                return
            time.sleep(0.5)
        raise AssertionError("server did not start:\n" + self.log_text())

    def echo(self) -> bool:
        result = subprocess.run(
            [require_tool("echoscu"), "-aec", "LIGHTBOX", "127.0.0.1", str(self.dicom_port)],
            capture_output=True,
            env=DCMTK_ENV,
        )
        return result.returncode == 0

    def health(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-5000:]

    def session_pids(self) -> list[int]:
        """Every process in the server's session (Ray puts actors in groups of their own)."""
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
        return [int(pid) for pid, sid in (line.split() for line in out.splitlines()) if int(sid) == self.proc.pid]

    def crash(self) -> None:
        """SIGKILL every process of the server at once, as a power cut would."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self.session_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not self.session_pids()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.crash()
        for pid in self.session_pids():
            os.kill(pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def server(tmp_path: Path, ports: tuple[int, int]) -> Iterator[Server]:
    srv = Server(tmp_path / "data", *ports)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def open_index(data_dir: Path):  # type: ignore[no-untyped-def]
    return open_runtime(Settings(data_dir=data_dir))


def wait_until_decoded(data_dir: Path, instances: int, timeout: float = 120) -> dict[str, int]:
    """Poll the index until the decode actors have turned every instance ready."""
    deadline = time.monotonic() + timeout
    while True:
        runtime = open_index(data_dir)
        try:
            states = runtime.index.counts().pixel_states
        finally:
            runtime.close()
        if states.get("ready", 0) >= instances or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` spawned with multiprocessing (not its resource tracker)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            args = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"spawn_main" in args:
            found.append(int(proc.name))
    return found


def test_http_workers_share_the_port(server: Server) -> None:
    """``http_workers = 2``: a second HTTP process answers on the same port, and stops with serve.

    With the main process stopped (SIGSTOP) every new connection is taken by
    the worker; after SIGTERM to serve the worker is gone too.
    """
    [worker] = _children(server.proc.pid)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(5):
            with httpx.Client(timeout=10) as client:  # a new connection each time
                assert client.get(f"http://127.0.0.1:{server.http_port}/health").status_code == 200
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists(), "the HTTP worker outlived serve"


def test_serve_spreads_associations_over_actors(server: Server, dicom_data: Path) -> None:
    folder = dicom_data / SERIES["ct"]
    files = sorted(folder.iterdir())
    storescu = require_tool("storescu")
    # Four associations at once, as a busy modality fleet would.
    procs = [
        subprocess.Popen(
            [storescu, "-aec", "LIGHTBOX", "127.0.0.1", str(server.dicom_port), *map(str, files[i::4])],
            env=DCMTK_ENV,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    assert [p.wait(timeout=240) for p in procs] == [0, 0, 0, 0]
    runtime = open_index(server.data_dir)
    try:
        for path in files:
            uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
            row = runtime.index.get_instance(uid)
            assert row is not None
            assert bytes(split_part10(runtime.blobs.get(row.storage_key)).dataset) == dataset_bytes(path)
    finally:
        runtime.close()
    # The decode actors take the queued work: every frame ends in Zarr.
    assert wait_until_decoded(server.data_dir, len(files)) == {"ready": len(files)}
    runtime = open_index(server.data_dir)
    try:
        assert runtime.index.counts().work["decode"] == {"done": len(files)}
    finally:
        runtime.close()
    # The HTTP side of the same server answers too, to authenticated callers only.
    assert server.health()
    base = f"http://127.0.0.1:{server.http_port}"
    assert httpx.get(f"{base}/api/status").status_code == 401
    # First start: an administrator with a one-time password printed on the console.
    match = re.search(r"user name:\s+(\S+)\n\s+one-time password:\s+(\S+)", server.log_text())
    assert match, server.log_text()
    form = {"grant_type": "password", "username": match[1], "password": match[2]}
    token = httpx.post(f"{base}/api/auth/token", data=form).json()
    assert token["must_change_password"] is True
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.get(f"{base}/api/status", headers=headers).status_code == 403
    change = {"current_password": match[2], "new_password": "a strong new one"}
    assert httpx.post(f"{base}/api/auth/password", json=change, headers=headers).status_code == 204
    form["password"] = "a strong new one"
    headers = {"Authorization": f"Bearer {httpx.post(f'{base}/api/auth/token', data=form).json()['access_token']}"}
    status = httpx.get(f"{base}/api/status", headers=headers)
    assert status.status_code == 200 and status.json()["instances"] == len(files)
    # The password is on the console once; the log files never carry it.
    assert match[2] not in "".join(p.read_text(errors="replace") for p in server.data_dir.rglob("*.log"))


def test_crash_during_storescu_loses_nothing_acknowledged(
    tmp_path: Path, ports: tuple[int, int], dicom_data: Path
) -> None:
    data_dir = tmp_path / "data"
    files = sorted((dicom_data / SERIES["ct"]).iterdir()) + sorted((dicom_data / SERIES["mr"]).iterdir())
    srv = Server(data_dir, *ports)
    try:
        srv.wait_ready()
        sender = subprocess.Popen(
            [require_tool("storescu"), "-v", "-aec", "LIGHTBOX", "127.0.0.1", str(srv.dicom_port)]
            + list(map(str, files)),
            env=DCMTK_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # storescu -v prints "Sending file: X" then the response for it.
        acknowledged: list[Path] = []
        current: Path | None = None
        assert sender.stdout is not None
        for line in sender.stdout:
            if m := re.search(r"Sending file: (.+)$", line):
                current = Path(m.group(1).strip())
            elif "Received Store Response (Success)" in line and current is not None:
                acknowledged.append(current)
                if len(acknowledged) == 20:
                    srv.crash()
                    break
        sender.kill()
        sender.wait()
    finally:
        srv.log.close()
    assert len(acknowledged) == 20

    srv = Server(data_dir, *ports)
    try:
        srv.wait_ready()
        runtime = open_index(data_dir)
        try:
            for path in acknowledged:
                uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                row = runtime.index.get_instance(uid)
                assert row is not None, f"acknowledged but lost: {path.name}"
                blob = runtime.blobs.get(row.storage_key)
                assert bytes(split_part10(blob).dataset) == dataset_bytes(path)
            counts = runtime.index.counts()
            # Nothing half-stored: every indexed instance has its blob, and
            # no temporary file is left behind.
            for row in runtime.index.list_instances():
                assert runtime.blobs.exists(row.storage_key)
            assert not list(data_dir.rglob("*.tmp"))
            assert counts.instances >= 20
        finally:
            runtime.close()
        # The pipeline work of every stored instance resumed after the
        # restart: the decode actors turn them all ready, none is lost.
        assert wait_until_decoded(data_dir, counts.instances) == {"ready": counts.instances}
        # The restarted server takes the rest of the series.
        result = subprocess.run(
            [require_tool("storescu"), "-aec", "LIGHTBOX", "127.0.0.1", str(srv.dicom_port)]
            + list(map(str, files)),
            env=DCMTK_ENV,
            capture_output=True,
        )
        assert result.returncode == 0
        assert wait_until_decoded(data_dir, len(files)) == {"ready": len(files)}
    finally:
        srv.stop()
