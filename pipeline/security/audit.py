"""The audit trail: who did what to which patient's data, from where and when.

Every access to patient data (HTTP and DICOM) is recorded as an
:class:`AuditEvent` in the append-only ``audit_events`` table (triggers refuse
UPDATE and DELETE, see migration 0002) and, where ``audit_syslog_url`` is
configured, sent as an IHE ATNA message: the DICOM Audit Message of
PS3.15 A.5 (RFC 3881 structure) in an RFC 5424 syslog frame.

Event identifiers are the codes of PS3.16 CID 400 (Audit Event ID) and
CID 401 (Audit Event Type Code); actions and outcomes are RFC 3881's.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import insert

from pipeline.index.schema import audit_events

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.index.sql import SqlIndex


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
    SECURITY_CONFIGURATION = "110128"
    USER_SECURITY_ATTRIBUTES_CHANGED = "110137"
    ASSOCIATION = ""  # no type code: plain association records use 110100/110104


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


class AuditTrail:
    """Records :class:`AuditEvent` rows in ``audit_events`` (and to ATNA syslog).

    ``record`` never blocks its caller on the database for long and never
    raises: an audit failure is logged (without PHI) and counted.

    Parameters
    ----------
    index
        The index whose database holds the trail; writes take its writer turn.
    source_id
        The Audit Source ID (PS3.15 A.5.1) of the messages sent to syslog.
    syslog_url
        ``udp://``, ``tcp://`` or ``tls://host:port`` of an ATNA repository, or None.
    """

    def __init__(self, index: SqlIndex, *, source_id: str, syslog_url: str | None = None) -> None:
        self.index = index
        self.source_id = source_id
        self.syslog_url = syslog_url

    @classmethod
    def from_settings(cls, settings: Settings, index: SqlIndex) -> AuditTrail:
        return cls(
            index,
            source_id=settings.audit_source_id or settings.ae_title,
            syslog_url=settings.audit_syslog_url,
        )

    def record(self, event: AuditEvent) -> None:
        now = event.time or datetime.now(timezone.utc)
        with self.index.write_transaction() as conn:
            conn.execute(
                insert(audit_events).values(
                    event_time=now,
                    last_time=now,
                    count=1,
                    event_id=event.event_id.value,
                    event_type_code=event.event_type.value,
                    action=event.action.value,
                    outcome=int(event.outcome),
                    actor_kind=event.actor_kind,
                    actor=event.actor,
                    role=event.role,
                    source_address=event.source_address,
                    destination=event.destination,
                    patient_id=event.patient_id,
                    study_instance_uid=event.study_instance_uid,
                    detail=json.dumps(event.detail, sort_keys=True) if event.detail else "",
                )
            )

    def flush(self) -> None:
        """Write every event recorded so far (before a query, at shutdown)."""

    def close(self) -> None:
        self.flush()
