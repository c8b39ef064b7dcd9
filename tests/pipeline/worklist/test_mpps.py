"""The MPPS SCP with pynetdicom as the modality: N-CREATE, N-SET, and the order following.

A :class:`DicomIngestServer` runs the :class:`PerformedProcedureStepSCP` in this
process; orders are registered with the service. Statuses are those of
PS3.4 F.7.2 and PS3.7 C.4.2.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from pipeline.config import Settings
from pipeline.index.schema import OrderState, StepStatus
from pipeline.ingest.scp import DicomIngestServer
from pipeline.runtime import Runtime
from pipeline.worklist.mpps import MPPS, PerformedProcedureStepSCP
from pipeline.worklist.performed import PerformedProcedureSteps
from pipeline.worklist.registration import Order, ProcedureRequest
from tests.pipeline.security.test_tls import audit_rows, wait_for


@pytest.fixture
def order(runtime: Runtime) -> Order:
    reg = runtime.registration
    patient = reg.register_patient("MPPS-1", actor="user:desk", patient_name="Mpps^Mary").patient.id
    procedures = [
        ProcedureRequest(
            modality="CT", scheduled_start=datetime(2026, 12, 4, 9, 0), station_ae_title="CT01"
        ),
        ProcedureRequest(
            modality="CT", scheduled_start=datetime(2026, 12, 4, 9, 30), station_ae_title="CT01"
        ),
    ]
    return reg.create_order(patient, procedures, actor="user:desk")


@pytest.fixture
def assoc(runtime: Runtime, settings: Settings) -> Iterator[Association]:
    scp = PerformedProcedureStepSCP(
        PerformedProcedureSteps(runtime.index), runtime.audit, settings.ae_title
    )
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=[scp]).start()
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MPPS)
    association = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert association.is_established
    yield association
    association.release()
    srv.stop()


def in_progress(order: Order, procedure: int = 0, **overrides: Any) -> Dataset:
    """An N-CREATE Attribute List as a modality sends it (PS3.4 Table F.7.2-1)."""
    p = order.procedures[procedure]
    item = Dataset()
    item.StudyInstanceUID = p.study_instance_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = order.accession_number
    item.RequestedProcedureID = p.requested_procedure_id
    item.RequestedProcedureDescription = p.description
    item.ScheduledProcedureStepID = p.steps[0].sps_id
    item.ScheduledProcedureStepDescription = ""
    item.ScheduledProtocolCodeSequence = []
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = [item]
    ds.PatientName = order.patient.patient_name
    ds.PatientID = order.patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PerformedProcedureStepID = f"PPS{procedure}"
    ds.PerformedStationAETitle = "CT01"
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = "20261204"
    ds.PerformedProcedureStepStartTime = "090500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = []
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = ""
    ds.PerformedProtocolCodeSequence = []
    ds.PerformedSeriesSequence = []
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def final(status: str, series: bool = True, **overrides: Any) -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261204"
    ds.PerformedProcedureStepEndTime = "092000"
    if series:
        s = Dataset()
        s.SeriesInstanceUID = generate_uid()
        s.ProtocolName = "Head"
        s.RetrieveAETitle = ""
        s.PerformingPhysicianName = ""
        s.OperatorsName = ""
        s.SeriesDescription = ""
        s.ReferencedImageSequence = []
        ds.PerformedSeriesSequence = [s]
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds


def create(
    assoc: Association, ds: Dataset, uid: str | None = None
) -> tuple[Dataset, Dataset | None]:
    return assoc.send_n_create(ds, MPPS, uid or generate_uid())


def n_set(assoc: Association, uid: str, ds: Dataset) -> tuple[Dataset, Dataset | None]:
    return assoc.send_n_set(ds, MPPS, uid)


def states(runtime: Runtime, order: Order) -> tuple[OrderState, list[StepStatus]]:
    now = runtime.registration.get_order(order.id)
    return now.state, [p.steps[0].status for p in now.procedures]


def test_the_order_follows_the_performed_steps(
    assoc: Association, order: Order, runtime: Runtime
) -> None:
    first, second = generate_uid(), generate_uid()
    status, attrs = create(assoc, in_progress(order, 0), first)
    assert (
        status.Status == 0x0000
        and attrs is not None
        and attrs.PerformedProcedureStepStatus == "IN PROGRESS"
    )
    assert states(runtime, order) == (
        OrderState.IN_PROGRESS,
        [StepStatus.STARTED, StepStatus.SCHEDULED],
    )

    status, attrs = n_set(assoc, first, final("COMPLETED"))
    assert status.Status == 0x0000 and attrs.PerformedProcedureStepStatus == "COMPLETED"
    # One step of two done: the order is still in progress.
    assert states(runtime, order) == (
        OrderState.IN_PROGRESS,
        [StepStatus.COMPLETED, StepStatus.SCHEDULED],
    )

    assert create(assoc, in_progress(order, 1), second)[0].Status == 0x0000
    assert n_set(assoc, second, final("DISCONTINUED", series=False))[0].Status == 0x0000
    assert states(runtime, order) == (
        OrderState.COMPLETED,
        [StepStatus.COMPLETED, StepStatus.DISCONTINUED],
    )

    # No change after COMPLETED or DISCONTINUED (PS3.4 F.7.2.2.2): 0110H, Error ID A710H.
    for uid in (first, second):
        refused, _ = n_set(assoc, uid, final("IN PROGRESS"))
        assert (refused.Status, refused.ErrorID) == (0x0110, 0xA710)
    assert runtime.registration.get_order(order.id).state is OrderState.COMPLETED

    actors = {h.actor for h in runtime.registration.order_history(order.id) if h.action == "update"}
    assert actors == {"ae:CT01"}
    rows = wait_for(lambda: audit_rows(runtime, event_id="110111", patient_id="MPPS-1"))
    assert {r["action"] for r in rows} == {"C", "U"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"Modality": None}, 0x0120),  # Type 1 missing
        ({"PerformedProcedureStepID": ""}, 0x0121),  # Type 1 empty
        ({"PatientSex": None}, 0x0120),  # Type 2 missing
        ({"PerformedProcedureStepStatus": "COMPLETED"}, 0x0106),  # not IN PROGRESS
        ({"ScheduledStepAttributesSequence": []}, 0x0121),
    ],
    ids=["type1-missing", "type1-empty", "type2-missing", "not-in-progress", "no-scheduled-step"],
)
def test_n_create_attribute_rules(
    assoc: Association, order: Order, runtime: Runtime, overrides: dict[str, Any], status: int
) -> None:
    refused, _ = create(assoc, in_progress(order, **overrides))
    assert refused.Status == status and refused.ErrorComment
    # The attribute at fault is named.
    (keyword,) = overrides
    assert keyword in refused.ErrorComment
    # Nothing moved.
    assert states(runtime, order) == (
        OrderState.SCHEDULED,
        [StepStatus.SCHEDULED, StepStatus.SCHEDULED],
    )


def test_n_set_rules(assoc: Association, order: Order, runtime: Runtime) -> None:
    uid = generate_uid()
    assert create(assoc, in_progress(order), uid)[0].Status == 0x0000
    assert create(assoc, in_progress(order), uid)[0].Status == 0x0111  # duplicate SOP instance
    assert n_set(assoc, generate_uid(), final("COMPLETED"))[0].Status == 0x0112  # no such instance
    renamed = Dataset()
    renamed.PatientName = "Other^Name"
    refused, _ = n_set(assoc, uid, renamed)
    assert refused.Status == 0x0106  # N-CREATE only
    assert refused.AttributeIdentifierList == tag_for_keyword("PatientName")
    assert n_set(assoc, uid, final("DONE"))[0].Status == 0x0106
    no_end = final("COMPLETED")
    no_end.PerformedProcedureStepEndTime = ""
    assert n_set(assoc, uid, no_end)[0].Status == 0x0121
    assert n_set(assoc, uid, final("COMPLETED", series=False))[0].Status == 0x0121
    # The refusals changed nothing; an intermediate N-SET is kept.
    note = Dataset()
    note.CommentsOnThePerformedProcedureStep = "contrast given"
    assert n_set(assoc, uid, note)[0].Status == 0x0000
    step = PerformedProcedureSteps(runtime.index).get(uid)
    assert step.status.value == "IN PROGRESS"
    assert step.attributes.CommentsOnThePerformedProcedureStep == "contrast given"
    assert states(runtime, order)[1][0] is StepStatus.STARTED


def test_an_unscheduled_step_is_kept_and_linked_by_accession(
    assoc: Association, order: Order, runtime: Runtime
) -> None:
    ds = in_progress(order)
    ds.ScheduledStepAttributesSequence[0].ScheduledProcedureStepID = ""
    uid = generate_uid()
    assert create(assoc, ds, uid)[0].Status == 0x0000
    step = PerformedProcedureSteps(runtime.index).get(uid)
    assert step.sps_ids == [] and step.accession_number == order.accession_number
    # It names no scheduled step: none moves.
    assert states(runtime, order) == (
        OrderState.SCHEDULED,
        [StepStatus.SCHEDULED, StepStatus.SCHEDULED],
    )
