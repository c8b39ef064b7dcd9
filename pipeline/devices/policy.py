"""Device policy: a registered calling AE uses only the DIMSE services the registry grants it.

:meth:`DeviceRegistry.services_for` names what a calling AE may use (a
uni-directional device: C-ECHO and C-STORE). :class:`DevicePolicy` wraps the
event handlers of the DICOM server so that every request is checked before
the service sees it. An AE that is not registered is not checked here: the
calling-AE allow-list decides at association time, as before
(:class:`pipeline.ingest.scp.StorageSCP.handle_requested`).

A refused request is answered, not the association: the device may still
use what it is granted on the same association. Refusal statuses:

* C-ECHO, C-STORE, C-FIND, C-GET and N-ACTION: 0124H, Refused: Not
  Authorized, a general status of PS3.7 C.5 (Annex C: "the DIMSE-service-user
  was not authorized to invoke the operation"), which pynetdicom accepts for
  every service class; with an Error Comment (0000,0902) naming the service
  for the DIMSE-C services. The N-ACTION response carries none: PS3.7 10.1.4.1
  lists no Error Comment for it.
* C-MOVE: A801H, Refused: Move Destination unknown (PS3.4 C.4.2.1.5). The
  pynetdicom C-MOVE protocol has no other way out before it opens the
  sub-association (see :mod:`pipeline.retrieve.scp`); the Security Alert in
  the audit trail gives the real reason.

Each refusal is a Security Alert (PS3.15 A.5.3.11) in the audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt

from pipeline.devices.registry import DeviceRegistry
from pipeline.security.audit import Action, AuditEvent, AuditTrail, EventID, Outcome
from pipeline.security.peers import normalise_ip

log = logging.getLogger(__name__)

#: PS3.7 C.5: Refused: Not Authorized.
NOT_AUTHORIZED = 0x0124
#: PS3.4 C.4.2.1.5: Refused: Move Destination unknown.
MOVE_DESTINATION_UNKNOWN = 0xA801
#: Modality Worklist Information Model - FIND (PS3.4 K.6.1.2): C-FIND, but "worklist".
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
#: Storage Commitment Push Model SOP Class (PS3.4 J.3.5).
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
#: MPPS SOP Class (PS3.4 F.7.3).
MPPS = "1.2.840.10008.3.1.2.3.3"

#: Marks "registry not read yet" on an association (None means "not registered").
_UNREAD = object()

_EVENT_SERVICES = {
    evt.EVT_C_ECHO: "echo",
    evt.EVT_C_STORE: "store",
    evt.EVT_C_FIND: "find",
    evt.EVT_C_MOVE: "move",
    evt.EVT_C_GET: "get",
    evt.EVT_N_ACTION: "commitment",
    evt.EVT_N_CREATE: "mpps",
    evt.EVT_N_SET: "mpps",
}


def service_of(event: evt.Event) -> str | None:
    """The registry's name for the service an event invokes; None when not governed."""
    name = _EVENT_SERVICES.get(event.event)
    if name == "find":
        request = event.request
        if str(getattr(request, "AffectedSOPClassUID", "") or "") == WORKLIST_FIND:
            return "worklist"
    return name


def _status(code: int, comment: str = "") -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO (PS3.7 C.4)
    return status


class DevicePolicy:
    """Wraps DIMSE handlers with the registry's per-service check.

    Parameters
    ----------
    registry
        The device registry.
    audit
        Where refusals go (Security Alert).
    ae_title
        Our AE title (the audit events' destination).
    """

    def __init__(self, registry: DeviceRegistry, audit: AuditTrail, ae_title: str) -> None:
        self.registry = registry
        self.audit = audit
        self.ae_title = ae_title

    def refusal(self, calling_ae: str, service: str, assoc: Any = None) -> str | None:
        """Why ``calling_ae`` may not use ``service``; None when it may (or is not registered).

        With ``assoc`` the registry is read once per association (the calling
        AE does not change during one): C-STORE is the hot path of ingest,
        and a registry change applies from the device's next association.
        """
        cached = getattr(assoc, "_lightbox_services", _UNREAD) if assoc is not None else _UNREAD
        if cached is _UNREAD:
            cached = self.registry.services_for(calling_ae)
            if assoc is not None:
                assoc._lightbox_services = cached
        if cached is None or service in cached:
            return None
        return f"calling AE may not use {service}"

    def guard(self, event_type: Any, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``handler`` behind the check, for the events the registry governs."""
        if event_type not in _EVENT_SERVICES:
            return handler
        generator = event_type in (evt.EVT_C_FIND, evt.EVT_C_MOVE, evt.EVT_C_GET)

        def guarded(event: evt.Event) -> Any:
            reason = self._check(event)
            if reason is None:
                return handler(event)
            if generator:
                return self._refused_generator(event_type, reason)
            if event_type in (evt.EVT_N_ACTION, evt.EVT_N_CREATE, evt.EVT_N_SET):
                # (status, reply dataset); PS3.7 10.1 gives N-* responses no Error Comment.
                return _status(NOT_AUTHORIZED), None
            return _status(NOT_AUTHORIZED, reason)

        guarded.__name__ = getattr(handler, "__name__", "handler")
        return guarded

    def _check(self, event: evt.Event) -> str | None:
        service = service_of(event)
        if service is None:
            return None
        calling_ae = str(event.assoc.requestor.ae_title or "").strip()
        try:
            reason = self.refusal(calling_ae, service, event.assoc)
        except Exception:  # any registry failure is a refusal
            # The registry could not be read: fail closed for this request.
            log.exception("device policy check failed calling_ae=%s", calling_ae)
            reason = "device registry unavailable"
        if reason is not None:
            address = normalise_ip(str(event.assoc.requestor.address or ""))
            log.warning(
                "request refused calling_ae=%s peer=%s service=%s", calling_ae, address, service
            )
            self.audit.record(
                AuditEvent(
                    EventID.SECURITY_ALERT,
                    Action.EXECUTE,
                    "ae",
                    calling_ae,
                    outcome=Outcome.MINOR_FAILURE,
                    source_address=address,
                    destination=self.ae_title,
                    detail={"refused": service, "reason": reason},
                )
            )
        return reason

    @staticmethod
    def _refused_generator(event_type: Any, reason: str) -> Iterator[Any]:
        if event_type is evt.EVT_C_MOVE:
            yield None, None  # pynetdicom: A801
            return
        if event_type is evt.EVT_C_GET:
            yield 1  # pynetdicom asks for the number of sub-operations first
        yield _status(NOT_AUTHORIZED, reason), None
