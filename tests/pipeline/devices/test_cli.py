"""``lightbox device add|list|update|remove`` through the CLI's ``main`` function."""

from __future__ import annotations

import json

import pytest

from pipeline import cli
from pipeline.config import Settings
from pipeline.devices.registry import DeviceRegistry
from pipeline.index.schema import DeviceSetup
from pipeline.runtime import Runtime
from tests.pipeline.security.test_tls import audit_rows


def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], settings: Settings,
        *args: str) -> tuple[int, str, str]:  # fmt: skip
    monkeypatch.setattr("sys.argv", ["lightbox", "device", *args, "--data-dir", str(settings.data_dir)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def test_device_commands(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                         settings: Settings, runtime: Runtime) -> None:  # fmt: skip
    code, out, _ = run(monkeypatch, capsys, settings, "add", "WS1", "--host", "10.0.0.5", "--port", "104")
    assert code == 0 and out.split()[:3] == ["WS1", "bi-directional", "10.0.0.5:104"]
    code, out, _ = run(monkeypatch, capsys, settings, "add", "CT01", "--setup", "uni-directional")
    assert code == 0 and "echo,store" in out
    code, out, _ = run(monkeypatch, capsys, settings, "list")
    assert [line.split()[0] for line in out.splitlines()] == ["CT01", "WS1"]

    code, out, _ = run(monkeypatch, capsys, settings, "update", "WS1", "--services", "find,get", "--no-port", "--tls")
    assert code == 0
    device = DeviceRegistry(runtime.index).get("WS1")
    assert (device.services, device.port, device.tls, device.setup) == ({"find", "get"}, None, True, DeviceSetup.BI_DIRECTIONAL)
    code, out, _ = run(monkeypatch, capsys, settings, "update", "WS1", "--inactive")
    assert code == 0 and "inactive" in out
    code, out, _ = run(monkeypatch, capsys, settings, "list", "--json")
    rows = {r["ae_title"]: r for r in map(json.loads, out.splitlines())}
    assert rows["WS1"]["services"] == ["find", "get"] and rows["WS1"]["allowed_services"] == []
    assert rows["CT01"]["allowed_services"] == ["echo", "store"]

    # Refusals exit 2 with the reason, and change nothing.
    code, _, err = run(monkeypatch, capsys, settings, "add", "WS1")
    assert code == 2 and "registered" in err
    code, _, err = run(monkeypatch, capsys, settings, "add", "BAD", "--setup", "uni-directional", "--services", "move")
    assert code == 2 and "uni-directional" in err
    code, _, err = run(monkeypatch, capsys, settings, "update", "NOPE", "--port", "104")
    assert code == 2 and "no such device" in err
    code, _, err = run(monkeypatch, capsys, settings, "update", "WS1")
    assert code == 2 and "nothing to change" in err

    code, out, _ = run(monkeypatch, capsys, settings, "remove", "CT01")
    assert code == 0 and out.strip() == "removed CT01"
    code, _, err = run(monkeypatch, capsys, settings, "remove", "CT01")
    assert code == 2
    assert [d.ae_title for d in DeviceRegistry(runtime.index).list()] == ["WS1"]

    changes = [json.loads(r["detail"]) for r in audit_rows(runtime, event_type_code="110129")]  # type: ignore[arg-type]
    assert [(c["device"], c["change"].split()[0]) for c in changes] == [
        ("WS1", "added"), ("CT01", "added"), ("WS1", "updated"), ("WS1", "updated"), ("CT01", "removed")
    ]
