"""The decode stage end to end: DIMSE ingest of a CT series, then every frame in Zarr.

    python -m benchmarks.decode_pipeline [--slices 300] [--actors N]
        [--syntaxes explicit-le,jpeg-lossless-sv1] [--out FILE]

Starts ``lightbox serve`` (fresh data folder, loopback ports, 4 ingest actors
unless ``--ingest-actors``, ``--actors`` decode actors, else the server's
default of one per core but one), as :mod:`benchmarks.ingest_compare` does,
then for each transfer syntax asked for, one after the other:

1. sends the generated CT series (:mod:`benchmarks.datasets`, UIDs of its own
   for each syntax) with one dcmtk ``storescu`` (one association,
   ``TCP_NODELAY=1``); the end of ``storescu`` is taken as the time of the
   last C-STORE response (it then only releases the association);
2. polls the index (``open_runtime(...).index.counts().pixel_states``) every
   ``--poll`` seconds, from before the send until every instance of the
   series is ``ready`` (or ``failed``, or ``--timeout``);
3. prints the ingest time and rate, how many instances were already decoded
   when the send ended, the time from the last C-STORE response to every
   frame in Zarr, and the decode rate (first to last ``ready``, and after the
   send), with the CPU seconds of the server's processes by kind (ingest
   actors, decode actors, driver, Ray daemons) over the whole run;
4. reads a few frames back from the pixel store and compares them with
   pydicom's ``pixel_array`` of the files that were sent, and checks the
   transfer syntax the blob store kept.

The server is stopped whatever happens; its log's error and warning lines
are counted and the first errors printed. Exit status 1 on any problem.

Times are measured by polling: add up to ``--poll`` (0.05 s) of uncertainty to
every "ready" time. The JPEG Lossless SV1 series is made with GDCM
(:func:`benchmarks.datasets.to_jpeg_lossless_sv1`: pydicom has no JPEG encoder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from benchmarks.datasets import to_jpeg_lossless_sv1, write_ct_series
from benchmarks.ingest_compare import DCMTK_ENV, Lightbox, system_cpu, system_share, tool

SYNTAXES = {"explicit-le": ExplicitVRLittleEndian, "jpeg-lossless-sv1": JPEGLosslessSV1}
#: storescu's option to propose the files' own transfer syntax (without it,
#: storescu proposes only the uncompressed ones and cannot send a JPEG file).
STORESCU_PROPOSE = {"explicit-le": [], "jpeg-lossless-sv1": ["-xs"]}


class DecodeLightbox(Lightbox):
    """``lightbox serve`` with a chosen number of decode actors."""

    def __init__(self, root: Path, ingest_actors: int, decode_actors: int | None) -> None:
        super().__init__(root, ingest_actors)
        self.decode_actors = decode_actors

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.decode_actors is not None:
            env["LIGHTBOX_DECODE_ACTORS"] = str(self.decode_actors)
        return env


# -- CPU by kind of process --------------------------------------------------------


def process_kind(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except psutil.Error:
        return "gone"
    if "IngestWorker" in cmd:
        return "ingest actors"
    if "DecodeWorker" in cmd:
        return "decode actors"
    if "pipeline.cli" in cmd:
        return "driver (HTTP, dispatcher)"
    if "raylet" in name or "raylet" in cmd:
        return "raylet"
    if "gcs_server" in name or "gcs_server" in cmd:
        return "gcs_server"
    if "ray::IDLE" in cmd or "default_worker" in cmd:
        return "idle Ray workers"
    return "other Ray"


def cpu_snapshot(server: Lightbox) -> dict[int, tuple[str, float]]:
    out = {}
    for pid in server.session_pids():
        try:
            proc = psutil.Process(pid)
            times = proc.cpu_times()
            out[pid] = (process_kind(proc), times.user + times.system)
        except psutil.Error:
            continue
    return out


def cpu_by_kind(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, float]:
    kinds: dict[str, float] = {}
    for pid, (kind, cpu) in after.items():
        start = before.get(pid, (kind, 0.0))[1]
        kinds[kind] = kinds.get(kind, 0.0) + cpu - start
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


# -- polling the index --------------------------------------------------------------


@dataclass
class Poller:
    """Samples (time, instances, pixel_states) of the index on a thread."""

    counts: Callable[[], Any]
    interval: float
    samples: list[tuple[float, int, dict[str, int]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                c = self.counts()
                self.samples.append((t, c.instances, dict(c.pixel_states)))
            except Exception as exc:  # noqa: BLE001 - a locked index: note it, try again
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def last(self) -> tuple[float, int, dict[str, int]] | None:
        return self.samples[-1] if self.samples else None


def first_time(
    samples: list[tuple[float, int, dict[str, int]]], test: Callable[[int, dict[str, int]], bool]
) -> float | None:
    for t, instances, states in samples:
        if test(instances, states):
            return t
    return None


# -- one series ---------------------------------------------------------------------


def run_series(
    server: DecodeLightbox,
    runtime: Any,
    pixels: Any,
    name: str,
    files: list[Path],
    logs: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    n = len(files)
    nbytes = sum(p.stat().st_size for p in files)
    c0 = runtime.index.counts()
    base_ready = c0.pixel_states.get("ready", 0)
    base_failed = c0.pixel_states.get("failed", 0)
    base_instances = c0.instances
    os.sync()
    poller = Poller(runtime.index.counts, args.poll)
    cpu_before = cpu_snapshot(server)
    own_before = psutil.Process().cpu_times()
    sys_before = system_cpu()
    problems: list[str] = []
    poller.start()
    t0 = time.perf_counter()
    err_path = logs / f"storescu-{name}.txt"
    with err_path.open("wb") as err:
        code = subprocess.run(
            [tool("storescu"), *STORESCU_PROPOSE[name], "-aec", server.aet, "-aet", "BENCH",
             "127.0.0.1", str(server.dicom_port), *map(str, files)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=err, timeout=600, check=False,
        ).returncode  # fmt: skip
    t_sent = time.perf_counter()
    text = err_path.read_text(errors="replace").strip()
    if code != 0 or text:
        problems.append(f"storescu exit {code}: {text[-500:]}")

    # Wait for what was stored (all n unless the send failed part-way).
    expected = runtime.index.counts().instances - base_instances

    def done(_instances: int, states: dict[str, int]) -> bool:
        ready = states.get("ready", 0) - base_ready
        failed = states.get("failed", 0) - base_failed
        return ready + failed >= expected

    deadline = t_sent + (args.timeout if expected > 0 else 0)
    while time.perf_counter() < deadline:
        last = poller.last()
        if last is not None and last[0] > t_sent and done(last[1], last[2]):
            break
        time.sleep(args.poll / 2)
    poller.stop()
    sys_after = system_cpu()
    own_after = psutil.Process().cpu_times()
    cpu = cpu_by_kind(cpu_before, cpu_snapshot(server))
    samples = poller.samples
    final = samples[-1] if samples else (time.perf_counter(), 0, {})
    ready = final[2].get("ready", 0) - base_ready
    failed = final[2].get("failed", 0) - base_failed
    stored = final[1] - base_instances
    if stored != n:
        problems.append(f"index holds {stored} new instances, {n} were sent")
    if failed:
        problems.append(f"{failed} instances failed to decode: {runtime.index.pixel_failures(5)}")
    if 0 < expected and ready + failed < expected:
        problems.append(f"only {ready} of {expected} ready after {args.timeout:.0f} s")
    if poller.errors:
        problems.append(f"{len(poller.errors)} index polls failed, first: {poller.errors[0]}")

    def ready_at(k: int) -> float | None:
        return first_time(samples, lambda _i, s: s.get("ready", 0) - base_ready >= k)

    t_first = ready_at(1)
    t_all = ready_at(n) if ready >= n else None
    at_send_end = [s for s in samples if s[0] <= t_sent]
    ready_at_send_end = (at_send_end[-1][2].get("ready", 0) - base_ready) if at_send_end else 0
    # Ready count once a second from the start of the send: does decode keep up?
    timeline = []
    step = 1.0
    k = 1
    end = samples[-1][0] if samples else t0
    while t0 + k * step <= end + step and k <= 120:
        upto = [s for s in samples if s[0] <= t0 + k * step]
        timeline.append(upto[-1][2].get("ready", 0) - base_ready if upto else 0)
        k += 1

    # Verification: frames read back from Zarr against pydicom's pixel_array.
    checked = []
    transfer_syntaxes = set()
    for i in sorted({0, 1, n // 2, n - 1}):
        if i >= n:
            continue
        ds = dcmread(files[i])
        blob = runtime.index.stored_blob(ds.SOPInstanceUID)
        if blob is None:
            problems.append(f"slice {i} is not in the index")
            continue
        transfer_syntaxes.add(blob.transfer_syntax_uid)
        try:
            frame = pixels.read_frame(blob.storage_key, 0)
        except (FileNotFoundError, IndexError) as exc:
            problems.append(f"slice {i}: no pixels in Zarr ({exc})")
            continue
        expected = ds.pixel_array
        same = frame.dtype == expected.dtype and np.array_equal(frame, expected)
        checked.append((i, bool(same)))
        if not same:
            problems.append(
                f"slice {i}: Zarr frame {frame.dtype}{frame.shape} differs from pixel_array "
                f"{expected.dtype}{expected.shape}"
            )
    sent_syntax = str(dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if transfer_syntaxes and transfer_syntaxes != {sent_syntax}:
        problems.append(f"sent {sent_syntax}, the blob store kept {sorted(transfer_syntaxes)}")

    wall = t_sent - t0
    system = system_share(sys_before, sys_after)
    return {
        "syntax": name,
        "transfer_syntax_sent": sent_syntax,
        "transfer_syntax_stored": sorted(transfer_syntaxes),
        "instances": n,
        "bytes": nbytes,
        "ingest_s": wall,
        "ingest_inst_per_s": n / wall,
        "ingest_mb_per_s": nbytes / 1e6 / wall,
        "ready_at_send_end": ready_at_send_end,
        "first_ready_after_send_start_s": (t_first - t0) if t_first else None,
        "all_ready_after_send_start_s": (t_all - t0) if t_all else None,
        "all_ready_after_last_cstore_s": (t_all - t_sent) if t_all else None,
        "decode_rate_first_to_last": (
            (n - 1) / (t_all - t_first) if t_all and t_first and t_all > t_first else None
        ),
        "decode_rate_overall": n / (t_all - t0) if t_all else None,
        "decode_rate_after_send": (
            (n - ready_at_send_end) / (t_all - t_sent) if t_all and t_all > t_sent else None
        ),
        "ready_each_second": timeline,
        "cpu_s_by_kind": cpu,
        "benchmark_process_cpu_s": (own_after.user + own_after.system)
        - (own_before.user + own_before.system),
        "machine": system,
        "polls": len(samples),
        "verified_frames": checked,
        "problems": problems,
    }


def print_series(r: dict[str, Any], decode_actors: str) -> None:
    def f(value: float | None, fmt: str = ".2f", unit: str = "") -> str:
        return "n/a" if value is None else f"{value:{fmt}}{unit}"

    n = r["instances"]
    print(f"\n== {r['syntax']} ({r['transfer_syntax_sent']}), {n} instances, "
          f"{r['bytes'] / 1e6:.1f} MB, decode actors: {decode_actors}")  # fmt: skip
    print(f"ingest (storescu, 1 association):   {r['ingest_s']:.2f} s  "
          f"{r['ingest_inst_per_s']:.1f} inst/s  {r['ingest_mb_per_s']:.1f} MB/s")  # fmt: skip
    print(f"ready when the last C-STORE was answered: {r['ready_at_send_end']} of {n}")
    first, every = r["first_ready_after_send_start_s"], r["all_ready_after_send_start_s"]
    print(f"first frame ready after send start: {f(first, '.2f', ' s')}")
    print(f"all ready after send start:         {f(every, '.2f', ' s')}")
    print(f"last C-STORE response -> every frame ready in Zarr: "
          f"{f(r['all_ready_after_last_cstore_s'], '.2f', ' s')}")  # fmt: skip
    print(f"decode rate: {f(r['decode_rate_first_to_last'], '.1f')} inst/s first to last ready, "
          f"{f(r['decode_rate_after_send'], '.1f')} inst/s after the send, "
          f"{f(r['decode_rate_overall'], '.1f')} inst/s from send start to all ready")  # fmt: skip
    print(f"ready, each second from the send start: {r['ready_each_second']}")
    total = sum(r["cpu_s_by_kind"].values())
    parts = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_s_by_kind"].items() if v >= 0.005)
    print(f"server CPU s (send start to all ready): {total:.2f} = {parts}; "
          f"this benchmark (poller) {r['benchmark_process_cpu_s']:.2f}")  # fmt: skip
    decode_cpu = r["cpu_s_by_kind"].get("decode actors", 0.0)
    ingest_cpu = r["cpu_s_by_kind"].get("ingest actors", 0.0)
    print(f"per instance: decode actors {1000 * decode_cpu / n:.1f} ms CPU, "
          f"ingest actors {1000 * ingest_cpu / n:.1f} ms CPU; machine busy "
          f"{r['machine']['busy']:.0%}, steal {r['machine']['steal']:.0%}")  # fmt: skip
    print(f"stored as {', '.join(r['transfer_syntax_stored']) or '?'}; Zarr frames equal to "
          f"pydicom pixel_array: {r['verified_frames']}")  # fmt: skip
    for p in r["problems"]:
        print(f"PROBLEM: {p}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode_pipeline", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument(
        "--actors", type=int, help="decode actors (default: the server's, cores - 1, at least 1)"
    )
    parser.add_argument("--ingest-actors", type=int, default=4)
    parser.add_argument(
        "--syntaxes",
        default="explicit-le,jpeg-lossless-sv1",
        help=f"comma list of {', '.join(SYNTAXES)}, sent in this order",
    )
    parser.add_argument("--poll", type=float, default=0.05, help="index poll interval, s")
    parser.add_argument(
        "--timeout", type=float, default=300, help="s after a send to wait for ready"
    )
    parser.add_argument("--out", type=Path, help="write the raw figures here (JSON)")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    args.syntaxes = [s for s in args.syntaxes.split(",") if s]
    unknown = [s for s in args.syntaxes if s not in SYNTAXES]
    if unknown:
        parser.error(f"unknown syntaxes {unknown}; known: {list(SYNTAXES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("storescu", "echoscu"):
        tool(name)
    root = Path(tempfile.mkdtemp(prefix="lightbox-decode-bench-", dir=args.workdir))
    logs = root / "logs"
    logs.mkdir()
    started = time.time()
    server = DecodeLightbox(root / "lightbox", args.ingest_actors, args.actors)
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "series": []}
    exit_code = 0
    runtime = None
    try:
        server.start()
        t = time.perf_counter()
        filesets: dict[str, list[Path]] = {}
        for variant, name in enumerate(args.syntaxes, start=1):
            native = write_ct_series(root / "files" / f"native-{variant}", slices=args.slices,
                                     variant=variant)  # fmt: skip
            if name == "explicit-le":
                filesets[name] = native
            else:
                folder = root / "files" / name
                folder.mkdir(parents=True)
                filesets[name] = []
                for src in native:
                    to_jpeg_lossless_sv1(src, folder / src.name)
                    filesets[name].append(folder / src.name)
        os.sync()
        print(f"generated {len(filesets)} series in {time.perf_counter() - t:.0f} s under {root}",
              flush=True)  # fmt: skip
        t = time.perf_counter()
        server.wait_ready(timeout=300)
        print(f"lightbox ready ({time.perf_counter() - t:.0f} s more), DICOM port "
              f"{server.dicom_port}", flush=True)  # fmt: skip

        from pipeline.config import Settings
        from pipeline.runtime import open_runtime
        from pipeline.storage.pixels import ZarrPixelStore

        settings = Settings(data_dir=server.data_dir)
        runtime = open_runtime(settings)
        pixels = ZarrPixelStore(settings.resolved_storage_url)
        default_actors = max(1, (os.cpu_count() or 1) - 1)  # Settings.decode_actors
        decode_actors = str(args.actors) if args.actors else f"server default ({default_actors})"
        for name in args.syntaxes:
            record = run_series(server, runtime, pixels, name, filesets[name], logs, args)
            result["series"].append(record)
            print_series(record, decode_actors)
            sys.stdout.flush()
            if record["problems"]:
                exit_code = 1
    except BaseException as exc:  # noqa: BLE001 - recorded, then the server is stopped
        result["error"] = f"{type(exc).__name__}: {exc}"
        print(f"benchmark failed: {result['error']}", file=sys.stderr)
        exit_code = 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        if runtime is not None:
            runtime.close()
        try:
            server.stop()
        except Exception as exc:  # noqa: BLE001
            print(f"stopping lightbox: {exc}", file=sys.stderr)
        found = server.problems()
        result["server_log"] = {kind: lines[:30] for kind, lines in found.items()}
        print(f"\nlightbox log: {len(found['errors'])} error lines, "
              f"{len(found['warnings'])} warning lines")  # fmt: skip
        for line in found["errors"][:8] + found["warnings"][:4]:
            print("   " + line[:300])
        if found["errors"]:
            exit_code = exit_code or 1
        result["elapsed_s"] = time.time() - started
        if args.out:
            args.out.write_text(json.dumps(result, indent=2, default=str))
            print(f"raw figures in {args.out}")
        if args.keep:
            print(f"kept {root} (server log: {server.log_path})")
        else:
            shutil.rmtree(root, ignore_errors=True)
        print(f"elapsed {result['elapsed_s']:.0f} s")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
