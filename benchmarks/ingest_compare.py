"""DIMSE ingest, Lightbox against Orthanc, side by side in one run.

    python -m benchmarks.ingest_compare [--quick] [--out results.json]

Starts ``lightbox serve`` (fresh data folder, loopback ports, 4 ingest actors
unless ``--lightbox-actors``) and Orthanc (Debian package ``orthanc``, a
generated configuration: its own storage and SQLite index, no plugins), then,
for each workload (a 300-slice 512x512 CT series; 2,000 small MR images over
20 studies) and each number of associations (1, and 4 ``storescu`` processes
each sending a quarter of the files), sends with dcmtk ``storescu``
(``TCP_NODELAY=1``) to both servers, interleaved, ``--repeats`` times.

Every send uses a copy of the workload with UIDs of its own (see
``benchmarks.datasets``), so each one is new instances on both servers, never
duplicate handling. The order alternates (Lightbox first, then Orthanc first)
so that neither always runs in the other's wake.

For each send: wall time of the ``storescu`` processes (instances/s, MB/s of
file bytes), CPU seconds (user+system) of every process of the server (for
Lightbox, the whole session: driver, Ray's GCS, raylet and workers, the ingest
actors), peak of the summed RSS, sampled every 50 ms, and, for Lightbox, the
same for the ingest actors alone (Ray's daemons are fixed overhead). Each
server's idle CPU rate is measured before the sends. After every send the
server's instance count must have grown by the number sent; at the end both
totals are checked. Both servers are stopped whatever happens.

Read the ratios, not the absolute figures: the machine is shared and noisy.
"""

from __future__ import annotations

import abc
import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from benchmarks.datasets import write_ct_series, write_small_instances

REPO = Path(__file__).resolve().parents[1]
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
SAMPLE_INTERVAL = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"the program {name!r} is missing (Debian packages dcmtk, orthanc)")
    return path


def http_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


# -- servers ----------------------------------------------------------------------


class Server(abc.ABC):
    """A server process started in a session of its own (so that every helper
    process it starts can be found, measured and stopped by session id)."""

    name = ""
    aet = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.log_path = root / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The server's command line."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env(),
            cwd=self.root,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def echo(self) -> bool:
        result = subprocess.run(
            [tool("echoscu"), "-aec", self.aet, "127.0.0.1", str(self.dicom_port)],
            capture_output=True,
            env=DCMTK_ENV,
            check=False,
        )
        return result.returncode == 0

    def ready(self) -> bool:
        return self.echo()

    def wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not start in {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def session_pids(self) -> list[int]:
        if self.proc is None:
            return []
        sid = self.proc.pid
        pids = []
        for pid in psutil.pids():
            try:
                if os.getsid(pid) == sid:
                    pids.append(pid)
            except (ProcessLookupError, PermissionError):
                continue
        return pids

    def actor_pids(self, pids: list[int]) -> set[int]:
        """The processes that do the ingest work (all of them for Orthanc)."""
        return set(pids)

    @abc.abstractmethod
    def count(self) -> int:
        """How many instances the server holds."""

    def problems(self) -> dict[str, list[str]]:
        """Log lines that report errors, and those that warn."""
        return {"errors": [], "warnings": []}

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left in the session (Ray's daemons and workers after a
        # driver that did not clean up): SIGKILL, one pid at a time.
        for _ in range(2):
            for pid in self.session_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            deadline = time.monotonic() + 15
            while self.session_pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        if self._log is not None:
            self._log.close()
            self._log = None


class Lightbox(Server):
    name = "lightbox"
    aet = "LIGHTBOX"

    def __init__(self, root: Path, actors: int) -> None:
        super().__init__(root)
        self.actors = actors
        self.data_dir = root / "data"
        self._logged_actor_pids: set[int] = set()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipeline.cli", "serve"]

    def api_key(self) -> str:
        """An API key of a radiologist account made for the benchmark (before start:
        the HTTP API needs a credential on every route but /health)."""
        run = [sys.executable, "-m", "pipeline.cli", "user"]
        env = self.env()
        subprocess.run([*run, "add", "bench", "--role", "radiologist", "--no-password"],
                       env=env, cwd=self.root, check=True, capture_output=True)  # fmt: skip
        out = subprocess.run([*run, "apikey", "bench", "--name", "benchmark"], env=env,
                             cwd=self.root, check=True, capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip().splitlines()[-1]

    #: Settings a run may set in its own environment (the rest are the benchmark's).
    PASSED_THROUGH = (
        "LIGHTBOX_HTTP_WORKERS", "LIGHTBOX_RENDER_CONCURRENCY", "LIGHTBOX_RENDER_INLINE_PIXELS",
    )

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("LIGHTBOX_") or k in self.PASSED_THROUGH}  # fmt: skip
        env.update(
            LIGHTBOX_DATA_DIR=str(self.data_dir),
            LIGHTBOX_DICOM_PORT=str(self.dicom_port),
            LIGHTBOX_HTTP_PORT=str(self.http_port),
            LIGHTBOX_DICOM_HOST="127.0.0.1",
            LIGHTBOX_HTTP_HOST="127.0.0.1",
            LIGHTBOX_AE_TITLE=self.aet,
            LIGHTBOX_INGEST_ACTORS=str(self.actors),
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        return env

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/health", timeout=2
            ) as response:
                if response.status != 200:
                    return False
        except OSError:
            return False
        return self.echo()

    def actor_pids(self, pids: list[int]) -> set[int]:
        # serve logs "... ingest actors listening ... (pids a,b,c,d)"; an actor
        # Ray restarted has a new pid, found by its process title.
        if not self._logged_actor_pids:
            m = re.search(r"ingest actors listening .*\(pids ([\d,]+)\)", self.log_tail(10**6))
            if m:
                self._logged_actor_pids = {int(p) for p in m.group(1).split(",")}
        found = set(self._logged_actor_pids) & set(pids)
        for pid in pids:
            try:
                if "IngestWorker" in " ".join(psutil.Process(pid).cmdline()):
                    found.add(pid)
            except psutil.Error:
                continue
        return found

    def count(self) -> int:
        from pipeline.config import Settings
        from pipeline.runtime import open_runtime

        runtime = open_runtime(Settings(data_dir=self.data_dir))
        try:
            return runtime.index.counts().instances
        finally:
            runtime.close()

    def problems(self) -> dict[str, list[str]]:
        lines = self.log_tail(10**8).splitlines()
        errors = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b|C-STORE refused|failed unexpectedly")
        warnings = re.compile(r"\bWARNING\b|\bWarning\b")
        return {
            "errors": [line for line in lines if errors.search(line)],
            "warnings": [
                line for line in lines if warnings.search(line) and not errors.search(line)
            ],
        }


class Orthanc(Server):
    name = "orthanc"
    aet = "ORTHANC"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.config_path = root / "orthanc.json"
        self.config = {
            "Name": "lightbox-bench",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "index"),
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "StableAge": 2,
            "SaveJobs": False,
            # Stock values, written out so that the JSON records them.
            "DicomThreadsCount": 4,
            "StorageCompression": False,
            "SyncStorageArea": True,
            "OverwriteInstances": False,
            "MaximumPduLength": 16384,
        }

    def start(self) -> None:
        self.config_path.write_text(json.dumps(self.config, indent=2))
        super().start()

    def command(self) -> list[str]:
        return [tool("Orthanc"), str(self.config_path)]

    def env(self) -> dict[str, str]:
        # Orthanc's DICOM side is dcmtk, which leaves Nagle on unless
        # TCP_NODELAY=1 (see FIELD-NOTES): give it the setting our SCP has.
        return {**os.environ, "TCP_NODELAY": "1"}

    def ready(self) -> bool:
        try:
            http_json(f"http://127.0.0.1:{self.http_port}/system", timeout=2)
        except OSError:
            return False
        return self.echo()

    def count(self) -> int:
        return int(http_json(f"http://127.0.0.1:{self.http_port}/statistics")["CountInstances"])

    def problems(self) -> dict[str, list[str]]:
        # Orthanc's log lines start with a level letter and the date: E1203 ...,
        # W1203 ... (Orthanc logs its start-up notices at W too).
        lines = self.log_tail(10**8).splitlines()
        return {
            "errors": [line for line in lines if re.match(r"^E\d{4} ", line)],
            "warnings": [line for line in lines if re.match(r"^W\d{4} ", line)],
        }


# -- measuring --------------------------------------------------------------------


@dataclass
class Usage:
    cpu_s: float
    actor_cpu_s: float
    peak_rss: int
    peak_actor_rss: int
    samples: int
    processes: int


class Monitor:
    """CPU and RSS of every process of a server, sampled every 50 ms on a thread.

    CPU is the sum over processes of (utime+stime at the end) - (at the start);
    a process that appears during the window counts from zero, one that
    disappears keeps its last sample. RSS is summed over processes per sample
    (shared pages count once per process), and its peak kept.
    """

    def __init__(self, server: Server) -> None:
        self.server = server
        self._procs: dict[int, psutil.Process] = {}
        self._actors: set[int] = set()
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self.peak_rss = 0
        self.peak_actor_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _refresh(self, first: bool = False) -> None:
        pids = self.server.session_pids()
        self._actors = self.server.actor_pids(pids)
        for pid in pids:
            if pid in self._procs:
                continue
            try:
                self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                continue
            if not first:
                self._start.setdefault(pid, 0.0)

    def _sample(self) -> None:
        rss = actor_rss = 0
        for pid, proc in list(self._procs.items()):
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    mem = proc.memory_info().rss
            except psutil.Error:
                del self._procs[pid]
                continue
            self._last[pid] = times.user + times.system
            rss += mem
            if pid in self._actors:
                actor_rss += mem
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_actor_rss = max(self.peak_actor_rss, actor_rss)
        self.samples += 1

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(SAMPLE_INTERVAL):
            tick += 1
            if tick % 20 == 0:
                self._refresh()
            self._sample()

    def begin(self) -> None:
        self._refresh(first=True)
        self._sample()
        self._start = dict(self._last)
        self._thread.start()

    def end(self) -> Usage:
        self._stop.set()
        self._thread.join()
        self._refresh()
        self._sample()
        cpu = {pid: self._last[pid] - self._start.get(pid, 0.0) for pid in self._last}
        return Usage(
            cpu_s=sum(cpu.values()),
            actor_cpu_s=sum(v for pid, v in cpu.items() if pid in self._actors),
            peak_rss=self.peak_rss,
            peak_actor_rss=self.peak_actor_rss,
            samples=self.samples,
            processes=len(self._last),
        )


def system_cpu() -> Any:
    return psutil.cpu_times()


def system_share(before: Any, after: Any) -> dict[str, float]:
    """Busy and steal shares of the whole machine between two samples."""
    delta = {k: getattr(after, k) - getattr(before, k) for k in before._fields}
    total = sum(delta.values()) or 1.0
    idle = delta.get("idle", 0.0) + delta.get("iowait", 0.0)
    return {"busy": round(1 - idle / total, 3), "steal": round(delta.get("steal", 0.0) / total, 3)}


def measure_idle(server: Server, seconds: float) -> dict[str, float]:
    monitor = Monitor(server)
    monitor.begin()
    time.sleep(seconds)
    usage = monitor.end()
    return {
        "cpu_ms_per_s": 1000 * usage.cpu_s / seconds,
        "actor_cpu_ms_per_s": 1000 * usage.actor_cpu_s / seconds,
        "rss_mb": usage.peak_rss / 1e6,
        "actor_rss_mb": usage.peak_actor_rss / 1e6,
        "processes": usage.processes,
    }


# -- workloads and sends ----------------------------------------------------------


@dataclass
class FileSet:
    workload: str
    variant: int
    files: list[Path]
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(p.stat().st_size for p in self.files)


def generate(kind: str, folder: Path, variant: int, args: argparse.Namespace) -> FileSet:
    if kind == "ct":
        files = write_ct_series(folder, slices=args.ct_slices, seed=args.seed, variant=variant)
    elif kind == "small":
        files = write_small_instances(
            folder, count=args.small_count, seed=args.seed, variant=variant
        )
    elif kind == "warmup":
        files = write_small_instances(folder, count=40, seed=args.seed, variant=variant)
    else:
        raise ValueError(kind)
    return FileSet(kind, variant, files)


def send(server: Server, fileset: FileSet, associations: int, logs: Path) -> dict[str, Any]:
    """Send ``fileset`` over ``associations`` parallel storescu processes and measure."""
    files = fileset.files
    n = len(files)
    bounds = [round(i * n / associations) for i in range(associations + 1)]
    chunks = [files[bounds[i] : bounds[i + 1]] for i in range(associations)]
    before_count = server.count()
    os.sync()  # the generated files' dirty pages must not be written back mid-send
    stderr_paths = [
        logs / f"storescu-{server.name}-{fileset.workload}-{fileset.variant}-{i}.txt"
        for i in range(associations)
    ]
    monitor = Monitor(server)
    monitor.begin()
    sys_before = system_cpu()
    t0 = time.perf_counter()
    procs = []
    for chunk, err_path in zip(chunks, stderr_paths):
        with err_path.open("wb") as err:
            procs.append(
                subprocess.Popen(
                    [
                        tool("storescu"),
                        "-aec",
                        server.aet,
                        "-aet",
                        "BENCH",
                        "127.0.0.1",
                        str(server.dicom_port),
                        *map(str, chunk),
                    ],
                    env=DCMTK_ENV,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
    codes = [p.wait(timeout=600) for p in procs]
    wall = time.perf_counter() - t0
    sys_after = system_cpu()
    usage = monitor.end()
    after_count = server.count()
    stored = after_count - before_count
    problems = []
    for code, err_path in zip(codes, stderr_paths):
        text = err_path.read_text(errors="replace").strip()
        if code != 0 or text:
            problems.append(f"storescu exit {code}: {text[-500:]}")
    if stored != n:
        problems.append(f"{server.name} holds {stored} new instances, {n} were sent")
    return {
        "server": server.name,
        "workload": fileset.workload,
        "variant": fileset.variant,
        "associations": associations,
        "instances": n,
        "bytes": fileset.nbytes,
        "wall_s": wall,
        "inst_per_s": n / wall,
        "mb_per_s": fileset.nbytes / 1e6 / wall,
        "cpu_s": usage.cpu_s,
        "cpu_ms_per_inst": 1000 * usage.cpu_s / n,
        "actor_cpu_ms_per_inst": 1000 * usage.actor_cpu_s / n,
        "peak_rss_mb": usage.peak_rss / 1e6,
        "peak_actor_rss_mb": usage.peak_actor_rss / 1e6,
        "rss_samples": usage.samples,
        "processes": usage.processes,
        "stored": stored,
        "storescu_exit": codes,
        "machine": system_share(sys_before, sys_after),
        "problems": problems,
    }


# -- report -----------------------------------------------------------------------


def summarize(sends: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for s in sends:
        groups.setdefault((s["workload"], s["associations"], s["server"]), []).append(s)
    rows = []
    for (workload, assocs, server), runs in groups.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        rows.append(
            {
                "workload": workload,
                "associations": assocs,
                "server": server,
                "runs": len(runs),
                "inst_per_s_median": med("inst_per_s"),
                "inst_per_s_best": max(r["inst_per_s"] for r in runs),
                "mb_per_s_median": med("mb_per_s"),
                "cpu_ms_per_inst_median": med("cpu_ms_per_inst"),
                "cpu_ms_per_inst_best": min(r["cpu_ms_per_inst"] for r in runs),
                "actor_cpu_ms_per_inst_median": med("actor_cpu_ms_per_inst"),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                "peak_actor_rss_mb": max(r["peak_actor_rss_mb"] for r in runs),
                "server_cores_median": statistics.median(r["cpu_s"] / r["wall_s"] for r in runs),
                "machine_busy_median": statistics.median(r["machine"]["busy"] for r in runs),
                "steal_median": statistics.median(r["machine"]["steal"] for r in runs),
            }
        )
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["workload"], r["associations"], r["server"]): r for r in rows}
    out = []
    for (workload, assocs, server), lb in by.items():
        if server != "lightbox" or (workload, assocs, "orthanc") not in by:
            continue
        oc = by[(workload, assocs, "orthanc")]
        out.append(
            {
                "workload": workload,
                "associations": assocs,
                "inst_per_s_median": lb["inst_per_s_median"] / oc["inst_per_s_median"],
                "inst_per_s_best": lb["inst_per_s_best"] / oc["inst_per_s_best"],
                "cpu_ms_per_inst_median": lb["cpu_ms_per_inst_median"]
                / oc["cpu_ms_per_inst_median"],
                "cpu_ms_per_inst_best": lb["cpu_ms_per_inst_best"] / oc["cpu_ms_per_inst_best"],
                "actor_cpu_vs_orthanc_cpu": lb["actor_cpu_ms_per_inst_median"]
                / oc["cpu_ms_per_inst_median"],
            }
        )
    return out


def print_table(
    rows: list[dict[str, Any]], rats: list[dict[str, Any]], idle: dict[str, Any]
) -> None:
    header = (
        f"{'workload':<8} {'assoc':>5} {'server':<9} {'n':>2} {'inst/s med':>10} {'best':>7} "
        f"{'MB/s med':>8} {'CPU ms/inst':>11} {'actors':>7} {'peak RSS MB':>11} {'actors':>7} "
        f"{'cores':>5} {'busy':>5} {'steal':>5}"
    )
    print()
    print(
        "inst/s and MB/s: wall time of the storescu processes (median of n, best); CPU ms/inst:\n"
        "utime+stime of all the server's processes per instance (actors: Lightbox's ingest actors\n"
        "only); peak RSS: summed over processes, sampled every 50 ms; cores: server CPU s / wall s;\n"
        "busy, steal: share of the whole machine during the send. LB/OC: Lightbox / Orthanc, for\n"
        "inst/s (above 1: Lightbox faster) and CPU ms/inst (above 1: Lightbox costlier); the\n"
        "'actors' ratio is Lightbox's actors alone against all of Orthanc."
    )
    print(header)
    print("-" * len(header))
    ratio_by = {(r["workload"], r["associations"]): r for r in rats}
    keys = sorted({(r["workload"], r["associations"]) for r in rows})
    for key in keys:
        for r in sorted(
            (r for r in rows if (r["workload"], r["associations"]) == key),
            key=lambda r: r["server"],
        ):
            lb = r["server"] == "lightbox"
            actor_cpu = f"{r['actor_cpu_ms_per_inst_median']:.2f}" if lb else "-"
            actor_rss = f"{r['peak_actor_rss_mb']:.0f}" if lb else "-"
            print(
                f"{r['workload']:<8} {r['associations']:>5} {r['server']:<9} {r['runs']:>2} "
                f"{r['inst_per_s_median']:>10.1f} {r['inst_per_s_best']:>7.1f} "
                f"{r['mb_per_s_median']:>8.1f} {r['cpu_ms_per_inst_median']:>11.2f} "
                f"{actor_cpu:>7} {r['peak_rss_mb']:>11.0f} {actor_rss:>7} "
                f"{r['server_cores_median']:>5.2f} {r['machine_busy_median']:>5.0%} "
                f"{r['steal_median']:>5.0%}"
            )
        if key in ratio_by:
            q = ratio_by[key]
            print(
                f"{'':<8} {'':>5} {'LB/OC':<9} {'':>2} {q['inst_per_s_median']:>10.2f} "
                f"{q['inst_per_s_best']:>7.2f} {'':>8} {q['cpu_ms_per_inst_median']:>11.2f} "
                f"{q['actor_cpu_vs_orthanc_cpu']:>7.2f}"
            )
        print()
    for name, figures in idle.items():
        print(
            f"idle {name}: {figures['cpu_ms_per_s']:.1f} CPU ms/s over {figures['processes']} processes, "
            f"RSS {figures['rss_mb']:.0f} MB"
            + (
                f" (ingest actors {figures['actor_cpu_ms_per_s']:.1f} ms/s, {figures['actor_rss_mb']:.0f} MB)"
                if name == "lightbox"
                else ""
            )
        )


def versions() -> dict[str, Any]:
    import pydicom
    import pynetdicom

    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception as exc:  # noqa: BLE001 - a missing tool is reported, not fatal here
            return f"unknown ({exc})"

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = None
    commit = first_line(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    )
    return {
        "lightbox_commit": commit,
        "lightbox_tree_dirty": dirty,
        "orthanc": first_line([tool("Orthanc"), "--version"]),
        "storescu": first_line([tool("storescu"), "--version"]),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pynetdicom": pynetdicom.__version__,
        "ray": ray_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


# -- main -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="1 repeat, 60 CT slices, 400 small")
    parser.add_argument("--out", type=Path, help="write the raw figures here (JSON)")
    parser.add_argument("--repeats", type=int, help="sends per server and case (default 3)")
    parser.add_argument("--workloads", default="ct,small", help="comma list of ct, small")
    parser.add_argument("--associations", default="1,4", help="comma list, e.g. 1,4")
    parser.add_argument("--lightbox-actors", type=int, default=4)
    parser.add_argument("--ct-slices", type=int)
    parser.add_argument("--small-count", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument(
        "--workdir", type=Path, help="parent of the temporary folder (default $TMPDIR)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.ct_slices = args.ct_slices or (60 if args.quick else 300)
    args.small_count = args.small_count or (400 if args.quick else 2000)
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.associations = [int(a) for a in args.associations.split(",") if a]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("storescu", "echoscu", "Orthanc"):
        tool(name)
    root = Path(tempfile.mkdtemp(prefix="lightbox-ingest-bench-", dir=args.workdir))
    logs = root / "logs"
    logs.mkdir()
    started = time.time()
    lightbox = Lightbox(root / "lightbox", args.lightbox_actors)
    orthanc = Orthanc(root / "orthanc")
    servers: list[Server] = [lightbox, orthanc]
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": versions(),
        "orthanc_config": orthanc.config,
        "sends": [],
    }
    exit_code = 0
    try:
        for server in servers:
            server.start()
        # Lightbox takes a while to start Ray: make the data meanwhile.
        t = time.perf_counter()
        plan: list[tuple[str, int, int, FileSet]] = []
        warmup = generate("warmup", root / "files" / "warmup", 0, args)
        variant = 1
        for workload in args.workloads:
            for assocs in args.associations:
                for rep in range(args.repeats):
                    folder = root / "files" / f"{workload}-{variant}"
                    plan.append((workload, assocs, rep, generate(workload, folder, variant, args)))
                    variant += 1
        os.sync()
        print(
            f"generated {len(plan)} file sets in {time.perf_counter() - t:.0f} s under {root}",
            flush=True,
        )
        for server in servers:
            t = time.perf_counter()
            server.wait_ready(timeout=300)
            print(
                f"{server.name} ready ({time.perf_counter() - t:.0f} s more), DICOM port {server.dicom_port}",
                flush=True,
            )
        # Warm-up: every actor/thread has served an association before we measure.
        for server in servers:
            send(server, warmup, 4, logs)
        time.sleep(1)
        result["idle"] = {s.name: measure_idle(s, args.idle_seconds) for s in servers}
        expected = {s.name: len(warmup.files) for s in servers}
        for workload, assocs, rep, fileset in plan:
            order = servers if rep % 2 == 0 else servers[::-1]
            for server in order:
                record = send(server, fileset, assocs, logs)
                record["repeat"] = rep
                result["sends"].append(record)
                expected[server.name] += len(fileset.files)
                print(
                    f"{workload:<6} assoc={assocs} rep={rep} {server.name:<9} "
                    f"{record['inst_per_s']:7.1f} inst/s {record['mb_per_s']:6.1f} MB/s "
                    f"{record['cpu_ms_per_inst']:6.2f} CPU ms/inst peak RSS {record['peak_rss_mb']:5.0f} MB "
                    f"steal {record['machine']['steal']:.0%}"
                    + (
                        "  PROBLEMS: " + "; ".join(record["problems"]) if record["problems"] else ""
                    ),
                    flush=True,
                )
                if record["problems"]:
                    exit_code = 1
        totals = {s.name: s.count() for s in servers}
        result["verification"] = {
            name: {
                "expected": expected[name],
                "found": totals[name],
                "ok": expected[name] == totals[name],
            }
            for name in expected
        }
        if not all(v["ok"] for v in result["verification"].values()):
            exit_code = 1
        rows = summarize(result["sends"])
        result["summary"] = rows
        result["ratios"] = ratios(rows)
        print_table(rows, result["ratios"], result["idle"])
        for name, v in result["verification"].items():
            print(
                f"verified {name}: {v['found']} instances stored, {v['expected']} sent: {'OK' if v['ok'] else 'MISMATCH'}"
            )
    except BaseException as exc:  # noqa: BLE001 - recorded, then the servers are stopped
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {result['error']}", file=sys.stderr)
        exit_code = 1
        if isinstance(exc, KeyboardInterrupt):
            exit_code = 130
    finally:
        for server in servers:
            try:
                server.stop()
            except Exception as exc:  # noqa: BLE001 - stop the other one regardless
                print(f"stopping {server.name}: {exc}", file=sys.stderr)
        result["server_logs"] = {}
        for server in servers:
            found = server.problems()
            result["server_logs"][server.name] = {
                "path": str(server.log_path) if args.keep else None,
                **{kind: len(lines) for kind, lines in found.items()},
                **{f"first_{kind}": lines[:30] for kind, lines in found.items()},
            }
            print(
                f"{server.name} log: {len(found['errors'])} error lines, "
                f"{len(found['warnings'])} warning lines"
            )
            for line in found["errors"][:8]:
                print("   " + line[:300], file=sys.stderr)
        result["elapsed_s"] = time.time() - started
        result["workdir"] = str(root) if args.keep else None
        if args.out:
            args.out.write_text(json.dumps(result, indent=2, default=str))
            print(f"raw figures in {args.out}")
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        print(f"elapsed {result['elapsed_s']:.0f} s")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
