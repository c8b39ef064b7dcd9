"""The audit trail: who did what to which patient's data, from where and when.

Every access to patient data (HTTP and DICOM) is recorded as an
:class:`AuditEvent` in the append-only ``audit_events`` table (triggers refuse
UPDATE and DELETE, see migration 0002) and, where ``audit_syslog_url`` is
configured, sent as an IHE ATNA message: the DICOM Audit Message of
PS3.15 A.5 (RFC 3881 structure) in an RFC 5424 syslog frame.

Event identifiers are the codes of PS3.16 CID 400 (Audit Event ID) and
CID 401 (Audit Event Type Code); actions and outcomes are RFC 3881's.

:meth:`AuditTrail.record` only queues: a writer thread per process writes the
queue about once a second in one transaction, coalescing identical events
into one row with a ``count`` (a viewer scrolling through a 300-slice series
makes one row, not 300), then hands each new row to ATNA
(:mod:`pipeline.security.atna`). :meth:`AuditTrail.query` reads the trail
(``lightbox audit``).
"""

from __future__ import annotations

import atexit
import enum
import json
import logging
import os
import threading
import time as _time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from pipeline.index.schema import audit_events

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.index.sql import SqlIndex
    from pipeline.security.atna import SyslogSender

_log = logging.getLogger(__name__)


class EventID(str, enum.Enum):
    """PS3.16 CID 400 Audit Event ID (code value, scheme DCM)."""

    APPLICATION_ACTIVITY = "110100"
    AUDIT_LOG_USED = "110101"
    BEGIN_TRANSFERRING = "110102"
    INSTANCES_ACCESSED = "110103"
    INSTANCES_TRANSFERRED = "110104"
    STUDY_DELETED = "110105"
    EXPORT = "110106"
    IMPORT = "110107"
    NETWORK_ENTRY = "110108"
    ORDER_RECORD = "110109"
    PATIENT_RECORD = "110110"
    PROCEDURE_RECORD = "110111"
    QUERY = "110112"
    SECURITY_ALERT = "110113"
    USER_AUTHENTICATION = "110114"


#: Display names of :class:`EventID` (PS3.16 CID 400), for ATNA and ``lightbox audit``.
EVENT_NAMES: dict[EventID, str] = {
    EventID.APPLICATION_ACTIVITY: "Application Activity",
    EventID.AUDIT_LOG_USED: "Audit Log Used",
    EventID.BEGIN_TRANSFERRING: "Begin Transferring DICOM Instances",
    EventID.INSTANCES_ACCESSED: "DICOM Instances Accessed",
    EventID.INSTANCES_TRANSFERRED: "DICOM Instances Transferred",
    EventID.STUDY_DELETED: "DICOM Study Deleted",
    EventID.EXPORT: "Export",
    EventID.IMPORT: "Import",
    EventID.NETWORK_ENTRY: "Network Entry",
    EventID.ORDER_RECORD: "Order Record",
    EventID.PATIENT_RECORD: "Patient Record",
    EventID.PROCEDURE_RECORD: "Procedure Record",
    EventID.QUERY: "Query",
    EventID.SECURITY_ALERT: "Security Alert",
    EventID.USER_AUTHENTICATION: "User Authentication",
}


class EventType(str, enum.Enum):
    """PS3.16 CID 401 Audit Event Type Code (those Lightbox emits)."""

    APPLICATION_START = "110120"
    APPLICATION_STOP = "110121"
    LOGIN = "110122"
    LOGOUT = "110123"
    NODE_AUTHENTICATION = "110126"  # a refused association or TLS peer
    # CID 401: 110128 is Network Configuration, 110129 Security Configuration.
    SECURITY_CONFIGURATION = "110129"
    USER_SECURITY_ATTRIBUTES_CHANGED = "110137"
    ASSOCIATION = ""  # no type code: plain association records use 110100/110104


#: Display names of :class:`EventType` (PS3.16 CID 401), for ATNA.
EVENT_TYPE_NAMES: dict[EventType, str] = {
    EventType.APPLICATION_START: "Application Start",
    EventType.APPLICATION_STOP: "Application Stop",
    EventType.LOGIN: "Login",
    EventType.LOGOUT: "Logout",
    EventType.NODE_AUTHENTICATION: "Node Authentication",
    EventType.SECURITY_CONFIGURATION: "Security Configuration",
    EventType.USER_SECURITY_ATTRIBUTES_CHANGED: "User Security Attributes Changed",
}


class Action(str, enum.Enum):
    """RFC 3881 EventActionCode."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"
    EXECUTE = "E"


class Outcome(int, enum.Enum):
    """RFC 3881 EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


@dataclass(frozen=True)
class AuditEvent:
    """One auditable event.

    Parameters
    ----------
    event_id, action
        What happened (CID 400) and how (RFC 3881 action code).
    actor_kind, actor
        ``"user"`` and a user name, ``"ae"`` and a calling AE title, or
        ``"system"`` and a component name.
    source_address
        The peer's network address (IP) as seen by the server.
    destination
        What was addressed: our AE title for DICOM, the route template
        (e.g. ``/studies/{study}/rendered``) for HTTP, never the raw URL.
    patient_id, study_instance_uid
        The patient and study concerned, when there is one. The trail is the
        one place where patient identifiers belong; logs never carry them.
    detail
        Small JSON-serialisable facts (counts, SOP class, query keys given).
    """

    event_id: EventID
    action: Action
    actor_kind: str
    actor: str
    outcome: Outcome = Outcome.SUCCESS
    event_type: EventType = EventType.ASSOCIATION
    role: str = ""
    source_address: str = ""
    destination: str = ""
    patient_id: str = ""
    study_instance_uid: str = ""
    detail: dict[str, object] = field(default_factory=dict)
    time: datetime | None = None  # None: now (UTC) when recorded


@dataclass(frozen=True)
class AuditRecord:
    """One row of ``audit_events``: an event, or ``count`` identical ones.

    Codes are kept as stored (an unknown code from a newer version still
    reads); :attr:`event_name` names the CID 400 code. ``pk`` is 0 for a row
    handed to ATNA straight after its insert.
    """

    pk: int
    event_time: datetime  # the first of the coalesced events (UTC)
    last_time: datetime  # the last of them
    count: int
    event_id: str  # PS3.16 CID 400 code
    event_type_code: str  # CID 401 code or ""
    action: str  # RFC 3881 EventActionCode
    outcome: int  # RFC 3881 EventOutcomeIndicator
    actor_kind: str
    actor: str
    role: str
    source_address: str
    destination: str
    patient_id: str
    study_instance_uid: str
    detail: dict[str, Any]

    @property
    def event_name(self) -> str:
        """The CID 400 code meaning, e.g. "Query" (the code itself if unknown)."""
        try:
            return EVENT_NAMES[EventID(self.event_id)]
        except ValueError:
            return self.event_id

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (ISO 8601 times), as ``lightbox audit --json`` prints."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["event_time"] = self.event_time.isoformat()
        values["last_time"] = self.last_time.isoformat()
        values["event_name"] = self.event_name
        return values


def parse_event_id(value: EventID | str | int) -> EventID:
    """An :class:`EventID` from its code (``110112``), its enum name
    (``query``, ``AUDIT_LOG_USED``) or its CID 400 meaning (``"Audit Log Used"``).

    Raises
    ------
    ValueError
        When nothing matches.
    """
    if isinstance(value, EventID):
        return value
    text = str(value).strip()
    if text.isdigit():
        return EventID(text)
    wanted = text.upper().replace("-", "_").replace(" ", "_")
    for event_id in EventID:
        meaning = EVENT_NAMES[event_id].upper().replace(" ", "_")
        if wanted in (event_id.name, meaning):
            return event_id
    raise ValueError(f"unknown audit event {text!r}: a CID 400 code or name, e.g. 110112 or query")


def _as_utc(value: datetime) -> datetime:
    """Aware UTC. SQLite keeps no offset: a naive value is UTC, and an aware one
    must be converted before it is written or compared."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


# The columns that make two events "identical" (coalesced into one row).
_KEY_COLUMNS = (
    "event_id",
    "event_type_code",
    "action",
    "outcome",
    "actor_kind",
    "actor",
    "role",
    "source_address",
    "destination",
    "patient_id",
    "study_instance_uid",
    "detail",
)


class _Row:
    """A row in the making: the coalescing key, first and last time, count."""

    __slots__ = ("count", "first", "key", "last")

    def __init__(self, key: tuple[Any, ...], first: datetime, last: datetime, count: int) -> None:
        self.key = key
        self.first = first
        self.last = last
        self.count = count

    @classmethod
    def of(cls, event: AuditEvent) -> _Row:
        when = _as_utc(event.time) if event.time else datetime.now(timezone.utc)
        # Serialised now: the caller may change its dict afterwards, and the
        # JSON text is part of the coalescing key. default=str: never raise
        # on a value JSON does not know (a Path, a UID object).
        detail = json.dumps(event.detail, sort_keys=True, default=str) if event.detail else ""
        key = (
            EventID(event.event_id).value,
            EventType(event.event_type).value,
            Action(event.action).value,
            int(event.outcome),
            str(event.actor_kind),
            str(event.actor),
            str(event.role),
            str(event.source_address),
            str(event.destination),
            str(event.patient_id),
            str(event.study_instance_uid),
            detail,
        )
        return cls(key, when, when, 1)

    def values(self) -> dict[str, Any]:
        values = dict(zip(_KEY_COLUMNS, self.key))
        values.update(event_time=self.first, last_time=self.last, count=self.count)
        return values

    def record(self) -> AuditRecord:
        values = self.values()
        values["detail"] = json.loads(values["detail"]) if values["detail"] else {}
        return AuditRecord(pk=0, **values)


def _coalesce(rows: list[_Row]) -> list[_Row]:
    """Merge rows with the same key: counts add up, first/last time widen.

    The result is ordered by first time, so that row order (pk) follows time.
    """
    merged: dict[tuple[Any, ...], _Row] = {}
    for row in rows:
        seen = merged.get(row.key)
        if seen is None:
            merged[row.key] = _Row(row.key, row.first, row.last, row.count)
        else:
            seen.count += row.count
            seen.first = min(seen.first, row.first)
            seen.last = max(seen.last, row.last)
    return sorted(merged.values(), key=lambda r: r.first)


class _Throttled:
    """Log one warning per ``every`` seconds at most: an outage must show in
    the log without flooding it."""

    def __init__(self, every: float = 60.0) -> None:
        self.every = every
        self._next = 0.0

    def warning(self, msg: str, *args: object) -> None:
        now = _time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            _log.warning(msg, *args)


# Every trail of the process, closed (flushed) at interpreter exit: the writer
# is a daemon thread and would otherwise die with events still queued.
_TRAILS: weakref.WeakSet[AuditTrail] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for trail in list(_TRAILS):
        trail.close()


class AuditTrail:
    """Records :class:`AuditEvent` rows in ``audit_events`` (and to ATNA syslog).

    ``record`` never blocks its caller on the database for long and never
    raises: an audit failure is logged (without PHI) and counted.

    Events wait in a bounded in-memory queue; a daemon writer thread, started
    in each process on its first ``record``, writes them every
    ``flush_interval`` seconds (or as soon as ``batch_size`` wait) in one
    transaction, identical events of the batch coalesced into one row with a
    ``count`` (``event_time`` the first, ``last_time`` the last). After the
    commit the same thread sends each new row to the ATNA repository
    (:mod:`pipeline.security.atna`): the request's thread never waits on the
    network either.

    Parameters
    ----------
    index
        The index whose database holds the trail; writes take its writer turn.
    source_id
        The Audit Source ID (PS3.15 A.5.1) of the messages sent to syslog.
    syslog_url
        ``udp://``, ``tcp://`` or ``tls://host:port`` of an ATNA repository, or None.
    flush_interval
        Seconds between two writes of the queue.
    batch_size
        Queued events that trigger a write before the interval is over.
    max_queued
        Events (and unwritten rows) held in memory at most; beyond, ``record``
        waits up to ``put_timeout`` seconds for room, then drops the event and
        counts it (``stats()["dropped"]``).
    put_timeout
        The longest ``record`` blocks its caller.
    syslog_timeout
        Seconds for connecting to and sending to the ATNA repository.

    Raises
    ------
    ValueError
        When ``syslog_url`` is not a udp, tcp or tls URL with host and port:
        a misconfiguration shows at start-up, not as lost messages.
    """

    def __init__(
        self,
        index: SqlIndex,
        *,
        source_id: str,
        syslog_url: str | None = None,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        max_queued: int = 10_000,
        put_timeout: float = 0.1,
        syslog_timeout: float = 5.0,
    ) -> None:
        self.index = index
        self.source_id = source_id
        self.syslog_url = syslog_url or None
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.max_queued = max_queued
        self.put_timeout = put_timeout
        self.syslog_timeout = syslog_timeout
        if self.syslog_url:
            from pipeline.security.atna import SyslogSender

            SyslogSender(self.syslog_url)  # validates the URL; opens nothing
        self._closed = False
        self._reset_process_state()
        _TRAILS.add(self)

    @classmethod
    def from_settings(cls, settings: Settings, index: SqlIndex) -> AuditTrail:
        return cls(
            index,
            source_id=settings.audit_source_id or settings.ae_title,
            syslog_url=settings.audit_syslog_url,
        )

    # -- process-local state: fork and pickle ---------------------------------

    def _reset_process_state(self) -> None:
        """Fresh queue, locks, counters and no thread, for this process.

        Called at construction, after unpickling, and by the first call in a
        forked child: the parent's queue is the parent's to write (written
        twice otherwise), its thread does not exist here, and its locks may
        have been held by another thread at the moment of the fork.
        """
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._pending: list[_Row] = []
        self._held: list[_Row] = []  # drained, not yet committed (retried)
        self._held_count = 0
        self._outbox: deque[AuditRecord] = deque()
        self._sender: SyslogSender | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._kick = False
        self._failing = False  # the last write failed
        self._stats = dict.fromkeys(
            ("recorded", "written", "rows", "dropped", "failed_flushes", "syslog_sent",
             "syslog_failed", "syslog_dropped"),
            0,
        )  # fmt: skip
        self._drop_warning = _Throttled()
        self._db_warning = _Throttled()
        self._syslog_warning = _Throttled()

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            self._reset_process_state()

    def __getstate__(self) -> dict[str, Any]:
        keep = (
            "index", "source_id", "syslog_url", "flush_interval", "batch_size", "max_queued",
            "put_timeout", "syslog_timeout", "_closed",
        )  # fmt: skip
        return {name: self.__dict__[name] for name in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()
        _TRAILS.add(self)

    # -- recording --------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        """Queue ``event``; return at once (at most ``put_timeout`` when full).

        Never raises: an event that cannot be queued is counted in
        ``stats()["dropped"]`` and logged, without its values (no PHI in logs).
        """
        try:
            row = _Row.of(event)
        except Exception as exc:  # a malformed event must not fail the request
            self._dropped(f"malformed event ({type(exc).__name__})")
            return
        try:
            self._check_process()
            self._ensure_writer()
            with self._cond:
                if self._closed:
                    reason: str | None = "the audit trail is closed"
                elif self._room() or (not self._failing and self._wait_for_room()):
                    # (While writes fail, waiting cannot make room: drop at once.)
                    self._pending.append(row)
                    self._stats["recorded"] += 1
                    if len(self._pending) >= self.batch_size:
                        self._cond.notify_all()
                    reason = None
                else:
                    reason = "the audit queue is full (is the database reachable?)"
        except Exception as exc:
            reason = f"cannot queue ({type(exc).__name__})"
        if reason:
            self._dropped(reason)

    def _room(self) -> bool:
        return len(self._pending) + self._held_count < self.max_queued

    def _wait_for_room(self) -> bool:
        """Under ``_cond``: wake the writer, then wait briefly for it to make room."""
        self._cond.notify_all()
        return self._cond.wait_for(
            lambda: self._room() or self._closed, self.put_timeout
        ) and not self._closed

    def _dropped(self, reason: str) -> None:
        with self._cond:
            self._stats["dropped"] += 1
            dropped = self._stats["dropped"]
        self._drop_warning.warning("audit event dropped: %s; %d dropped so far", reason, dropped)

    # -- writing ----------------------------------------------------------------

    def _ensure_writer(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._start_lock:
            # _stopping, not _closed: close() itself may need the writer to
            # send what its last flush committed.
            if self._stopping or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, name="lightbox-audit-writer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        """The writer thread: write the queue, then send to ATNA, until closed."""
        while True:
            with self._cond:
                # Woken early by close(), flush() (messages to send), a full
                # batch, or record() callers waiting for room.
                self._cond.wait_for(
                    lambda: self._stopping
                    or self._kick
                    or len(self._pending) >= self.batch_size
                    or not self._room(),
                    self.flush_interval,
                )
                stopping = self._stopping
                self._kick = False
            try:
                written = self._write_queue()
                self._send_outbox()
            except Exception:  # the thread must outlive any one failure
                _log.exception("audit writer: unexpected failure")
                written = False
            if stopping:
                return
            if not written:
                # The database is failing: wait an interval before retrying,
                # whatever fills up meanwhile (record() waits, then drops).
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, self.flush_interval)

    def _write_queue(self) -> bool:
        """Write the held and queued rows in one transaction; False if it failed.

        A failed batch is held and retried (merged with what was queued
        since) by the next write; it counts toward ``max_queued``.
        """
        with self._flush_lock:
            with self._cond:
                batch, self._pending = self._pending, []
                rows = _coalesce(self._held + batch) if batch else self._held
                self._held = rows
                self._held_count = len(rows)
                self._cond.notify_all()  # record() callers waiting for room
            if not rows:
                return True
            try:
                with self.index.write_transaction() as conn:
                    conn.execute(insert(audit_events), [row.values() for row in rows])
            except Exception as exc:
                # Only the exception's type: its text may carry the
                # statement's parameters, patient IDs among them.
                with self._cond:
                    self._stats["failed_flushes"] += 1
                    self._failing = True
                self._db_warning.warning(
                    "audit trail: writing %d rows failed (%s); kept for the next attempt",
                    len(rows), type(exc).__name__,
                )  # fmt: skip
                return False
            with self._cond:
                self._failing = False
                self._held = []
                self._held_count = 0
                self._stats["written"] += sum(row.count for row in rows)
                self._stats["rows"] += len(rows)
                self._cond.notify_all()
            if self.syslog_url:
                for row in rows:
                    if len(self._outbox) >= self.max_queued:
                        self._outbox.popleft()
                        self._stats["syslog_dropped"] += 1
                        self._syslog_warning.warning(
                            "audit syslog: backlog full, oldest message dropped"
                        )
                    self._outbox.append(row.record())
            return True

    def _send_outbox(self) -> None:
        """Send the committed rows to ATNA, oldest first (writer thread only).

        Stops at the first failure, which is counted and logged; the message
        stays first in line for the next round (the sender reconnects then).
        """
        if not self._outbox:
            return
        from pipeline.security.atna import SyslogSender, audit_message_xml, syslog_message

        if self._sender is None:
            self._sender = SyslogSender(self.syslog_url or "", timeout=self.syslog_timeout)
        while self._outbox:
            record = self._outbox[0]
            try:
                message = syslog_message(
                    audit_message_xml(record, source_id=self.source_id), outcome=record.outcome
                )
            except Exception as exc:  # cannot happen for our rows; never loop on it
                self._outbox.popleft()
                self._stats["syslog_dropped"] += 1
                _log.error("audit syslog: cannot build a message (%s)", type(exc).__name__)
                continue
            try:
                self._sender.send(message)
            except OSError as exc:
                self._stats["syslog_failed"] += 1
                self._syslog_warning.warning(
                    "audit syslog: sending to %s failed (%s); %d messages waiting",
                    self._sender_address(), type(exc).__name__, len(self._outbox),
                )  # fmt: skip
                return
            self._outbox.popleft()
            self._stats["syslog_sent"] += 1

    def _sender_address(self) -> str:
        sender = self._sender
        return f"{sender.scheme}://{sender.host}:{sender.port}" if sender else "?"

    def flush(self) -> None:
        """Write every event recorded so far (before a query, at shutdown).

        Synchronous, on the caller's thread: when it returns, every event
        recorded before the call is committed, unless the database failed
        (then they stay queued and the failure is logged). Messages to ATNA
        are left to the writer thread, woken here. Never raises.
        """
        try:
            self._check_process()
            self._write_queue()
            if self._outbox:
                self._ensure_writer()
                with self._cond:
                    self._kick = True
                    self._cond.notify_all()
        except Exception as exc:
            _log.error("audit trail: flush failed (%s)", type(exc).__name__)

    def close(self) -> None:
        """Flush, send what remains to ATNA and stop the writer. Idempotent.

        Events recorded afterwards are dropped (and counted).
        """
        self._check_process()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self.flush()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.syslog_timeout * 2 + 5)
        with self._cond:
            lost = sum(row.count for row in self._held) + len(self._pending)
            self._held, self._held_count, self._pending = [], 0, []
            self._stats["dropped"] += lost
            unsent = len(self._outbox)
        if lost:
            _log.error("audit trail closed with %d events it could not write", lost)
        if unsent:
            self._stats["syslog_dropped"] += unsent
            _log.error("audit syslog: closed with %d messages unsent", unsent)
        if self._sender is not None and (thread is None or not thread.is_alive()):
            self._sender.close()

    def stats(self) -> dict[str, int]:
        """Counters of this process: ``recorded`` (queued events), ``written``
        (events committed, coalesced ones counted each), ``rows``, ``dropped``,
        ``failed_flushes``, ``syslog_sent``, ``syslog_failed`` (failed send
        attempts), ``syslog_dropped`` (messages given up), and the current
        ``queued`` and ``syslog_pending``."""
        self._check_process()
        with self._cond:
            values = dict(self._stats)
            values["queued"] = len(self._pending) + sum(row.count for row in self._held)
        values["syslog_pending"] = len(self._outbox)
        return values

    # -- reading ----------------------------------------------------------------

    def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        patient_id: str | None = None,
        actor: str | None = None,
        event_id: EventID | str | None = None,
        study_instance_uid: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Rows of the trail, newest first, after a :meth:`flush`.

        Parameters
        ----------
        since, until
            Rows whose events fall in ``[since, until)``: a coalesced row
            matches when its span (``event_time`` to ``last_time``) overlaps.
            Naive datetimes are UTC.
        patient_id, actor, study_instance_uid
            Exact matches.
        event_id
            A CID 400 :class:`EventID`, code or name (:func:`parse_event_id`).
        limit
            At most this many rows.
        """
        self.flush()
        c = audit_events.c
        statement = select(audit_events)
        if since is not None:
            statement = statement.where(c.last_time >= _as_utc(since))
        if until is not None:
            statement = statement.where(c.event_time < _as_utc(until))
        if patient_id is not None:
            statement = statement.where(c.patient_id == patient_id)
        if actor is not None:
            statement = statement.where(c.actor == actor)
        if event_id is not None:
            statement = statement.where(c.event_id == parse_event_id(event_id).value)
        if study_instance_uid is not None:
            statement = statement.where(c.study_instance_uid == study_instance_uid)
        statement = statement.order_by(c.event_time.desc(), c.pk.desc()).limit(max(0, limit))
        with self.index.engine.connect() as conn:
            rows = conn.execute(statement).mappings().all()
        return [
            AuditRecord(
                pk=row["pk"],
                event_time=_as_utc(row["event_time"]),
                last_time=_as_utc(row["last_time"]),
                count=row["count"],
                event_id=row["event_id"],
                event_type_code=row["event_type_code"],
                action=row["action"],
                outcome=row["outcome"],
                actor_kind=row["actor_kind"],
                actor=row["actor"],
                role=row["role"],
                source_address=row["source_address"],
                destination=row["destination"],
                patient_id=row["patient_id"],
                study_instance_uid=row["study_instance_uid"],
                detail=json.loads(row["detail"]) if row["detail"] else {},
            )
            for row in rows
        ]
