"""RegistrationService on a real index: duplicate checks, accession numbers,
orders with their steps, rescheduling, cancellation and the history."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from sqlalchemy import select

from pipeline.errors import AlreadyExists, InvalidRequest, InvalidState, NotFound
from pipeline.index.schema import OrderState, StepStatus, registration_history
from pipeline.runtime import Runtime
from pipeline.worklist.accession import check_format, render, scope
from pipeline.worklist.registration import (
    Code,
    ProcedureRequest,
    RegistrationService,
    StepChange,
)

CT = ProcedureRequest(
    modality="CT",
    scheduled_start=datetime(2026, 12, 4, 9, 30),
    description="CT head without contrast",
    code=Code("CTHEAD", "99LB", "CT head"),
    station_ae_title="CT01",
    station_name="CT ROOM 1",
    performing_physician_name="Tech^Terry",
    protocol_code=Code("P-HEAD", "99LB", "Head routine"),
)


@pytest.fixture
def service(runtime: Runtime) -> RegistrationService:
    return runtime.registration


def _patient(service: RegistrationService, pid: str = "REG-1", **kw: object) -> int:
    fields = {
        "patient_name": "Roe^Richard",
        "patient_birth_date": date(1961, 2, 3),
        "patient_sex": "M",
        **kw,
    }
    return service.register_patient(pid, actor="user:desk", **fields).patient.id  # type: ignore[arg-type]


def test_register_and_the_duplicate_checks(service: RegistrationService) -> None:
    first = service.register_patient(
        "REG-1",
        actor="user:desk",
        issuer_of_patient_id="HOSP",
        patient_name="Roe^Richard",
        patient_birth_date=date(1961, 2, 3),
        patient_sex="m",
    )
    assert first.warnings == []
    p = first.patient
    assert (p.patient_id, p.issuer_of_patient_id, p.patient_birth_date, p.patient_sex) == (
        "REG-1",
        "HOSP",
        "19610203",
        "M",
    )
    # Same ID and issuer: refused. Same ID, another issuer: another patient.
    with pytest.raises(AlreadyExists):
        service.register_patient("REG-1", actor="user:desk", issuer_of_patient_id="HOSP")
    service.register_patient("REG-1", actor="user:desk", issuer_of_patient_id="OTHER")
    # Same name (other case, trailing components), birth date and sex, another ID: a warning.
    second = service.register_patient(
        "REG-2",
        actor="user:desk",
        patient_name="ROE^RICHARD^^",
        patient_birth_date=date(1961, 2, 3),
        patient_sex="M",
    )
    assert [(w.id, w.patient_id, w.issuer_of_patient_id) for w in second.warnings] == [
        (p.id, "REG-1", "HOSP")
    ]
    # Another sex: no warning.
    third = service.register_patient(
        "REG-3",
        actor="user:desk",
        patient_name="Roe^Richard",
        patient_birth_date=date(1961, 2, 3),
        patient_sex="F",
    )
    assert third.warnings == []


@pytest.mark.parametrize(
    "fields",
    [
        {"patient_id": ""},
        {"patient_id": "A" * 65},
        {"patient_id": "A\\B"},
        {"patient_sex": "X"},
        {"patient_name": "A^B^C^D^E^F"},
        {"patient_name": "A" * 65},
        {"issuer_of_patient_id": "line\nbreak"},
    ],
)
def test_values_are_checked_against_their_vr(service: RegistrationService, fields: dict) -> None:
    args = {"patient_id": "OK-1", **fields}
    with pytest.raises(InvalidRequest):
        service.register_patient(args.pop("patient_id"), actor="user:desk", **args)


def test_update_patient_keeps_history(service: RegistrationService, runtime: Runtime) -> None:
    pk = _patient(service)
    other = _patient(service, "REG-9", patient_name="Else^Body")
    updated = service.update_patient(
        pk, actor="user:clerk", patient_name="Roe^Rick", patient_sex="M"
    )
    assert (
        updated.patient.patient_name == "Roe^Rick"
        and updated.patient.patient_birth_date == "19610203"
    )
    with pytest.raises(AlreadyExists):
        service.update_patient(other, actor="user:clerk", patient_id="REG-1")
    with pytest.raises(NotFound):
        service.update_patient(99999, actor="user:clerk", patient_name="X")
    history = service.history("patient", pk)
    assert [(h.action, h.actor) for h in history] == [
        ("create", "user:desk"),
        ("update", "user:clerk"),
    ]
    assert history[1].before == {"patient_name": "Roe^Richard"}
    assert history[1].after == {"patient_name": "Roe^Rick"}
    # The refused update wrote nothing.
    assert [h.action for h in service.history("patient", other)] == ["create"]


def test_order_with_two_procedures(service: RegistrationService) -> None:
    pk = _patient(service)
    mr = ProcedureRequest(
        modality="MR",
        scheduled_start=datetime(2026, 12, 5, 14, 0),
        description="MR knee",
        station_ae_title="MR01",
    )
    order = service.create_order(
        pk, [CT, mr], actor="user:desk", referring_physician_name="Ref^Rita"
    )
    assert order.state is OrderState.SCHEDULED and order.patient.id == pk
    today = datetime.now().strftime("%Y%m%d")
    assert order.accession_number == today + "0001"
    assert len(order.procedures) == 2
    ct, mrp = order.procedures
    assert (
        ct.code == Code("CTHEAD", "99LB", "CT head")
        and ct.study_instance_uid != mrp.study_instance_uid
    )
    (step,) = ct.steps
    assert (
        step.modality,
        step.station_ae_title,
        step.start_date,
        step.start_time,
        step.status,
    ) == ("CT", "CT01", "20261204", "093000", StepStatus.SCHEDULED)
    assert step.protocol_code == Code("P-HEAD", "99LB", "Head routine")
    assert mrp.steps[0].description == "MR knee"  # the procedure's, when the step has none
    assert len({ct.requested_procedure_id, mrp.requested_procedure_id}) == 2
    assert len({ct.steps[0].sps_id, mrp.steps[0].sps_id}) == 2
    second = service.create_order(pk, [CT], actor="user:desk")
    assert second.accession_number == today + "0002"
    assert [o.id for o in service.list_orders(patient=pk)] == [second.id, order.id]
    assert service.list_orders(accession_number=order.accession_number)[0].id == order.id


def test_given_accession_numbers_and_the_scheme(service: RegistrationService) -> None:
    pk = _patient(service)
    today = datetime.now().strftime("%Y%m%d")
    # A RIS took the scheme's next number: the scheme skips it.
    service.create_order(pk, [CT], actor="hl7:RIS", accession_number=today + "0001")
    with pytest.raises(AlreadyExists):
        service.create_order(pk, [CT], actor="hl7:RIS", accession_number=today + "0001")
    assert service.create_order(pk, [CT], actor="user:desk").accession_number == today + "0002"
    with pytest.raises(InvalidRequest):
        service.create_order(pk, [CT], actor="user:desk", accession_number="A" * 17)
    with pytest.raises(InvalidRequest):
        service.create_order(pk, [], actor="user:desk")
    with pytest.raises(NotFound):
        service.create_order(12345, [CT], actor="user:desk")


def test_accession_format_scopes() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5)
    assert scope("{date:%Y%m%d}{counter:04d}", when) == "20260102#"
    assert scope("LB{counter:06d}", when) == "LB#"
    assert render("CT{date:%y%m%d}{counter:05d}", when, 42) == "CT26010200042"
    for bad in (
        "{date:%Y%m%d}",
        "{counter}{counter}",
        "{patient}{counter}",
        "{date:%Y%m%d%H%M%S}{counter:04d}",
        "A\\{counter}",
    ):
        with pytest.raises(ValueError):
            check_format(bad)
    with pytest.raises(InvalidRequest):
        render("{date:%Y%m%d}{counter:04d}", when, 10**9)


def test_custom_scheme(runtime: Runtime) -> None:
    service = RegistrationService(runtime.index, "LB{counter:06d}")
    pk = _patient(service)
    assert [service.create_order(pk, [CT], actor="u").accession_number for _ in range(2)] == [
        "LB000001",
        "LB000002",
    ]


def test_reschedule_and_cancel(service: RegistrationService) -> None:
    pk = _patient(service)
    order = service.create_order(pk, [CT], actor="user:desk")
    sps_id = order.procedures[0].steps[0].sps_id
    moved = service.update_order(
        order.id,
        actor="user:clerk",
        referring_physician_name="Other^Doc",
        steps=[
            StepChange(
                sps_id, scheduled_start=datetime(2026, 12, 6, 8, 15), station_ae_title="CT02"
            )
        ],
    )
    step = moved.procedures[0].steps[0]
    assert (step.start_date, step.start_time, step.station_ae_title) == (
        "20261206",
        "081500",
        "CT02",
    )
    assert moved.referring_physician_name == "Other^Doc"
    with pytest.raises(NotFound):
        service.update_order(
            order.id, actor="user:clerk", steps=[StepChange("SPS-NOPE", modality="MR")]
        )
    cancelled = service.cancel_order(order.id, actor="user:clerk", reason="patient declined")
    assert cancelled.state is OrderState.CANCELLED
    assert cancelled.procedures[0].steps[0].status is StepStatus.CANCELED
    with pytest.raises(InvalidState):
        service.cancel_order(order.id, actor="user:clerk")
    with pytest.raises(InvalidState):
        service.update_order(order.id, actor="user:clerk", reason="too late")
    actions = [(h.entity, h.action, h.actor) for h in service.order_history(order.id)]
    assert actions == [
        ("order", "create", "user:desk"),
        ("procedure", "create", "user:desk"),
        ("step", "create", "user:desk"),
        ("order", "update", "user:clerk"),
        ("step", "update", "user:clerk"),
        ("order", "cancel", "user:clerk"),
        ("step", "cancel", "user:clerk"),
    ]


def test_a_failed_change_writes_no_history(service: RegistrationService, runtime: Runtime) -> None:
    pk = _patient(service)
    with runtime.index.engine.connect() as conn:
        before = len(conn.execute(select(registration_history)).all())
    with pytest.raises(InvalidRequest):
        service.create_order(
            pk,
            [CT, ProcedureRequest(modality="ct!", scheduled_start=datetime.now())],
            actor="user:desk",
        )
    with runtime.index.engine.connect() as conn:
        assert len(conn.execute(select(registration_history)).all()) == before


def test_the_setting_is_checked_when_read() -> None:
    from pydantic import ValidationError

    from pipeline.config import get_settings

    assert get_settings(accession_format="CT{counter:06d}").accession_format == "CT{counter:06d}"
    with pytest.raises(ValidationError, match="counter"):
        get_settings(accession_format="{date:%Y%m%d}")
