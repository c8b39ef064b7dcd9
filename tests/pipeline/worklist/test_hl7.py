"""HL7 v2 over MLLP: a client in the test (a socket, framed by hand) against the real listener.

Every message is answered with an ACK whose MSA-2 is the message's control
ID (HL7 v2.5 2.9.2, original mode); refused messages (AR) and messages that
cannot be processed (AE) change nothing, which is checked by counting the
registration's rows and history before and after; and the listener keeps
serving the same connection after each. What the messages registered is
then seen where a modality sees it: the worklist (``findscu -W``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import hl7
import pytest
from sqlalchemy import func, select

from pipeline.config import Settings
from pipeline.errors import InvalidRequest, NotFound
from pipeline.index.schema import (
    OrderState,
    StepStatus,
    orders,
    registered_patients,
    registration_history,
    requested_procedures,
    scheduled_procedure_steps,
)
from pipeline.ingest.scp import DicomIngestServer
from pipeline.runtime import Runtime
from pipeline.security.audit import EventID
from pipeline.serve import start_hl7
from pipeline.worklist.hl7 import HL7Intake
from pipeline.worklist.mllp import FrameReader, MLLPServer
from pipeline.worklist.mwl import ModalityWorklistSCP
from pipeline.worklist.query import WorklistKeys, WorklistQuery
from pipeline.worklist.registration import ProcedureRequest
from tests.conftest import free_port
from tests.pipeline.worklist.test_mwl import RAD5, SPS, findscu_w, step_keys

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
LIMIT = 16 * 1024


# -- a client, by hand ---------------------------------------------------------------------


class Client:
    """One MLLP connection: send a block, read the answer's block."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=30)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> hl7.Message:
        buf = b""
        while not buf.endswith(FS + CR):
            chunk = self.sock.recv(65536)
            assert chunk, "the listener closed the connection"
            buf += chunk
        assert buf.startswith(VT) and buf.count(VT) == 1, buf
        return hl7.parse(buf[1:-2].decode("latin-1"))

    def send(self, message: str | bytes) -> hl7.Message:
        data = message.encode() if isinstance(message, str) else message
        self.sock.sendall(VT + data + FS + CR)
        return self.answer()

    def close(self) -> None:
        self.sock.close()


def segment(name: str, **fields: str) -> str:
    """A segment with ``f<N>=value`` fields (``f3="P1^^^HOSP"`` is field 3)."""
    numbered = {int(k[1:]): v for k, v in fields.items()}
    top = max(numbered, default=0)
    return "|".join([name, *(numbered.get(i, "") for i in range(1, top + 1))])


def message(kind: str, control: str, *segments: str, version: str = "2.5", **msh: str) -> str:
    header = {"f3": "RIS", "f4": "HOSP", "f5": "LIGHTBOX", "f6": "HOSP", "f7": "20261204080000",
              "f9": kind, "f10": control, "f11": "P", "f12": version, **msh}
    # MSH-1 is the field separator itself: MSH-2 is the first field after "MSH|".
    numbered = {int(k[1:]): v for k, v in header.items()}
    msh_text = "MSH|^~\\&|" + "|".join(numbered.get(i, "") for i in range(3, max(numbered) + 1))
    return "\r".join([msh_text, *segments]) + "\r"


def pid(patient_id: str = "HL7-1^^^HOSP^MR", name: str = "", birth: str = "", sex: str = "") -> str:
    return segment("PID", f1="1", f3=patient_id, f5=name, f7=birth, f8=sex)


def orm(control: str, order_control: str = "NW", *, patient: str = "HL7-1^^^HOSP^MR",
        accession: str = "ACC-HL7-1", modality: str = "CT", start: str = "20261204093000",
        station: str = "CT01", placer: str = "PL-1", code: str = "CTHEAD^CT head^99LB") -> str:
    return message(
        "ORM^O01^ORM_O01", control,
        pid(patient),
        segment("PV1", f1="1", f2="O", f8="D01^Ref^Rita"),
        segment("ORC", f1=order_control, f2=placer, f7=f"^^^{start}", f18=station),
        segment("OBR", f1="1", f2=placer, f4=code, f18=accession, f24=modality),
        version="2.3.1",
    )


def msa(ack: hl7.Message) -> tuple[str, str]:
    seg = ack.segment("MSA")
    return str(seg(1)), str(seg(2))


def err_code(ack: hl7.Message) -> str:
    return str(ack.segment("ERR")(3)(1)(1))


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def listener(runtime: Runtime) -> Iterator[MLLPServer]:
    intake = HL7Intake(runtime.registration, runtime.audit)
    server = MLLPServer(
        intake.handle, intake.reject_oversize, "127.0.0.1", free_port(), max_message_bytes=LIMIT
    ).start()
    yield server
    server.stop()


@pytest.fixture
def client(listener: MLLPServer) -> Iterator[Client]:
    c = Client(listener.address)
    yield c
    c.close()


def counts(runtime: Runtime) -> dict[str, Any]:
    """Rows of every registration table, and the patients' and orders' states."""
    tables = (registered_patients, orders, requested_procedures, scheduled_procedure_steps,
              registration_history)
    with runtime.index.engine.connect() as conn:
        found: dict[str, Any] = {
            t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in tables
        }
        found["patients"] = sorted(tuple(r) for r in conn.execute(select(
            registered_patients.c.patient_id, registered_patients.c.patient_name,
            registered_patients.c.patient_birth_date, registered_patients.c.patient_sex)))
        found["orders"] = sorted(tuple(r) for r in conn.execute(
            select(orders.c.accession_number, orders.c.patient_pk, orders.c.state)))
    return found


def worklist(runtime: Runtime, **step: str) -> list[dict[str, Any]]:
    return list(WorklistQuery(runtime.index).search(WorklistKeys({}, step)))


# -- the flow ------------------------------------------------------------------------------


def test_adt_then_orders_through_the_worklist(
    client: Client, runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    ack = client.send(message("ADT^A04^ADT_A01", "MSG-1",
                              pid(name="Doe^Jane^Q", birth="19800506", sex="F")))
    assert msa(ack) == ("AA", "MSG-1")
    assert str(ack.segment("MSH")(9)) == "ACK^A04^ACK"
    [patient] = runtime.registration.list_patients(patient_id="HL7-1")
    assert (patient.issuer_of_patient_id, patient.patient_name, patient.patient_birth_date,
            patient.patient_sex) == ("HOSP", "Doe^Jane^Q", "19800506", "F")

    # A08: the name changes; the fields not sent (birth date, sex) stay.
    ack = client.send(message("ADT^A08^ADT_A01", "MSG-2", pid(name="Doe^Janet")))
    assert msa(ack) == ("AA", "MSG-2")
    patient = runtime.registration.get_patient(patient.id)
    assert (patient.patient_name, patient.patient_birth_date, patient.patient_sex) == (
        "Doe^Janet", "19800506", "F")
    history = runtime.registration.history("patient", patient.id)
    assert [(h.action, h.actor) for h in history] == [("create", "hl7:RIS"), ("update", "hl7:RIS")]
    assert history[1].before == {"patient_name": "Doe^Jane^Q"}

    ack = client.send(orm("MSG-3"))
    assert msa(ack) == ("AA", "MSG-3")
    [order] = runtime.registration.list_orders(accession_number="ACC-HL7-1")
    assert (order.patient.id, order.state, order.placer_order_number,
            order.referring_physician_name) == (patient.id, OrderState.SCHEDULED, "PL-1", "Ref^Rita")
    [procedure] = order.procedures
    assert (procedure.description, procedure.code.value if procedure.code else None) == (
        "CT head", "CTHEAD")
    [step] = procedure.steps
    assert (step.modality, step.station_ae_title, step.start_date, step.start_time, step.status) == (
        "CT", "CT01", "20261204", "093000", StepStatus.SCHEDULED)
    assert {h.actor for h in runtime.registration.order_history(order.id)} == {"hl7:RIS"}

    # The modality's view: findscu -W against the Modality Worklist SCP.
    mwl = ModalityWorklistSCP(WorklistQuery(runtime.index), runtime.audit, settings.ae_title)
    scp = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=[mwl]).start()
    try:
        [found] = findscu_w(settings, tmp_path / "rsp", *RAD5,
                            *step_keys(ScheduledStationAETitle="CT01"))
        assert (found.PatientID, str(found.PatientName), found.AccessionNumber,
                found.StudyInstanceUID) == ("HL7-1", "Doe^Janet", "ACC-HL7-1",
                                            procedure.study_instance_uid)
        item = found[SPS][0]
        assert (item.Modality, item.ScheduledProcedureStepStartDate,
                item.ScheduledProcedureStepID) == ("CT", "20261204", step.sps_id)

        # ORC-1 CA: the order is cancelled, its step leaves the worklist.
        ack = client.send(orm("MSG-4", "CA"))
        assert msa(ack) == ("AA", "MSG-4")
        assert runtime.registration.get_order(order.id).state is OrderState.CANCELLED
        assert findscu_w(settings, tmp_path / "rsp", *RAD5,
                         *step_keys(ScheduledStationAETitle="CT01")) == []
    finally:
        scp.stop()

    # Each message is in the audit trail, with the sending application.
    trail = runtime.audit.query(actor="hl7:RIS", limit=50)
    assert sorted((r.event_id, r.action, r.detail["control_id"]) for r in trail) == [
        (EventID.ORDER_RECORD.value, "C", "MSG-3"),
        (EventID.ORDER_RECORD.value, "D", "MSG-4"),
        (EventID.PATIENT_RECORD.value, "C", "MSG-1"),
        (EventID.PATIENT_RECORD.value, "U", "MSG-2"),
    ]
    assert all(r.patient_id == "HL7-1" for r in trail)


def test_omi_o23(client: Client, runtime: Runtime) -> None:
    assert msa(client.send(message("ADT^A04", "M1", pid(name="Roe^Rick"))))[0] == "AA"
    omi = message(
        "OMI^O23^OMI_O23", "M2",
        pid(),
        segment("ORC", f1="NW", f2="PL-9"),
        segment("TQ1", f1="1", f7="202612051415"),
        segment("OBR", f1="1", f2="PL-9", f4="MRKNEE^MR knee^99LB"),
        segment("IPC", f1="ACC-OMI-1", f2="RP-1", f5="MR^MR^DCM", f6="P-KNEE^Knee routine^99LB",
                f7="MR ROOM 1", f9="MR01"),
    )
    assert msa(client.send(omi)) == ("AA", "M2")
    [order] = runtime.registration.list_orders(accession_number="ACC-OMI-1")
    [step] = order.procedures[0].steps
    assert (step.modality, step.station_ae_title, step.station_name, step.start_date,
            step.start_time) == ("MR", "MR01", "MR ROOM 1", "20261205", "141500")
    assert step.protocol_code is not None and step.protocol_code.value == "P-KNEE"
    assert [r["accession_number"] for r in worklist(runtime, ScheduledStationAETitle="MR01")] == [
        "ACC-OMI-1"]

    # No accession number in the message: one is generated by the configured scheme.
    omi = message(
        "OMI^O23", "M3", pid(), segment("ORC", f1="NW", f2="PL-10"),
        segment("TQ1", f1="1", f7="20261206"),
        segment("OBR", f1="1", f2="PL-10", f4="MRHEAD^MR head^99LB"),
        segment("IPC", f5="MR", f9="MR01"),
    )
    assert msa(client.send(omi)) == ("AA", "M3")
    [generated] = runtime.registration.list_orders(patient=order.patient.id, limit=1)
    assert generated.accession_number != "ACC-OMI-1" and generated.placer_order_number == "PL-10"
    assert generated.accession_number.isdigit() and len(generated.accession_number) == 12

    # OMI cancel by placer order number (no accession number sent).
    cancel = message("OMI^O23", "M4", pid(), segment("ORC", f1="CA", f2="PL-10"),
                     segment("OBR", f1="1", f2="PL-10"))
    assert msa(client.send(cancel)) == ("AA", "M4")
    assert runtime.registration.get_order(generated.id).state is OrderState.CANCELLED
    assert runtime.registration.get_order(order.id).state is OrderState.SCHEDULED


def test_a40_merge(client: Client, runtime: Runtime) -> None:
    for control, patient_id in (("M1", "SURV^^^HOSP"), ("M2", "PRIOR^^^HOSP")):
        assert msa(client.send(message("ADT^A04", control, pid(patient_id, "Doe^Jo"))))[0] == "AA"
    assert msa(client.send(orm("M3", patient="PRIOR^^^HOSP", accession="ACC-M1")))[0] == "AA"
    [survivor] = runtime.registration.list_patients(patient_id="SURV")
    [prior] = runtime.registration.list_patients(patient_id="PRIOR")

    a40 = message("ADT^A40^ADT_A39", "M4", pid("SURV^^^HOSP"),
                  segment("MRG", f1="PRIOR^^^HOSP"))
    assert msa(client.send(a40)) == ("AA", "M4")
    [order] = runtime.registration.list_orders(accession_number="ACC-M1")
    assert order.patient.id == survivor.id
    assert runtime.registration.list_patients(patient_id="PRIOR") == []
    assert [r["patient_id"] for r in worklist(runtime, ScheduledStationAETitle="CT01")] == ["SURV"]
    merge = runtime.registration.history("patient", survivor.id)[-1]
    assert (merge.action, merge.actor, merge.after["merged_from"]) == ("merge", "hl7:RIS", prior.id)
    assert runtime.registration.history("patient", prior.id)[-1].after == {
        "merged_into": survivor.id}
    assert ("merge", {"patient_pk": prior.id}) in [
        (h.action, h.before) for h in runtime.registration.order_history(order.id)]

    # A second A40 naming the prior again: it is gone, AE, nothing changes.
    before = counts(runtime)
    ack = client.send(message("ADT^A40", "M5", pid("SURV^^^HOSP"), segment("MRG", f1="PRIOR^^^HOSP")))
    assert (msa(ack), err_code(ack)) == (("AE", "M5"), "204")
    assert counts(runtime) == before

    # A survivor not registered: the prior record continues under its identifier.
    a40 = message("ADT^A40", "M6", pid("NEWID^^^HOSP"), segment("MRG", f1="SURV^^^HOSP"))
    assert msa(client.send(a40)) == ("AA", "M6")
    [renamed] = runtime.registration.list_patients(patient_id="NEWID")
    assert renamed.id == survivor.id
    assert runtime.registration.get_order(order.id).patient.patient_id == "NEWID"


def test_merge_patients_service(runtime: Runtime) -> None:
    reg = runtime.registration
    a = reg.register_patient("MA", actor="t").patient
    b = reg.register_patient("MB", actor="t").patient
    with pytest.raises(InvalidRequest, match="itself"):
        reg.merge_patients(a.id, a.id, actor="t")
    order = reg.create_order(b.id, [ProcedureRequest("CT", datetime(2026, 12, 4, 9))], actor="t")
    merged = reg.merge_patients(a.id, b.id, actor="t")
    assert merged.id == a.id
    assert reg.get_order(order.id).patient.id == a.id
    with pytest.raises(NotFound):
        reg.get_patient(b.id)
    with pytest.raises(NotFound):
        reg.merge_patients(a.id, b.id, actor="t")


# -- refusals --------------------------------------------------------------------------------


def _bad_cases() -> list[tuple[str, bytes, str, str, str]]:
    """(name, content, MSA-1, MSA-2, ERR-3 code)."""
    ok = message("ADT^A08", "X", pid(name="Doe^Jane"))
    two_obr = orm("B10").rstrip("\r") + "\r" + segment(
        "OBR", f1="2", f2="PL-1", f4="X^Y^99LB", f18="ACC-HL7-1", f24="C*T") + "\r"
    return [
        ("no MSH", b"PID|1||HL7-1^^^HOSP^MR\r", "AR", "", "100"),
        ("garbage", bytes(range(0, 256, 7)) + b"\xff\xfe", "AR", "", "100"),
        ("bad encoding characters", b"MSH|^^\\&|RIS|HOSP|||2026||ADT^A08|B1|P|2.5\r", "AR", "", "102"),
        ("unknown trigger", message("ADT^A99", "B2", pid()).encode(), "AR", "B2", "201"),
        ("unsupported type", message("ORU^R01", "B3", pid()).encode(), "AR", "B3", "200"),
        ("unsupported version", message("ADT^A08", "B4", pid(), version="2.1").encode(), "AR", "B4", "203"),
        ("training", message("ADT^A08", "B5", pid(), f11="T").encode(), "AR", "B5", "202"),
        ("missing PID-3", message("ADT^A04", "B6", pid(patient_id="", name="Doe^Jo")).encode(),
         "AE", "B6", "101"),
        ("ORM for unknown patient", orm("B7", patient="NOBODY^^^HOSP", accession="ACC-X").encode(),
         "AE", "B7", "204"),
        ("A08 for unknown patient", message("ADT^A08", "B8", pid("NOBODY^^^HOSP")).encode(),
         "AE", "B8", "204"),
        ("bad birth date", message("ADT^A08", "B9", pid(birth="19801350")).encode(), "AE", "B9", "102"),
        # The second OBR's modality breaks its VR: neither procedure is ordered.
        ("one bad procedure of two", two_obr.encode(), "AE", "B10", "102"),
        ("duplicate accession", orm("B11", accession="ACC-TAKEN").encode(), "AE", "B11", "205"),
        ("cancel of an unknown order", orm("B12", "CA", accession="ACC-NONE").encode(),
         "AE", "B12", "204"),
        ("unknown order control", orm("B13", "XO").encode(), "AE", "B13", "103"),
        ("oversize", (ok.replace("|X|", "|B14|") + "NTE|1||" + "x" * (2 * LIMIT) + "\r").encode(),
         "AR", "B14", "207"),
        ("bad character set", message("ADT^A08", "B15", pid(), f18="KLINGON").encode(),
         "AR", "B15", "103"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_refused_messages_change_nothing(
    case: tuple[str, bytes, str, str, str], client: Client, runtime: Runtime
) -> None:
    _, content, code, control, error = case
    reg = runtime.registration
    patient = reg.register_patient("HL7-1", actor="t", issuer_of_patient_id="HOSP",
                                   patient_name="Doe^Jane").patient
    reg.create_order(patient.id, [ProcedureRequest("CT", datetime(2026, 1, 1))],
                     actor="t", accession_number="ACC-TAKEN")
    before = counts(runtime)
    ack = client.send(content)
    assert msa(ack) == (code, control)
    assert err_code(ack) == error
    assert str(ack.segment("MSA")(3))  # the reason, in words
    assert counts(runtime) == before
    # The same connection goes on: an A08 that changes nothing is accepted.
    assert msa(client.send(message("ADT^A08", "NEXT", pid(name="Doe^Jane")))) == ("AA", "NEXT")
    assert counts(runtime) == before


def test_bytes_outside_blocks_are_discarded(client: Client, runtime: Runtime) -> None:
    client.send_raw(b"\x00junk before any block\r\n" + FS + CR)
    ack = client.send(message("ADT^A04", "G1", pid(name="Doe^Jane")))
    assert msa(ack) == ("AA", "G1")
    assert len(runtime.registration.list_patients(patient_id="HL7-1")) == 1


def test_character_sets(client: Client, runtime: Runtime) -> None:
    latin = message("ADT^A04", "C1", pid("CS-1^^^HOSP", name="M\u00fcller^J\u00fcrgen"),
                    f18="8859/1").encode("latin-1")
    assert msa(client.send(latin)) == ("AA", "C1")
    utf8 = message("ADT^A04", "C2", pid("CS-2^^^HOSP", name="\u00c5str\u00f6m^\u00c9lise"),
                   f18="UNICODE UTF-8").encode("utf-8")
    assert msa(client.send(utf8)) == ("AA", "C2")
    # Escaped delimiters (2.7.4) are read as the characters they stand for.
    escaped = message("ADT^A04", "C3", pid("CS-3\\T\\A^^^HOSP", name="O\\F\\Brien^Pat"))
    assert msa(client.send(escaped)) == ("AA", "C3")
    names = {p.patient_id: p.patient_name for p in runtime.registration.list_patients()}
    assert names == {"CS-1": "M\u00fcller^J\u00fcrgen", "CS-2": "\u00c5str\u00f6m^\u00c9lise",
                     "CS-3&A": "O|Brien^Pat"}


def test_frame_reader_any_chunking() -> None:
    stream = b"noise" + VT + b"MSH|one" + FS + CR + VT + b"MSH|two" + FS + b"x" + FS + CR
    for size in (1, 2, 3, 7, len(stream)):
        reader = FrameReader(1024)
        frames = [f for i in range(0, len(stream), size) for f in reader.feed(stream[i : i + size])]
        assert [f.data for f in frames] == [b"MSH|one", b"MSH|two" + FS + b"x"]
        assert reader.discarded == 5
    # A start byte inside a block starts it anew; an oversize block keeps its head.
    reader = FrameReader(1024)
    assert [f.data for f in reader.feed(VT + b"lost" + VT + b"kept" + FS + CR)] == [b"kept"]
    big = reader.feed(VT + b"MSH|" + b"y" * 10_000 + FS + CR)
    assert [(f.oversize, f.size, f.data[:4], len(f.data)) for f in big] == [
        (True, 10_004, b"MSH|", 4096)]


# -- lightbox serve's wiring -----------------------------------------------------------------


def test_serve_starts_the_listener(runtime: Runtime, settings: Settings) -> None:
    assert start_hl7(replace_settings(settings, hl7_port=0)) is None
    port = free_port()
    listener = start_hl7(replace_settings(settings, hl7_port=port, hl7_host="127.0.0.1"))
    assert listener is not None
    try:
        c = Client(("127.0.0.1", port))
        ack = c.send(message("ADT^A04", "S1", pid("SERVE-1^^^HOSP", name="Doe^Jane")))
        c.close()
        assert msa(ack) == ("AA", "S1")
        assert str(ack.segment("MSH")(3)) == settings.ae_title
    finally:
        listener.stop()
    assert runtime.registration.list_patients(patient_id="SERVE-1")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def replace_settings(settings: Settings, **changes: Any) -> Settings:
    return Settings(**{**settings.model_dump(), **changes})

