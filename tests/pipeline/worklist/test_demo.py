"""``lightbox demo``: the front of the workflow in one command, run for real.

The console script ``lightbox demo`` runs in a subprocess on an empty data
folder: with nothing on the DICOM port it starts the server in its own
process, registers a patient and an order, and acts as the modality
(worklist C-FIND, MPPS IN PROGRESS, C-STORE, MPPS COMPLETED). Its output
names each step; afterwards the index, opened again, holds the study on the
Waiting list as "acquired", linked to the completed order. With
``--running`` and nothing listening it fails with exit status 1, says why,
and registers nothing; refused by the device policy it names the status.

:func:`run_demo` is also run against a DICOM server the test started (the
server of ``lightbox serve``, :func:`build_dicom_server`): the demo is one
more modality there (``start_server=False``, and ``None``, which must see the
port answering and start nothing), and the server's audit trail records the
demo AE's worklist query, MPPS and C-STORE.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from pipeline.config import Settings, get_settings
from pipeline.devices.registry import DeviceRegistry
from pipeline.index.schema import DeviceSetup, OrderState
from pipeline.ingest.actors import build_dicom_server
from pipeline.runtime import Runtime, open_runtime
from pipeline.worklist.demo import DEMO_AE, DemoFailed, run_demo
from pipeline.worklist.mpps import MPPS
from pipeline.worklist.performed import PerformedProcedureSteps, PerformedStatus
from pipeline.worklist.waitinglist import WaitingFilter, WaitingList, WorkflowState
from tests.conftest import free_port
from tests.pipeline.security.test_tls import wait_for

UID = r"[0-9.]{10,64}"

#: The lines ``lightbox demo`` prints, in order (after "started a DICOM server...").
STEPS = [
    r"1\. registered patient (?P<patient>DEMO-[0-9A-F]{8}) and order (?P<order>\d+), "
    r"accession number (?P<accession>\S+)",
    rf"2\. worklist: step (?P<sps>\S+) for study (?P<study>{UID})",
    r"3\. MPPS IN PROGRESS",
    r"4\. stored (?P<images>\d+) CT images",
    r"5\. MPPS COMPLETED",
    rf"6\. Waiting list: study (?P<listed>{UID}) is acquired",
]


def lightbox(data_dir: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The console script of the venv, on ``data_dir`` and ``port``, nothing else from the environment."""
    script = Path(sys.executable).with_name("lightbox")
    assert script.is_file(), f"the console script {script} (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTBOX_")}
    env.update(LIGHTBOX_DICOM_HOST="127.0.0.1", LIGHTBOX_LOG_LEVEL="WARNING")
    return subprocess.run(
        [str(script), "demo", "--data-dir", str(data_dir), "--dicom-port", str(port), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def check_waiting_list(runtime: Runtime, study: str, order_id: int, accession: str, images: int) -> None:
    """The study is on the Waiting list, acquired, linked to its order; the order is completed."""
    (entry,) = [e for e in WaitingList(runtime.index).entries(WaitingFilter()).entries
                if e.study_instance_uid == study]  # fmt: skip
    assert entry.state is WorkflowState.ACQUIRED
    assert (entry.order_id, entry.accession_number) == (order_id, accession)
    assert (entry.number_of_instances, entry.modality) == (images, "CT")
    order = runtime.registration.get_order(order_id)
    assert order.state is OrderState.COMPLETED
    assert order.procedures[0].study_instance_uid == study


def test_the_command_runs_the_workflow_with_its_own_server(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    done = lightbox(data_dir, port, "--slices", "4")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"started a DICOM server in this process on port {port}", done.stdout
    assert len(lines) == 1 + len(STEPS), done.stdout
    found: dict[str, str] = {}
    for pattern, line in zip(STEPS, lines[1:]):
        match = re.fullmatch(pattern, line)
        assert match, (pattern, line)
        found.update(match.groupdict())
    assert found["images"] == "4" and found["listed"] == found["study"]
    # No Traceback or warning on stderr.
    assert done.stderr.strip() == "", done.stderr

    # The index, opened again: the study waits as acquired, linked to the order.
    runtime = open_runtime(get_settings(data_dir=data_dir, dicom_port=port))
    try:
        check_waiting_list(runtime, found["study"], int(found["order"]), found["accession"], 4)
        order = runtime.registration.get_order(int(found["order"]))
        assert order.patient.patient_id == found["patient"]
        assert order.procedures[0].steps[0].sps_id == found["sps"]
        # The images as stored carry the worklist's keys and the MPPS they
        # belong to (IHE RAD TF-2 4.8.4.1.3), and were sent by the demo AE.
        stored = runtime.index.list_instances(found["study"])
        assert [i.instance_number for i in stored] == [1, 2, 3, 4]
        assert {i.calling_ae for i in stored} == {DEMO_AE}
        image = pydicom.dcmread(io.BytesIO(runtime.blobs.get(stored[0].storage_key)))
        assert (image.PatientID, image.AccessionNumber) == (found["patient"], found["accession"])
        assert image.RequestAttributesSequence[0].ScheduledProcedureStepID == found["sps"]
        (performed,) = image.ReferencedPerformedProcedureStepSequence
        assert performed.ReferencedSOPClassUID == MPPS
        step = PerformedProcedureSteps(runtime.index).get(performed.ReferencedSOPInstanceUID)
        assert step.status is PerformedStatus.COMPLETED and step.sps_ids == [found["sps"]]
    finally:
        runtime.close()


def test_the_command_says_why_without_a_server(tmp_path: Path) -> None:
    port = free_port()
    done = lightbox(tmp_path / "data", port, "--running")
    assert done.returncode == 1
    # The last line says why (above it, pynetdicom's own ERROR lines about the refused connection).
    assert done.stderr.splitlines()[-1] == f"demo failed: no association with LIGHTBOX at 127.0.0.1:{port}"
    assert "Traceback" not in done.stderr
    # The association comes first: nothing was registered, no order is left on the worklist.
    assert done.stdout == ""
    runtime = open_runtime(get_settings(data_dir=tmp_path / "data", dicom_port=port))
    try:
        assert WaitingList(runtime.index).entries().total == 0
    finally:
        runtime.close()


def test_run_demo_against_a_running_server(runtime: Runtime, settings: Settings) -> None:
    server = build_dicom_server(runtime).start()
    try:
        printed: list[str] = []
        first = run_demo(settings, echo=printed.append, start_server=False, slices=2)
        # None: the port answers, so no second server is started in this process.
        second = run_demo(settings, echo=printed.append, start_server=None, slices=1)
    finally:
        server.stop()
    assert not first.in_process_server and not second.in_process_server
    assert not any(line.startswith("started") for line in printed), printed
    assert [line[:2] for line in printed] == ["1.", "2.", "3.", "4.", "5.", "6."] * 2
    for result, images in ((first, 2), (second, 1)):
        assert result.state is WorkflowState.ACQUIRED and result.instances == images
        check_waiting_list(runtime, result.study_instance_uid, result.order_id,
                           result.accession_number, images)  # fmt: skip
    assert first.study_instance_uid != second.study_instance_uid
    assert first.accession_number != second.accession_number

    # The running server saw one more modality: its trail names the demo AE.
    def demo_events() -> set[tuple[str, str]]:
        return {(r.event_id, r.action) for r in runtime.audit.query(actor=DEMO_AE, limit=100)}

    expected = {("110112", "E"), ("110111", "C"), ("110111", "U"), ("110104", "C")}
    wait_for(lambda: expected <= demo_events())
    assert expected <= demo_events(), expected - demo_events()
    stored = runtime.audit.query(actor=DEMO_AE, event_id="110104", study_instance_uid=first.study_instance_uid)
    assert stored and stored[0].detail["instances"] == 2 and stored[0].patient_id == first.patient_id


def test_run_demo_without_a_server_fails_cleanly(settings: Settings) -> None:
    with pytest.raises(DemoFailed, match="no association"):
        run_demo(settings, echo=lambda line: None, start_server=False, timeout=5)


def test_run_demo_says_when_the_device_policy_refuses_the_worklist(runtime: Runtime, settings: Settings) -> None:
    """The demo AE registered as uni-directional: the worklist answers 0124H, and the demo says so."""
    DeviceRegistry(runtime.index).add(DEMO_AE, setup=DeviceSetup.UNI_DIRECTIONAL)
    printed: list[str] = []
    with pytest.raises(DemoFailed) as failed:
        run_demo(settings, echo=printed.append, start_server=True, timeout=5)
    assert str(failed.value) == "the worklist query was refused: status 0x0124 (calling AE may not use worklist)"
    assert printed[0].startswith("started a DICOM server") and printed[1].startswith("1. registered")
    assert len(printed) == 2
    # Nothing was acquired: the demo order left the worklist again.
    [order] = runtime.registration.list_orders(limit=10)
    assert order.state is OrderState.CANCELLED


def test_in_process_refused_when_the_port_is_taken(runtime: Runtime, settings: Settings) -> None:
    """A second server would share the port (SO_REUSEPORT) and split the associations."""
    with socket.create_server(("127.0.0.1", settings.dicom_port)):
        with pytest.raises(DemoFailed, match="already answers"):
            run_demo(settings, echo=lambda line: None, start_server=True, timeout=5)
    assert runtime.registration.list_orders(limit=10) == []
