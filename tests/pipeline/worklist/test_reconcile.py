"""Reconciliation on a real index: each stored study is linked to its order, or listed.

Studies are real CT slices of the shared corpus, re-identified as a modality
would send them (the keys it copied from the worklist, or what an operator
typed), stored through the runtime's :class:`IngestService`, whose
:class:`StudyLinker` links them in its background thread (``drain()`` waits).
Proven here: the three automatic rules and their order of preference, the
reasons of the reconciliation list, cancelled orders never matching, a linked
study staying linked (and corrected) as more instances arrive, the manual link
and re-link with the received values kept, its refusals, the sweep that
catches a study a crash left unlooked-at, and the same on PostgreSQL.
"""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.errors import InvalidState, NotFound
from pipeline.index import SqlIndex, migrate
from pipeline.index.records import Provenance
from pipeline.index.schema import LinkState, patients, study_links
from pipeline.ingest.service import IngestService
from pipeline.runtime import Runtime
from pipeline.storage.blobs import open_blob_store
from pipeline.worklist import reconcile
from pipeline.worklist.reconcile import CORRECTED, Reconciler
from pipeline.worklist.registration import Order, ProcedureRequest, RegistrationService
from pipeline.worklist.waitinglist import WaitingFilter, WaitingList, WorkflowState
from tests.corpus import SERIES
from tests.pipeline.index.conftest import reset_postgres

DAY = datetime(2026, 12, 4, 9, 30)

#: What an operator typed on a device without a worklist.
TYPED = {
    "PatientID": "TYPED-7",
    "PatientName": "DOE^J",
    "PatientBirthDate": "",
    "PatientSex": "O",
    "AccessionNumber": "",
    "ReferringPhysicianName": "",
    "StudyDate": "20261204",
}


@pytest.fixture
def ct(dicom_data: Path) -> list[Path]:
    return sorted((dicom_data / SERIES["ct"]).iterdir())[:4]


def part10(path: Path, study: str, series: str | None = None, **attrs: str) -> bytes:
    """A corpus slice as sent for ``study``: new series/instance UIDs, ``attrs`` over :data:`TYPED`."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = study
    # One series per study unless told: a UID derived from the study's.
    ds.SeriesInstanceUID = series or generate_uid(entropy_srcs=[study])
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in {**TYPED, **attrs}.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def send(rt: Runtime, path: Path, study: str | None = None, **attrs: str) -> str:
    """Store a slice through the runtime's ingest, wait for the linker; the study's UID."""
    study = study or generate_uid()
    rt.ingest.store_part10(part10(path, study, **attrs), Provenance("dimse", calling_ae="US01"))
    assert rt.ingest.linker is not None and rt.ingest.linker.drain()
    return study


def register(reg: RegistrationService, pid: str = "REG-1", **kw: object) -> int:
    fields = {"patient_name": "Doe^Jane", "patient_birth_date": date(1970, 5, 6), "patient_sex": "F", **kw}
    return reg.register_patient(pid, actor="user:desk", **fields).patient.id  # type: ignore[arg-type]


def order(reg: RegistrationService, patient: int, modality: str = "CT", start: datetime = DAY, **kw: object) -> Order:
    kw.setdefault("referring_physician_name", "Ref^Rita")
    return reg.create_order(patient, [ProcedureRequest(modality, start)], actor="user:desk", **kw)  # type: ignore[arg-type]


def index_patient_ids(rt: Runtime) -> list[str]:
    with rt.index.engine.connect() as conn:
        return sorted(conn.execute(select(patients.c.patient_id)).scalars())


def link_actions(reg: RegistrationService, order_id: int) -> list[tuple[str, str]]:
    return [(h.actor, h.action) for h in reg.order_history(order_id) if h.action == "link"]


# -- automatic links --------------------------------------------------------------------


def test_by_study_instance_uid(runtime: Runtime, ct: list[Path]) -> None:
    reg = runtime.registration
    o = order(reg, register(reg))
    # The modality copied the Study Instance UID and patient from the worklist,
    # but not the accession number; the name is in other case.
    uid = send(runtime, ct[0], o.procedures[0].study_instance_uid, PatientID="REG-1", PatientName="DOE^JANE")
    link = Reconciler(runtime.index).link_of(uid)
    assert link is not None
    assert (link.state, link.order_id, link.method, link.actor) == (LinkState.LINKED, o.id, "study_uid", "system")
    study = runtime.index.get_study(uid)
    assert study is not None
    assert (study.patient_id, study.patient_name, study.patient_birth_date, study.patient_sex) == (
        "REG-1", "Doe^Jane", "19700506", "F")  # fmt: skip
    assert (study.accession_number, study.referring_physician_name) == (o.accession_number, "Ref^Rita")
    assert link.received["patient_name"] == "DOE^JANE" and link.received["accession_number"] == ""
    assert link_actions(reg, o.id) == [("system", "link")]


def test_by_accession_number_over_patient_modality_date(runtime: Runtime, ct: list[Path]) -> None:
    reg = runtime.registration
    jane = register(reg)
    wanted = order(reg, jane, accession_number="ACC-42")
    order(reg, jane)  # same patient, modality and day: rule 3 alone could not choose
    uid = send(runtime, ct[0], AccessionNumber="ACC-42", PatientID="REG-1")
    link = Reconciler(runtime.index).link_of(uid)
    assert link is not None and (link.order_id, link.method) == (wanted.id, "accession")
    # The typed ID is corrected; its patient row went with its only study.
    uid2 = send(runtime, ct[1], AccessionNumber="ACC-42")
    assert Reconciler(runtime.index).link_of(uid2).method == "accession"  # type: ignore[union-attr]
    assert index_patient_ids(runtime) == ["REG-1"]
    assert Reconciler(runtime.index).link_of(uid2).received["patient_id"] == "TYPED-7"  # type: ignore[union-attr]


def test_by_patient_modality_and_date_when_exactly_one_order_fits(runtime: Runtime, ct: list[Path]) -> None:
    reg = runtime.registration
    jane = register(reg, issuer_of_patient_id="HOSP")
    ct_today = order(reg, jane)
    order(reg, jane, "MR")  # another modality
    order(reg, jane, start=datetime(2026, 12, 5, 9, 0))  # another day
    uid = send(runtime, ct[0], PatientID="REG-1")  # no issuer sent: any issuer's patient
    link = Reconciler(runtime.index).link_of(uid)
    assert link is not None and (link.order_id, link.method) == (ct_today.id, "patient_modality_date")
    assert runtime.index.get_study(uid).accession_number == ct_today.accession_number  # type: ignore[union-attr]
    # A study naming another issuer is not that patient's.
    other = send(runtime, ct[1], PatientID="REG-1", IssuerOfPatientID="ELSEWHERE")
    assert Reconciler(runtime.index).link_of(other).state is LinkState.UNMATCHED  # type: ignore[union-attr]


def test_several_candidates_or_none_go_on_the_list(runtime: Runtime, ct: list[Path]) -> None:
    reg = runtime.registration
    jane = register(reg)
    first, second = order(reg, jane), order(reg, jane)
    several = send(runtime, ct[0], PatientID="REG-1")
    nobody = send(runtime, ct[1], PatientID="WALK-IN", AccessionNumber="NOT-AN-ORDER")
    rec = Reconciler(runtime.index)
    assert "several orders" in rec.link_of(several).reason  # type: ignore[union-attr]
    assert "no order matches" in rec.link_of(nobody).reason  # type: ignore[union-attr]
    listed = rec.unmatched()
    assert [u.study_instance_uid for u in listed] == [several, nobody]  # longest waiting first
    walk_in = listed[1]
    # The list shows the study as received, and who sent it.
    assert (walk_in.patient_id, walk_in.accession_number, walk_in.calling_ae) == ("WALK-IN", "NOT-AN-ORDER", "US01")
    assert (walk_in.modalities_in_study, walk_in.number_of_instances) == ("CT", 1)
    assert [u.study_instance_uid for u in rec.unmatched(limit=1, offset=1)] == [nobody]
    assert link_actions(reg, first.id) == [] and link_actions(reg, second.id) == []


def test_cancelled_orders_never_match(runtime: Runtime, ct: list[Path]) -> None:
    reg = runtime.registration
    jane = register(reg)
    gone = order(reg, jane, accession_number="ACC-C")
    reg.cancel_order(gone.id, actor="user:desk")
    rec = Reconciler(runtime.index)
    for attrs in ({"StudyUID": gone.procedures[0].study_instance_uid}, {"AccessionNumber": "ACC-C"},
                  {"PatientID": "REG-1"}):  # fmt: skip
        study = attrs.pop("StudyUID", None)
        uid = send(runtime, ct[0], study, **attrs)
        assert rec.link_of(uid).state is LinkState.UNMATCHED, attrs  # type: ignore[union-attr]
    # Beside an open order of the same patient, modality and day, it is no candidate.
    open_ = order(reg, jane)
    uid = send(runtime, ct[1], PatientID="REG-1")
    assert rec.link_of(uid).order_id == open_.id  # type: ignore[union-attr]


def test_later_instances_and_series_do_not_undo_the_link(
    runtime: Runtime, settings: Settings, ct: list[Path]
) -> None:
    reg = runtime.registration
    o = order(reg, register(reg), accession_number="ACC-1")
    uid = send(runtime, ct[0], AccessionNumber="ACC-1")
    rec = Reconciler(runtime.index)
    first = rec.link_of(uid)
    # Same series, then a new series, with the typed patient and another accession number...
    send(runtime, ct[1], uid, AccessionNumber="ACC-1")
    runtime.ingest.store_part10(part10(ct[2], uid, generate_uid(), AccessionNumber="OOPS"), Provenance("import"))
    # ...and one through another process's ingest (its linker has seen nothing).
    other = IngestService.from_settings(settings, SqlIndex(settings.resolved_index_url), runtime.blobs)
    other.store_part10(part10(ct[3], uid, generate_uid()), Provenance("import"))
    assert other.linker is not None and other.linker.drain()
    other.index.close()
    study = runtime.index.get_study(uid)
    assert study is not None and study.number_of_instances == 4 and study.number_of_series == 3
    assert (study.patient_id, study.patient_name, study.accession_number) == ("REG-1", "Doe^Jane", "ACC-1")
    assert index_patient_ids(runtime) == ["REG-1"]  # the typed patient was not re-created
    assert rec.link_of(uid) == first
    assert link_actions(reg, o.id) == [("system", "link")]


# -- by hand ----------------------------------------------------------------------------


def test_manual_link_corrects_the_index_and_keeps_the_received_values(runtime: Runtime, ct: list[Path]) -> None:
    reg = runtime.registration
    jane = order(reg, register(reg), accession_number="ACC-J")
    john = order(reg, register(reg, "REG-2", patient_name="Roe^John", patient_sex="M",
                                patient_birth_date=date(1955, 1, 2)),
                 accession_number="ACC-R", referring_physician_name="Other^Olga")  # fmt: skip
    typed = {"PatientID": "WALK-IN", "PatientName": "Smith^J", "AccessionNumber": "X-99",
             "ReferringPhysicianName": "Who^Ever", "IssuerOfPatientID": "ER"}  # fmt: skip
    uid = send(runtime, ct[0], **typed)
    rec = Reconciler(runtime.index)
    assert rec.link_of(uid).state is LinkState.UNMATCHED  # type: ignore[union-attr]

    link = rec.link(uid, jane.id, actor="user:desk")
    assert (link.state, link.order_id, link.method, link.actor, link.reason) == (
        LinkState.LINKED, jane.id, "manual", "user:desk", "")  # fmt: skip
    received = {"patient_id": "WALK-IN", "issuer_of_patient_id": "ER", "patient_name": "Smith^J",
                "patient_birth_date": "", "patient_sex": "O", "accession_number": "X-99",
                "referring_physician_name": "Who^Ever"}  # fmt: skip
    assert link.received == received and set(received) == set(CORRECTED)
    study = runtime.index.get_study(uid)
    assert study is not None
    assert (study.patient_id, study.patient_name, study.patient_birth_date, study.patient_sex) == (
        "REG-1", "Doe^Jane", "19700506", "F")  # fmt: skip
    assert (study.accession_number, study.referring_physician_name) == ("ACC-J", "Ref^Rita")
    assert rec.unmatched() == [] and index_patient_ids(runtime) == ["REG-1"]

    # A wrong link is corrected by linking again: the first look's values stay.
    relinked = rec.link(uid, john.id, actor="user:chief")
    assert (relinked.order_id, relinked.actor, relinked.received) == (john.id, "user:chief", received)
    study = runtime.index.get_study(uid)
    assert study is not None
    assert (study.patient_id, study.patient_name, study.accession_number,
            study.referring_physician_name) == ("REG-2", "Roe^John", "ACC-R", "Other^Olga")  # fmt: skip
    assert index_patient_ids(runtime) == ["REG-2"]
    assert [h.before for h in reg.order_history(john.id) if h.action == "link"] == [{"order_pk": jane.id}]
    # A later instance does not undo a manual link either.
    send(runtime, ct[1], uid, **typed)
    assert runtime.index.get_study(uid).patient_id == "REG-2"  # type: ignore[union-attr]
    assert index_patient_ids(runtime) == ["REG-2"]
    assert rec.link_of(uid).method == "manual"  # type: ignore[union-attr]


def test_link_refusals_change_nothing(runtime: Runtime, ct: list[Path]) -> None:
    reg = runtime.registration
    jane = register(reg)
    gone = order(reg, jane)
    reg.cancel_order(gone.id, actor="user:desk")
    uid = send(runtime, ct[0], PatientID="WALK-IN")
    rec = Reconciler(runtime.index)
    before = rec.link_of(uid)
    with pytest.raises(NotFound, match="study"):
        rec.link("1.2.3.4.5", gone.id, actor="user:desk")
    with pytest.raises(NotFound, match="order"):
        rec.link(uid, 9999, actor="user:desk")
    with pytest.raises(InvalidState, match="cancelled"):
        rec.link(uid, gone.id, actor="user:desk")
    assert rec.link_of(uid) == before and runtime.index.get_study(uid).patient_id == "WALK-IN"  # type: ignore[union-attr]


# -- the sweep ----------------------------------------------------------------------------


def test_the_sweep_links_a_study_stored_while_no_linker_ran(
    runtime: Runtime, settings: Settings, ct: list[Path]
) -> None:
    reg = runtime.registration
    o = order(reg, register(reg), accession_number="ACC-S")
    # A process that crashed between the commit and the link: nothing looked at the study.
    crashed = IngestService.from_settings(settings, runtime.index, runtime.blobs)
    crashed.linker = None  # as IngestService(..., reconcile=False)
    assert IngestService(runtime.index, runtime.blobs, reconcile=False).linker is None
    lost = generate_uid()
    crashed.store_part10(part10(ct[0], lost, AccessionNumber="ACC-S"), Provenance("import"))
    rec = Reconciler(runtime.index)
    assert rec.link_of(lost) is None
    assert rec.reconcile_pending() == 1 and rec.reconcile_pending() == 0
    assert rec.link_of(lost).order_id == o.id  # type: ignore[union-attr]
    assert runtime.index.get_study(lost).patient_id == "REG-1"  # type: ignore[union-attr]
    # The linker's thread sweeps when it starts: a second lost study is linked
    # when the next process notices any study.
    lost2 = generate_uid()
    crashed.store_part10(part10(ct[1], lost2, PatientID="WALK-IN"), Provenance("import"))
    send(runtime, ct[2], PatientID="WALK-IN")
    assert rec.link_of(lost2).state is LinkState.UNMATCHED  # type: ignore[union-attr]


# -- on every backend ---------------------------------------------------------------------


def test_reconcile_and_waiting_list_on_every_backend(index_url: str, tmp_path: Path, ct: list[Path]) -> None:
    """The matching queries, the patient move and the Waiting list's UNION on SQLite and PostgreSQL."""
    migrate(index_url)
    index = SqlIndex(index_url)
    try:
        blobs = open_blob_store(str(tmp_path / "blobs"))
        ingest = IngestService(index, blobs)
        reg = RegistrationService(index, "B{counter:03d}")
        jane = register(reg)
        by_acc = order(reg, jane, accession_number="ACC-B")
        by_pmd = order(reg, jane, "MR")
        waiting = order(reg, register(reg, "REG-2", patient_name="Roe^John"))

        def store(path: Path, **attrs: str) -> str:
            uid = generate_uid()
            ingest.store_part10(part10(path, uid, **attrs), Provenance("import"))
            assert ingest.linker is not None and ingest.linker.drain()
            return uid

        acc = store(ct[0], AccessionNumber="ACC-B")
        pmd = store(ct[1], PatientID="REG-1", Modality="MR")
        walk_in = store(ct[2], PatientID="WALK-IN")
        rec = Reconciler(index)
        assert [rec.link_of(u).order_id for u in (acc, pmd, walk_in)] == [by_acc.id, by_pmd.id, None]  # type: ignore[union-attr]
        with index.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(study_links)).scalar_one() == 3
        assert rec.link(walk_in, waiting.id, actor="user:desk").method == "manual"
        assert index.get_study(walk_in).patient_id == "REG-2"  # type: ignore[union-attr]

        wl = WaitingList(index)
        page = wl.entries(WaitingFilter(patient="doe"), sort="modality", descending=False)
        assert [(e.modality, e.state) for e in page.entries] == [
            ("CT", WorkflowState.ACQUIRED), ("MR", WorkflowState.ACQUIRED)]  # fmt: skip
        assert wl.entries(WaitingFilter(modality="mr")).total == 1
        assert wl.entries(WaitingFilter(states=(WorkflowState.SCHEDULED,))).total == 0
    finally:
        index.close()


def test_a_patient_row_made_meanwhile_by_another_process_is_used(
    postgres_url: str, tmp_path: Path, ct: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, several ingest processes: another one commits the registered
    patient's index row between the look-up and the insert of ours. The
    automatic and the manual link are made all the same (their transaction is
    tried again and finds the row), not left undone nor answered with an error."""
    reset_postgres(postgres_url)
    migrate(postgres_url)
    index = SqlIndex(postgres_url)
    try:
        ingest = IngestService(index, open_blob_store(str(tmp_path / "blobs")), reconcile=False)
        reg = RegistrationService(index, "R{counter:03d}")
        auto = order(reg, register(reg), accession_number="ACC-A")
        manual = order(reg, register(reg, "REG-2", patient_name="Roe^John"))
        real_insert = reconcile.insert

        def racing_insert(table):  # type: ignore[no-untyped-def]
            if table is patients:
                pid = "REG-2" if racing_insert.manual else "REG-1"  # type: ignore[attr-defined]
                with index.engine.begin() as other:  # the other process, committed first
                    other.execute(real_insert(patients).values(
                        patient_id=pid, issuer_of_patient_id="", patient_name="AS^SENT",
                        patient_name_search="AS^SENT", created_at=datetime.now(UTC)))  # fmt: skip
            return real_insert(table)

        racing_insert.manual = False  # type: ignore[attr-defined]
        monkeypatch.setattr(reconcile, "insert", racing_insert)
        rec = Reconciler(index)
        first, second = generate_uid(), generate_uid()
        ingest.store_part10(part10(ct[0], first, AccessionNumber="ACC-A"), Provenance("import"))
        ingest.store_part10(part10(ct[1], second, PatientID="WALK-IN"), Provenance("import"))
        assert rec.reconcile_study(first).order_id == auto.id  # type: ignore[union-attr]
        assert rec.reconcile_study(second).state is LinkState.UNMATCHED  # type: ignore[union-attr]
        racing_insert.manual = True  # type: ignore[attr-defined]
        assert rec.link(second, manual.id, actor="user:desk").order_id == manual.id
        for uid, pid, name in ((first, "REG-1", "Doe^Jane"), (second, "REG-2", "Roe^John")):
            study = index.get_study(uid)
            assert study is not None and (study.patient_id, study.patient_name) == (pid, name)
        with index.engine.connect() as conn:
            assert sorted(conn.execute(select(patients.c.patient_id)).scalars()) == ["REG-1", "REG-2"]
    finally:
        index.close()
