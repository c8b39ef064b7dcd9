"""The registry of remote application entities (devices): where they listen, what they may do.

A device is known by its AE title (PS3.5 6.2, VR AE). The registry answers
the DIMSE services two questions: where to open an association to a device
(C-MOVE destinations, Storage Commitment reports on a new association,
PS3.4 C.4.2 and J.3.3) and which services a calling AE may use
(:meth:`DeviceRegistry.services_for`).

Setups (:class:`~pipeline.index.schema.DeviceSetup`): a *bi-directional*
device may use every service; a *uni-directional* one only sends (C-ECHO,
C-STORE). ``services`` narrows that further; empty means "those of the
setup". An inactive device keeps its row but may use nothing.

Rows live in the ``devices`` table (migration 0003); writes go through
:meth:`SqlIndex.write_transaction` so that they take the index's writer turn.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update

from pipeline.errors import AlreadyExists, InvalidRequest, NotFound
from pipeline.index.schema import DeviceSetup, devices

if TYPE_CHECKING:
    from pipeline.index.sql import SqlIndex

#: The DIMSE services a device may be granted, by the names the ``services``
#: column keeps: Verification, Storage, Query/Retrieve FIND/MOVE/GET
#: (PS3.4 C), Storage Commitment (J), Modality Worklist (K), MPPS (F).
SERVICES: tuple[str, ...] = (
    "echo", "store", "find", "move", "get", "commitment", "worklist", "mpps",
)  # fmt: skip

#: What each setup allows when the device lists no services of its own.
SETUP_SERVICES: dict[DeviceSetup, frozenset[str]] = {
    DeviceSetup.BI_DIRECTIONAL: frozenset(SERVICES),
    DeviceSetup.UNI_DIRECTIONAL: frozenset({"echo", "store"}),
}

#: PS3.5 6.2: AE is at most 16 characters of the default repertoire without
#: backslash and control characters; leading and trailing spaces carry no meaning.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
#: A host name or address: no spaces or control characters (RFC 1123 names,
#: IPv4 and IPv6 literals all fit).
_HOST = re.compile(r"[A-Za-z0-9._:%\[\]-]{1,253}")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; they were written in UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def normalise_ae_title(title: str) -> str:
    """``title`` without its padding, checked against PS3.5 6.2 (VR AE).

    Raises
    ------
    InvalidRequest
        Empty (or only spaces), over 16 characters, a backslash, a control
        or non-ASCII character.
    """
    stripped = str(title).strip(" ")
    if not _AE_TITLE.fullmatch(stripped):
        raise InvalidRequest(
            "an AE title is 1 to 16 characters, without backslash or control characters (PS3.5 6.2)"
        )
    return stripped


def _check_host(host: str) -> str:
    host = host.strip()
    if host and not _HOST.fullmatch(host):
        raise InvalidRequest("host must be a host name or an IP address")
    return host


def _check_port(port: int | None) -> int | None:
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidRequest("port must be between 1 and 65535")
    return port


def _check_setup(setup: DeviceSetup | str) -> DeviceSetup:
    try:
        return DeviceSetup(setup)
    except ValueError:
        raise InvalidRequest(
            "setup must be one of: " + ", ".join(s.value for s in DeviceSetup)
        ) from None


def parse_services(services: Iterable[str] | str) -> frozenset[str]:
    """A set of service names from a list or a comma-separated string; unknown names refused."""
    if isinstance(services, str):
        services = services.split(",")
    names = frozenset(s.strip().lower() for s in services if s and s.strip())
    unknown = sorted(names - set(SERVICES))
    if unknown:
        raise InvalidRequest(
            f"unknown service(s) {', '.join(unknown)}; services: {', '.join(SERVICES)}"
        )
    return names


def _check_services(setup: DeviceSetup, services: frozenset[str]) -> None:
    beyond = sorted(services - SETUP_SERVICES[setup])
    if beyond:
        raise InvalidRequest(
            f"a {setup.value} device may only use {', '.join(sorted(SETUP_SERVICES[setup]))}; "
            f"not {', '.join(beyond)}"
        )


@dataclass(frozen=True)
class Device:
    """One remote AE as registered.

    ``services`` is what the row lists (empty: those of the setup);
    :attr:`allowed_services` is what the device may actually use.
    """

    ae_title: str
    host: str
    port: int | None
    setup: DeviceSetup
    services: frozenset[str]
    tls: bool
    description: str
    active: bool
    created_at: datetime
    updated_at: datetime

    @property
    def allowed_services(self) -> frozenset[str]:
        """The services this device may use now (none while inactive)."""
        if not self.active:
            return frozenset()
        return self.services or SETUP_SERVICES[self.setup]

    @property
    def reachable(self) -> bool:
        """Whether we can open an association to it (host and port known)."""
        return bool(self.host) and self.port is not None


def _device(row: Any) -> Device:
    return Device(
        ae_title=row.ae_title,
        host=row.host,
        port=row.port,
        setup=DeviceSetup(row.setup),
        services=parse_services(row.services),
        tls=bool(row.tls),
        description=row.description,
        active=bool(row.active),
        created_at=_utc(row.created_at),
        updated_at=_utc(row.updated_at),
    )


#: Fields :meth:`DeviceRegistry.update` may change.
_UPDATABLE = frozenset({"host", "port", "setup", "services", "tls", "description", "active"})


class DeviceRegistry:
    """Add, change, remove and look up devices.

    Parameters
    ----------
    index
        The index whose database holds the ``devices`` table (reads through
        ``index.engine``, writes through ``index.write_transaction()``).
    """

    def __init__(self, index: SqlIndex) -> None:
        self.index = index

    def add(
        self,
        ae_title: str,
        *,
        host: str = "",
        port: int | None = None,
        setup: DeviceSetup | str = DeviceSetup.BI_DIRECTIONAL,
        services: Iterable[str] | str = (),
        tls: bool = False,
        description: str = "",
        active: bool = True,
    ) -> Device:
        """Register a device.

        Raises
        ------
        InvalidRequest
            A malformed AE title, host, port, setup or service name, or a
            uni-directional device granted more than echo and store.
        AlreadyExists
            A device with this AE title is registered.
        """
        title = normalise_ae_title(ae_title)
        checked_setup = _check_setup(setup)
        names = parse_services(services)
        _check_services(checked_setup, names)
        values = {
            "ae_title": title,
            "host": _check_host(host),
            "port": _check_port(port),
            "setup": checked_setup.value,
            "services": ",".join(s for s in SERVICES if s in names),
            "tls": bool(tls),
            "description": str(description),
            "active": bool(active),
        }
        now = _now()
        with self.index.write_transaction() as conn:
            # Checked inside the writer's transaction: no second writer can
            # insert the same title between the check and the insert.
            if conn.execute(select(devices.c.pk).where(devices.c.ae_title == title)).first():
                raise AlreadyExists("a device with this AE title is registered")
            conn.execute(insert(devices).values(**values, created_at=now, updated_at=now))
        return self.get(title)

    def update(self, ae_title: str, **changes: Any) -> Device:
        """Change some of a device's fields (``host``, ``port``, ``setup``,
        ``services``, ``tls``, ``description``, ``active``); ``port=None`` clears it.

        Raises
        ------
        NotFound
            No such device.
        InvalidRequest
            An unknown field or an invalid value (checked as in :meth:`add`,
            against the device's resulting setup and services).
        """
        unknown = sorted(set(changes) - _UPDATABLE)
        if unknown:
            raise InvalidRequest(f"cannot change {', '.join(unknown)}")
        current = self.get(ae_title)
        setup = _check_setup(changes.get("setup", current.setup))
        names = parse_services(changes["services"]) if "services" in changes else current.services
        _check_services(setup, names)
        values: dict[str, Any] = {}
        if "host" in changes:
            values["host"] = _check_host(str(changes["host"] or ""))
        if "port" in changes:
            values["port"] = _check_port(changes["port"])
        if "setup" in changes:
            values["setup"] = setup.value
        if "services" in changes:
            values["services"] = ",".join(s for s in SERVICES if s in names)
        for flag in ("tls", "active"):
            if flag in changes:
                values[flag] = bool(changes[flag])
        if "description" in changes:
            values["description"] = str(changes["description"] or "")
        if values:
            values["updated_at"] = _now()
            with self.index.write_transaction() as conn:
                result = conn.execute(
                    update(devices).where(devices.c.ae_title == current.ae_title).values(**values)
                )
                if not result.rowcount:
                    raise NotFound("no such device")
        return self.get(current.ae_title)

    def remove(self, ae_title: str) -> None:
        """Remove a device; :class:`NotFound` if there is none of that title."""
        title = normalise_ae_title(ae_title)
        with self.index.write_transaction() as conn:
            result = conn.execute(delete(devices).where(devices.c.ae_title == title))
        if not result.rowcount:
            raise NotFound("no such device")

    def find(self, ae_title: str) -> Device | None:
        """The device of this AE title, or None (also for a title that is not a valid AE)."""
        title = str(ae_title or "").strip(" ")
        if not _AE_TITLE.fullmatch(title):
            return None
        with self.index.engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.ae_title == title)).first()
        return _device(row) if row is not None else None

    def get(self, ae_title: str) -> Device:
        """The device of this AE title; :class:`NotFound` if there is none."""
        device = self.find(normalise_ae_title(ae_title))
        if device is None:
            raise NotFound("no such device")
        return device

    def list(self) -> builtins.list[Device]:
        """Every device, by AE title."""
        with self.index.engine.connect() as conn:
            rows = conn.execute(select(devices).order_by(devices.c.ae_title)).all()
        return [_device(r) for r in rows]

    def services_for(self, ae_title: str) -> frozenset[str] | None:
        """What the calling AE ``ae_title`` may use; None when it is not registered.

        A registered but inactive device gets the empty set: it is known and
        refused, which is not the same as unknown.
        """
        device = self.find(ae_title)
        return None if device is None else device.allowed_services
