"""Registration, the worklist search and MPPS on every index backend (SQLite, PostgreSQL).

The counters (INSERT ... ON CONFLICT ... RETURNING), wild cards (GLOB on
SQLite, LIKE elsewhere) and the combined date-time range are written
differently per dialect: each runs here on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.errors import AlreadyExists, InvalidState
from pipeline.index import SqlIndex, migrate
from pipeline.index.schema import OrderState, StepStatus
from pipeline.worklist.performed import PerformedProcedureSteps
from pipeline.worklist.query import WorklistKeys, WorklistQuery
from pipeline.worklist.registration import ProcedureRequest, RegistrationService
from tests.pipeline.worklist.test_mpps import final, in_progress


@pytest.fixture
def index(index_url: str) -> Iterator[SqlIndex]:
    migrate(index_url)
    idx = SqlIndex(index_url)
    yield idx
    idx.close()


def test_registration_worklist_and_mpps(index: SqlIndex) -> None:
    reg = RegistrationService(index, "T{counter:03d}")
    jane = reg.register_patient("B-1", actor="u", patient_name="Doe^Jane",
                                patient_birth_date=date(1980, 5, 6), patient_sex="F")  # fmt: skip
    with pytest.raises(AlreadyExists):
        reg.register_patient("B-1", actor="u")
    twin = reg.register_patient("B-2", actor="u", patient_name="DOE^JANE",
                                patient_birth_date=date(1980, 5, 6), patient_sex="F")  # fmt: skip
    assert [w.id for w in twin.warnings] == [jane.patient.id]
    steps = [
        ProcedureRequest(modality="CT", scheduled_start=datetime(2026, 12, 4, 9, 30), station_ae_title="CT01"),
        ProcedureRequest(modality="MR", scheduled_start=datetime(2026, 12, 4, 14, 0), station_ae_title="MR01"),
    ]  # fmt: skip
    order = reg.create_order(jane.patient.id, steps, actor="u")
    other = reg.create_order(twin.patient.id, steps[:1], actor="u")
    assert (order.accession_number, other.accession_number) == ("T001", "T002")

    query = WorklistQuery(index)

    def found(top: dict[str, str], step: dict[str, str]) -> list[str]:
        return [r["sps_id"] for r in query.search(WorklistKeys(top, step))]

    ct, mr = (p.steps[0].sps_id for p in order.procedures)
    assert found({"PatientName": "doe*", "PatientID": "B-1"}, {}) == [ct, mr]
    assert found({}, {"ScheduledStationAETitle": "MR01"}) == [mr]
    assert found({}, {"ScheduledProcedureStepStartDate": "20261204",
                      "ScheduledProcedureStepStartTime": "1000-"}) == [mr]  # fmt: skip
    assert found({"AccessionNumber": "T00?"}, {"Modality": "CT"}) == [
        ct,
        other.procedures[0].steps[0].sps_id,
    ]

    mpps = PerformedProcedureSteps(index)
    uid = generate_uid()
    mpps.create(uid, in_progress(order, 0), calling_ae="CT01")
    assert reg.get_order(order.id).state is OrderState.IN_PROGRESS
    mpps.set(uid, final("COMPLETED"), calling_ae="CT01")
    with pytest.raises(InvalidState):
        mpps.set(uid, Dataset(), calling_ae="CT01")
    now = reg.get_order(order.id)
    assert [p.steps[0].status for p in now.procedures] == [
        StepStatus.COMPLETED,
        StepStatus.SCHEDULED,
    ]
    assert now.state is OrderState.IN_PROGRESS
    reg.cancel_order(other.id, actor="u")
    assert found({}, {"Modality": "CT"}) == []
