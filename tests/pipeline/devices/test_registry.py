"""DeviceRegistry: remote AEs in the index, their setup and the services they may use."""

from __future__ import annotations

import pytest

from pipeline.devices.registry import DeviceRegistry, normalise_ae_title, parse_services
from pipeline.errors import AlreadyExists, InvalidRequest, NotFound
from pipeline.index.schema import DeviceSetup
from pipeline.runtime import Runtime


@pytest.fixture
def registry(runtime: Runtime) -> DeviceRegistry:
    return DeviceRegistry(runtime.index)


def test_add_get_list(registry: DeviceRegistry) -> None:
    ws = registry.add(" WS1 ", host="10.0.0.5", port=104, description="reading room")
    assert ws.ae_title == "WS1"  # PS3.5 6.2: padding carries no meaning
    assert (ws.host, ws.port, ws.setup, ws.tls, ws.active) == ("10.0.0.5", 104, DeviceSetup.BI_DIRECTIONAL, False, True)
    assert ws.services == frozenset() and ws.reachable
    assert ws.created_at.tzinfo is not None
    registry.add("CT01", setup="uni-directional", services="store, echo")
    assert [d.ae_title for d in registry.list()] == ["CT01", "WS1"]
    assert registry.get("WS1 ") == ws
    assert registry.find("NOPE") is None
    assert registry.find("bad\\title") is None
    with pytest.raises(NotFound):
        registry.get("NOPE")


def test_duplicate_and_invalid(registry: DeviceRegistry) -> None:
    registry.add("WS1")
    with pytest.raises(AlreadyExists):
        registry.add("WS1  ")
    for bad in ("", "   ", "A" * 17, "A\\B", "TAB\tAE", "Ä"):
        with pytest.raises(InvalidRequest):
            registry.add(bad)
    with pytest.raises(InvalidRequest, match="port"):
        registry.add("P0", port=0)
    with pytest.raises(InvalidRequest, match="port"):
        registry.add("P1", port=70000)
    with pytest.raises(InvalidRequest, match="port"):
        registry.add("P2", port=True)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="host"):
        registry.add("H1", host="a host with spaces")
    with pytest.raises(InvalidRequest, match="setup"):
        registry.add("S1", setup="sideways")
    with pytest.raises(InvalidRequest, match="unknown service"):
        registry.add("S2", services=["store", "teleport"])
    # A uni-directional device only sends.
    with pytest.raises(InvalidRequest, match="uni-directional"):
        registry.add("S3", setup=DeviceSetup.UNI_DIRECTIONAL, services=["store", "move"])
    assert [d.ae_title for d in registry.list()] == ["WS1"]


def test_update(registry: DeviceRegistry) -> None:
    before = registry.add("WS1", host="ws1", port=104)
    after = registry.update("WS1", port=11112, services=["find", "move"], description="moved")
    assert (after.host, after.port, after.description) == ("ws1", 11112, "moved")
    assert after.services == {"find", "move"} and after.updated_at >= before.updated_at
    assert registry.update("WS1", port=None).port is None
    assert not registry.get("WS1").reachable
    # Checked against the resulting setup: find/move do not fit uni-directional.
    with pytest.raises(InvalidRequest, match="uni-directional"):
        registry.update("WS1", setup="uni-directional")
    narrowed = registry.update("WS1", setup="uni-directional", services=[])
    assert narrowed.setup is DeviceSetup.UNI_DIRECTIONAL
    with pytest.raises(InvalidRequest, match="cannot change"):
        registry.update("WS1", pk=7)
    with pytest.raises(InvalidRequest, match="port"):
        registry.update("WS1", port=-1)
    with pytest.raises(NotFound):
        registry.update("NOPE", port=104)


def test_remove(registry: DeviceRegistry) -> None:
    registry.add("WS1")
    registry.remove("WS1")
    assert registry.list() == []
    with pytest.raises(NotFound):
        registry.remove("WS1")


def test_services_for(registry: DeviceRegistry) -> None:
    registry.add("WS1")
    registry.add("CT01", setup="uni-directional")
    registry.add("VIEWER", services=["echo", "find", "get"])
    registry.add("OFF", active=False)
    assert registry.services_for("UNKNOWN") is None  # unknown: the allow-list decides
    assert registry.services_for("WS1") == {"echo", "store", "find", "move", "get", "commitment", "worklist", "mpps"}
    assert registry.services_for("CT01") == {"echo", "store"}
    assert registry.services_for("VIEWER") == {"echo", "find", "get"}
    assert registry.services_for("OFF") == frozenset()  # known, and refused
    assert registry.services_for("WS1 ") == registry.services_for("WS1")


def test_helpers() -> None:
    assert normalise_ae_title("  ANY-SCP ") == "ANY-SCP"
    assert parse_services("Find, MOVE,,get ") == {"find", "move", "get"}
    assert parse_services([]) == frozenset()
