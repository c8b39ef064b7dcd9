"""QIDO-RS searches, Lightbox against Orthanc (DICOMweb plugin), in one run.

    python -m benchmarks.query_compare [--quick] [--studies 2000] [--seconds 5] [--clients 1,16]

Starts ``lightbox serve`` and Orthanc with its DICOMweb plugin (as
:mod:`benchmarks.render_compare` does) and stores in both, with ``storescu``
(``TCP_NODELAY=1``), the same files: ``--studies`` small generated studies
(one 8 x 8 CT instance each, one patient each, ``PatientID`` ``QB000000``...,
names ``QUERY^P000000``..., study dates spread over 2023) and the generated
300-slice CT series (:mod:`benchmarks.datasets`). Then, for each case and
number of clients, ``wrk`` runs for ``--seconds`` against each server in turn
(order alternating) and the table gives requests/s, p50 and p99 latency and
the Lightbox/Orthanc ratios:

* ``studies by PatientID``: ``GET /dicom-web/studies?PatientID=QB000123``
  cycling over 64 patients (one study each);
* ``studies by date range``: ``StudyDate=20230301-20230331`` (a month,
  about a twelfth of the studies) with ``limit=100``, the page a study list asks;
* ``instances of a 300-slice series``:
  ``GET /dicom-web/studies/{study}/series/{series}/instances``.

Orthanc answers from its SQLite index for the study searches and reads every
file for the instance list (FIELD-NOTES.md: ~1.2 ms of CPU per instance);
Lightbox answers both from its index. Searches at 100,000 studies (more than
Orthanc can be loaded with here in a reasonable time) are measured on
Lightbox alone by ``benchmarks/test_query_bench.py``.

Before each case one request per server checks status 200 and the number of
matches (both servers must agree). The machine is shared and noisy: read the
ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from benchmarks.datasets import write_ct_series
from benchmarks.ingest_compare import Lightbox, Server, tool
from benchmarks.render_compare import OrthancWeb, fmt, run_wrk, session_cpu, store, uids

ACCEPT = "application/dicom+json"


def write_small_studies(folder: Path, count: int) -> list[Path]:
    """``count`` one-instance studies of one patient each (8 x 8 CT images)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    first = date(2023, 1, 1)
    for n in range(count):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = (first + timedelta(days=n % 365)).strftime("%Y%m%d")
        ds.StudyTime = "101200"
        ds.AccessionNumber = f"QA{n:06d}"
        ds.StudyID = "1"
        ds.Modality = "CT"
        ds.PatientName = f"QUERY^P{n:06d}"
        ds.PatientID = f"QB{n:06d}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.ReferringPhysicianName = "Referrer^Rita"
        ds.StudyDescription = "QUERY BENCHMARK"
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(128)
        path = folder / f"Q{n:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def matches(url: str, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, headers={"Accept": ACCEPT, **headers})
    with urllib.request.urlopen(request, timeout=120) as response:
        if response.status == 204:
            return 0
        return len(json.loads(response.read() or b"[]"))


def wait_indexed(server: Server, expected: int, timeout: float) -> None:
    """Until the server counts ``expected`` instances (C-STORE is durable before Success,
    but Orthanc's and our counters are read through their own APIs)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if server.count() >= expected:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} holds {server.count()} of {expected} instances")


def cases(study_count: int, series: tuple[str, str]) -> list[dict[str, Any]]:
    ids = [f"QB{(n * 7919) % study_count:06d}" for n in range(64)]
    return [
        {"name": "studies by PatientID", "expected": 1,
         "paths": [f"/dicom-web/studies?PatientID={i}" for i in ids]},
        {"name": "studies by date, limit 100", "expected": None,
         "paths": ["/dicom-web/studies?StudyDate=20230301-20230331&limit=100"]},
        {"name": "instances of 300-slice series", "expected": 300,
         "paths": [f"/dicom-web/studies/{series[0]}/series/{series[1]}/instances"]},
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.query_compare",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 s per measurement, 300 studies")
    p.add_argument("--studies", type=int, help="small studies stored (default 2000)")
    p.add_argument("--seconds", type=float, help="per measurement (default 5; 2 with --quick)")
    p.add_argument("--clients", default="1,16", help="comma list of concurrent clients")
    p.add_argument("--out", type=Path, help="write the raw figures here (JSON)")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.studies = args.studies or (300 if args.quick else 2000)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("storescu", "echoscu", "Orthanc", "wrk"):
        tool(name)
    root = Path(tempfile.mkdtemp(prefix="lightbox-query-bench-"))
    logs = root / "logs"
    logs.mkdir()
    started = time.time()
    lightbox = Lightbox(root / "lightbox", 2)
    orthanc = OrthancWeb(root / "orthanc")
    servers: list[Server] = [lightbox, orthanc]
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    code = 0
    try:
        auth = {lightbox.name: {"Authorization": f"Bearer {lightbox.api_key()}"}, orthanc.name: {}}
        for s in servers:
            s.start()
        small = write_small_studies(root / "files" / "small", args.studies)
        ct = write_ct_series(root / "files" / "ct", slices=300)
        study_uid, series_uid, _ = uids(ct[0])
        for s in servers:
            s.wait_ready(timeout=300)
        for s in servers:
            t = time.perf_counter()
            for chunk in range(0, len(small), 500):
                store(s, small[chunk : chunk + 500], logs)
            store(s, ct, logs)
            wait_indexed(s, len(small) + len(ct), timeout=600)
            print(f"stored {len(small)} studies + 300 CT slices in {s.name} "
                  f"({time.perf_counter() - t:.1f} s)", flush=True)
        base = {s.name: f"http://127.0.0.1:{s.http_port}" for s in servers}
        step = 0
        for case in cases(args.studies, (study_uid, series_uid)):
            found = {s.name: matches(base[s.name] + case["paths"][0], auth[s.name]) for s in servers}
            print(f"probe {case['name']:<32} matches {found}", flush=True)
            if len(set(found.values())) != 1 or (
                case["expected"] is not None and found[lightbox.name] != case["expected"]
            ):
                raise RuntimeError(f"{case['name']}: the servers disagree: {found}")
            for clients in args.clients:
                order = servers if step % 2 == 0 else servers[::-1]
                step += 1
                for s in order:
                    cpu0 = session_cpu(s)
                    figures = run_wrk(base[s.name], case["paths"], ACCEPT, clients, args.seconds,
                                      root / "wrk.lua", auth[s.name])
                    n = figures["requests"] or 0
                    figures.update(case=case["name"], server=s.name, clients=clients,
                                   cpu_ms_per_req=(session_cpu(s) - cpu0) * 1e3 / n if n else None)
                    if figures["non_2xx"] or figures["socket_errors"]:
                        code = 1
                    result["runs"].append(figures)
                    print(f"  {case['name']:<32} c={clients:<3} {s.name:<8} "
                          f"{figures['req_per_s']:8.1f} req/s p50 {fmt(figures['p50_ms'], '.2f')} ms"
                          f" p99 {fmt(figures['p99_ms'], '.2f')} ms", flush=True)
        print_table(result["runs"])
    except BaseException as exc:  # noqa: BLE001 - recorded, then the servers are stopped
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {result['error']}", file=sys.stderr)
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as exc:  # noqa: BLE001 - stop the other one regardless
                print(f"stopping {s.name}: {exc}", file=sys.stderr)
        result["elapsed_s"] = time.time() - started
        if args.out:
            args.out.write_text(json.dumps(result, indent=2, default=str))
        shutil.rmtree(root, ignore_errors=True)
        print(f"elapsed {result['elapsed_s']:.0f} s")
    return code


def print_table(runs: list[dict[str, Any]]) -> None:
    by = {(r["case"], r["clients"], r["server"]): r for r in runs}
    print()
    print(f"{'case':<32} {'clients':>7} {'server':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'CPU ms/req':>10}")
    for (case, clients, server), r in by.items():
        print(f"{case:<32} {clients:>7} {server:<8} {r['req_per_s']:>8.1f} "
              f"{fmt(r['p50_ms'], '8.2f')} {fmt(r['p99_ms'], '8.2f')} {fmt(r['cpu_ms_per_req'], '10.2f')}")
    print()
    print(f"{'case':<32} {'clients':>7} {'LB/OC req/s':>12} {'OC/LB p50':>10}")
    for (case, clients, server), r in by.items():
        if server != "lightbox" or (case, clients, "orthanc") not in by:
            continue
        o = by[(case, clients, "orthanc")]
        rps = r["req_per_s"] / o["req_per_s"] if o["req_per_s"] else None
        p50 = o["p50_ms"] / r["p50_ms"] if r["p50_ms"] and o["p50_ms"] else None
        print(f"{case:<32} {clients:>7} {fmt(rps, '12.2f')} {fmt(p50, '10.2f')}")


if __name__ == "__main__":
    sys.exit(main())
