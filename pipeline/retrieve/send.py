"""C-STORE sub-operations that send the stored bytes, and outbound associations.

The retrieve SCPs follow pynetdicom's generator protocol for C-MOVE and C-GET
(PS3.4 C.4.2.3, C.4.3.3): each Pending yield carries a dataset, which
pynetdicom passes to ``Association.send_c_store``. That method encodes a
pydicom Dataset again, which is not the stored instance byte for byte
(pydicom drops group lengths, may re-encode sequences and padding), and its
file-path mode needs a process-wide switch (``_config.STORE_SEND_CHUNKED_DATASET``)
and a local file. Instead the SCPs yield a :class:`StoredInstance` and
:func:`install_sender` replaces ``send_c_store`` *on the one association*
that carries the sub-operations (the C-GET association, or the C-MOVE
sub-association as soon as it is accepted). For a :class:`StoredInstance`
the replacement sends the dataset bytes of the blob as they were received
when the peer accepted the stored transfer syntax, else a conversion by
:mod:`pipeline.retrieve.transcode` into a syntax it did accept (never a lossy
one we chose ourselves); every other dataset goes to pynetdicom's own method.

pynetdicom itself swaps methods on an association the same way
(``attempt`` sets ``assoc.abort``); the C-STORE exchange below is the tail of
pynetdicom 3.0's ``send_c_store`` without the encoding step.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.status import code_to_category

from pipeline.errors import LightboxError
from pipeline.ingest.part10 import split_part10
from pipeline.retrieve.service import RetrieveItem

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.devices.registry import Device

log = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: at most 128 presentation contexts in an A-ASSOCIATE-RQ.
MAX_CONTEXTS = 128
#: Proposed beside the stored syntaxes, for a peer that takes neither: every
#: SCP must accept Implicit VR Little Endian (PS3.5 10.1).
FALLBACK_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Conversion targets in order of preference when the stored syntax was refused.
_PREFERRED_TARGETS = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class SubOperationFailed(LightboxError):
    """One C-STORE sub-operation could not be attempted (no usable context,
    the blob missing, a conversion refused). ``reason`` names no UID."""

    dimse_status = 0xA702


@dataclass
class StudyTally:
    """Sub-operations of one study, for its audit event."""

    patient_id: str
    completed: int = 0
    failed: int = 0


@dataclass
class Transfer:
    """The sub-operations of one C-MOVE or C-GET request.

    Parameters
    ----------
    read
        Gives an item's stored Part-10 bytes (:meth:`RetrieveService.read`).
    max_decoded_bytes
        Passed to :func:`~pipeline.retrieve.transcode.transcode`.
    """

    read: Callable[[RetrieveItem], bytes]
    max_decoded_bytes: int | None = None
    studies: dict[str, StudyTally] = field(default_factory=dict)
    converted: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def instance(self, item: RetrieveItem) -> StoredInstance:
        """The dataset to yield as Pending for ``item``."""
        with self._lock:
            self.studies.setdefault(item.study_instance_uid, StudyTally(item.patient_id))
        return StoredInstance(item, self)

    def _tally(self, item: RetrieveItem, ok: bool) -> None:
        with self._lock:
            tally = self.studies.setdefault(item.study_instance_uid, StudyTally(item.patient_id))
            if ok:
                tally.completed += 1
            else:
                tally.failed += 1

    def send(
        self,
        assoc: Any,
        instance: StoredInstance,
        msg_id: int,
        priority: int,
        originator_aet: str | None,
        originator_id: int | None,
    ) -> Dataset:
        """One C-STORE sub-operation for ``instance`` on ``assoc``; the peer's status."""
        item = instance.item
        ok = False
        try:
            context, dataset = self._payload(assoc, item)
            status = _exchange(
                assoc, context, item, dataset, msg_id, priority, originator_aet, originator_id
            )
            code = status.get("Status")
            # Warning (e.g. B000 coercion) still means the peer holds it.
            ok = code is not None and code_to_category(int(code)) in ("Success", "Warning")
            return status
        except LightboxError as exc:
            log.warning("C-STORE sub-operation not attempted: %s", exc.reason)
            raise
        finally:
            self._tally(item, ok)

    def _payload(self, assoc: Any, item: RetrieveItem) -> tuple[PresentationContext, bytes]:
        """The accepted context to use and the dataset bytes to send in it."""
        contexts = [
            cx
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == item.sop_class_uid and cx.as_scu
        ]
        if not contexts:
            raise SubOperationFailed("the peer accepted no context for this SOP class")
        stored = item.transfer_syntax_uid
        try:
            part10 = self.read(item)
        except LightboxError as exc:
            raise SubOperationFailed(exc.reason) from None
        for cx in contexts:
            if cx.transfer_syntax[0] == stored:
                return cx, bytes(split_part10(part10).dataset)
        from pipeline.retrieve import transcode as tc  # lazy: pydicom's pixel plugins

        # Never a lossy syntax we chose ourselves (PS3.5 8.2: the receiver
        # would hold pixels that are not the originals, without having asked).
        targets = [
            cx
            for cx in contexts
            if not tc.is_lossy(cx.transfer_syntax[0])
            and tc.can_transcode(stored, cx.transfer_syntax[0])
        ]
        targets.sort(key=lambda cx: _rank(str(cx.transfer_syntax[0])))
        if not targets:
            raise SubOperationFailed(
                "the peer accepted no transfer syntax the stored one converts to"
            )
        cx = targets[0]
        try:
            converted = tc.transcode(
                part10, str(cx.transfer_syntax[0]), max_decoded_bytes=self.max_decoded_bytes
            )
        except LightboxError as exc:
            raise SubOperationFailed(exc.reason) from None
        with self._lock:
            self.converted += 1
        return cx, bytes(split_part10(converted).dataset)


def _rank(ts: str) -> int:
    return _PREFERRED_TARGETS.index(ts) if ts in _PREFERRED_TARGETS else len(_PREFERRED_TARGETS)


class StoredInstance(Dataset):
    """What a retrieve SCP yields as Pending: the item to send, not its contents.

    SOP Class and SOP Instance UID are real elements: pynetdicom puts the
    instance UID into the Failed SOP Instance UID List (0008,0058) when the
    sub-operation fails (PS3.4 C.4.2.1.4.2, C.4.3.1.3.2).
    """

    def __init__(self, item: RetrieveItem, transfer: Transfer) -> None:
        super().__init__()
        self.SOPClassUID = item.sop_class_uid
        self.SOPInstanceUID = item.sop_instance_uid
        # Plain attributes (lower case): not DICOM elements.
        self.item = item
        self.transfer = transfer


def install_sender(assoc: Any) -> None:
    """Make ``assoc.send_c_store`` send :class:`StoredInstance` datasets as stored.

    Idempotent; any other dataset or path goes to pynetdicom's method.
    """
    if getattr(assoc, "_lightbox_sender", False):
        return
    original = assoc.send_c_store

    def send_c_store(
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        if isinstance(dataset, StoredInstance):
            return dataset.transfer.send(
                assoc, dataset, msg_id, priority, originator_aet, originator_id
            )
        return original(
            dataset,
            msg_id=msg_id,
            priority=priority,
            originator_aet=originator_aet,
            originator_id=originator_id,
        )

    assoc.send_c_store = send_c_store
    assoc._lightbox_sender = True


def _exchange(
    assoc: Any,
    context: PresentationContext,
    item: RetrieveItem,
    dataset: bytes,
    msg_id: int,
    priority: int,
    originator_aet: str | None,
    originator_id: int | None,
) -> Dataset:
    """Send one C-STORE-RQ carrying ``dataset``; the C-STORE-RSP status (PS3.7 9.1.1)."""
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = priority
    req.MoveOriginatorApplicationEntityTitle = originator_aet
    req.MoveOriginatorMessageID = originator_id
    req.AffectedSOPClassUID = item.sop_class_uid
    req.AffectedSOPInstanceUID = item.sop_instance_uid
    req.DataSet = BytesIO(dataset)
    # As pynetdicom's send_*: hold the association's reactor so that it does
    # not take the response off the DIMSE queue before we do.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if rsp is None:
        assoc._handle_no_response()  # a DIMSE timeout: pynetdicom aborts
        return Dataset()
    return assoc._check_received_status(rsp)


def store_contexts(items: Iterable[RetrieveItem]) -> list[PresentationContext]:
    """Presentation contexts for a C-MOVE sub-association carrying ``items``.

    One context per (SOP Class, stored transfer syntax), so that the peer can
    accept each stored syntax on its own (an acceptor picks one syntax per
    context, PS3.8 9.3.2.2), then one per SOP Class with the uncompressed
    syntaxes for conversion. Past 128 contexts the fallbacks go first; the
    instances of a SOP Class left without a context then fail.

    Verification comes first: Storage SCPs accept it almost without exception
    (PS3.4 A), so the sub-association is established even when the
    destination takes none of the storage classes, and the request ends with
    the failed counts and A702 (Unable to perform sub-operations, PS3.4
    C.4.2.1.4) instead of A801 (Move Destination unknown), a wrong cause.
    """
    syntaxes: dict[str, list[str]] = {}
    for item in items:
        listed = syntaxes.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid not in listed:
            listed.append(item.transfer_syntax_uid)
    exact = [_context(cls, [ts]) for cls, tss in syntaxes.items() for ts in tss]
    fallback = [_context(cls, list(FALLBACK_SYNTAXES)) for cls in syntaxes]
    verification = _context(Verification, [ImplicitVRLittleEndian])
    return ([verification] + exact + fallback)[:MAX_CONTEXTS]


def _context(abstract_syntax: str, transfer_syntaxes: list[str]) -> PresentationContext:
    cx = PresentationContext()
    cx.abstract_syntax = abstract_syntax
    cx.transfer_syntax = transfer_syntaxes
    return cx


def client_tls_args(settings: Settings, device: Device) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom ``tls_args`` for an association we open to ``device`` (PS3.15 B.1).

    None for a device without ``tls``. The peer's certificate must chain to
    ``dicom_tls_ca`` (the system's CAs when unset); we present our own
    ``dicom_tls_cert`` for mutual authentication. Host names are not
    compared with the certificate: DICOM node authentication (PS3.15 B.1,
    IHE ATNA) trusts the CA's certificates, and devices are mostly registered
    by IP address, which their certificates seldom name.
    """
    if not device.tls:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH,
        cafile=str(settings.dicom_tls_ca) if settings.dicom_tls_ca is not None else None,
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None:
        context.load_cert_chain(str(settings.dicom_tls_cert), str(settings.dicom_tls_key))
    return context, device.host
