"""The per-process cache of ready instances' index rows (api.instance_cache)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

import api.instance_cache as instance_cache
from api.instance_cache import ReadyInstances
from pipeline.index.records import InstanceRow
from pipeline.index.schema import PixelState


def _row(uid: str, state: PixelState = PixelState.READY) -> InstanceRow:
    return InstanceRow(
        sop_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid="1.2.3.1", study_instance_uid="1.2.3", patient_id="P",
        instance_number=1, transfer_syntax_uid="1.2.840.10008.1.2.1", rows=512, columns=512,
        number_of_frames=1, size=1, sha256="0" * 64, storage_key="k", received_at=datetime.now(timezone.utc),
        calling_ae="AE", source="dimse", pixel_state=state, pixel_error=None,
    )  # fmt: skip


def test_only_ready_rows_are_kept() -> None:
    cache = ReadyInstances()
    uids = {state: f"1.{n}" for n, state in enumerate(PixelState, start=1)}
    for state, uid in uids.items():
        cache.put(_row(uid, state))
    assert len(cache) == 1 and cache.get(uids[PixelState.READY]) is not None
    assert cache.get(uids[PixelState.PENDING]) is None


def test_rows_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(instance_cache.time, "monotonic", lambda: now[0])
    cache = ReadyInstances(ttl=2.0)
    cache.put(_row("1.1"))
    now[0] += 1.9
    assert cache.get("1.1") is not None
    now[0] += 0.2
    assert cache.get("1.1") is None and len(cache) == 0


def test_least_recently_used_out_first_and_forget() -> None:
    cache = ReadyInstances(size=2)
    cache.put(_row("1.1"))
    cache.put(_row("1.2"))
    assert cache.get("1.1") is not None  # 1.2 is now the least recently used
    cache.put(_row("1.3"))
    assert cache.get("1.2") is None and cache.get("1.1") is not None and cache.get("1.3") is not None
    cache.forget("1.1")
    assert cache.get("1.1") is None
    # A newer row replaces the one kept.
    cache.put(dataclasses.replace(_row("1.3"), storage_key="k2"))
    assert cache.get("1.3").storage_key == "k2"  # type: ignore[union-attr]


def test_a_ttl_of_zero_keeps_nothing() -> None:
    cache = ReadyInstances(ttl=0)
    cache.put(_row("1.1"))
    assert len(cache) == 0
