"""Who may associate with the storage SCP, how many at once, and what the audit trail says.

Real peers: dcmtk's echoscu and pynetdicom requestors against a
:class:`DicomIngestServer` in this process. The A-ASSOCIATE-RJ parameters are
those of PS3.8 Table 9-21.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification

from pipeline.config import Settings
from pipeline.ingest.part10 import split_part10
from pipeline.ingest.scp import DicomIngestServer
from pipeline.runtime import Runtime
from pipeline.security.peers import AllowListError
from tests.conftest import require_tool
from tests.corpus import SERIES
from tests.pipeline.security.test_peers import hold_slot_in_subprocess
from tests.pipeline.security.test_tls import DCMTK_ENV, audit_rows, wait_for

SECURITY_ALERT, INSTANCES_TRANSFERRED, NODE_AUTHENTICATION = "110113", "110104", "110126"


@pytest.fixture
def start_server(runtime: Runtime) -> Iterator[Callable[..., DicomIngestServer]]:
    started: list[DicomIngestServer] = []

    def start(s: Settings, **update: object) -> DicomIngestServer:
        srv = DicomIngestServer(s.model_copy(update=update), runtime.ingest, runtime.audit).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def echoscu(settings: Settings, calling: str = "ECHOSCU") -> int:
    cmd = [require_tool("echoscu"), "-aet", calling, "-aec", settings.ae_title]
    return subprocess.run(
        [*cmd, "127.0.0.1", str(settings.dicom_port)], env=DCMTK_ENV, capture_output=True, timeout=60
    ).returncode


def associate(settings: Settings, calling: str = "PYNETDICOM", contexts: tuple[tuple[str, str], ...] = ()) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts])
    ae.acse_timeout = 15
    return ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)


def rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert rj is not None
    return (rj.result, rj.result_source, rj.diagnostic)


# -- the allow-list ------------------------------------------------------------


def test_ae_at_address(start_server: Callable[..., DicomIngestServer], runtime: Runtime, settings: Settings) -> None:
    s = start_server(settings, allowed_calling_aes=["ECHOSCU@127.0.0.1", "CT1@10.9.9.9"]).settings
    assert echoscu(s, "ECHOSCU") == 0
    assert echoscu(s, "CT1") != 0  # listed, but not from this address
    assert echoscu(s, "INTRUDER") != 0
    # The standard answer: rejected-permanent, service-user, calling AE not recognised.
    assert rejection(associate(s, "CT1")) == (1, 1, 3)
    rows = wait_for(lambda: audit_rows(runtime, event_id=SECURITY_ALERT, actor="CT1"))
    assert rows
    row = rows[0]
    assert row["event_type_code"] == NODE_AUTHENTICATION
    assert row["actor_kind"] == "ae"
    assert row["source_address"] == "127.0.0.1"
    assert row["destination"] == s.ae_title
    assert row["outcome"] == 8
    detail = json.loads(str(row["detail"]))
    assert detail["reason"].startswith("calling AE title not allowed")
    assert (detail["result"], detail["source"], detail["diagnostic"]) == (1, 1, 3)
    assert audit_rows(runtime, event_id=SECURITY_ALERT, actor="INTRUDER")
    assert not audit_rows(runtime, event_id=SECURITY_ALERT, actor="ECHOSCU")


def test_ae_at_network(start_server: Callable[..., DicomIngestServer], settings: Settings) -> None:
    s = start_server(settings, allowed_calling_aes=["ECHOSCU@127.0.0.0/8", "CT1@10.0.0.0/24"]).settings
    assert echoscu(s, "ECHOSCU") == 0
    assert echoscu(s, "CT1") != 0


def test_any_ae_from_a_host_and_plain_titles(start_server: Callable[..., DicomIngestServer], settings: Settings) -> None:
    s = start_server(settings, allowed_calling_aes=["*@localhost", "MR1"]).settings
    assert echoscu(s, "WHOEVER") == 0
    assert echoscu(s, "MR1") == 0


def test_bad_entry_fails_at_start(runtime: Runtime, settings: Settings) -> None:
    bad = settings.model_copy(update={"allowed_calling_aes": ["CT1@10.0.0.0/99"]})
    with pytest.raises(AllowListError, match="CT1@10.0.0.0/99"):
        DicomIngestServer(bad, runtime.ingest, runtime.audit)


def test_wrong_called_ae_is_audited(
    start_server: Callable[..., DicomIngestServer], runtime: Runtime, settings: Settings
) -> None:
    """pynetdicom's own refusal (called AE not recognised) frees the slot and is audited too."""
    srv = start_server(settings, max_associations_per_peer=1)
    ae = AE(ae_title="LOST")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="SOMEONEELSE")
    assert rejection(assoc) == (1, 1, 7)
    rows = wait_for(lambda: audit_rows(runtime, event_id=SECURITY_ALERT, actor="LOST"))
    assert rows and "called AE" in json.loads(str(rows[0]["detail"]))["reason"]
    assert wait_for(lambda: srv.peers.held("127.0.0.1") == 0)
    ok = associate(settings)
    assert ok.is_established
    ok.release()


# -- associations per peer -------------------------------------------------------


def test_limit_per_peer(start_server: Callable[..., DicomIngestServer], runtime: Runtime, settings: Settings) -> None:
    srv = start_server(settings, max_associations_per_peer=2)
    first, second = associate(settings), associate(settings)
    try:
        assert first.is_established and second.is_established
        assert srv.peers.held("127.0.0.1") == 2
        third = associate(settings, "THIRD")
        # rejected-transient, service-provider (presentation), local-limit-exceeded.
        assert rejection(third) == (2, 3, 2)
        rows = wait_for(lambda: audit_rows(runtime, event_id=SECURITY_ALERT, actor="THIRD"))
        assert rows
        assert rows[0]["outcome"] == 4  # transient: a minor failure
        assert rows[0]["event_type_code"] == NODE_AUTHENTICATION
        assert "concurrent associations" in json.loads(str(rows[0]["detail"]))["reason"]
        first.release()
        assert wait_for(lambda: srv.peers.held("127.0.0.1") == 1)
        fourth = associate(settings)
        assert fourth.is_established
        assert fourth.send_c_echo().Status == 0
        fourth.abort()  # an abort frees the slot as a release does
        assert wait_for(lambda: srv.peers.held("127.0.0.1") == 1)
    finally:
        for assoc in (first, second):
            if assoc.is_established:
                assoc.release()
    assert wait_for(lambda: srv.peers.held("127.0.0.1") == 0)


def test_slot_of_a_crashed_process_is_freed(start_server: Callable[..., DicomIngestServer], settings: Settings) -> None:
    """Another process (an ingest actor) holding the only slot dies: the peer gets in again."""
    srv = start_server(settings, max_associations_per_peer=1)
    holder = hold_slot_in_subprocess(srv.peers.root, "127.0.0.1")
    try:
        assert rejection(associate(settings)) == (2, 3, 2)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    assoc = associate(settings)
    assert assoc.is_established
    assoc.release()


# -- the audit trail of stored instances ----------------------------------------


def test_instances_transferred_per_study(
    start_server: Callable[..., DicomIngestServer],
    runtime: Runtime,
    settings: Settings,
    dicom_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    start_server(settings)
    files = sorted((dicom_data / SERIES["mr"]).iterdir())[:2]
    other = dicom_data / "transfer_syntaxes" / "explicit_vr_le" / "dcm_qa_ts_1.dcm"
    part = split_part10(other.read_bytes())
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(part.data[: part.dataset_offset] + bytes(part.dataset)[:301])  # cut mid-element
    contexts = {
        (str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
        for m in (pydicom.dcmread(p, stop_before_pixels=True).file_meta for p in [*files, other])
    }
    assoc = associate(settings, "MODALITY", tuple(sorted(contexts)))
    assert assoc.is_established
    try:
        assert [assoc.send_c_store(p).Status for p in files] == [0, 0]
        assert assoc.send_c_store(other).Status == 0
        assert assoc.send_c_store(bad).Status == 0xC000
    finally:
        assoc.release()
    mr = pydicom.dcmread(files[0], stop_before_pixels=True)
    qa = pydicom.dcmread(other, stop_before_pixels=True)
    rows = wait_for(lambda: len(audit_rows(runtime, event_id=INSTANCES_TRANSFERRED, actor="MODALITY")) == 3)
    assert rows, audit_rows(runtime, event_id=INSTANCES_TRANSFERRED)
    by_study = {r["study_instance_uid"]: r for r in audit_rows(runtime, event_id=INSTANCES_TRANSFERRED)}
    assert set(by_study) == {mr.StudyInstanceUID, qa.StudyInstanceUID, ""}
    study = by_study[mr.StudyInstanceUID]
    assert study["patient_id"] == mr.PatientID
    assert study["action"] == "C"
    assert study["outcome"] == 0
    assert study["actor_kind"] == "ae"
    assert study["source_address"] == "127.0.0.1"
    assert study["destination"] == settings.ae_title
    assert json.loads(str(study["detail"])) == {"instances": 2, "failed": 0}
    assert json.loads(str(by_study[qa.StudyInstanceUID]["detail"])) == {"instances": 1, "failed": 0}
    assert by_study[qa.StudyInstanceUID]["patient_id"] == str(qa.get("PatientID", ""))
    # The refused dataset could not be read: counted, without a study.
    unknown = by_study[""]
    assert json.loads(str(unknown["detail"])) == {"instances": 0, "failed": 1}
    assert unknown["outcome"] == 8


def test_aborted_association_is_audited(
    start_server: Callable[..., DicomIngestServer],
    runtime: Runtime,
    settings: Settings,
    dicom_data: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    srv = start_server(settings)
    path = dicom_data / "transfer_syntaxes" / "explicit_vr_le" / "dcm_qa_ts_1.dcm"
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    assoc = associate(settings, "ABORTER", ((meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID),))
    assert assoc.send_c_store(path).Status == 0
    assoc.abort()
    rows = wait_for(lambda: audit_rows(runtime, event_id=INSTANCES_TRANSFERRED, actor="ABORTER"))
    assert rows and json.loads(str(rows[0]["detail"])) == {"instances": 1, "failed": 0}
    assert wait_for(lambda: srv.peers.held("127.0.0.1") == 0)
