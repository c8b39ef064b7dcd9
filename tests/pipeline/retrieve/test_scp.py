"""C-MOVE and C-GET SCPs against real peers: dcmtk movescu/getscu/storescp and pynetdicom.

A :class:`DicomIngestServer` runs in this process with the retrieve services;
the corpus' CT (54 slices) and MR (35 slices) series, both Explicit VR Little
Endian, are stored through ``runtime.ingest`` first. Statuses and counts are
those of PS3.4 C.4.2.1.4 (C-MOVE) and C.4.3.1.4 (C-GET).
"""

from __future__ import annotations

import io
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pipeline.config import Settings
from pipeline.devices.policy import DevicePolicy
from pipeline.devices.registry import DeviceRegistry
from pipeline.index.records import Provenance
from pipeline.ingest.part10 import split_part10
from pipeline.ingest.scp import DicomIngestServer
from pipeline.retrieve.scp import retrieve_services
from pipeline.runtime import Runtime
from pipeline.security.tls import server_context
from tests.conftest import free_port, require_tool
from tests.corpus import SERIES, dataset_bytes
from tests.pipeline.security import test_tls
from tests.pipeline.security.test_tls import DCMTK_ENV, Pki, audit_rows, tls_settings, wait_for

CT_STUDY = "1.3.46.670589.33.1.15053592413351079234.27718218421047494460"
CT_SERIES = "1.3.46.670589.33.1.7303547162003802183.31761132431540865648"
MR_STUDY = "1.3.12.2.1107.5.2.43.67060.30000022040717195958300000010"
TRANSFERRED = "110104"

pki = test_tls.pki  # the session's test CA and certificates (fixture)


@pytest.fixture
def originals(runtime: Runtime, dicom_data: Path) -> dict[str, bytes]:
    """SOP Instance UID -> the dataset bytes (after the file meta) of each stored file."""
    stored: dict[str, bytes] = {}
    for name in ("ct", "mr"):
        for path in sorted((dicom_data / SERIES[name]).iterdir()):
            result = runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
            stored[result.sop_instance_uid] = dataset_bytes(path)
    return stored


@pytest.fixture
def server(runtime: Runtime, settings: Settings) -> Iterator[DicomIngestServer]:
    services = retrieve_services(runtime.index, runtime.blobs, runtime.audit, settings)
    # The device policy decides which calling AEs may move or get, as in the
    # running server (pipeline.ingest.actors.build_dicom_server).
    policy = DevicePolicy(DeviceRegistry(runtime.index), runtime.audit, settings.ae_title)
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=services, policy=policy)
    yield srv.start()
    srv.stop()


@pytest.fixture
def registry(runtime: Runtime) -> DeviceRegistry:
    return DeviceRegistry(runtime.index)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "storescp exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("storescp did not listen")


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Callable[..., tuple[Path, int]]]:
    """Start dcmtk storescp (bit-preserving: the files hold the bytes as received)."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(ae_title: str = "DEST", *options: str) -> tuple[Path, int]:
        out = tmp_path / f"received-{ae_title}-{len(procs)}"
        out.mkdir()
        port = free_port()
        cmd = [require_tool("storescp"), "-aet", ae_title, "+B", "-od", str(out), *options, str(port)]
        proc = subprocess.Popen(cmd, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        _wait_listening(port, proc)
        return out, port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def received(folder: Path) -> dict[str, tuple[str, bytes]]:
    """SOP Instance UID -> (transfer syntax, dataset bytes) of each file storescp wrote."""
    files: dict[str, tuple[str, bytes]] = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), bytes(split_part10(path.read_bytes()).dataset))
    return files


def movescu(settings: Settings, destination: str, model: str, *keys: str, calling: str = "MOVESCU") -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("movescu"), model, "-aet", calling, "-aec", settings.ae_title, "-aem", destination]
    for key in keys:
        cmd += ["-k", key]
    return subprocess.run([*cmd, "127.0.0.1", str(settings.dicom_port)], check=False,
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=120)  # fmt: skip


def c_move(settings: Settings, destination: str, keys: dict[str, str], model: str = StudyRootQueryRetrieveInformationModelMove,
           calling: str = "PYMOVE") -> list[Dataset]:  # fmt: skip
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    try:
        return [status for status, _ in assoc.send_c_move(identifier, destination, model)]
    finally:
        assoc.release()


# -- C-MOVE ---------------------------------------------------------------------------


def test_movescu_study_and_series_level_byte_identical(
    originals: dict[str, bytes], server: DicomIngestServer, storescp: Callable[..., tuple[Path, int]],
    registry: DeviceRegistry, settings: Settings, runtime: Runtime,
) -> None:  # fmt: skip
    folder, port = storescp("DEST")
    registry.add("DEST", host="127.0.0.1", port=port)
    done = movescu(settings, "DEST", "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={MR_STUDY}")
    assert done.returncode == 0, done.stderr
    got = received(folder)
    assert len(got) == 35
    for sop, (ts, data) in got.items():
        # No conversion asked: the dataset is the stored one, byte for byte.
        assert ts == ExplicitVRLittleEndian and data == originals[sop]
    # SERIES level, study root: the 54 CT slices join them.
    done = movescu(settings, "DEST", "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={CT_STUDY}",
                   f"SeriesInstanceUID={CT_SERIES}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = received(folder)
    assert len(got) == 89 and all(data == originals[sop] for sop, (_, data) in got.items())
    # Audited once per study, we being the source (action R).
    rows = wait_for(lambda: [r for r in audit_rows(runtime, event_id=TRANSFERRED) if r["action"] == "R"])
    assert {r["study_instance_uid"] for r in rows} == {MR_STUDY, CT_STUDY}  # type: ignore[union-attr]


def test_move_counts_and_patient_root(
    originals: dict[str, bytes], server: DicomIngestServer, storescp: Callable[..., tuple[Path, int]],
    registry: DeviceRegistry, settings: Settings,
) -> None:  # fmt: skip
    folder, port = storescp("DEST")
    registry.add("DEST", host="127.0.0.1", port=port)
    statuses = c_move(settings, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY})
    pending, final = statuses[:-1], statuses[-1]
    assert len(pending) == 35 and all(s.Status == 0xFF00 for s in pending)
    # Remaining counts down from 34 to 0 as the sub-operations complete (C.4.2.1.5).
    assert [s.NumberOfRemainingSuboperations for s in pending] == list(range(34, -1, -1))
    assert pending[-1].NumberOfCompletedSuboperations == 35
    assert final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations,
            final.NumberOfWarningSuboperations) == (35, 0, 0)  # fmt: skip
    # Patient root, PATIENT level: every study of the patient (the CT phantom).
    ct_first = c_move(settings, "DEST", {"QueryRetrieveLevel": "PATIENT", "PatientID": "PLASTIC"},
                      model=PatientRootQueryRetrieveInformationModelMove)[-1]  # fmt: skip
    assert ct_first.Status == 0x0000 and ct_first.NumberOfCompletedSuboperations == 54
    # Nothing matches: Success with no sub-operations.
    nothing = c_move(settings, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.3.4"})
    assert [s.Status for s in nothing] == [0x0000]
    assert len(received(folder)) == 89


def test_move_to_unregistered_or_unusable_destination_is_a801(
    originals: dict[str, bytes], server: DicomIngestServer, storescp: Callable[..., tuple[Path, int]],
    registry: DeviceRegistry, settings: Settings, runtime: Runtime,
) -> None:  # fmt: skip
    folder, port = storescp("DEST")
    done = movescu(settings, "DEST", "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={MR_STUDY}")
    assert done.returncode != 0 and "MoveDestinationUnknown" in done.stderr
    assert [s.Status for s in c_move(settings, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY})] == [0xA801]
    # Registered, but uni-directional (it only sends) or without a port.
    registry.add("DEST", host="127.0.0.1", port=port, setup="uni-directional")
    assert [s.Status for s in c_move(settings, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY})] == [0xA801]
    registry.update("DEST", setup="bi-directional", port=None)
    assert [s.Status for s in c_move(settings, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY})] == [0xA801]
    assert list(folder.iterdir()) == []
    alerts = wait_for(lambda: audit_rows(runtime, event_id="110113"))
    assert len(alerts) >= 3  # type: ignore[arg-type]


def test_move_refused_to_a_uni_directional_caller(
    originals: dict[str, bytes], server: DicomIngestServer, storescp: Callable[..., tuple[Path, int]],
    registry: DeviceRegistry, settings: Settings,
) -> None:  # fmt: skip
    folder, port = storescp("DEST")
    registry.add("DEST", host="127.0.0.1", port=port)
    registry.add("MODALITY", setup="uni-directional")
    statuses = c_move(settings, "DEST", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY}, calling="MODALITY")
    assert [s.Status for s in statuses] == [0xA801]
    assert list(folder.iterdir()) == []


def test_move_converts_for_an_implicit_only_destination(
    originals: dict[str, bytes], server: DicomIngestServer, storescp: Callable[..., tuple[Path, int]],
    registry: DeviceRegistry, settings: Settings,
) -> None:  # fmt: skip
    folder, port = storescp("IMPLICIT", "+xi")
    registry.add("IMPLICIT", host="127.0.0.1", port=port)
    final = c_move(settings, "IMPLICIT", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY})[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 35
    got = received(folder)
    assert len(got) == 35
    for sop, (ts, data) in got.items():
        assert ts == ImplicitVRLittleEndian and data != originals[sop]
    # The same elements and pixels as the stored original, in the other encoding.
    sample = min(got)
    converted = pydicom.dcmread(folder / f"MR.{sample}")
    original = read_dataset(originals[sample])
    assert converted.SOPInstanceUID == sample and converted.PixelData == original.PixelData
    assert converted.PatientName == original.PatientName and len(converted) == len(original)


def read_dataset(data: bytes) -> Dataset:
    """An Explicit VR Little Endian dataset (no file meta) as pydicom reads it."""
    from pydicom.filereader import read_dataset as read

    return read(io.BytesIO(data), is_implicit_VR=False, is_little_endian=True)


# -- C-GET ----------------------------------------------------------------------------


def test_getscu_study_level(originals: dict[str, bytes], server: DicomIngestServer, settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "got"
    out.mkdir()
    cmd = [require_tool("getscu"), "-S", "-aet", "GETSCU", "-aec", settings.ae_title, "+B", "-od", str(out),
           "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={CT_STUDY}", "127.0.0.1", str(settings.dicom_port)]  # fmt: skip
    done = subprocess.run(cmd, check=False, env=DCMTK_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = received(out)
    assert len(got) == 54
    assert all(data == originals[sop] for sop, (_, data) in got.items())


def _c_get(settings: Settings, keys: dict[str, str], calling: str = "PYGET") -> tuple[list[Dataset], list[str]]:
    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for cls in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    roles = [build_role(cls, scp_role=True) for cls in (CTImageStorage, MRImageStorage)]
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title, ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    assert assoc.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    try:
        statuses = [status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    return statuses, stored


def test_get_counts_series_and_image_level(originals: dict[str, bytes], server: DicomIngestServer, settings: Settings) -> None:
    statuses, stored = _c_get(settings, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": CT_STUDY, "SeriesInstanceUID": CT_SERIES})
    assert len(stored) == 54 and len(statuses) == 55
    assert [s.NumberOfRemainingSuboperations for s in statuses[:-1]] == list(range(53, -1, -1))
    final = statuses[-1]
    assert (final.Status, final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0x0000, 54, 0)
    two = stored[:2]
    statuses, again = _c_get(settings, {"QueryRetrieveLevel": "IMAGE", "SOPInstanceUID": "\\".join(two)})
    assert sorted(again) == sorted(two) and statuses[-1].NumberOfCompletedSuboperations == 2


def test_get_refused_and_bad_identifier(originals: dict[str, bytes], server: DicomIngestServer, settings: Settings,
                                        registry: DeviceRegistry) -> None:  # fmt: skip
    registry.add("MODALITY", setup="uni-directional")
    statuses, stored = _c_get(settings, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY}, calling="MODALITY")
    assert stored == [] and statuses[-1].Status == 0x0124 and "get" in statuses[-1].ErrorComment
    # A registered bi-directional device limited to find may not get either.
    registry.add("FINDONLY", services=["echo", "find"])
    statuses, stored = _c_get(settings, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": MR_STUDY}, calling="FINDONLY")
    assert stored == [] and statuses[-1].Status == 0x0124
    statuses, stored = _c_get(settings, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"})
    assert stored == [] and statuses[-1].Status == 0xA900


def test_get_cancelled_by_the_peer(originals: dict[str, bytes], server: DicomIngestServer, settings: Settings) -> None:
    """C-CANCEL during a C-GET ends it with Cancel (FE00) before every slice is sent (PS3.4 C.4.3.3.1)."""
    stored: list[str] = []
    holder: dict[str, object] = {}

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        if len(stored) == 3:
            assoc = holder["assoc"]
            cx = next(c for c in assoc.accepted_contexts  # type: ignore[attr-defined]
                      if c.abstract_syntax == StudyRootQueryRetrieveInformationModelGet)  # fmt: skip
            assoc.send_c_cancel(1, cx.context_id)  # type: ignore[attr-defined]
        return 0x0000

    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title,
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    holder["assoc"] = assoc
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = CT_STUDY
    try:
        statuses = [s for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet, msg_id=1)]
    finally:
        assoc.release()
    assert statuses[-1].Status == 0xFE00
    assert 3 <= len(stored) < 54


def test_move_warning_and_failure_counts(
    originals: dict[str, bytes], server: DicomIngestServer, registry: DeviceRegistry, settings: Settings
) -> None:
    """A destination that takes CT only: B000 with the failed UID listed, then A702 (PS3.4 C.4.2.1.4)."""
    received_ct: list[str] = []

    def on_store(event: evt.Event) -> int:
        received_ct.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="CTONLY")
    ae.add_supported_context(CTImageStorage)
    ae.add_supported_context(Verification)  # as storescp and most Storage SCPs
    port = free_port()
    listener = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        registry.add("CTONLY", host="127.0.0.1", port=port)
        ct_sop = next(uid for uid in originals if uid.startswith("1.3.46."))
        mr_sop = next(uid for uid in originals if uid.startswith("1.3.12."))
        ae_scu = AE(ae_title="PYMOVE")
        ae_scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae_scu.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
        try:
            both = Dataset()
            both.QueryRetrieveLevel = "IMAGE"
            both.SOPInstanceUID = [ct_sop, mr_sop]
            responses = list(assoc.send_c_move(both, "CTONLY", StudyRootQueryRetrieveInformationModelMove))
            final, identifier = responses[-1]
            assert final.Status == 0xB000
            assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
            assert identifier.FailedSOPInstanceUIDList == mr_sop
            mr_only = Dataset()
            mr_only.QueryRetrieveLevel = "IMAGE"
            mr_only.SOPInstanceUID = mr_sop
            final, _ = list(assoc.send_c_move(mr_only, "CTONLY", StudyRootQueryRetrieveInformationModelMove))[-1]
            assert final.Status == 0xA702 and final.NumberOfFailedSuboperations == 1
        finally:
            assoc.release()
    finally:
        listener.shutdown()
    assert received_ct == [ct_sop]


def test_move_to_a_tls_device(originals: dict[str, bytes], runtime: Runtime, settings: Settings, pki: Pki) -> None:
    """A device registered with ``tls`` gets its sub-association over TLS, its certificate
    checked against ``dicom_tls_ca`` (PS3.15 B.1); the same device without TLS gets nothing."""
    s = tls_settings(settings, pki, mutual=True)
    services = retrieve_services(runtime.index, runtime.blobs, runtime.audit, s)
    srv = DicomIngestServer(s, runtime.ingest, runtime.audit, services=services).start()
    received_tls: list[str] = []

    def on_store(event: evt.Event) -> int:
        received_tls.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    dest = AE(ae_title="SECURE")
    dest.add_supported_context(MRImageStorage, [ExplicitVRLittleEndian])
    dest.add_supported_context(Verification)
    port = free_port()
    listener = dest.start_server(("127.0.0.1", port), block=False, ssl_context=server_context(pki.server_cert, pki.server_key),
                                 evt_handlers=[(evt.EVT_C_STORE, on_store)])  # fmt: skip
    registry = DeviceRegistry(runtime.index)
    try:
        registry.add("SECURE", host="127.0.0.1", port=port, tls=True)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        scu = AE(ae_title="PYMOVE")
        scu.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = scu.associate("127.0.0.1", s.dicom_port, ae_title=s.ae_title, tls_args=(ctx, "localhost"))
        try:
            keys = Dataset()
            keys.QueryRetrieveLevel = "STUDY"
            keys.StudyInstanceUID = MR_STUDY
            final = [st for st, _ in assoc.send_c_move(keys, "SECURE", StudyRootQueryRetrieveInformationModelMove)][-1]
            assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 35
            # Registered without TLS, the plain association fails its handshake: nothing sent.
            registry.update("SECURE", tls=False)
            final = [st for st, _ in assoc.send_c_move(keys, "SECURE", StudyRootQueryRetrieveInformationModelMove)][-1]
            assert final.Status == 0xA801
        finally:
            assoc.release()
    finally:
        listener.shutdown()
        srv.stop()
    assert len(received_tls) == 35
