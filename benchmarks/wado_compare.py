"""WADO-RS retrieval (PS3.18 10.4), Lightbox against Orthanc (DICOMweb plugin), in one run.

    python -m benchmarks.wado_compare [--quick] [--seconds 5] [--clients 1,16] [--slices 300] [--out FILE]

Starts ``lightbox serve`` and Orthanc with its DICOMweb plugin as
:mod:`benchmarks.render_compare` does, stores in both with ``storescu`` the
same generated CT series (:mod:`benchmarks.datasets`, 300 slices of 512x512
by default, explicit VR little endian), waits until Lightbox has decoded every
slice (its metadata documents are written by the decode stage), then measures
with ``wrk`` (one connection per client):

* ``series metadata``: ``GET .../series/{series}/metadata`` (DICOM JSON of the
  300 instances, PS3.18 10.4.1.1.2). Before the load, one cold request per
  server is timed alone (Lightbox: documents from the metadata store, series
  cache empty; Orthanc: its first answer);
* ``frame``: ``GET .../instances/{sop}/frames/1`` as
  ``multipart/related; type="application/octet-stream";
  transfer-syntax=1.2.840.10008.1.2.1`` (PS3.18 10.4.1.1.3), cycling over the
  slices; one frame per request, so frames/s = requests/s;
* ``frame of JPEG lossless``: the same frame request on ``--jpeg-slices``
  other slices (new UIDs) stored as JPEG Lossless SV1 (re-encoded by GDCM,
  :func:`benchmarks.datasets.to_jpeg_lossless_sv1`): Lightbox answers from
  the pixels its decode stage stored, Orthanc decodes at request time;
* ``instance as stored``: ``GET .../instances/{sop}`` with
  ``transfer-syntax=*`` (PS3.18 10.4.1.1.1), cycling over the slices.

Printed: requests/s, p50 and p99 latency, the servers' CPU ms per request
(less their idle rate), and Lightbox/Orthanc ratios. Lightbox is asked with a
radiologist's API key; Orthanc runs with authentication off. The machine is
shared and noisy: read the ratios, and run again before trusting a figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.datasets import to_jpeg_lossless_sv1, write_ct_series
from benchmarks.ingest_compare import DCMTK_ENV, Lightbox, Server, tool
from benchmarks.render_compare import (
    OrthancWeb,
    failed,
    finish,
    idle_rates,
    measure,
    print_table,
    probe,
    store,
    uids,
    wait_decoded,
)

METADATA = "application/dicom+json"
FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _frames(slices: list[tuple[str, str, str]]) -> list[str]:
    return [f"/dicom-web/studies/{u[0]}/series/{u[1]}/instances/{u[2]}/frames/1" for u in slices]


def cases(slices: list[tuple[str, str, str]], jpeg: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
    study, series, _ = slices[0]
    base = f"/dicom-web/studies/{study}/series/{series}"
    return [
        {"name": f"series metadata {len(slices)}", "accept": METADATA,
         "paths": [f"{base}/metadata"]},
        {"name": "frame (octet-stream)", "accept": FRAME, "paths": _frames(slices)},
        {"name": "frame of JPEG lossless", "accept": FRAME, "paths": _frames(jpeg)},
        {"name": "instance as stored", "accept": AS_STORED,
         "paths": [f"{base}/instances/{u[2]}" for u in slices]},
    ]  # fmt: skip


def store_files(server: Server, files: list[Path], logs: Path, *options: str) -> None:
    """storescu with extra options (``-xs``: propose JPEG Lossless SV1, as stored)."""
    with (logs / f"storescu-{server.name}.txt").open("ab") as err:
        code = subprocess.run(
            [tool("storescu"), *options, "-aec", server.aet, "-aet", "BENCH", "127.0.0.1",
             str(server.dicom_port), *map(str, files)],
            env=DCMTK_ENV, stdout=err, stderr=subprocess.STDOUT, check=False,
        ).returncode  # fmt: skip
    if code != 0:
        raise RuntimeError(f"storescu to {server.name} exited with {code}")


def timed_once(url: str, accept: str, headers: dict[str, str]) -> tuple[float, int, int]:
    """(milliseconds, status, bytes) of one request, alone."""
    request = urllib.request.Request(url, headers={"Accept": accept, **headers})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        body, status = b"", exc.code
    return (time.perf_counter() - t0) * 1e3, status, len(body)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.wado_compare",
                                description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--quick", action="store_true", help="2 s per measurement, 40 slices")
    p.add_argument("--seconds", type=float, help="per measurement (default 5; 2 with --quick)")
    p.add_argument("--clients", default="1,16", help="comma list of concurrent clients")
    p.add_argument("--slices", type=int, help="CT slices (default 300; 40 with --quick)")
    p.add_argument("--jpeg-slices", type=int, default=20, help="JPEG lossless slices (default 20)")
    p.add_argument("--cases", help="comma list of case-name substrings to run (default all)")
    p.add_argument("--idle-seconds", type=float, default=2.0)
    p.add_argument("--out", type=Path, help="write the raw figures here (JSON)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.slices = args.slices or (40 if args.quick else 300)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("storescu", "echoscu", "Orthanc", "wrk"):
        tool(name)
    root = Path(tempfile.mkdtemp(prefix="lightbox-wado-bench-"))
    logs = root / "logs"
    logs.mkdir()
    started = time.time()
    lightbox = Lightbox(root / "lightbox", 2)
    orthanc = OrthancWeb(root / "orthanc")
    servers: list[Server] = [lightbox, orthanc]
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()},
                              "runs": [], "probes": [], "cold": []}  # fmt: skip
    code = 0
    try:
        auth = {lightbox.name: {"Authorization": f"Bearer {lightbox.api_key()}"}, orthanc.name: {}}
        for s in servers:
            s.start()
        files = write_ct_series(root / "files" / "ct", slices=args.slices)
        slices = [uids(f) for f in files]
        jpeg_files = []
        for i, src in enumerate(write_ct_series(root / "files" / "ct-native-1",
                                                slices=args.jpeg_slices, variant=1)):  # fmt: skip
            jpeg_files.append(root / "files" / f"jpeg-{i:04d}.dcm")
            to_jpeg_lossless_sv1(src, jpeg_files[-1])
        jpeg = [uids(f) for f in jpeg_files]

        for s in servers:
            s.wait_ready(timeout=300)
        for s in servers:
            t = time.perf_counter()
            store(s, files, logs)
            store_files(s, jpeg_files, logs, "-xs")
            print(f"stored {len(files)} CT slices ({len(jpeg_files)} JPEG lossless) in {s.name} ({time.perf_counter() - t:.1f} s)",
                  flush=True)
        waited = wait_decoded(lightbox, len(files) + len(jpeg_files), timeout=900)
        print(f"lightbox: every instance ready {waited:.1f} s after the send", flush=True)
        idle = idle_rates(servers, args.idle_seconds)
        result["idle_cpu_ms_per_s"] = {k: v * 1e3 for k, v in idle.items()}
        base = {s.name: f"http://127.0.0.1:{s.http_port}" for s in servers}
        selected = cases(slices, jpeg)
        if args.cases:
            wanted = [w.strip().lower() for w in args.cases.split(",")]
            selected = [c for c in selected if any(w in c["name"].lower() for w in wanted)]
        # The first series metadata request of each server, alone (cold caches).
        meta = selected[0] if "metadata" in selected[0]["name"] else cases(slices, jpeg)[0]
        for s in servers:
            ms, status, size = timed_once(base[s.name] + meta["paths"][0], METADATA, auth[s.name])
            result["cold"].append({"server": s.name, "ms": ms, "status": status, "bytes": size})
            print(f"cold {meta['name']:<24} {s.name:<8} {status} {ms:8.1f} ms {size / 1e6:.2f} MB",
                  flush=True)
        step = 0
        for case in selected:
            usable = {}
            for s in servers:
                info = probe(base[s.name] + case["paths"][0], case["accept"], auth[s.name])
                info.update(case=case["name"], server=s.name)
                result["probes"].append(info)
                usable[s.name] = info["status"] == 200
                print(f"probe {case['name']:<24} {s.name:<8} {info['status']} "
                      f"{info['type'][:60]:<60} {info['bytes'] / 1000:9.1f} kB"
                      + (f" {info.get('error', '')}" if info["status"] != 200 else ""),
                      flush=True)  # fmt: skip
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


if __name__ == "__main__":
    sys.exit(main())
