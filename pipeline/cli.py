"""The ``lightbox`` command-line tool.

Every command reads the same settings (``LIGHTBOX_*`` environment variables,
``LIGHTBOX_CONFIG``); options given here override them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import Settings, get_settings
from pipeline.logs import configure_logging

app = typer.Typer(help="Lightbox PACS.", no_args_is_help=True, add_completion=False)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data folder (LIGHTBOX_DATA_DIR).")
]


def _settings(**overrides: Any) -> Settings:
    return get_settings(**{k: v for k, v in overrides.items() if v is not None})


@app.command()
def serve(
    data_dir: DataDir = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port (LIGHTBOX_DICOM_PORT).")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP port (LIGHTBOX_HTTP_PORT).")] = None,
    ingest_actors: Annotated[
        int | None, typer.Option(help="Ingest actors sharing the DICOM port.")
    ] = None,
) -> None:
    """Start Ray, the DICOM ingest actors and the HTTP API; run until interrupted."""
    from pipeline.serve import serve as run

    settings = _settings(
        data_dir=data_dir, dicom_port=dicom_port, http_port=http_port, ingest_actors=ingest_actors
    )
    configure_logging(settings.log_level)
    run(settings)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or zip archives.")],
    data_dir: DataDir = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Import DICOM files into the archive, as STOW-RS would; print what failed and why.

    Exits 0 when every file was stored (or already was), 1 when any failed.
    """
    from tqdm import tqdm

    from pipeline.ingest.importer import import_sources, iter_sources
    from pipeline.runtime import open_runtime

    settings = _settings(data_dir=data_dir)
    configure_logging("WARNING")
    runtime = open_runtime(settings, run_migrations=True)
    try:
        sources = list(iter_sources(paths, settings.max_dataset_bytes))
        with tqdm(total=len(sources), unit="file", disable=quiet, file=sys.stderr) as bar:
            summary = import_sources(runtime.ingest, sources, on_progress=bar.update)
    finally:
        runtime.close()
    outcomes = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(summary.outcomes.items()))
    typer.echo(
        f"imported {summary.stored} instances ({summary.bytes / 1e6:.1f} MB); "
        f"{outcomes or 'nothing stored'}; {summary.failed} failed"
    )
    for name, reason in summary.failures:
        typer.echo(f"  FAILED {name}: {reason}")
    raise typer.Exit(1 if summary.failed else 0)


@app.command()
def status(
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    failures: Annotated[
        bool, typer.Option("--failures", help="List instances whose pixels failed to decode.")
    ] = False,
) -> None:
    """Counts of the archive: patients, studies, series, instances, pixel states, queued work."""
    from dataclasses import asdict

    from pipeline.runtime import open_runtime

    settings = _settings(data_dir=data_dir)
    runtime = open_runtime(settings, run_migrations=True)
    try:
        counts = runtime.index.counts()
        failed = runtime.index.pixel_failures(limit=1000) if failures else []
    finally:
        runtime.close()
    if as_json:
        values = asdict(counts)
        if failures:
            values["pixel_failures"] = [{"sop_instance_uid": u, "reason": r} for u, r in failed]
        typer.echo(json.dumps(values, indent=2))
        return
    for uid, reason in failed:
        typer.echo(f"  FAILED {uid}: {reason}")
    typer.echo(
        f"patients {counts.patients}  studies {counts.studies}  series {counts.series}  "
        f"instances {counts.instances}  ({counts.bytes / 1e6:.1f} MB)"
    )
    typer.echo("pixel states: " + _pairs(counts.pixel_states))
    for stage, states in sorted(counts.work.items()):
        typer.echo(f"work {stage}: " + _pairs(states))


def _pairs(values: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) or "none"


@app.command()
def redecode(
    data_dir: DataDir = None,
    everything: Annotated[
        bool, typer.Option("--all", help="Also decode again the instances already decoded.")
    ] = False,
) -> None:
    """Queue the pixel data of failed instances (or of all, with --all) for decoding again.

    A running ``lightbox serve`` picks the work up; ``lightbox decode`` runs it here.
    """
    from pipeline.index.schema import PixelState
    from pipeline.runtime import open_runtime

    runtime = open_runtime(_settings(data_dir=data_dir), run_migrations=True)
    states = (PixelState.FAILED, PixelState.READY) if everything else (PixelState.FAILED,)
    try:
        queued = runtime.index.requeue_pixels("decode", states)
    finally:
        runtime.close()
    typer.echo(f"queued {queued} instances for decoding")


@app.command()
def decode(
    data_dir: DataDir = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Decode the queued instances in this process (no Ray), then print a summary."""
    from tqdm import tqdm

    from pipeline.decode.service import STAGE, DecodeService
    from pipeline.runtime import open_runtime

    settings = _settings(data_dir=data_dir)
    configure_logging("WARNING")
    runtime = open_runtime(settings, run_migrations=True)
    service = DecodeService.from_settings(settings, runtime.index, runtime.blobs)
    pending = runtime.index.counts().work.get(STAGE, {}).get("pending", 0)
    ready = failed = 0
    try:
        with tqdm(total=pending, unit="instance", disable=quiet, file=sys.stderr) as bar:
            while outcomes := service.run_once(limit=16):
                for outcome in outcomes:
                    ready += outcome.reason is None
                    failed += outcome.reason is not None
                bar.update(len(outcomes))
    finally:
        runtime.close()
    typer.echo(f"decoded {ready} instances; {failed} failed (lightbox status --failures)")


@app.command()
def rerender(
    data_dir: DataDir = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID.")] = None,
    series: Annotated[str | None, typer.Option(help="Series Instance UID.")] = None,
    modality: Annotated[str | None, typer.Option(help="Modality, e.g. CT.")] = None,
    since: Annotated[str | None, typer.Option(help="Study date from, YYYYMMDD.")] = None,
    until: Annotated[str | None, typer.Option(help="Study date to, YYYYMMDD.")] = None,
    window: Annotated[
        str | None, typer.Option(help="CENTER,WIDTH[,linear|linear-exact|sigmoid].")
    ] = None,
    preset: Annotated[str | None, typer.Option(help="A named CT window, e.g. lung.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jpeg, png or webp.")] = "jpeg",
    quality: Annotated[int, typer.Option(min=1, max=100)] = 90,
    local: Annotated[bool, typer.Option("--local", help="Render here, without Ray.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Render a selection of decoded instances with one window into the render store.

    Runs as Ray tasks (an embedded Ray, or LIGHTBOX_RAY_ADDRESS's cluster);
    resumable: instances already rendered the same way are skipped.
    """
    from tqdm import tqdm

    from pipeline.render.batch import render_spec, run_batch
    from pipeline.runtime import open_runtime

    settings = _settings(data_dir=data_dir)
    try:
        spec = render_spec(window, preset, fmt, quality)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    runtime = open_runtime(settings, run_migrations=True)
    try:
        selected = runtime.index.select_instances(
            study_instance_uid=study,
            series_instance_uid=series,
            modality=modality,
            study_date_from=since,
            study_date_to=until,
        )
    finally:
        runtime.close()
    if not local:
        from pipeline.serve import start_ray

        start_ray(settings)
    with tqdm(total=len(selected), unit="instance", disable=quiet, file=sys.stderr) as bar:
        summary = run_batch(settings, selected, spec, use_ray=not local, on_progress=bar.update)
    typer.echo(
        f"rendered {summary.rendered} instances ({summary.frames} frames) as {spec.variant}; "
        f"{summary.skipped} already done; {len(summary.failures)} failed"
    )
    for uid, reason in summary.failures:
        typer.echo(f"  FAILED {uid}: {reason}")
    raise typer.Exit(1 if summary.failures else 0)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the index schema to the latest version (``serve`` does it too)."""
    from pipeline.index import migrate as run

    settings = _settings(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    run(settings.resolved_index_url)
    typer.echo("index schema is at the latest revision")


@app.command()
def config() -> None:
    """Print the effective settings as JSON (passwords in URLs masked)."""
    from sqlalchemy.engine import make_url

    values = get_settings().model_dump(mode="json")
    if values["index_url"]:
        values["index_url"] = make_url(values["index_url"]).render_as_string(hide_password=True)
    typer.echo(json.dumps(values, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
