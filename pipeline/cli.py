"""The ``lightbox`` command-line tool.

Every command reads the same settings (``LIGHTBOX_*`` environment variables,
``LIGHTBOX_CONFIG``); options given here override them.
"""

from __future__ import annotations

import json
import logging
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
        if runtime.ingest.linker is not None:
            # Link the imported studies to their orders before this process
            # ends (a study left unlooked-at waits for a server's sweep).
            runtime.ingest.linker.drain(timeout=120)
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
def demo(
    data_dir: DataDir = None,
    dicom_port: Annotated[int | None, typer.Option(help="DICOM port (LIGHTBOX_DICOM_PORT).")] = None,
    in_process: Annotated[
        bool | None,
        typer.Option(
            "--in-process/--running",
            help="Start the DICOM server in this process, or use the running one "
            "(default: start one when nothing answers on the port).",
        ),
    ] = None,
    slices: Annotated[int, typer.Option(min=1, max=50, help="CT slices to send.")] = 3,
) -> None:
    """Register a patient and an order, then act as a modality: worklist, MPPS,
    C-STORE, MPPS COMPLETED; print where the study is on the Waiting list."""
    from pipeline.worklist.demo import DemoFailed, run_demo

    settings = _settings(data_dir=data_dir, dicom_port=dicom_port)
    configure_logging("WARNING")
    # The demo says in one line why an exchange failed; pynetdicom's own
    # error lines (a refused connection) would only repeat it.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    try:
        run_demo(settings, echo=typer.echo, start_server=in_process, slices=slices)
    except DemoFailed as exc:
        typer.echo(f"demo failed: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command()
def config() -> None:
    """Print the effective settings as JSON (passwords in URLs masked)."""
    from sqlalchemy.engine import make_url

    values = get_settings().model_dump(mode="json")
    if values["index_url"]:
        values["index_url"] = make_url(values["index_url"]).render_as_string(hide_password=True)
    typer.echo(json.dumps(values, indent=2))


# -- accounts -------------------------------------------------------------------

user_app = typer.Typer(help="Accounts, passwords and API keys.", no_args_is_help=True)
app.add_typer(user_app, name="user")


def _accounts(data_dir: Path | None):  # type: ignore[no-untyped-def]
    from pipeline.runtime import open_runtime

    return open_runtime(_settings(data_dir=data_dir), run_migrations=True)


def _cli_audit(runtime: Any, target: str, change: str) -> None:
    """Account changes from the command line are audited as the OS user."""
    import getpass
    import socket

    from pipeline.security.audit import Action, AuditEvent, EventID, EventType

    runtime.audit.record(
        AuditEvent(
            EventID.SECURITY_ALERT,
            Action.UPDATE,
            "user",
            f"os:{getpass.getuser()}",
            event_type=EventType.USER_SECURITY_ATTRIBUTES_CHANGED,
            source_address=socket.gethostname(),
            destination="lightbox user",
            detail={"user": target, "change": change},
        )
    )


def _read_password(password_stdin: bool, username: str) -> str | None:
    """The new password: from standard input, typed twice, or generated (None)."""
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        return typer.prompt(f"Password for {username}", hide_input=True, confirmation_prompt=True)
    return None


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option(help="administrator, radiologist, technologist or "
                                          "referring_physician.")] = "radiologist",  # fmt: skip
    display_name: Annotated[str, typer.Option(help="Full name shown in the viewer.")] = "",
    referring_name: Annotated[
        str, typer.Option(help="Referring Physician's Name (PN) for a referring physician.")
    ] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="An account for API keys only (a device).")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Create an account. Without a password given, a one-time password is printed
    that must be changed at the first login."""
    from pipeline.errors import LightboxError
    from pipeline.security.passwords import one_time_password

    password = None if no_password else _read_password(password_stdin, username)
    generated = password is None and not no_password
    if generated:
        password = one_time_password()
    runtime = _accounts(data_dir)
    try:
        user = runtime.accounts.create_user(
            username,
            role,
            password=password,
            display_name=display_name,
            referring_physician_name=referring_name,
            must_change_password=generated,
        )
        _cli_audit(runtime, user.username, f"created with role {user.role.value}")
    except LightboxError as exc:
        typer.echo(f"lightbox: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    finally:
        runtime.close()
    typer.echo(f"created {user.username} ({user.role.value})")
    if generated:
        typer.echo(f"one-time password (must be changed at first login): {password}")


@user_app.command("list")
def user_list(data_dir: DataDir = None) -> None:
    """List the accounts."""
    runtime = _accounts(data_dir)
    try:
        for u in runtime.accounts.list_users():
            flags = [f for f, on in (("disabled", not u.active), ("must-change-password",
                     u.must_change_password), ("api-keys-only", not u.has_password)) if on]  # fmt: skip
            typer.echo(f"{u.username:24} {u.role.value:20} {' '.join(flags)}".rstrip())
    finally:
        runtime.close()


@user_app.command("passwd")
def user_passwd(
    username: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
    data_dir: DataDir = None,
) -> None:
    """Set a password; without one given, print a one-time password to change at login."""
    from pipeline.errors import LightboxError
    from pipeline.security.passwords import one_time_password

    password = _read_password(password_stdin, username)
    generated = password is None
    if password is None:
        password = one_time_password()
    runtime = _accounts(data_dir)
    try:
        runtime.accounts.set_password(username, password, must_change_password=generated)
        _cli_audit(runtime, username.lower(), "password set")
    except LightboxError as exc:
        typer.echo(f"lightbox: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    finally:
        runtime.close()
    typer.echo(f"password of {username.lower()} set")
    if generated:
        typer.echo(f"one-time password (must be changed at first login): {password}")


@user_app.command("disable")
def user_disable(username: str, data_dir: DataDir = None) -> None:
    """Disable an account and end every credential it holds."""
    from pipeline.errors import LightboxError

    runtime = _accounts(data_dir)
    try:
        runtime.accounts.update_user(username, active=False)
        _cli_audit(runtime, username.lower(), "disabled")
    except LightboxError as exc:
        typer.echo(f"lightbox: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    finally:
        runtime.close()
    typer.echo(f"{username.lower()} disabled")


@user_app.command("apikey")
def user_apikey(
    username: str,
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'CT room 2'.")] = "",
    data_dir: DataDir = None,
) -> None:
    """Issue an API key for an account (shown once: store it in the device or script)."""
    from pipeline.errors import LightboxError
    from pipeline.security.accounts import API_KEY

    runtime = _accounts(data_dir)
    try:
        issued = runtime.accounts.issue(runtime.accounts.get_user(username), API_KEY, name=name)
        _cli_audit(runtime, username.lower(), f"API key {issued.token_id} issued")
    except LightboxError as exc:
        typer.echo(f"lightbox: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    finally:
        runtime.close()
    typer.echo(issued.secret)


@app.command()
def roles() -> None:
    """Print which role has which permission (the table of the README)."""
    from pipeline.security.roles import permission_table

    typer.echo(permission_table())


@app.command()
def audit(
    data_dir: DataDir = None,
    since: Annotated[
        str | None, typer.Option(help="From this date or time (ISO 8601; local time if no offset).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time; a date alone includes that whole day.")
    ] = None,
    patient: Annotated[str | None, typer.Option(help="Patient ID.")] = None,
    actor: Annotated[str | None, typer.Option(help="User name, AE title or component.")] = None,
    event: Annotated[
        str | None, typer.Option(help="Event: CID 400 code or name, e.g. 110112 or query.")
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study Instance UID.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """The audit trail, newest first: who read, created, changed, exported or deleted what.

    Reading the trail is itself recorded (Audit Log Used, as the OS user).
    """
    import getpass
    import socket
    from datetime import date, datetime, time, timedelta, timezone

    from pipeline.runtime import open_runtime
    from pipeline.security.audit import Action, AuditEvent, EventID, Outcome, parse_event_id

    def when(value: str | None, option: str, *, end: bool = False) -> datetime | None:
        # A bare date is a whole day: --since its start, --until the next day's
        # start (the range is [since, until)). A time without an offset is the
        # local time of whoever types it.
        if value is None:
            return None
        try:
            if len(value) == 10:
                day = date.fromisoformat(value)
                parsed = datetime.combine(day + timedelta(days=1 if end else 0), time())
            else:
                parsed = datetime.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(
                f"not an ISO date or time: {value!r}", param_hint=option
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.astimezone()
        return parsed.astimezone(timezone.utc)

    start, end = when(since, "--since"), when(until, "--until", end=True)
    try:
        event_id = parse_event_id(event) if event is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--event") from None

    runtime = open_runtime(_settings(data_dir=data_dir), run_migrations=True)
    try:
        records = runtime.audit.query(
            since=start,
            until=end,
            patient_id=patient,
            actor=actor,
            event_id=event_id,
            study_instance_uid=study,
            limit=limit,
        )
        try:
            user = getpass.getuser()
        except Exception:  # no login name (a container's bare uid)
            import os

            user = str(os.getuid())
        filters = {
            "since": start.isoformat() if start else None,
            "until": end.isoformat() if end else None,
            "patient_id": patient,
            "actor": actor,
            "event_id": event_id.value if event_id else None,
            "study_instance_uid": study,
        }
        detail: dict[str, object] = {k: v for k, v in filters.items() if v is not None}
        detail.update(limit=limit, rows=len(records))
        runtime.audit.record(
            AuditEvent(
                event_id=EventID.AUDIT_LOG_USED,
                action=Action.READ,
                actor_kind="user",
                actor=user,
                outcome=Outcome.SUCCESS,
                source_address=socket.gethostname(),
                destination="lightbox audit",
                patient_id=patient or "",
                study_instance_uid=study or "",
                detail=detail,
            )
        )
    finally:
        runtime.close()  # writes the Audit Log Used row

    if as_json:
        typer.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    actions = {a.value: a.name.lower() for a in Action}
    outcomes = {o.value: o.name.lower().replace("_", " ") for o in Outcome}

    def stamp(value: datetime) -> str:
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")

    header = (
        "time", "last", "count", "event", "action", "outcome", "actor", "role", "source",
        "destination", "patient", "study",
    )  # fmt: skip
    table = [header] + [
        (
            stamp(r.event_time),
            stamp(r.last_time) if r.last_time != r.event_time else "",
            str(r.count),
            r.event_name,
            actions.get(r.action, r.action),
            outcomes.get(r.outcome, str(r.outcome)),
            f"{r.actor_kind}:{r.actor}",
            r.role,
            r.source_address,
            r.destination,
            r.patient_id,
            r.study_instance_uid,
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not records:
        typer.echo("no audit events match")


# -- devices (remote AEs) -------------------------------------------------------

device_app = typer.Typer(
    help="Remote AEs: where they listen and which DICOM services they may use.",
    no_args_is_help=True,
)
app.add_typer(device_app, name="device")


def _device_audit(runtime: Any, action: Any, ae_title: str, change: str) -> None:
    """Registry changes are audited as the OS user (Security Configuration, CID 401 110129)."""
    import getpass
    import socket

    from pipeline.security.audit import AuditEvent, EventID, EventType

    runtime.audit.record(
        AuditEvent(
            EventID.SECURITY_ALERT,
            action,
            "user",
            f"os:{getpass.getuser()}",
            event_type=EventType.SECURITY_CONFIGURATION,
            source_address=socket.gethostname(),
            destination="lightbox device",
            detail={"device": ae_title, "change": change},
        )
    )


def _device_line(device: Any) -> str:
    where = f"{device.host}:{device.port}" if device.reachable else (device.host or "-")
    flags = [f for f, on in (("tls", device.tls), ("inactive", not device.active)) if on]
    services = ",".join(s for s in _device_services() if s in device.allowed_services) or "-"
    line = f"{device.ae_title:16} {device.setup.value:16} {where:24} {services}"
    return f"{line} {' '.join(flags)}".rstrip()


def _device_services() -> tuple[str, ...]:
    from pipeline.devices.registry import SERVICES

    return SERVICES


def _device_change(data_dir: Path | None, change: Any) -> Any:
    """Run ``change(registry, runtime)``; a domain error exits 2 with its reason."""
    from pipeline.devices.registry import DeviceRegistry
    from pipeline.errors import LightboxError

    runtime = _accounts(data_dir)
    try:
        return change(DeviceRegistry(runtime.index), runtime)
    except LightboxError as exc:
        typer.echo(f"lightbox: {exc.reason}", err=True)
        raise typer.Exit(2) from None
    finally:
        runtime.close()


_SETUP_HELP = (
    "bi-directional (query/retrieve, commitment, worklist...) or uni-directional (only sends)."
)
_SERVICES_HELP = (
    "Comma-separated services, narrowing the setup's: echo, store, find, move, get, "
    "commitment, worklist, mpps."
)


@device_app.command("add")
def device_add(
    ae_title: Annotated[str, typer.Argument(help="The device's AE title (PS3.5 6.2).")],
    host: Annotated[str, typer.Option(help="Host name or IP address it listens on.")] = "",
    port: Annotated[int | None, typer.Option(help="Port it listens on (C-MOVE, reports).")] = None,
    setup: Annotated[str, typer.Option(help=_SETUP_HELP)] = "bi-directional",
    services: Annotated[str, typer.Option(help=_SERVICES_HELP)] = "",
    tls: Annotated[bool, typer.Option("--tls", help="Open TLS associations to it.")] = False,
    description: Annotated[str, typer.Option(help="Free text (room, vendor).")] = "",
    data_dir: DataDir = None,
) -> None:
    """Register a device."""
    from pipeline.security.audit import Action

    def add(registry: Any, runtime: Any) -> Any:
        device = registry.add(ae_title, host=host, port=port, setup=setup, services=services,
                              tls=tls, description=description)  # fmt: skip
        _device_audit(runtime, Action.CREATE, device.ae_title, f"added ({device.setup.value})")
        return device

    typer.echo(_device_line(_device_change(data_dir, add)))


@device_app.command("list")
def device_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per device.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List the devices: AE title, setup, address, the services it may use."""
    devices = _device_change(data_dir, lambda registry, runtime: registry.list())
    for d in devices:
        if as_json:
            services = _device_services()
            typer.echo(json.dumps({
                "ae_title": d.ae_title, "host": d.host, "port": d.port, "setup": d.setup.value,
                "services": [s for s in services if s in d.services],
                "allowed_services": [s for s in services if s in d.allowed_services],
                "tls": d.tls, "description": d.description, "active": d.active,
            }))  # fmt: skip
        else:
            typer.echo(_device_line(d))
    if not devices and not as_json:
        typer.echo("no devices registered")


@device_app.command("update")
def device_update(
    ae_title: str,
    host: Annotated[str | None, typer.Option(help="New host.")] = None,
    port: Annotated[int | None, typer.Option(help="New port.")] = None,
    no_port: Annotated[bool, typer.Option("--no-port", help="Forget the port.")] = False,
    setup: Annotated[str | None, typer.Option(help="bi-directional or uni-directional.")] = None,
    services: Annotated[
        str | None, typer.Option(help="Comma-separated services; '' for those of the setup.")
    ] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls", help="TLS associations.")] = None,
    description: Annotated[str | None, typer.Option(help="Free text.")] = None,
    active: Annotated[
        bool | None, typer.Option("--active/--inactive", help="An inactive device may use nothing.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Change some fields of a device."""
    from pipeline.security.audit import Action

    given = {
        "host": host,
        "port": port,
        "setup": setup,
        "services": services,
        "tls": tls,
        "description": description,
        "active": active,
    }
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if no_port:
        changes["port"] = None
    if not changes:
        typer.echo("lightbox: nothing to change", err=True)
        raise typer.Exit(2)

    def update(registry: Any, runtime: Any) -> Any:
        device = registry.update(ae_title, **changes)
        change = "updated " + ", ".join(sorted(changes))
        _device_audit(runtime, Action.UPDATE, device.ae_title, change)
        return device

    typer.echo(_device_line(_device_change(data_dir, update)))


@device_app.command("remove")
def device_remove(ae_title: str, data_dir: DataDir = None) -> None:
    """Remove a device (its AE may still associate if the allow-list admits it)."""
    from pipeline.security.audit import Action

    def remove(registry: Any, runtime: Any) -> str:
        title = registry.get(ae_title).ae_title
        registry.remove(title)
        _device_audit(runtime, Action.DELETE, title, "removed")
        return str(title)

    typer.echo(f"removed {_device_change(data_dir, remove)}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
