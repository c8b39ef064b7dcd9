"""The audit trail: queue and writer thread, coalescing, queries, append-only
storage, IHE ATNA messages over real UDP and TCP sockets, ``lightbox audit``."""

from __future__ import annotations

import base64
import getpass
import json
import os
import pickle
import queue
import re
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import Settings
from pipeline.index import SqlIndex, migrate
from pipeline.index.schema import audit_events
from pipeline.runtime import Runtime
from pipeline.security.atna import SyslogSender, audit_message_xml
from pipeline.security.audit import (
    Action,
    AuditEvent,
    AuditTrail,
    EventID,
    EventType,
    Outcome,
    parse_event_id,
)
from tests.conftest import free_port, require_tool
from tests.pipeline.index.conftest import index_url, postgres_url  # noqa: F401  (fixtures)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
STUDY = "1.2.826.0.1.3680043.8.498.1"
HEADER = re.compile(
    rb"^<(?P<pri>\d+)>1 (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) - "
)


def event(**values: Any) -> AuditEvent:
    """A render request of a study by a radiologist, unless ``values`` say otherwise."""
    defaults: dict[str, Any] = dict(
        event_id=EventID.INSTANCES_TRANSFERRED,
        action=Action.READ,
        actor_kind="user",
        actor="alice",
        role="radiologist",
        source_address="10.1.2.3",
        destination="/studies/{study}/rendered",
        patient_id="P-42",
        study_instance_uid=STUDY,
    )
    defaults.update(values)
    return AuditEvent(**defaults)


def row_count(index: SqlIndex) -> int:
    """Rows in audit_events, read directly (``query`` would flush first)."""
    with index.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_events)).scalar_one())


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def make_trail(runtime: Runtime) -> Iterator[Callable[..., AuditTrail]]:
    """Trails on the runtime's index (closed at the end), with test-sized timings."""
    made: list[AuditTrail] = []

    def make(**options: Any) -> AuditTrail:
        options.setdefault("source_id", "LIGHTBOX-TEST")
        options.setdefault("flush_interval", 3600.0)  # only explicit flushes, unless asked
        trail = AuditTrail(runtime.index, **options)
        made.append(trail)
        return trail

    yield make
    for trail in made:
        trail.close()


# -- queue, writer thread, coalescing ---------------------------------------------


def test_a_scrolled_series_is_one_row(make_trail: Callable[..., AuditTrail]) -> None:
    trail = make_trail()
    for i in range(300):
        trail.record(event(time=T0 + timedelta(milliseconds=10 * i)))
    trail.record(event(time=T0 + timedelta(seconds=1), detail={"frames": 2}))  # other detail
    trail.record(event(time=T0 + timedelta(seconds=2), study_instance_uid="1.2.3"))  # other study

    rows = trail.query()

    assert len(rows) == 3
    scrolled = next(r for r in rows if r.count > 1)
    assert scrolled.count == 300
    assert scrolled.event_time == T0
    assert scrolled.last_time == T0 + timedelta(milliseconds=2990)
    assert scrolled.detail == {}
    assert {r.count for r in rows} == {300, 1}
    assert next(r for r in rows if r.detail).detail == {"frames": 2}
    stats = trail.stats()
    assert (stats["recorded"], stats["written"], stats["rows"]) == (302, 302, 3)


def test_flush_writes_everything_recorded_before_it(
    make_trail: Callable[..., AuditTrail], runtime: Runtime
) -> None:
    trail = make_trail()  # the writer waits an hour between writes
    for i in range(3):
        trail.record(event(actor=f"user{i}", time=T0 + timedelta(minutes=i)))

    assert row_count(runtime.index) == 0  # queued, the caller did not wait on the database
    trail.flush()
    assert row_count(runtime.index) == 3
    assert [r.actor for r in trail.query()] == ["user2", "user1", "user0"]  # newest first


def test_the_writer_thread_writes_on_its_own(
    make_trail: Callable[..., AuditTrail], runtime: Runtime
) -> None:
    ticking = make_trail(flush_interval=0.05)
    ticking.record(event())
    assert wait_for(lambda: row_count(runtime.index) == 1)

    batched = make_trail(batch_size=10)  # an hour's interval: only a full batch wakes it
    for i in range(9):
        batched.record(event(detail={"i": i}))
    time.sleep(0.3)
    assert row_count(runtime.index) == 1
    batched.record(event(detail={"i": 9}))
    assert wait_for(lambda: row_count(runtime.index) == 11)
    assert ticking.stats()["written"] == 1 and batched.stats()["written"] == 10


def test_a_failed_write_is_kept_and_retried(
    make_trail: Callable[..., AuditTrail], runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = make_trail()
    trail.record(event(time=T0))
    trail.record(event(time=T0 + timedelta(seconds=1)))

    def unavailable() -> Any:
        raise OSError("database unavailable")

    monkeypatch.setattr(runtime.index, "write_transaction", unavailable)
    trail.flush()
    assert row_count(runtime.index) == 0
    assert trail.stats()["failed_flushes"] == 1
    assert trail.stats()["queued"] == 2

    monkeypatch.undo()
    trail.record(event(time=T0 + timedelta(seconds=2)))
    (row,) = trail.query()
    assert (row.count, row.event_time, row.last_time) == (3, T0, T0 + timedelta(seconds=2))
    assert trail.stats()["dropped"] == 0


def test_record_never_raises_on_a_broken_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    index = SqlIndex(f"sqlite:///{tmp_path / 'no-such-folder' / 'index.sqlite'}")
    trail = AuditTrail(
        index, source_id="X", flush_interval=0.05, max_queued=5, put_timeout=0.01
    )
    try:
        started = time.monotonic()
        for i in range(50):
            trail.record(event(patient_id="PHI-SECRET-ID", detail={"i": i}))
        trail.record(event(event_id="not a CID 400 code"))  # malformed: dropped, not raised
        assert time.monotonic() - started < 5  # each record() blocks 10 ms at most
        trail.flush()
        stats = trail.stats()
        assert stats["recorded"] + stats["dropped"] == 51
        assert stats["dropped"] >= 46  # five fit in the queue
        assert stats["written"] == 0
        assert wait_for(lambda: trail.stats()["failed_flushes"] >= 1)
    finally:
        trail.close()
        index.close()
    assert "dropped" in caplog.text
    assert "PHI-SECRET-ID" not in caplog.text  # no patient identifiers in logs


def test_query_filters(make_trail: Callable[..., AuditTrail]) -> None:
    trail = make_trail()
    trail.record(event(time=T0, patient_id="P1", actor="alice"))
    trail.record(
        event(
            time=T0 + timedelta(hours=1),
            event_id=EventID.QUERY,
            action=Action.EXECUTE,
            patient_id="P1",
            actor="bob",
            study_instance_uid="",
        )
    )
    trail.record(event(time=T0 + timedelta(hours=2), patient_id="P2", study_instance_uid="9.9"))
    trail.record(event(time=T0 + timedelta(days=1), patient_id="P2", actor="STORESCU",
                       actor_kind="ae", action=Action.CREATE))  # fmt: skip

    def hours(**filters: Any) -> list[float]:
        return [(r.event_time - T0).total_seconds() / 3600 for r in trail.query(**filters)]

    assert hours() == [24, 2, 1, 0]
    assert hours(patient_id="P1") == [1, 0]
    assert hours(actor="bob") == [1]
    assert hours(event_id=EventID.QUERY) == hours(event_id="110112") == hours(event_id="query")
    assert hours(event_id="Query") == [1]
    assert hours(study_instance_uid="9.9") == [2]
    assert hours(since=T0 + timedelta(hours=1)) == [24, 2, 1]
    assert hours(until=T0 + timedelta(hours=2)) == [1, 0]  # until is exclusive
    naive_since = T0.replace(tzinfo=None) + timedelta(hours=1)  # naive is UTC
    assert hours(since=naive_since, until=T0 + timedelta(hours=3)) == [2, 1]
    assert hours(limit=2) == [24, 2]
    assert hours(patient_id="P3") == []
    with pytest.raises(ValueError):
        trail.query(event_id="no such event")


def test_a_coalesced_row_matches_a_window_inside_its_span(
    make_trail: Callable[..., AuditTrail],
) -> None:
    trail = make_trail()
    trail.record(event(time=T0))
    trail.record(event(time=T0 + timedelta(minutes=10)))
    assert len(trail.query(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=6))) == 1
    assert trail.query(since=T0 + timedelta(minutes=11)) == []


def test_parse_event_id() -> None:
    assert parse_event_id("110101") is EventID.AUDIT_LOG_USED
    assert parse_event_id("audit-log-used") is EventID.AUDIT_LOG_USED
    assert parse_event_id("Audit Log Used") is EventID.AUDIT_LOG_USED
    assert parse_event_id("DICOM Instances Transferred") is EventID.INSTANCES_TRANSFERRED
    with pytest.raises(ValueError):
        parse_event_id("999999")


def test_close_is_idempotent_and_later_events_are_counted(
    make_trail: Callable[..., AuditTrail], runtime: Runtime
) -> None:
    trail = make_trail(flush_interval=0.05)
    trail.record(event())
    trail.close()
    assert row_count(runtime.index) == 1
    trail.close()
    trail.record(event())
    assert trail.stats()["dropped"] == 1
    assert row_count(runtime.index) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads running
def test_a_forked_child_writes_its_own_events_only(
    make_trail: Callable[..., AuditTrail], runtime: Runtime
) -> None:
    trail = make_trail(batch_size=2)
    trail.record(event(actor="parent"))  # queued in the parent at the fork
    pid = os.fork()
    if pid == 0:  # the child: its own writer, started by its first record()
        status = 1
        try:
            runtime.index.engine.dispose(close=False)  # the parent's pooled connections
            trail.record(event(actor="child", detail={"n": 1}))
            trail.record(event(actor="child", detail={"n": 2}))  # a full batch wakes it
            status = 0 if wait_for(lambda: row_count(runtime.index) == 2) else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(r.actor for r in trail.query()) == ["child", "child", "parent"]


def test_pickling_keeps_the_configuration_only() -> None:
    # No database behind it: nothing is ever written (close() drops the event).
    trail = AuditTrail(
        SimpleNamespace(),  # type: ignore[arg-type]
        source_id="S",
        syslog_url="udp://127.0.0.1:514",
        flush_interval=3600,
    )
    trail.record(event())  # starts a thread, holds locks and a queue
    try:
        copy = pickle.loads(pickle.dumps(trail))
        assert (copy.source_id, copy.syslog_url) == ("S", "udp://127.0.0.1:514")
        assert copy.flush_interval == 3600
        assert copy.stats()["recorded"] == 0 and copy.stats()["queued"] == 0
        assert trail.stats()["recorded"] == 1
        copy.close()
    finally:
        trail.close()
    assert trail.stats()["dropped"] == 1


# -- append-only, on every backend ----------------------------------------------------


def test_the_trail_is_append_only(index_url: str) -> None:  # noqa: F811
    migrate(index_url)
    index = SqlIndex(index_url)
    trail = AuditTrail(index, source_id="S")
    try:
        trail.record(event(time=T0, patient_id="P1"))
        trail.record(event(time=T0 + timedelta(seconds=5), patient_id="P1"))
        (row,) = trail.query()
        assert (row.count, row.event_time, row.last_time) == (2, T0, T0 + timedelta(seconds=5))

        attempts = [update(audit_events).values(actor="mallory"), delete(audit_events)]
        if index_url.startswith("postgresql"):
            attempts.append(text("TRUNCATE audit_events"))
        for statement in attempts:
            with pytest.raises(DBAPIError, match="append-only"):
                with index.engine.begin() as conn:
                    conn.execute(statement)
        assert trail.query() == [row]
    finally:
        trail.close()
        index.close()


# -- IHE ATNA over syslog ----------------------------------------------------------------


def parse_syslog(message: bytes) -> tuple[re.Match[bytes], ET.Element]:
    """Check the RFC 5424 header, the BOM, and parse the DICOM Audit Message."""
    header = HEADER.match(message)
    assert header, message[:120]
    assert header["app"] == b"lightbox" and header["msgid"] == b"IHE+RFC-3881"
    assert datetime.fromisoformat(header["ts"].decode().replace("Z", "+00:00")).tzinfo
    body = message[header.end() :]
    assert body.startswith(b"\xef\xbb\xbf")
    return header, ET.fromstring(body[3:])


def participants(root: ET.Element) -> tuple[ET.Element, ET.Element]:
    (requestor,) = [p for p in root.iter("ActiveParticipant") if p.get("UserIsRequestor") == "true"]
    (us,) = [p for p in root.iter("ActiveParticipant") if p.get("UserIsRequestor") == "false"]
    return requestor, us


def objects(root: ET.Element) -> dict[str, ET.Element]:
    """ParticipantObjectIdentification elements by their ID type code."""
    return {
        o.find("ParticipantObjectIDTypeCode").get("csd-code"): o  # type: ignore[union-attr]
        for o in root.iter("ParticipantObjectIdentification")
    }


def type_and_role(element: ET.Element) -> tuple[str | None, str | None]:
    return (
        element.get("ParticipantObjectTypeCode"),
        element.get("ParticipantObjectTypeCodeRole"),
    )


def test_atna_over_udp(make_trail: Callable[..., AuditTrail]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        port = receiver.getsockname()[1]
        trail = make_trail(syslog_url=f"udp://127.0.0.1:{port}")
        for i in range(3):
            trail.record(event(time=T0 + timedelta(seconds=i)))
        trail.flush()
        first, _ = receiver.recvfrom(65535)
        trail.record(event(outcome=Outcome.MINOR_FAILURE, time=T0 + timedelta(minutes=1)))
        trail.flush()
        second, _ = receiver.recvfrom(65535)

    header, root = parse_syslog(first)
    assert int(header["pri"]) == 10 * 8 + 5  # authpriv.notice
    assert int(parse_syslog(second)[0]["pri"]) == 10 * 8 + 4  # authpriv.warning: a failure

    ident = root.find("EventIdentification")
    assert ident is not None
    assert ident.get("EventActionCode") == "R" and ident.get("EventOutcomeIndicator") == "0"
    assert datetime.fromisoformat(ident.get("EventDateTime", "").replace("Z", "+00:00")) == T0
    event_id = ident.find("EventID")
    assert event_id is not None
    assert event_id.attrib == {
        "csd-code": "110104",
        "codeSystemName": "DCM",
        "originalText": "DICOM Instances Transferred",
    }
    requestor, us = participants(root)
    assert requestor.get("UserID") == "alice"
    assert requestor.get("NetworkAccessPointID") == "10.1.2.3"
    assert requestor.get("NetworkAccessPointTypeCode") == "2"  # an IP address
    roles = {r.get("csd-code") for r in requestor.iter("RoleIDCode")}
    assert roles == {"110152", "radiologist"}  # a Read: the requestor is the Destination
    assert us.get("UserID") == "/studies/{study}/rendered"
    assert {r.get("csd-code") for r in us.iter("RoleIDCode")} == {"110153"}
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "LIGHTBOX-TEST"

    found = objects(root)
    patient, study = found["2"], found["110180"]
    assert patient.get("ParticipantObjectID") == "P-42"
    assert type_and_role(patient) == ("1", "1")  # a person, the patient
    id_type = patient.find("ParticipantObjectIDTypeCode")
    assert id_type is not None and id_type.get("originalText") == "Patient Number"
    assert study.get("ParticipantObjectID") == STUDY
    assert type_and_role(study) == ("2", "3")  # a system object, a report
    assert study.find("ParticipantObjectIDTypeCode").attrib == {  # type: ignore[union-attr]
        "csd-code": "110180",
        "codeSystemName": "DCM",
        "originalText": "Study Instance UID",
    }
    detail = study.find("ParticipantObjectDetail")
    assert detail is not None and detail.get("type") == "Count"
    assert base64.b64decode(detail.get("value", "")) == b"3"  # three coalesced events
    assert wait_for(lambda: trail.stats()["syslog_sent"] == 2)


class SyslogTcpServer:
    """Reads RFC 6587 octet-counted frames; ``(connection number, frame)`` in ``frames``.

    ``close_after_first`` closes the first connection after its first frame;
    ``tls`` (a server context) makes it an RFC 5425 receiver.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        close_after_first: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.tls = tls
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = self.listener.getsockname()[1]
        self.frames: queue.Queue[tuple[int, bytes]] = queue.Queue()
        self.closed_first = threading.Event()
        self.close_after_first = close_after_first
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn, number), daemon=True).start()
            number += 1

    def _read(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):  # a client refusing our certificate
                conn.close()
                return
        with conn:
            while True:
                while b" " not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                length, _, buffer = buffer.partition(b" ")
                assert length.isdigit(), length
                while len(buffer) < int(length):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                self.frames.put((number, buffer[: int(length)]))
                buffer = buffer[int(length) :]
                if self.close_after_first and not self.closed_first.is_set():
                    conn.shutdown(socket.SHUT_RDWR)
                    self.closed_first.set()
                    return

    def close(self) -> None:
        self.listener.close()


def test_atna_over_tcp_reconnects(make_trail: Callable[..., AuditTrail]) -> None:
    server = SyslogTcpServer(close_after_first=True)
    try:
        trail = make_trail(syslog_url=f"tcp://127.0.0.1:{server.port}")
        trail.record(event(event_id=EventID.QUERY, action=Action.EXECUTE, study_instance_uid=""))
        trail.flush()
        number, frame = server.frames.get(timeout=10)
        assert number == 0
        header, root = parse_syslog(frame)  # the whole frame: the length was exact
        assert frame.endswith(b"</AuditMessage>")
        event_id = root.find("EventIdentification/EventID")
        assert event_id is not None and event_id.get("csd-code") == "110112"
        requestor, _ = participants(root)
        roles = {r.get("csd-code") for r in requestor.iter("RoleIDCode")}
        assert roles == {"110153", "radiologist"}  # a query's requestor is the Source
        assert set(objects(root)) == {"2"}  # the patient, no study

        assert server.closed_first.wait(10)
        time.sleep(0.2)  # the FIN reaches us
        trail.record(
            event(event_id=EventID.USER_AUTHENTICATION, event_type=EventType.LOGIN,
                  action=Action.EXECUTE, patient_id="", study_instance_uid="")
        )  # fmt: skip
        trail.flush()
        number, frame = server.frames.get(timeout=10)
        assert number == 1  # a new connection
        _, root = parse_syslog(frame)
        type_code = root.find("EventIdentification/EventTypeCode")
        assert type_code is not None
        assert (type_code.get("csd-code"), type_code.get("originalText")) == ("110122", "Login")
        assert objects(root) == {}
        assert wait_for(lambda: trail.stats()["syslog_sent"] == 2)
        assert trail.stats()["syslog_failed"] == 0
    finally:
        server.close()


def test_atna_over_tls(tmp_path: Path) -> None:
    openssl = require_tool("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=atna.test",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server = SyslogTcpServer(tls=server_context, close_after_first=True)
    untrusting = SyslogSender(f"tls://127.0.0.1:{server.port}")  # the system CAs only
    sender = SyslogSender(
        f"tls://127.0.0.1:{server.port}", ssl_context=ssl.create_default_context(cafile=cert)
    )
    try:
        with pytest.raises(ssl.SSLError):
            untrusting.send(b"never sent")
        sender.send(b"<85>1 first")
        first, frame = server.frames.get(timeout=10)
        assert frame == b"<85>1 first"
        assert server.closed_first.wait(10)
        time.sleep(0.2)
        sender.send(b"<85>1 second")  # the closed connection is noticed: a new one
        sender.send(b"<85>1 third")  # the same connection (TLS 1.3 tickets are no EOF)
        second = server.frames.get(timeout=10)
        assert second[1] == b"<85>1 second" and second[0] != first
        assert server.frames.get(timeout=10) == (second[0], b"<85>1 third")
    finally:
        sender.close()
        untrusting.close()
        server.close()


def test_atna_failure_is_counted_and_the_message_sent_later(
    make_trail: Callable[..., AuditTrail], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens yet
    trail = make_trail(syslog_url=f"tcp://127.0.0.1:{port}", flush_interval=0.05)
    trail.record(event(patient_id="PHI-SECRET-ID"))
    trail.flush()
    assert wait_for(lambda: trail.stats()["syslog_failed"] >= 1)
    assert trail.stats()["syslog_sent"] == 0
    assert len(trail.query()) == 1  # the trail has it regardless
    assert "sending to tcp://127.0.0.1" in caplog.text
    assert "PHI-SECRET-ID" not in caplog.text

    server = SyslogTcpServer(port)
    try:
        _, frame = server.frames.get(timeout=10)  # retried by the writer thread
        _, root = parse_syslog(frame)
        assert objects(root)["2"].get("ParticipantObjectID") == "PHI-SECRET-ID"
        assert wait_for(lambda: trail.stats()["syslog_sent"] == 1)
    finally:
        server.close()


def test_syslog_url_is_checked_at_construction(runtime: Runtime) -> None:
    for url in ("http://host:514", "udp://host", "tcp://:514"):
        with pytest.raises(ValueError):
            AuditTrail(runtime.index, source_id="S", syslog_url=url)
    assert SyslogSender("tls://atna.example.org:6514").scheme == "tls"


def test_audit_log_used_message_names_the_trail() -> None:
    from pipeline.security.audit import AuditRecord

    record = AuditRecord(
        pk=1, event_time=T0, last_time=T0, count=1, event_id=EventID.AUDIT_LOG_USED.value,
        event_type_code="", action="R", outcome=0, actor_kind="ae", actor="VIEWER",
        role="", source_address="viewer.example.org", destination="", patient_id="",
        study_instance_uid="", detail={},
    )  # fmt: skip
    root = ET.fromstring(audit_message_xml(record, source_id="SRC", hostname="pacs"))
    requestor, us = participants(root)
    assert requestor.get("AlternativeUserID") == "AETITLES=VIEWER"
    assert requestor.get("NetworkAccessPointTypeCode") == "1"  # a machine name
    assert (us.get("UserID"), us.get("NetworkAccessPointID")) == ("SRC", "pacs")
    log = objects(root)["12"]
    assert log.get("ParticipantObjectTypeCodeRole") == "13"  # security resource
    assert log.findtext("ParticipantObjectName") == "Security Audit Log"

    # A received string with a character XML 1.0 cannot carry still makes a message.
    odd = ET.fromstring(audit_message_xml(replace(record, actor="VIE\x07WER"), source_id="SRC"))
    assert participants(odd)[0].get("UserID") == "VIE\ufffdWER"


# -- lightbox audit ---------------------------------------------------------------------


def test_cli_audit(runtime: Runtime, settings: Settings) -> None:
    trail = runtime.audit
    trail.record(event(time=T0, patient_id="P1"))
    trail.record(event(time=T0 + timedelta(seconds=1), patient_id="P1"))
    trail.record(event(time=T0 + timedelta(hours=1), event_id=EventID.QUERY,
                       action=Action.EXECUTE, patient_id="P1", actor="bob"))  # fmt: skip
    trail.record(event(time=T0 + timedelta(days=3), patient_id="P2"))
    trail.flush()
    runner = CliRunner()
    data_dir = str(settings.data_dir)

    result = runner.invoke(
        app, ["audit", "--data-dir", data_dir, "--json", "--patient", "P1", "--since", "2024-05-01"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["event_name"], r["count"], r["actor"]) for r in rows] == [
        ("Query", 1, "bob"),
        ("DICOM Instances Transferred", 2, "alice"),
    ]
    assert datetime.fromisoformat(rows[1]["event_time"]) == T0
    assert datetime.fromisoformat(rows[1]["last_time"]) == T0 + timedelta(seconds=1)

    (used,) = trail.query(event_id=EventID.AUDIT_LOG_USED)
    assert (used.actor_kind, used.actor, used.action) == ("user", getpass.getuser(), "R")
    assert used.patient_id == "P1"
    assert used.detail == {
        "patient_id": "P1",
        "since": datetime(2024, 5, 1).astimezone().astimezone(timezone.utc).isoformat(),
        "limit": 100,
        "rows": 2,
    }

    result = runner.invoke(app, ["audit", "--data-dir", data_dir, "--event", "110112"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["time", "last", "count", "event", "action", "outcome"]
    assert len(lines) == 2 and "Query" in lines[1] and "user:bob" in lines[1]
    assert "execute" in lines[1] and "success" in lines[1] and "P1" in lines[1]

    result = runner.invoke(
        app, ["audit", "--data-dir", data_dir, "--json", "--event", "audit-log-used"]
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2  # the two readings before this one
    assert len(trail.query(event_id="audit log used")) == 3

    result = runner.invoke(app, ["audit", "--data-dir", data_dir, "--until", "2024-04-30"])
    assert result.exit_code == 0 and "no audit events match" in result.stdout

    result = runner.invoke(app, ["audit", "--data-dir", data_dir, "--event", "nonsense"])
    assert result.exit_code != 0
