"""WADO-RS rendered resources, Lightbox against Orthanc (DICOMweb plugin), in one run.

    python -m benchmarks.render_compare [--quick] [--seconds 5] [--clients 1,16] [--out FILE]

Starts ``lightbox serve`` and Orthanc (Debian ``orthanc`` with the plugin of
``orthanc-dicomweb`` loaded, ``DicomWeb.Root`` ``/dicom-web/``), as
:mod:`benchmarks.ingest_compare` does; stores in both with ``storescu``
(``TCP_NODELAY=1``) the same few slices of the generated CT
(:mod:`benchmarks.datasets`) and the mammogram
``/work/shared/data/dicom/mg/MG1_J2KI`` transcoded to explicit VR little
endian (Orthanc 1.10 without the GDCM plugin cannot decode JPEG 2000; both
servers get the same uncompressed file); waits until Lightbox's index has
every instance ``ready`` (decoded, default render and thumbnail
precomputed). Then, for each case and number of clients, runs ``wrk``
(``--latency``, one connection per client, a Lua script cycling over the CT
slices) for ``--seconds`` against each server in turn (the order alternating),
and prints requests/s, p50 and p99 latency, the servers' CPU ms per request
(every process of the server's session), and Lightbox/Orthanc ratios.

CPU ms per request is the servers' CPU over the measurement, less their idle
rate (measured for ``--idle-seconds`` before; Lightbox's Ray daemons burn CPU
when idle), over the requests completed. Orthanc's DICOMweb plugin (1.7) has
no ``/thumbnail``: that case is Lightbox only.

Before each measurement one request checks status 200, the media type and,
for Lightbox, ``X-Lightbox-Render`` (precomputed or on-demand). Without
``window=``, Lightbox serves the instance's own window (precomputed, for the
CT 40/400) while Orthanc stretches min..max: the ``default`` rows compare
what each server answers by default, not the same image.

Both servers are stopped whatever happens. The machine is shared and noisy:
read the ratios.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from pydicom import dcmread

from benchmarks.datasets import write_ct_series
from benchmarks.ingest_compare import DCMTK_ENV, Lightbox, Orthanc, Server, tool

MAMMOGRAM = Path("/work/shared/data/dicom/mg/MG1_J2KI")
DICOMWEB_PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)


def dicomweb_plugin() -> str:
    for path in DICOMWEB_PLUGIN_CANDIDATES:
        if Path(path).exists():
            return path
    out = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if re.search(r"libOrthancDicomWeb\.so", line) and Path(line).is_file():
            return line
    raise SystemExit("the Orthanc DICOMweb plugin is missing (Debian package orthanc-dicomweb)")


class OrthancWeb(Orthanc):
    """Orthanc with its DICOMweb plugin."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.config["Plugins"] = [dicomweb_plugin()]
        self.config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}


# -- data -----------------------------------------------------------------------------


def mammogram_uncompressed(dst: Path) -> Path:
    ds = dcmread(MAMMOGRAM)
    ds.decompress()  # explicit VR little endian
    ds.save_as(dst, enforce_file_format=True)
    return dst


def uids(path: Path) -> tuple[str, str, str]:
    ds = dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def store(server: Server, files: list[Path], logs: Path) -> None:
    with (logs / f"storescu-{server.name}.txt").open("wb") as err:
        code = subprocess.run(
            [tool("storescu"), "-aec", server.aet, "-aet", "BENCH", "127.0.0.1",
             str(server.dicom_port), *map(str, files)],
            env=DCMTK_ENV, stdout=err, stderr=subprocess.STDOUT, check=False,
        ).returncode
    if code != 0:
        raise RuntimeError(f"storescu to {server.name} exited with {code}")


def wait_decoded(server: Lightbox, expected: int, timeout: float) -> float:
    from pipeline.config import Settings
    from pipeline.runtime import open_runtime

    t0 = time.perf_counter()
    runtime = open_runtime(Settings(data_dir=server.data_dir))
    try:
        while time.perf_counter() - t0 < timeout:
            c = runtime.index.counts()
            states = dict(c.pixel_states)
            if states.get("failed"):
                raise RuntimeError(f"Lightbox failed to decode: {states}")
            if c.instances >= expected and states.get("ready", 0) >= expected:
                return time.perf_counter() - t0
            time.sleep(0.2)
    finally:
        runtime.close()
    raise RuntimeError(f"Lightbox did not decode {expected} instances in {timeout:.0f} s")


# -- load -------------------------------------------------------------------------------

#: wrk's script: cycles over the paths; ``{n}`` in a path becomes a number
#: new for every request of the benchmark (the run's number, the wrk thread,
#: a counter), so that a "cold" case never asks the same rendition twice.
LUA = """
paths = {%s}
i = 0
n = 0
wrk.headers["Accept"] = "%s"
%s
run = %d
threads = 0
function setup(thread)
  thread:set("lane", threads)
  threads = threads + 1
end
request = function()
  i = i %% #paths + 1
  n = n + 1
  local number = string.format("%%04d%%02d%%06d", run, lane or 0, n %% 1000000)
  local path = string.gsub(paths[i], "{n}", number)
  return wrk.format("GET", path)
end
"""
_RUNS = itertools.count(1)

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def session_cpu(server: Server) -> float:
    total = 0.0
    for pid in server.session_pids():
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def probe(url: str, accept: str, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": accept, **headers})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
            return {
                "status": response.status,
                "type": response.headers.get("Content-Type", ""),
                "render": response.headers.get("X-Lightbox-Render"),
                "bytes": len(body),
            }
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "type": "", "render": None, "bytes": 0,
                "error": exc.read()[:200].decode(errors="replace")}


def run_wrk(base: str, paths: list[str], accept: str, clients: int, seconds: float,
            script: Path, headers: dict[str, str]) -> dict[str, Any]:
    extra = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    run = next(_RUNS)
    script.write_text(LUA % (", ".join(json.dumps(p) for p in paths), accept, extra, run))
    threads = min(clients, 2)
    out = subprocess.run(
        [tool("wrk"), f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--latency",
         "--timeout", "30s", "-s", str(script), base],
        capture_output=True, text=True, check=False,
    )
    text = out.stdout + out.stderr
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    lat = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", text, re.M))
    total = re.search(r"(\d+) requests in", text)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    if not rps or out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{text}")
    return {
        "req_per_s": float(rps.group(1)),
        "p50_ms": _ms(lat["50"]) if "50" in lat and float(rps.group(1)) > 0 else None,
        "p99_ms": _ms(lat["99"]) if "99" in lat and float(rps.group(1)) > 0 else None,
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else None,
    }


def idle_rates(servers: list[Server], seconds: float) -> dict[str, float]:
    """Each server's CPU seconds per second at rest (Ray's daemons burn some), to subtract."""
    idle: dict[str, float] = {}
    for s in servers:
        cpu0, t0 = session_cpu(s), time.perf_counter()
        time.sleep(seconds)
        idle[s.name] = (session_cpu(s) - cpu0) / (time.perf_counter() - t0)
    return idle


def measure(server: Server, base: str, case: dict[str, Any], clients: int, seconds: float,
            script: Path, headers: dict[str, str], idle: float = 0.0) -> dict[str, Any]:
    """One ``wrk`` run of ``case`` against ``server``, with its CPU ms per request, printed.

    ``case``: ``name``, ``paths`` and ``accept`` (quotes in it are escaped for Lua).
    """
    cpu0, t0 = session_cpu(server), time.perf_counter()
    accept = case["accept"].replace('"', '\\"')
    figures = run_wrk(base, case["paths"], accept, clients, seconds, script, headers)
    cpu = session_cpu(server) - cpu0 - idle * (time.perf_counter() - t0)
    n = figures["requests"] or 0
    figures.update(case=case["name"], server=server.name, clients=clients,
                   cpu_ms_per_req=cpu * 1e3 / n if n else None)  # fmt: skip
    print(f"  {case['name']:<30} c={clients:<3} {server.name:<8} "
          f"{figures['req_per_s']:8.1f} req/s p50 {fmt(figures['p50_ms'], '.2f')} ms"
          f" p99 {fmt(figures['p99_ms'], '.2f')} ms"
          f" CPU {fmt(figures['cpu_ms_per_req'], '.2f')} ms/req"
          + (f" NON-2XX {figures['non_2xx']}" if figures["non_2xx"] else "")
          + (f" SOCKET ERRORS {figures['socket_errors']}" if figures["socket_errors"] else ""),
          flush=True)  # fmt: skip
    return figures


def failed(figures: dict[str, Any]) -> bool:
    return bool(figures["non_2xx"] or figures["socket_errors"])


def finish(servers: list[Server], result: dict[str, Any], started: float, root: Path,
           out: Path | None, keep: bool = False) -> None:
    """Stop every server whatever happens, report their log problems, write ``out``, clean up."""
    for s in servers:
        try:
            s.stop()
        except Exception as exc:  # noqa: BLE001 - stop the others regardless
            print(f"stopping {s.name}: {exc}", file=sys.stderr)
    for s in servers:
        found = s.problems()
        print(f"{s.name} log: {len(found['errors'])} error lines, "
              f"{len(found['warnings'])} warning lines")  # fmt: skip
        for line in found["errors"][:5]:
            print("   " + line[:300], file=sys.stderr)
    result["elapsed_s"] = time.time() - started
    if out:
        out.write_text(json.dumps(result, indent=2, default=str))
    if keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(f"elapsed {result['elapsed_s']:.0f} s")


# -- main -------------------------------------------------------------------------------


def cases(ct: list[tuple[str, str, str]], mg: tuple[str, str, str]) -> list[dict[str, Any]]:
    def rendered(u: tuple[str, str, str], suffix: str = "rendered", query: str = "") -> str:
        return f"/dicom-web/studies/{u[0]}/series/{u[1]}/instances/{u[2]}/{suffix}{query}"

    # PS3.18 8.3.5.1.4: center, width, function; Orthanc's plugin wants all three.
    w = "?window=40,400,linear"
    # The same image, but a width of 400.000000000123 and so on: a rendition
    # never asked before (Lightbox keeps recent on-demand renders in memory).
    cold = "?window=40,400.{n},linear"
    return [
        {"name": "CT jpeg window 40,400,lin", "accept": "image/jpeg",
         "paths": [rendered(u, query=w) for u in ct]},
        {"name": "CT jpeg window cold", "accept": "image/jpeg",
         "paths": [rendered(u, query=cold) for u in ct]},
        {"name": "CT jpeg default", "accept": "image/jpeg", "paths": [rendered(u) for u in ct]},
        {"name": "CT png window 40,400,lin", "accept": "image/png",
         "paths": [rendered(u, query=w) for u in ct]},
        {"name": "CT thumbnail", "accept": "image/jpeg",
         "paths": [rendered(u, "thumbnail") for u in ct]},
        {"name": "MG jpeg default", "accept": "image/jpeg", "paths": [rendered(mg)]},
        {"name": "MG jpeg window 2047,4095,l", "accept": "image/jpeg",
         "paths": [rendered(mg, query="?window=2047,4095,linear")]},
        {"name": "MG jpeg window cold", "accept": "image/jpeg",
         "paths": [rendered(mg, query="?window=2047,4095.{n},linear")]},
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.render_compare",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s per measurement, 4 CT slices")
    p.add_argument("--seconds", type=float, help="per measurement (default 5; 2 with --quick)")
    p.add_argument("--clients", default="1,16", help="comma list of concurrent clients")
    p.add_argument("--ct-slices", type=int, help="CT slices stored (default 8; 4 with --quick)")
    p.add_argument("--cases", help="comma list of case-name substrings to run (default all)")
    p.add_argument("--idle-seconds", type=float, default=2.0)
    p.add_argument("--out", type=Path, help="write the raw figures here (JSON)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.ct_slices = args.ct_slices or (4 if args.quick else 8)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    return args


def fmt(v: float | None, spec: str) -> str:
    return format(v, spec) if v is not None else "-"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("storescu", "echoscu", "Orthanc", "wrk"):
        tool(name)
    root = Path(tempfile.mkdtemp(prefix="lightbox-render-bench-"))
    logs = root / "logs"
    logs.mkdir()
    started = time.time()
    lightbox = Lightbox(root / "lightbox", 2)
    orthanc = OrthancWeb(root / "orthanc")
    servers: list[Server] = [lightbox, orthanc]
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()},
                              "orthanc_config": orthanc.config, "runs": [], "probes": []}
    code = 0
    try:
        # Lightbox's API needs a credential (an API key, as a viewer's script
        # would use); Orthanc runs with its authentication off.
        auth = {lightbox.name: {"Authorization": f"Bearer {lightbox.api_key()}"}, orthanc.name: {}}
        for s in servers:
            s.start()
        files = write_ct_series(root / "files" / "ct", slices=args.ct_slices)
        mg_file = mammogram_uncompressed(root / "files" / "mg.dcm")
        ct_uids = [uids(f) for f in files]
        mg_uids = uids(mg_file)
        for s in servers:
            s.wait_ready(timeout=300)
        for s in servers:
            t = time.perf_counter()
            store(s, [*files, mg_file], logs)
            print(f"stored {len(files)} CT slices + mammogram in {s.name} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)
        waited = wait_decoded(lightbox, len(files) + 1, timeout=300)
        print(f"lightbox: every instance ready {waited:.1f} s after the send", flush=True)
        idle = idle_rates(servers, args.idle_seconds)
        for name, rate in idle.items():
            print(f"idle {name}: {rate * 1e3:.0f} CPU ms/s (subtracted from CPU ms/req)", flush=True)
        result["idle_cpu_ms_per_s"] = {k: v * 1e3 for k, v in idle.items()}
        base = {s.name: f"http://127.0.0.1:{s.http_port}" for s in servers}
        selected = cases(ct_uids, mg_uids)
        if args.cases:
            wanted = [w.strip().lower() for w in args.cases.split(",")]
            selected = [c for c in selected if any(w in c["name"].lower() for w in wanted)]
        step = 0
        for case in selected:
            usable = {}
            for s in servers:
                # Asked twice: the second answer says whether a repeat is
                # served otherwise (Lightbox keeps recent on-demand renders);
                # a cold case's {n} differs between the two.
                url = base[s.name] + case["paths"][0]
                info = probe(url.replace("{n}", "1"), case["accept"], auth[s.name])
                again = probe(url.replace("{n}", "2"), case["accept"], auth[s.name])
                if again["render"] != info["render"]:
                    info["render"] = f"{info['render']}, then {again['render']}"
                info.update(case=case["name"], server=s.name)
                result["probes"].append(info)
                usable[s.name] = info["status"] == 200
                print(f"probe {case['name']:<26} {s.name:<8} {info['status']} {info['type']:<11}"
                      f" {info['bytes'] / 1000:7.1f} kB"
                      + (f" X-Lightbox-Render: {info['render']}" if info["render"] else "")
                      + (f" {info.get('error', '')}" if info["status"] != 200 else ""),
                      flush=True)
            for clients in args.clients:
                order = servers if step % 2 == 0 else servers[::-1]
                step += 1
                for s in order:
                    if not usable[s.name]:
                        continue
                    figures = measure(s, base[s.name], case, clients, args.seconds,
                                      root / "wrk.lua", auth[s.name], idle[s.name])  # fmt: skip
                    code = 1 if failed(figures) else code
                    result["runs"].append(figures)
        print_table(result["runs"], result["probes"])
    except BaseException as exc:  # noqa: BLE001 - recorded, then the servers are stopped
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {result['error']}", file=sys.stderr)
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        finish(servers, result, started, root, args.out, args.keep)
    return code


def print_table(runs: list[dict[str, Any]], probes: list[dict[str, Any]]) -> None:
    kind = {(p["case"], p["server"]): p for p in probes}
    print()
    print(f"{'case':<26} {'clients':>7} {'server':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'CPU ms/req':>10} {'kB':>7}  path")
    by = {(r["case"], r["clients"], r["server"]): r for r in runs}
    for (case, clients, server), r in by.items():
        p = kind.get((case, server), {})
        print(f"{case:<26} {clients:>7} {server:<8} {r['req_per_s']:>8.1f} "
              f"{fmt(r['p50_ms'], '8.2f')} {fmt(r['p99_ms'], '8.2f')} {fmt(r['cpu_ms_per_req'], '10.2f')}"
              f" {p.get('bytes', 0) / 1000:>7.1f}  {p.get('render') or ''}")
    print()
    print(f"{'case':<26} {'clients':>7} {'LB/OC req/s':>12} {'LB/OC p50':>10} {'LB/OC CPU':>10}")
    for (case, clients, server), r in by.items():
        if server != "lightbox" or (case, clients, "orthanc") not in by:
            continue
        o = by[(case, clients, "orthanc")]
        p50 = (r["p50_ms"] / o["p50_ms"]) if r["p50_ms"] and o["p50_ms"] else None
        cpu = (r["cpu_ms_per_req"] / o["cpu_ms_per_req"]
               if r["cpu_ms_per_req"] and o["cpu_ms_per_req"] else None)
        rps = r["req_per_s"] / o["req_per_s"] if o["req_per_s"] else None
        print(f"{case:<26} {clients:>7} {fmt(rps, '12.2f')}"
              f" {fmt(p50, '10.2f')} {fmt(cpu, '10.2f')}")


if __name__ == "__main__":
    sys.exit(main())
