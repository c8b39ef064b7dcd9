"""The index contract: one suite, run through :class:`SqlIndex` on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from pipeline.config import DuplicatePolicy
from pipeline.errors import DuplicateInstance
from pipeline.index import Index, SqlIndex, migrate
from pipeline.index.records import (
    InstanceAttributes,
    InstanceRow,
    ParsedHeader,
    PatientAttributes,
    Provenance,
    RecordOutcome,
    SeriesAttributes,
    SeriesRow,
    StoredBlob,
    StudyAttributes,
)
from pipeline.index.schema import PixelState, WorkState, work_items
from pipeline.storage.blobs import new_storage_key

CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
EXPLICIT_LE = "1.2.840.10008.1.2.1"

_counter = iter(range(1, 1_000_000))


def uid(prefix: str = "1.2.826.0.1.3680043.10.1") -> str:
    return f"{prefix}.{next(_counter)}"


def header(
    *,
    patient_id: str = "PAT-1",
    patient_name: str = "Doe^Jane",
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    modality: str = "CT",
    sop_class: str = CT,
    instance_number: int | None = 1,
    study_date: str = "20240115",
    accession: str = "ACC-1",
    pixels: bool = True,
) -> ParsedHeader:
    return ParsedHeader(
        patient=PatientAttributes(
            patient_id=patient_id,
            patient_name=patient_name,
            patient_birth_date="19700101",
            patient_sex="F",
        ),
        study=StudyAttributes(
            study_instance_uid=study_uid,
            study_date=study_date,
            study_time="101500",
            accession_number=accession,
            study_id="S1",
            study_description="Head",
            referring_physician_name="Who^Doctor",
        ),
        series=SeriesAttributes(
            series_instance_uid=series_uid,
            modality=modality,
            series_number=3,
            series_description="Axial",
        ),
        instance=InstanceAttributes(
            sop_instance_uid=sop_uid or uid(),
            sop_class_uid=sop_class,
            instance_number=instance_number,
            rows=512 if pixels else None,
            columns=256 if pixels else None,
            number_of_frames=1 if pixels else None,
            bits_allocated=16 if pixels else None,
            photometric_interpretation="MONOCHROME2" if pixels else "",
            has_pixel_data=pixels,
        ),
    )


def blob(content: bytes = b"", size: int = 1000) -> StoredBlob:
    digest = hashlib.sha256(content or new_storage_key().encode()).hexdigest()
    return StoredBlob(new_storage_key(), size, digest, EXPLICIT_LE)


PROV = Provenance(source="dimse", calling_ae="MODALITY1")


def instance_of(index: SqlIndex, sop_instance_uid: str) -> InstanceRow:
    row = index.get_instance(sop_instance_uid)
    assert row is not None
    return row


def series_of(index: SqlIndex, series_instance_uid: str) -> SeriesRow:
    row = index.get_series(series_instance_uid)
    assert row is not None
    return row


@pytest.fixture
def index(index_url: str) -> Iterator[SqlIndex]:
    migrate(index_url)
    idx = SqlIndex(index_url)
    yield idx
    idx.close()


def test_sql_index_satisfies_the_protocol(index: SqlIndex) -> None:
    assert isinstance(index, Index)


# -- recording and reading ------------------------------------------------------


def test_record_creates_patient_study_series_instance(index: SqlIndex) -> None:
    study_uid, series_uid = uid(), uid()
    received = datetime(2024, 1, 15, 10, 30, 0, 123456, tzinfo=timezone.utc)
    h = header(study_uid=study_uid, series_uid=series_uid, instance_number=7)
    b = blob(b"one", size=1234)
    result = index.record_instance(
        h, b, Provenance("stow", "SENDER", received), DuplicatePolicy.KEEP
    )
    assert result.outcome is RecordOutcome.STORED
    assert result.orphaned_key is None

    inst = index.get_instance(h.instance.sop_instance_uid)
    assert inst is not None
    assert inst.sop_instance_uid == h.instance.sop_instance_uid
    assert inst.sop_class_uid == CT
    assert inst.series_instance_uid == series_uid
    assert inst.study_instance_uid == study_uid
    assert inst.patient_id == "PAT-1"
    assert inst.instance_number == 7
    assert inst.transfer_syntax_uid == EXPLICIT_LE
    assert (inst.rows, inst.columns, inst.number_of_frames) == (512, 256, 1)
    assert inst.size == 1234
    assert inst.sha256 == b.sha256
    assert inst.storage_key == b.storage_key
    assert inst.source == "stow"
    assert inst.calling_ae == "SENDER"
    assert inst.pixel_state is PixelState.PENDING
    assert inst.pixel_error is None
    # The same instant, and an aware datetime, on every backend.
    assert inst.received_at.tzinfo is not None
    assert inst.received_at == received

    ser = index.get_series(series_uid)
    assert ser is not None
    assert ser.study_instance_uid == study_uid
    assert (ser.modality, ser.series_number, ser.series_description) == ("CT", 3, "Axial")
    assert ser.number_of_instances == 1

    st = index.get_study(study_uid)
    assert st is not None
    assert st.patient_id == "PAT-1"
    assert st.patient_name == "Doe^Jane"
    assert (st.patient_birth_date, st.patient_sex) == ("19700101", "F")
    assert (st.study_date, st.study_time) == ("20240115", "101500")
    assert (st.accession_number, st.study_id) == ("ACC-1", "S1")
    assert st.study_description == "Head"
    assert st.referring_physician_name == "Who^Doctor"
    assert st.modalities_in_study == ("CT",)
    assert (st.number_of_series, st.number_of_instances) == (1, 1)

    c = index.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (1, 1, 1, 1)
    assert c.bytes == 1234
    assert c.pixel_states == {"pending": 1}


def test_missing_rows_are_none(index: SqlIndex) -> None:
    assert index.get_instance("1.2.3") is None
    assert index.get_series("1.2.3") is None
    assert index.get_study("1.2.3") is None
    assert index.list_instances(study_instance_uid="1.2.3") == []
    assert index.search_studies(patient_id="nobody") == []
    c = index.counts()
    assert (c.patients, c.studies, c.series, c.instances, c.bytes) == (0, 0, 0, 0, 0)
    assert c.work == {}


def test_list_instances_orders_by_instance_number(index: SqlIndex) -> None:
    study_uid, s1, s2 = uid(), uid(), uid()
    # Recorded out of order; one without an Instance Number (listed last).
    for number in (3, None, 1, 10, 2):
        index.record_instance(
            header(study_uid=study_uid, series_uid=s1, instance_number=number),
            blob(),
            PROV,
            DuplicatePolicy.KEEP,
        )
    index.record_instance(
        header(study_uid=study_uid, series_uid=s2, instance_number=5, modality="SR", pixels=False),
        blob(),
        PROV,
        DuplicatePolicy.KEEP,
    )
    in_series = index.list_instances(series_instance_uid=s1)
    assert [i.instance_number for i in in_series] == [1, 2, 3, 10, None]
    assert {i.series_instance_uid for i in in_series} == {s1}

    in_study = index.list_instances(study_instance_uid=study_uid)
    assert [i.instance_number for i in in_study] == [1, 2, 3, 5, 10, None]
    both = index.list_instances(study_instance_uid=study_uid, series_instance_uid=s2)
    assert [i.instance_number for i in both] == [5]
    assert index.list_instances(study_instance_uid=uid(), series_instance_uid=s2) == []


def test_counts_and_modalities_per_series_and_study(index: SqlIndex) -> None:
    study_uid, ct_series, sr_series, other_study = uid(), uid(), uid(), uid()
    for n in range(3):
        index.record_instance(
            header(study_uid=study_uid, series_uid=ct_series, instance_number=n),
            blob(),
            PROV,
            DuplicatePolicy.KEEP,
        )
    for n in range(2):
        index.record_instance(
            header(
                study_uid=study_uid,
                series_uid=sr_series,
                modality="SR",
                sop_class=SR,
                instance_number=n,
                pixels=False,
            ),
            blob(),
            PROV,
            DuplicatePolicy.KEEP,
        )
    index.record_instance(
        header(study_uid=other_study, series_uid=uid(), modality="MR", accession="ACC-2"),
        blob(),
        PROV,
        DuplicatePolicy.KEEP,
    )

    assert series_of(index, ct_series).number_of_instances == 3
    assert series_of(index, sr_series).number_of_instances == 2
    st = index.get_study(study_uid)
    assert st is not None
    assert st.number_of_series == 2
    assert st.number_of_instances == 5
    assert st.modalities_in_study == ("CT", "SR")
    other = index.get_study(other_study)
    assert other is not None
    assert (other.number_of_series, other.number_of_instances) == (1, 1)
    assert other.modalities_in_study == ("MR",)

    c = index.counts()
    # Same patient id and issuer: one patient for both studies.
    assert (c.patients, c.studies, c.series, c.instances) == (1, 2, 3, 6)
    assert c.bytes == 6000
    assert c.pixel_states == {"pending": 4, "none": 2}


def test_search_studies(index: SqlIndex) -> None:
    a, b, c_, d = uid(), uid(), uid(), uid()
    rows = [
        (a, "PAT-A", "ACC-1", "20230101"),
        (b, "PAT-A", "ACC-2", "20230615"),
        (c_, "PAT-B", "ACC-3", "20240101"),
        (d, "PAT-C", "ACC-4", "20241231"),
    ]
    for study_uid, patient, accession, date in rows:
        index.record_instance(
            header(
                study_uid=study_uid,
                series_uid=uid(),
                patient_id=patient,
                accession=accession,
                study_date=date,
            ),
            blob(),
            PROV,
            DuplicatePolicy.KEEP,
        )

    def found(**kw: object) -> list[str]:
        return [s.study_instance_uid for s in index.search_studies(**kw)]  # type: ignore[arg-type]

    assert found() == [a, b, c_, d]
    assert found(patient_id="PAT-A") == [a, b]
    assert found(patient_id="PAT-B") == [c_]
    assert found(patient_id="PAT") == []  # exact match, not a prefix
    assert found(accession_number="ACC-3") == [c_]
    assert found(patient_id="PAT-A", accession_number="ACC-3") == []
    # Date ranges are inclusive at both ends (PS3.4 C.2.2.2.5).
    assert found(study_date_from="20230615", study_date_to="20240101") == [b, c_]
    assert found(study_date_from="20240101") == [c_, d]
    assert found(study_date_to="20230101") == [a]
    assert found(study_date_from="20250101") == []
    # Paging.
    assert found(limit=2) == [a, b]
    assert found(limit=2, offset=2) == [c_, d]
    assert found(limit=2, offset=3) == [d]
    assert found(offset=4) == []
    assert found(patient_id="PAT-A", limit=1, offset=1) == [b]
    row = index.search_studies(accession_number="ACC-4")[0]
    assert (row.patient_id, row.study_date, row.number_of_instances) == ("PAT-C", "20241231", 1)


# -- duplicates -----------------------------------------------------------------


def _work_rows(index: SqlIndex) -> list[tuple[str, str | None]]:
    with index._engine.connect() as conn:  # noqa: SLF001 - a white-box look at the queue
        rows = conn.execute(
            select(work_items.c.state, work_items.c.error).order_by(work_items.c.pk)
        ).all()
    return [(WorkState(r.state).value, r.error) for r in rows]


@pytest.fixture
def stored(index: SqlIndex) -> tuple[ParsedHeader, StoredBlob]:
    h = header(study_uid=uid(), series_uid=uid())
    b = blob(b"first version")
    assert index.record_instance(h, b, PROV, DuplicatePolicy.KEEP).outcome is RecordOutcome.STORED
    return h, b


@pytest.mark.parametrize("policy", list(DuplicatePolicy))
def test_identical_resend_changes_nothing(
    index: SqlIndex, stored: tuple[ParsedHeader, StoredBlob], policy: DuplicatePolicy
) -> None:
    h, first = stored
    again = StoredBlob(new_storage_key(), first.size, first.sha256, first.transfer_syntax_uid)
    result = index.record_instance(h, again, PROV, policy)
    assert result.outcome is RecordOutcome.IDENTICAL
    assert result.orphaned_key == again.storage_key
    assert instance_of(index, h.instance.sop_instance_uid).storage_key == first.storage_key
    assert index.counts().instances == 1
    assert index.counts().work == {"decode": {"pending": 1}}


def test_keep_policy_keeps_the_first_copy(
    index: SqlIndex, stored: tuple[ParsedHeader, StoredBlob]
) -> None:
    h, first = stored
    other = blob(b"second version")
    result = index.record_instance(h, other, PROV, DuplicatePolicy.KEEP)
    assert result.outcome is RecordOutcome.KEPT_EXISTING
    assert result.orphaned_key == other.storage_key
    inst = index.get_instance(h.instance.sop_instance_uid)
    assert inst is not None
    assert (inst.storage_key, inst.sha256) == (first.storage_key, first.sha256)
    assert index.counts().work == {"decode": {"pending": 1}}


def test_replace_policy_replaces_and_requeues(
    index: SqlIndex, stored: tuple[ParsedHeader, StoredBlob]
) -> None:
    h, first = stored
    other = blob(b"second version", size=2222)
    before = index.get_study(h.study.study_instance_uid)
    result = index.record_instance(h, other, PROV, DuplicatePolicy.REPLACE)
    assert result.outcome is RecordOutcome.REPLACED
    assert result.orphaned_key == first.storage_key

    inst = index.get_instance(h.instance.sop_instance_uid)
    assert inst is not None
    assert (inst.storage_key, inst.sha256, inst.size) == (other.storage_key, other.sha256, 2222)
    assert inst.pixel_state is PixelState.PENDING
    # Counts unchanged: still one instance.
    assert index.get_study(h.study.study_instance_uid) == before
    assert series_of(index, h.series.series_instance_uid).number_of_instances == 1
    c = index.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (1, 1, 1, 1)
    assert c.bytes == 2222
    # The old version's pending item is superseded, a new one is queued.
    assert _work_rows(index) == [("done", "superseded"), ("pending", None)]
    assert c.work == {"decode": {"done": 1, "pending": 1}}
    claimed = index.claim_work("decode", 10)
    assert [w.storage_key for w in claimed] == [other.storage_key]


def test_replace_supersedes_a_claimed_item(
    index: SqlIndex, stored: tuple[ParsedHeader, StoredBlob]
) -> None:
    h, _ = stored
    assert len(index.claim_work("decode", 10)) == 1
    index.record_instance(h, blob(b"v2"), PROV, DuplicatePolicy.REPLACE)
    assert _work_rows(index) == [("done", "superseded"), ("pending", None)]


def test_replace_into_another_series_moves_the_counts(
    index: SqlIndex, stored: tuple[ParsedHeader, StoredBlob]
) -> None:
    h, _ = stored
    new_series = uid()
    moved = replace(h, series=replace(h.series, series_instance_uid=new_series, modality="MR"))
    result = index.record_instance(moved, blob(b"v2"), PROV, DuplicatePolicy.REPLACE)
    assert result.outcome is RecordOutcome.REPLACED
    assert series_of(index, h.series.series_instance_uid).number_of_instances == 0
    assert series_of(index, new_series).number_of_instances == 1
    st = index.get_study(h.study.study_instance_uid)
    assert st is not None
    assert st.number_of_instances == 1
    assert instance_of(index, h.instance.sop_instance_uid).series_instance_uid == new_series


def test_reject_policy_raises(index: SqlIndex, stored: tuple[ParsedHeader, StoredBlob]) -> None:
    h, first = stored
    with pytest.raises(DuplicateInstance) as err:
        index.record_instance(h, blob(b"second version"), PROV, DuplicatePolicy.REJECT)
    assert err.value.dimse_status == 0x0111
    inst = index.get_instance(h.instance.sop_instance_uid)
    assert inst is not None and inst.storage_key == first.storage_key
    assert index.counts().instances == 1
    assert index.counts().work == {"decode": {"pending": 1}}


# -- pixel state and work queue -------------------------------------------------


def test_instance_without_pixel_data_gets_no_work(index: SqlIndex) -> None:
    h = header(study_uid=uid(), series_uid=uid(), modality="SR", sop_class=SR, pixels=False)
    index.record_instance(h, blob(), PROV, DuplicatePolicy.KEEP)
    inst = index.get_instance(h.instance.sop_instance_uid)
    assert inst is not None and inst.pixel_state is PixelState.NONE
    assert index.counts().work == {}
    assert index.counts().pixel_states == {"none": 1}
    assert index.claim_work("decode", 10) == []


def test_one_work_item_per_stage(index: SqlIndex) -> None:
    h = header(study_uid=uid(), series_uid=uid())
    index.record_instance(h, blob(), PROV, DuplicatePolicy.KEEP, stages=("decode", "annotate"))
    assert index.counts().work == {"decode": {"pending": 1}, "annotate": {"pending": 1}}
    assert [w.stage for w in index.claim_work("annotate", 10)] == ["annotate"]
    assert index.counts().work == {"decode": {"pending": 1}, "annotate": {"claimed": 1}}


def _record_many(index: SqlIndex, n: int) -> list[str]:
    study_uid, series_uid = uid(), uid()
    sops = []
    for i in range(n):
        h = header(study_uid=study_uid, series_uid=series_uid, instance_number=i)
        index.record_instance(h, blob(), PROV, DuplicatePolicy.KEEP)
        sops.append(h.instance.sop_instance_uid)
    return sops


def test_claim_work_claims_up_to_the_limit_once(index: SqlIndex) -> None:
    sops = _record_many(index, 5)
    first = index.claim_work("decode", 3)
    assert [w.sop_instance_uid for w in first] == sops[:3]
    assert all(w.state is WorkState.CLAIMED and w.attempts == 1 for w in first)
    assert all(w.stage == "decode" for w in first)
    keys = {i.sop_instance_uid: i.storage_key for i in index.list_instances()}
    assert all(w.storage_key == keys[w.sop_instance_uid] for w in first)
    assert index.counts().work == {"decode": {"claimed": 3, "pending": 2}}

    second = index.claim_work("decode", 10)
    assert [w.sop_instance_uid for w in second] == sops[3:]
    assert index.claim_work("decode", 10) == []
    assert index.claim_work("other-stage", 10) == []
    assert index.counts().work == {"decode": {"claimed": 5}}


def test_expired_lease_is_claimable_again(index: SqlIndex) -> None:
    _record_many(index, 2)
    first = index.claim_work("decode", 1, lease_seconds=0.3)
    held = index.claim_work("decode", 1, lease_seconds=300)
    assert len(first) == len(held) == 1
    assert index.claim_work("decode", 10) == []  # both leases still running
    time.sleep(0.6)
    again = index.claim_work("decode", 10)
    assert [w.pk for w in again] == [first[0].pk]  # the long lease still holds
    assert again[0].attempts == 2
    assert index.counts().work == {"decode": {"claimed": 2}}


def test_complete_and_fail_work(index: SqlIndex) -> None:
    _record_many(index, 4)
    items = index.claim_work("decode", 4)
    index.complete_work([items[0].pk, items[1].pk])
    index.fail_work(items[2].pk, "cannot decode: JPEG error")
    index.complete_work([])  # nothing to do, no error
    assert index.counts().work == {"decode": {"done": 2, "failed": 1, "claimed": 1}}
    with index._engine.connect() as conn:  # noqa: SLF001
        error = conn.execute(
            select(work_items.c.error).where(work_items.c.pk == items[2].pk)
        ).scalar_one()
    assert error == "cannot decode: JPEG error"
    # Done and failed items are never handed out again, even with expired leases.
    time.sleep(0.05)
    assert index.claim_work("decode", 10, lease_seconds=0) == []


# -- concurrency ----------------------------------------------------------------


def _record_worker(  # type: ignore[no-untyped-def]
    url: str, study_uid: str, series_uid: str, worker: int, barrier, results
) -> None:
    try:
        idx = SqlIndex(url)
        try:
            barrier.wait(timeout=120)
            outcomes = []
            for n in range(25):
                h = header(
                    study_uid=study_uid,
                    series_uid=series_uid,
                    sop_uid=f"{series_uid}.{worker}.{n}",
                    instance_number=worker * 100 + n,
                )
                outcomes.append(idx.record_instance(h, blob(), PROV, DuplicatePolicy.KEEP).outcome)
            results.put((worker, [o.value for o in outcomes]))
        finally:
            idx.close()
    except BaseException:
        results.put((worker, traceback.format_exc()))


def test_concurrent_processes_create_one_study(index: SqlIndex, index_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    study_uid, series_uid = uid(), uid()
    procs = [
        ctx.Process(
            target=_record_worker, args=(index_url, study_uid, series_uid, w, barrier, results)
        )
        for w in range(4)
    ]
    for p in procs:
        p.start()
    try:
        got = dict(results.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    errors = {w: r for w, r in got.items() if isinstance(r, str)}
    assert errors == {}
    assert all(r == ["stored"] * 25 for r in got.values())
    assert all(p.exitcode == 0 for p in procs)

    c = index.counts()
    assert (c.patients, c.studies, c.series, c.instances) == (1, 1, 1, 100)
    ser = index.get_series(series_uid)
    assert ser is not None and ser.number_of_instances == 100
    st = index.get_study(study_uid)
    assert st is not None
    assert (st.number_of_series, st.number_of_instances) == (1, 100)
    assert st.modalities_in_study == ("CT",)
    assert len(index.list_instances(series_instance_uid=series_uid)) == 100
    assert c.work == {"decode": {"pending": 100}}




def test_stored_blob_lookup(index: SqlIndex) -> None:
    assert index.stored_blob("1.2.3.4") is None
    h = header(study_uid="1.2.826.1", series_uid="1.2.826.1.1")
    stored = blob(b"the dataset")
    index.record_instance(h, stored, PROV, DuplicatePolicy.KEEP)
    assert index.stored_blob(h.instance.sop_instance_uid) == stored


def test_release_claims(index: SqlIndex) -> None:
    h = header(study_uid="1.2.826.2", series_uid="1.2.826.2.1")
    index.record_instance(h, blob(b"x"), PROV, DuplicatePolicy.KEEP)
    (item,) = index.claim_work("decode", 10, lease_seconds=3600)
    assert index.claim_work("decode", 10) == []
    assert index.release_claims() == 1
    (again,) = index.claim_work("decode", 10)
    assert again.pk == item.pk and again.attempts == 2


def test_pixel_outcomes_and_requeue(index: SqlIndex) -> None:
    ok = header(study_uid="1.2.826.3", series_uid="1.2.826.3.1")
    bad = header(study_uid="1.2.826.3", series_uid="1.2.826.3.1", instance_number=2)
    for h in (ok, bad):
        index.record_instance(h, blob(h.instance.sop_instance_uid.encode()), PROV, DuplicatePolicy.KEEP)
    items = {i.sop_instance_uid: i for i in index.claim_work("decode", 10)}
    index.finish_pixel_work(items[ok.instance.sop_instance_uid].pk, ok.instance.sop_instance_uid, PixelState.READY)
    index.finish_pixel_work(
        items[bad.instance.sop_instance_uid].pk, bad.instance.sop_instance_uid, PixelState.FAILED, "JPEG bad"
    )
    counts = index.counts()
    assert counts.pixel_states == {"ready": 1, "failed": 1}
    assert counts.work["decode"] == {"done": 1, "failed": 1}
    assert index.pixel_failures() == [(bad.instance.sop_instance_uid, "JPEG bad")]
    assert index.requeue_pixels("decode", (PixelState.FAILED,)) == 1
    assert instance_of(index, bad.instance.sop_instance_uid).pixel_state is PixelState.PENDING
    assert [i.sop_instance_uid for i in index.claim_work("decode", 10)] == [bad.instance.sop_instance_uid]
    assert index.requeue_pixels("decode", (PixelState.FAILED, PixelState.READY)) == 1
