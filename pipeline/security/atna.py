"""IHE ATNA export of the audit trail: DICOM Audit Messages over syslog.

Each row of ``audit_events`` (one event, or several identical ones coalesced)
becomes one message:

* the XML is the DICOM Audit Message of PS3.15 A.5.1 (the RFC 3881 structure:
  ``EventIdentification``, ``ActiveParticipant``+, ``AuditSourceIdentification``,
  ``ParticipantObjectIdentification``*), built by :func:`audit_message_xml`;
* it travels in an RFC 5424 syslog message (:func:`syslog_message`) with
  MSGID ``IHE+RFC-3881``, as IHE ITI TF-2a 3.20 (Record Audit Event) asks;
* over UDP (RFC 5426: one message per datagram) or TCP / TLS with the
  octet-counting framing of RFC 6587 3.4.1 / RFC 5425 4.3 (:class:`SyslogSender`).

Nothing here runs on a request's thread: :class:`pipeline.security.audit.AuditTrail`
sends from its writer thread, after the rows are committed.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import select
import socket
import ssl
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pipeline.security.audit import (
    EVENT_TYPE_NAMES,
    Action,
    EventID,
    EventType,
    Outcome,
)

if TYPE_CHECKING:
    from pipeline.security.audit import AuditRecord

#: RFC 5424 6.2.1: facility 10 is "security/authorization messages" (authpriv).
FACILITY_AUTHPRIV = 10
#: RFC 5424 6.2.1 severities: notice for a success, warning for any failure.
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
#: The APP-NAME and MSGID of IHE ITI TF-2a 3.20.7.1 ("IHE+RFC-3881" marks the
#: RFC 3881 / DICOM schema of the payload).
APP_NAME = "lightbox"
MSGID = "IHE+RFC-3881"
#: RFC 5424 6.4: a MSG that starts with the UTF-8 BOM is UTF-8.
BOM = b"\xef\xbb\xbf"

# PS3.16 CID 402 Audit Active Participant Role ID Code.
_SOURCE_ROLE = ("110153", "Source Role ID")
_DESTINATION_ROLE = ("110152", "Destination Role ID")
# Events whose participants are the two ends of a transfer (PS3.15 A.5.3.3,
# A.5.3.4, A.5.3.12): the requestor of a Create sent data to us, of a Read
# received data from us; a query's requestor is the Source (A.5.3.12).
_TRANSFER_EVENTS = {
    EventID.BEGIN_TRANSFERRING.value,
    EventID.INSTANCES_TRANSFERRED.value,
    EventID.IMPORT.value,
    EventID.EXPORT.value,
}


# Characters outside XML 1.0's Char production (W3C XML 1.0 section 2.2).
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _iso(value: datetime) -> str:
    """xsd:dateTime (PS3.15 A.5.1 EventDateTime) and RFC 5424 6.2.3 TIMESTAMP:
    RFC 3339 in UTC, with milliseconds (RFC 5424 allows at most 6 digits)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _coded(parent: ET.Element, tag: str, code: str, scheme: str, meaning: str) -> ET.Element:
    """A PS3.15 A.5.1 CodedValueType: ``csd-code``, ``codeSystemName``, ``originalText``."""
    return ET.SubElement(
        parent, tag, {"csd-code": code, "codeSystemName": scheme, "originalText": meaning}
    )


def _access_point_type(address: str) -> str:
    """RFC 3881 NetworkAccessPointTypeCode: "2" an IP address, "1" a machine name."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def _roles(record: AuditRecord) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """The CID 402 RoleIDCode of (the requestor, us), where the event has them."""
    if record.event_id == EventID.QUERY.value:
        return _SOURCE_ROLE, _DESTINATION_ROLE
    if record.event_id in _TRANSFER_EVENTS:
        if record.action == Action.CREATE.value:
            return _SOURCE_ROLE, _DESTINATION_ROLE
        if record.action == Action.READ.value:
            return _DESTINATION_ROLE, _SOURCE_ROLE
    return None, None


def audit_message_xml(record: AuditRecord, *, source_id: str, hostname: str | None = None) -> str:
    """The DICOM Audit Message (PS3.15 A.5.1) of one trail row.

    Parameters
    ----------
    record
        The row (one event, or ``record.count`` identical ones).
    source_id
        Our ``AuditSourceID`` (PS3.15 A.5.1 AuditSourceIdentification).
    hostname
        Our ``NetworkAccessPointID``; default :func:`socket.gethostname`.

    Returns
    -------
    str
        The XML document, with its declaration.

    Notes
    -----
    * ``EventIdentification``: EventID from CID 400 and, where the row has one,
      EventTypeCode from CID 401, both with codeSystemName "DCM"; the
      RFC 3881 EventActionCode and EventOutcomeIndicator; EventDateTime is the
      time of the first of the coalesced events.
    * The requestor's ``ActiveParticipant`` (UserIsRequestor "true"): the
      user, calling AE title (also as ``AlternativeUserID`` "AETITLES=...",
      PS3.15 A.5.2.2) or component, its address as NetworkAccessPointID, its
      Lightbox role as a local RoleIDCode, and the CID 402 Source/Destination
      role of transfers and queries.
    * Our ``ActiveParticipant``: UserID is what was addressed (our AE title,
      or the HTTP route template) or else the source id; AlternativeUserID our
      process id (PS3.15 A.5.2.2); NetworkAccessPointID our host name.
    * ``ParticipantObjectIdentification`` for the patient (TypeCode 1 person,
      role 1 patient, IDTypeCode RFC-3881 "2" Patient Number) and the study
      (TypeCode 2 system object, role 3 report, IDTypeCode (110180, DCM,
      "Study Instance UID")); for Audit Log Used, the trail itself (TypeCode
      2, role 13 security resource, IDTypeCode RFC-3881 "12" URI; PS3.15
      A.5.3.2). When the row stands for several events, the study (or
      patient) object carries a ParticipantObjectDetail "Count" whose value
      is the base64 of the decimal count (details are xs:base64Binary).
    """
    host = hostname or socket.gethostname()
    root = ET.Element("AuditMessage")

    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": record.action,
            "EventDateTime": _iso(record.event_time),
            "EventOutcomeIndicator": str(int(record.outcome)),
        },
    )
    _coded(ident, "EventID", record.event_id, "DCM", record.event_name)
    if record.event_type_code:
        try:
            type_name = EVENT_TYPE_NAMES[EventType(record.event_type_code)]
        except (ValueError, KeyError):
            type_name = record.event_type_code
        _coded(ident, "EventTypeCode", record.event_type_code, "DCM", type_name)

    requestor_role, our_role = _roles(record)
    actor = ET.SubElement(
        root,
        "ActiveParticipant",
        {"UserID": record.actor or record.actor_kind or "-", "UserIsRequestor": "true"},
    )
    if record.actor_kind == "ae" and record.actor:
        actor.set("AlternativeUserID", f"AETITLES={record.actor}")
    if record.source_address:
        actor.set("NetworkAccessPointID", record.source_address)
        actor.set("NetworkAccessPointTypeCode", _access_point_type(record.source_address))
    if requestor_role:
        _coded(actor, "RoleIDCode", requestor_role[0], "DCM", requestor_role[1])
    if record.role:
        # A site-local code (RFC 3881 allows locally defined role codes).
        _coded(actor, "RoleIDCode", record.role, "99LIGHTBOX", record.role)

    us = ET.SubElement(
        root,
        "ActiveParticipant",
        {
            "UserID": record.destination or source_id,
            "AlternativeUserID": str(os.getpid()),
            "UserIsRequestor": "false",
            "NetworkAccessPointID": host,
            "NetworkAccessPointTypeCode": _access_point_type(host),
        },
    )
    if our_role:
        _coded(us, "RoleIDCode", our_role[0], "DCM", our_role[1])

    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    _coded(source, "AuditSourceTypeCode", "4", "DCM", "Application Server Process or Thread")

    objects: list[ET.Element] = []
    study: ET.Element | None = None
    if record.patient_id:
        patient = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": record.patient_id,
                "ParticipantObjectTypeCode": "1",
                "ParticipantObjectTypeCodeRole": "1",
            },
        )
        _coded(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
        objects.append(patient)
    if record.study_instance_uid:
        study = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": record.study_instance_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        _coded(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        objects.append(study)
    if record.event_id == EventID.AUDIT_LOG_USED.value:
        log = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": f"urn:lightbox:{source_id}:audit_events",
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "13",
            },
        )
        _coded(log, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
        ET.SubElement(log, "ParticipantObjectName").text = "Security Audit Log"
        objects.append(log)
    if record.count > 1 and objects:
        # The detail goes on the most specific object (the study, else the first).
        target = study if study is not None else objects[0]
        ET.SubElement(
            target,
            "ParticipantObjectDetail",
            {"type": "Count", "value": base64.b64encode(str(record.count).encode()).decode()},
        )
    for element in root.iter():
        # A received string (an AE title, a patient ID) may hold characters
        # XML 1.0 cannot carry; ElementTree would write them, and the
        # repository would refuse the whole message.
        for name, value in element.attrib.items():
            element.set(name, _XML_INVALID.sub("\ufffd", value))
        if element.text:
            element.text = _XML_INVALID.sub("\ufffd", element.text)
    return '<?xml version="1.0" encoding="UTF-8"?>' + ET.tostring(root, encoding="unicode")


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 6.2 header field: PRINTUSASCII (33-126), at most ``limit``
    octets, "-" (NILVALUE) when empty."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def syslog_message(
    xml: str,
    *,
    outcome: int = int(Outcome.SUCCESS),
    hostname: str | None = None,
    timestamp: datetime | None = None,
) -> bytes:
    """One RFC 5424 syslog message carrying ``xml``.

    ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML``: PRI is
    facility 10 (authpriv) x 8 + severity, notice (5) for a success and
    warning (4) for any failure (RFC 5424 6.2.1); VERSION 1; TIMESTAMP RFC 3339
    (6.2.3); APP-NAME "lightbox"; PROCID our process id; MSGID "IHE+RFC-3881"
    (IHE ITI TF-2a 3.20.7.1); no structured data ("-"); the MSG is UTF-8,
    marked by the BOM (6.4).
    """
    severity = SEVERITY_NOTICE if outcome == int(Outcome.SUCCESS) else SEVERITY_WARNING
    pri = FACILITY_AUTHPRIV * 8 + severity
    header = " ".join(
        (
            f"<{pri}>1",
            _iso(timestamp or datetime.now(timezone.utc)),
            _header_field(hostname or socket.gethostname(), 255),
            APP_NAME,
            _header_field(str(os.getpid()), 128),
            MSGID,
            "-",
        )
    )
    return header.encode("ascii") + b" " + BOM + xml.encode("utf-8")


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 3.4.1 / RFC 5425 4.3 framing: ``MSG-LEN SP SYSLOG-MSG``, the length
    in octets, in decimal."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogSender:
    """Sends syslog messages to ``udp://``, ``tcp://`` or ``tls://host:port``.

    * ``udp``: one message per datagram (RFC 5426 3.1), no framing.
    * ``tcp``: one connection, octet-counting framing (RFC 6587 3.4.1).
    * ``tls``: the same framing in TLS (RFC 5425 4.3), verified with the
      system's default CA certificates and the host name.

    :meth:`send` raises :class:`OSError` on failure and drops the connection,
    so that the next call opens a new one. Not thread-safe: one sender per
    writer thread.

    Parameters
    ----------
    url
        Where to send.
    timeout
        Seconds for connecting and for each send.
    ssl_context
        For ``tls``; default :func:`ssl.create_default_context`.
    """

    SCHEMES = ("udp", "tcp", "tls")

    def __init__(
        self, url: str, *, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in self.SCHEMES or not parts.hostname or not parts.port:
            raise ValueError(
                f"audit syslog URL must be udp://, tcp:// or tls://host:port, not {url!r}"
            )
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._sock: socket.socket | None = None

    def send(self, message: bytes) -> None:
        """Send one syslog message (a :func:`syslog_message`)."""
        if self.scheme == "udp":
            if self._sock is None:
                # Unconnected, so that an ICMP port-unreachable from an earlier
                # datagram does not fail a later send (UDP syslog is best-effort).
                family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0][0]
                self._sock = socket.socket(family, socket.SOCK_DGRAM)
                self._sock.settimeout(self.timeout)
            try:
                self._sock.sendto(message, (self.host, self.port))
            except OSError:
                self.close()
                raise
            return
        try:
            if self._sock is not None and self._peer_closed(self._sock):
                # A write into a connection the repository closed (idle
                # timeout, restart) "succeeds" locally and the message is lost
                # (RFC 6587 4.3.1 notes it); so look before writing.
                self.close()
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(octet_counted(message))
        except OSError:
            self.close()
            raise

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Whether the peer has closed ``sock``: a syslog receiver never sends,
        so a readable socket means end of file (or a reset), except for TLS
        records such as TLS 1.3 session tickets, consumed here."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        sock.settimeout(0)
        try:
            return sock.recv(4096) == b""
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return False  # no application data: the connection is open
        except OSError:
            return True
        finally:
            try:
                sock.settimeout(self.timeout)
            except OSError:
                pass

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.scheme == "tls":
            context = self._ssl_context or ssl.create_default_context()
            try:
                return context.wrap_socket(sock, server_hostname=self.host)
            except BaseException:
                sock.close()
                raise
        return sock

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
