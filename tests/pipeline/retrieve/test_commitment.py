"""Storage Commitment Push Model SCP with pynetdicom as the SCU (PS3.4 J.3).

The CT series is stored first; the requests name some of its slices, an
unknown instance and a CT slice under the wrong SOP Class.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from pipeline.config import Settings
from pipeline.devices.registry import DeviceRegistry
from pipeline.index.records import Provenance
from pipeline.ingest.scp import DicomIngestServer
from pipeline.retrieve.commitment import (
    CLASS_INSTANCE_CONFLICT,
    NO_SUCH_OBJECT_INSTANCE,
    STORAGE_COMMITMENT_INSTANCE,
    StorageCommitmentService,
    commitment_service,
    read_request,
)
from pipeline.runtime import Runtime
from tests.conftest import free_port
from tests.corpus import SERIES
from tests.pipeline.security.test_tls import audit_rows, wait_for

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
UNKNOWN = "1.2.826.0.1.3680043.8.498.404"
TRANSACTION = "1.2.826.0.1.3680043.8.498.777.1"


@pytest.fixture
def ct_uids(runtime: Runtime, dicom_data: Path) -> list[str]:
    uids = []
    for path in sorted((dicom_data / SERIES["ct"]).iterdir())[:5]:
        uids.append(runtime.ingest.store_part10(path.read_bytes(), Provenance("import")).sop_instance_uid)
    return uids


@pytest.fixture
def scp(runtime: Runtime, settings: Settings) -> Iterator[object]:
    service = commitment_service(runtime.index, runtime.audit, settings)
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=[service]).start()
    yield service
    srv.stop()


def request(references: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = TRANSACTION
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


class Reports:
    """N-EVENT-REPORTs received by the SCU (on either association)."""

    def __init__(self) -> None:
        self.received: list[tuple[int, Dataset, str]] = []
        self.arrived = threading.Event()

    def handle(self, event: evt.Event) -> tuple[int, None]:
        self.received.append((int(event.event_type), event.event_information, str(event.assoc.requestor.ae_title)))
        self.arrived.set()
        return 0x0000, None


def check_report(info: Dataset, committed: list[str]) -> None:
    assert info.TransactionUID == TRANSACTION
    assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(committed)
    assert all(i.ReferencedSOPClassUID == CT for i in info.ReferencedSOPSequence)
    failed = {i.ReferencedSOPInstanceUID: (i.ReferencedSOPClassUID, i.FailureReason) for i in info.FailedSOPSequence}
    assert failed[UNKNOWN] == (CT, NO_SUCH_OBJECT_INSTANCE)
    assert len(failed) == 2
    conflict = next(v for k, v in failed.items() if k != UNKNOWN)
    assert conflict == (MR, CLASS_INSTANCE_CONFLICT)


def test_report_on_the_same_association(ct_uids: list[str], scp: object, settings: Settings, runtime: Runtime) -> None:
    reports = Reports()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title,
                         ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)],
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)])  # fmt: skip
    assert assoc.is_established
    try:
        refs = [(CT, ct_uids[0]), (CT, ct_uids[1]), (CT, UNKNOWN), (MR, ct_uids[2])]
        status, _ = assoc.send_n_action(request(refs), 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0000
        assert reports.arrived.wait(15), "no N-EVENT-REPORT on the association"
    finally:
        assoc.release()
    ((event_type, info, _),) = reports.received
    assert event_type == 2  # some failed
    check_report(info, ct_uids[:2])
    (row,) = wait_for(lambda: audit_rows(runtime, event_id="110103"))  # type: ignore[misc]
    detail = json.loads(row["detail"])
    assert (detail["report"], detail["committed"], detail["failed"]) == ("same association", 2, 2)
    assert row["actor"] == "MODALITY"


def test_all_committed_is_event_type_1(ct_uids: list[str], scp: object, settings: Settings) -> None:
    reports = Reports()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title,
                         ext_neg=[build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)],
                         evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)])  # fmt: skip
    try:
        status, _ = assoc.send_n_action(request([(CT, u) for u in ct_uids]), 1, StorageCommitmentPushModel,
                                        STORAGE_COMMITMENT_INSTANCE)  # fmt: skip
        assert status.Status == 0x0000 and reports.arrived.wait(15)
        # A malformed request (no Referenced SOP Sequence) and an unknown action are refused.
        bad = Dataset()
        bad.TransactionUID = TRANSACTION
        status, _ = assoc.send_n_action(bad, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        assert status.Status == 0x0115
        status, _ = assoc.send_n_action(request([(CT, ct_uids[0])]), 2, StorageCommitmentPushModel,
                                        STORAGE_COMMITMENT_INSTANCE)  # fmt: skip
        assert status.Status == 0x0123
    finally:
        assoc.release()
    ((event_type, info, _),) = reports.received
    assert event_type == 1 and "FailedSOPSequence" not in info
    assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(ct_uids)


def test_report_on_a_new_association_after_release(
    ct_uids: list[str], scp: object, settings: Settings, runtime: Runtime
) -> None:
    reports = Reports()
    port = free_port()
    listener = AE(ae_title="MODALITY")
    # We accept the archive's proposal to act as SCP of the SOP Class (J.3.3.1.2).
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    server = listener.start_server(("127.0.0.1", port), block=False,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)])  # fmt: skip
    try:
        DeviceRegistry(runtime.index).add("MODALITY", host="127.0.0.1", port=port)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(StorageCommitmentPushModel)
        # No handler for reports on this association, and released at once.
        assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
        refs = [(CT, ct_uids[3]), (CT, UNKNOWN), (MR, ct_uids[4]), (CT, ct_uids[0])]
        status, _ = assoc.send_n_action(request(refs), 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
        assoc.release()
        assert status.Status == 0x0000
        assert reports.arrived.wait(30), "no N-EVENT-REPORT on a new association"
    finally:
        server.shutdown()
    ((event_type, info, calling),) = reports.received
    assert event_type == 2 and calling == settings.ae_title
    check_report(info, [ct_uids[3], ct_uids[0]])
    assert info.RetrieveAETitle == settings.ae_title
    (row,) = wait_for(lambda: audit_rows(runtime, event_id="110103"))  # type: ignore[misc]
    assert json.loads(row["detail"])["report"] == "new association"


def test_service_and_request_parsing(ct_uids: list[str], runtime: Runtime) -> None:
    result = StorageCommitmentService(runtime.index).check(TRANSACTION, [(CT, ct_uids[0]), (MR, ct_uids[1]), (CT, UNKNOWN)])
    assert result.committed == [(CT, ct_uids[0])]
    assert result.failed == [(MR, ct_uids[1], CLASS_INSTANCE_CONFLICT), (CT, UNKNOWN, NO_SUCH_OBJECT_INSTANCE)]
    assert result.event_type == 2
    assert read_request(request([(CT, ct_uids[0])])) == (TRANSACTION, [(CT, ct_uids[0])])
    assert read_request(None) is None
    assert read_request(request([(CT, "not a uid")])) is None
    no_transaction = request([(CT, ct_uids[0])])
    del no_transaction.TransactionUID
    assert read_request(no_transaction) is None
