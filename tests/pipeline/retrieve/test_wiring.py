"""The running server's DICOM services and device policy, composed as the ingest actors compose them.

``IngestWorker`` (the plain class behind the Ray actor) builds its server with
:func:`build_dicom_server`; these tests start that worker, or call the helper,
and talk to it with pynetdicom: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET and
Storage Commitment, from a bi-directional device, a uni-directional one, a
device granted only some services and an AE the registry does not know.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    CTImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pipeline.config import Settings
from pipeline.devices.policy import DevicePolicy
from pipeline.devices.registry import DeviceRegistry
from pipeline.index.records import Provenance
from pipeline.ingest.actors import IngestWorker, build_dicom_server
from pipeline.ingest.scp import DicomIngestServer
from pipeline.query.scp import QueryRetrieveFindSCP
from pipeline.retrieve.commitment import STORAGE_COMMITMENT_INSTANCE, StorageCommitmentSCP
from pipeline.retrieve.scp import GetSCP, MoveSCP
from pipeline.runtime import Runtime
from pipeline.worklist.mpps import PerformedProcedureStepSCP
from pipeline.worklist.mwl import ModalityWorklistSCP
from tests.conftest import free_port
from tests.corpus import SERIES
from tests.pipeline.security.test_tls import audit_rows, wait_for

CT_STUDY = "1.3.46.670589.33.1.15053592413351079234.27718218421047494460"


@pytest.fixture
def ct_paths(dicom_data: Path) -> list[Path]:
    return sorted((dicom_data / SERIES["ct"]).iterdir())[:3]


@pytest.fixture
def server(runtime: Runtime, ct_paths: list[Path]) -> Iterator[DicomIngestServer]:
    for path in ct_paths[:2]:
        runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    srv = build_dicom_server(runtime).start()
    yield srv
    srv.stop()


def associate(settings: Settings, calling: str, **options: object) -> Association:
    ae = AE(ae_title=calling)
    for uid in (Verification, StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
                StudyRootQueryRetrieveInformationModelGet, StorageCommitmentPushModel, CTImageStorage):  # fmt: skip
        ae.add_requested_context(uid)
    roles = [build_role(CTImageStorage, scu_role=True, scp_role=True), build_role(StorageCommitmentPushModel, scu_role=True, scp_role=True)]
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title, ext_neg=roles, **options)  # type: ignore[arg-type]
    assert assoc.is_established
    return assoc


def study_identifier(level: str = "STUDY") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.StudyInstanceUID = CT_STUDY
    return ds


class Calls:
    """What one calling AE gets from each service on one association."""

    def __init__(self, settings: Settings, calling: str, ct_path: Path, move_to: str) -> None:
        self.stored: list[str] = []
        self.reports = threading.Event()

        def on_store(event: evt.Event) -> int:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000

        def on_report(event: evt.Event) -> tuple[int, None]:
            self.reports.set()
            return 0x0000, None

        assoc = associate(settings, calling, evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_N_EVENT_REPORT, on_report)])
        try:
            self.echo = assoc.send_c_echo().Status
            self.store = assoc.send_c_store(_read(ct_path)).Status
            finds = list(assoc.send_c_find(study_identifier(), StudyRootQueryRetrieveInformationModelFind))
            self.find = [s.Status for s, _ in finds]
            self.find_comment = str(finds[-1][0].get("ErrorComment", ""))
            self.move = [s.Status for s, _ in assoc.send_c_move(study_identifier(), move_to, StudyRootQueryRetrieveInformationModelMove)][-1]
            gets = [s for s, _ in assoc.send_c_get(study_identifier(), StudyRootQueryRetrieveInformationModelGet)]
            self.get = gets[-1].Status
            request = Dataset()
            request.TransactionUID = "1.2.826.0.1.3680043.8.498.778"
            item = Dataset()
            item.ReferencedSOPClassUID = CTImageStorage
            item.ReferencedSOPInstanceUID = _read(ct_path).SOPInstanceUID
            request.ReferencedSOPSequence = [item]
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
            self.commitment = status.Status
            if self.commitment == 0x0000:
                assert self.reports.wait(15)
        finally:
            assoc.release()


def _read(path: Path) -> Dataset:
    import pydicom

    return pydicom.dcmread(path)


@pytest.fixture
def destination(runtime: Runtime) -> Iterator[list[str]]:
    """A pynetdicom Storage SCP registered as the bi-directional device DEST."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="DEST")
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    srv = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    DeviceRegistry(runtime.index).add("DEST", host="127.0.0.1", port=port)
    yield received
    srv.shutdown()


def test_bi_directional_and_unregistered_get_everything(
    server: DicomIngestServer, settings: Settings, runtime: Runtime, ct_paths: list[Path], destination: list[str]
) -> None:
    DeviceRegistry(runtime.index).add("WS1")
    for calling, path in (("WS1", ct_paths[2]), ("STRANGER", ct_paths[0])):
        calls = Calls(settings, calling, path, "DEST")
        assert (calls.echo, calls.store, calls.move, calls.get, calls.commitment) == (0, 0, 0, 0, 0)
        assert calls.find == [0xFF00, 0x0000]
        assert len(calls.stored) == 3  # C-GET: the whole study, the slice just stored included
    assert len(destination) == 6


def test_uni_directional_device_only_echoes_and_stores(
    server: DicomIngestServer, settings: Settings, runtime: Runtime, ct_paths: list[Path], destination: list[str]
) -> None:
    DeviceRegistry(runtime.index).add("MODALITY", setup="uni-directional")
    calls = Calls(settings, "MODALITY", ct_paths[2], "DEST")
    assert (calls.echo, calls.store) == (0x0000, 0x0000)
    assert calls.find == [0x0124] and "find" in calls.find_comment
    assert calls.move == 0xA801 and calls.get == 0x0124 and calls.commitment == 0x0124
    assert calls.stored == [] and destination == []
    alerts = wait_for(lambda: audit_rows(runtime, event_id="110113", actor="MODALITY"))
    assert len(alerts) >= 4  # type: ignore[arg-type]


def test_device_with_limited_services(
    server: DicomIngestServer, settings: Settings, runtime: Runtime, ct_paths: list[Path], destination: list[str]
) -> None:
    DeviceRegistry(runtime.index).add("VIEWER", services=["find", "get"])
    calls = Calls(settings, "VIEWER", ct_paths[2], "DEST")
    assert (calls.echo, calls.store, calls.move, calls.commitment) == (0x0124, 0x0124, 0xA801, 0x0124)
    assert calls.find == [0xFF00, 0x0000] and calls.get == 0x0000 and len(calls.stored) == 2
    # Inactive: known and refused everything.
    DeviceRegistry(runtime.index).update("VIEWER", active=False)
    calls = Calls(settings, "VIEWER", ct_paths[2], "DEST")
    assert (calls.echo, calls.store, calls.find[-1], calls.get) == (0x0124, 0x0124, 0x0124, 0x0124)


def test_ingest_worker_builds_the_same_server(runtime: Runtime, settings: Settings) -> None:
    worker = IngestWorker(settings.model_dump_json())
    try:
        services = worker.server.services
        assert [type(s) for s in services] == [
            QueryRetrieveFindSCP, MoveSCP, GetSCP, StorageCommitmentSCP,
            ModalityWorklistSCP, PerformedProcedureStepSCP,
        ]  # fmt: skip
        assert worker.ready()["port"] == settings.dicom_port
        assoc = associate(settings, "ANY")
        try:
            assert [s.Status for s, _ in assoc.send_c_find(study_identifier(), StudyRootQueryRetrieveInformationModelFind)] == [0x0000]
        finally:
            assoc.release()
    finally:
        worker.stop()


def test_policy_lets_unregistered_aes_through(runtime: Runtime, settings: Settings) -> None:
    policy = DevicePolicy(DeviceRegistry(runtime.index), runtime.audit, settings.ae_title)
    assert policy.refusal("NOBODY", "move") is None
    DeviceRegistry(runtime.index).add("CT01", setup="uni-directional")
    assert policy.refusal("CT01", "store") is None
    assert policy.refusal("CT01", "find") == "calling AE may not use find"


def test_worklist_and_mpps_beside_query_retrieve(
    server: DicomIngestServer, runtime: Runtime, settings: Settings
) -> None:
    """The running server answers a Modality Worklist C-FIND and a Study Root
    C-FIND on one association (one C-FIND handler, PS3.4 K and C.4.1), and
    refuses the worklist to a uni-directional device (0124H)."""
    from datetime import datetime

    from pynetdicom.sop_class import ModalityWorklistInformationFind

    from pipeline.worklist.records import ProcedureRequest

    patient = runtime.registration.register_patient("WL-1", actor="test", patient_name="Doe^Jane")
    runtime.registration.create_order(
        patient.patient.id,
        [ProcedureRequest("CT", datetime(2026, 12, 4, 9, 30), station_ae_title="CT_ROOM_1")],
        actor="test",
    )
    DeviceRegistry(runtime.index).add("CT_ROOM_1", setup="bi-directional")
    DeviceRegistry(runtime.index).add("PUSHER", setup="uni-directional")

    def worklist(calling: str) -> tuple[list[int], list[Dataset | None]]:
        ae = AE(ae_title=calling)
        ae.add_requested_context(ModalityWorklistInformationFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
        assert assoc.is_established
        try:
            query = Dataset()
            query.PatientName = ""
            query.AccessionNumber = ""
            step = Dataset()
            step.ScheduledStationAETitle = calling
            step.Modality = ""
            step.ScheduledProcedureStepStartDate = ""
            query.ScheduledProcedureStepSequence = [step]
            answers = list(assoc.send_c_find(query, ModalityWorklistInformationFind))
            studies = list(assoc.send_c_find(study_identifier(), StudyRootQueryRetrieveInformationModelFind))
        finally:
            assoc.release()
        return [s.Status for s, _ in answers] + [studies[-1][0].Status], [i for _, i in answers]

    statuses, identifiers = worklist("CT_ROOM_1")
    assert statuses == [0xFF00, 0x0000, 0x0000], statuses
    assert str(identifiers[0].PatientName) == "Doe^Jane"  # type: ignore[union-attr]
    assert identifiers[0].ScheduledProcedureStepSequence[0].Modality == "CT"  # type: ignore[union-attr]
    refused, _ = worklist("PUSHER")
    assert refused[0] == 0x0124 and refused[-1] == 0x0124, refused
