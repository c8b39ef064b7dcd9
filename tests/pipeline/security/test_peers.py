"""The calling-AE allow-list (``AE``, ``AE@ip``, ``AE@cidr``, ``AE@host``) and per-peer slots.

The slots are checked across processes: a subprocess holds one, and its death
(SIGKILL, no clean-up) frees it, which is why they are ``flock`` locks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.security.peers import AllowList, AllowListError, PeerSlots, normalise_ip, parse_allow_entry

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("entries", [[], ["*"], ["CT1", "*"], ["", "  "]])
def test_empty_or_star_allows_anyone(entries: list[str]) -> None:
    allow = AllowList(entries)
    assert allow.allows_any
    assert allow.permits("ANYONE", "192.0.2.1")


def test_plain_ae_title_from_any_address() -> None:
    allow = AllowList(["CT1", "MR1"])
    assert not allow.allows_any
    assert allow.permits("CT1", "127.0.0.1")
    assert allow.permits("MR1", "2001:db8::1")
    assert allow.permits("CT1 ", "10.0.0.1")  # trailing padding is not significant
    assert not allow.permits("ct1", "127.0.0.1")  # AE titles are case-sensitive
    assert not allow.permits("US1", "127.0.0.1")


def test_ae_at_ip_and_cidr() -> None:
    allow = AllowList(["CT1@10.0.0.0/24", "MR1@127.0.0.1", "US1@2001:db8::/32", "*@192.0.2.7"])
    assert allow.permits("CT1", "10.0.0.200")
    assert not allow.permits("CT1", "10.0.1.1")
    assert allow.permits("MR1", "127.0.0.1")
    assert not allow.permits("MR1", "10.9.9.9")
    assert allow.permits("MR1", "::ffff:127.0.0.1")  # IPv4 on a dual-stack socket
    assert allow.permits("US1", "2001:db8:1::5")
    assert not allow.permits("US1", "10.0.0.1")
    assert allow.permits("WHOEVER", "192.0.2.7")
    assert not allow.permits("WHOEVER", "192.0.2.8")
    assert not allow.permits("CT1", "not-an-address")


def test_host_name_is_resolved_once() -> None:
    entry = parse_allow_entry("WS1@localhost")
    assert entry is not None and entry.networks
    assert any(str(net.network_address) in ("127.0.0.1", "::1") for net in entry.networks)
    allow = AllowList(["WS1@localhost"])
    assert allow.permits("WS1", "127.0.0.1") or allow.permits("WS1", "::1")
    assert not allow.permits("WS1", "10.9.9.9")


def test_unresolvable_host_matches_nobody(caplog: pytest.LogCaptureFixture) -> None:
    allow = AllowList(["WS1@no-such-host.invalid"])  # RFC 6761: never resolves
    assert not allow.permits("WS1", "127.0.0.1")
    assert "does not resolve" in caplog.text


def test_ae_with_at_sign_splits_on_last() -> None:
    entry = parse_allow_entry("A@B@10.0.0.1")
    assert entry is not None and entry.ae == "A@B"


@pytest.mark.parametrize(
    "bad",
    [
        "CT1@",  # no host
        "CT1@10.0.0.0/33",  # bad prefix
        "CT1@300.1.1.1/8",
        "CT1@bad host",
        "CT1@-leading.example",
        "THIS_TITLE_IS_TOO_LONG",
        "BACK\\SLASH",
        "TAB\tX@10.0.0.1",
        "@10.0.0.1",
    ],
)
def test_malformed_entries_fail_at_start(bad: str) -> None:
    with pytest.raises(AllowListError, match="allowed_calling_aes"):
        AllowList(["CT1", bad])


def test_normalise_ip() -> None:
    assert normalise_ip("::ffff:10.1.2.3") == "10.1.2.3"
    assert normalise_ip("fe80::1%eth0") == "fe80::1"
    assert normalise_ip("2001:DB8::1") == "2001:db8::1"
    assert normalise_ip("garbage") == "garbage"


def test_slots_limit_release_and_independent_peers(tmp_path: Path) -> None:
    slots = PeerSlots(tmp_path / "peers", 2)
    a = slots.acquire("10.0.0.1")
    b = slots.acquire("10.0.0.1")
    assert a is not None and b is not None and {a.index, b.index} == {0, 1}
    assert slots.acquire("10.0.0.1") is None
    assert slots.acquire("::ffff:10.0.0.1") is None  # the same peer
    other = slots.acquire("10.0.0.2")
    assert other is not None
    assert slots.held("10.0.0.1") == 2
    a.release()
    a.release()  # idempotent
    assert not a.held
    c = slots.acquire("10.0.0.1")
    assert c is not None and c.index == a.index
    # Another PeerSlots on the same root (another actor) sees the same slots.
    assert PeerSlots(tmp_path / "peers", 2).acquire("10.0.0.1") is None
    for slot in (b, c, other):
        slot.release()
    assert slots.held("10.0.0.1") == 0


def test_peer_address_never_becomes_a_path(tmp_path: Path) -> None:
    slots = PeerSlots(tmp_path / "peers", 1)
    hostile = "../../etc/passwd"
    slot = slots.acquire(hostile)
    assert slot is not None
    names = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")]
    assert all("etc" not in n and "passwd" not in n for n in names)
    folder = slots.folder(hostile)
    assert folder.parent == tmp_path / "peers" and len(folder.name) == 32
    slot.release()


def hold_slot_in_subprocess(root: Path, address: str) -> subprocess.Popen[str]:
    """A separate process that takes a slot and then sleeps until killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from pipeline.security.peers import PeerSlots
        slot = PeerSlots(Path({str(root)!r}), 1).acquire({address!r})
        print("held" if slot is not None else "none", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_slot_of_a_killed_process_is_freed(tmp_path: Path) -> None:
    root = tmp_path / "peers"
    slots = PeerSlots(root, 1)
    proc = hold_slot_in_subprocess(root, "10.0.0.9")
    try:
        assert slots.acquire("10.0.0.9") is None  # held by the other process
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up code runs
        proc.wait(timeout=10)
    slot = slots.acquire("10.0.0.9")
    assert slot is not None
    slot.release()
