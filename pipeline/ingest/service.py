"""The ingest service: the one path from received bytes to a durable, indexed instance.

C-STORE (``scp.py``), STOW-RS (``api/routes/stow.py``) and ``lightbox import``
(``importer.py``) all call :class:`IngestService`. When a ``store_*`` method
returns, the blob is fsynced and the index row (with its pipeline work item)
is committed; only then may a protocol adapter answer Success.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.config import DuplicatePolicy, Settings
from pipeline.errors import DatasetMismatch, InvalidDataset, OutOfResources, TooLarge
from pipeline.index.protocol import Index
from pipeline.index.records import (
    ParsedHeader,
    Provenance,
    RecordOutcome,
    StoredBlob,
)
from pipeline.ingest.parse import (
    DEFAULT_MAX_SEQUENCE_DEPTH,
    check_pixel_limits,
    extract_header,
    is_valid_uid,
    read_header,
)
from pipeline.ingest.part10 import build_file_meta, split_part10
from pipeline.storage.blobs import BlobStore, new_storage_key

if TYPE_CHECKING:
    from pipeline.worklist.reconcile import StudyLinker

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What happened to one instance; UIDs are for the protocol's answer, not logs."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    outcome: RecordOutcome
    storage_key: str
    size: int
    #: For the audit trail (PS3.15 A.5.3: the patient concerned), never for logs.
    patient_id: str = ""


class IngestService:
    """Parse, store durably, index, queue for decoding.

    Parameters
    ----------
    index, blobs
        The stores. The service owns no connection of its own.
    duplicate_policy
        What a re-sent SOP Instance UID with other content does.
    max_dataset_bytes
        Larger datasets are refused with :class:`pipeline.errors.TooLarge`
        (and a Deflated dataset that inflates to more).
    max_decoded_bytes
        A dataset whose Image Pixel Module declares a larger decoded array is
        refused with :class:`pipeline.errors.TooLarge` before it is stored
        (:func:`pipeline.ingest.parse.check_pixel_limits`).
    max_sequence_depth
        A dataset nesting sequences deeper is refused with
        :class:`pipeline.errors.InvalidDataset` (PS3.5 7.5).
    reconcile
        Link each stored study to its order (IHE Scheduled Workflow), in a
        background thread (:class:`pipeline.worklist.reconcile.StudyLinker`).
    """

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP,
        max_dataset_bytes: int = 2 * 1024**3,
        *,
        max_decoded_bytes: int = 4 * 1024**3,
        max_sequence_depth: int = DEFAULT_MAX_SEQUENCE_DEPTH,
        reconcile: bool = True,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        self.max_dataset_bytes = max_dataset_bytes
        self.max_decoded_bytes = max_decoded_bytes
        self.max_sequence_depth = max_sequence_depth
        # Reconciliation (pipeline.worklist.reconcile): after each commit the
        # study is handed to a background thread that links it to its order.
        # Only over the SQL index, whose database holds the orders.
        self.linker: StudyLinker | None = None
        if reconcile and hasattr(index, "write_transaction"):
            from pipeline.worklist.reconcile import StudyLinker

            self.linker = StudyLinker(index)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: Settings, index: Index, blobs: BlobStore) -> IngestService:
        return cls(
            index,
            blobs,
            settings.duplicate_policy,
            settings.max_dataset_bytes,
            max_decoded_bytes=settings.max_decoded_bytes,
            max_sequence_depth=settings.max_sequence_depth,
        )

    def store_dataset(
        self,
        dataset: bytes | memoryview,
        transfer_syntax_uid: str,
        provenance: Provenance,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> StoreResult:
        """Store a dataset received over DIMSE (no File Meta Information).

        ``sop_class_uid`` and ``sop_instance_uid`` are the C-STORE request's
        Affected SOP Class/Instance UIDs, which must match the dataset's
        (PS3.4 B.2.3, status A900H otherwise).
        """
        header = self._parse(dataset, transfer_syntax_uid)
        inst = header.instance
        if sop_class_uid is not None and sop_class_uid != inst.sop_class_uid:
            raise DatasetMismatch("SOP Class UID differs from the request's Affected SOP Class UID")
        if sop_instance_uid is not None and sop_instance_uid != inst.sop_instance_uid:
            raise DatasetMismatch(
                "SOP Instance UID differs from the request's Affected SOP Instance UID"
            )
        meta = build_file_meta(
            inst.sop_class_uid, inst.sop_instance_uid, transfer_syntax_uid, provenance.calling_ae
        )
        return self._commit(header, meta + bytes(dataset), len(meta), transfer_syntax_uid, provenance)

    def store_part10(self, data: bytes, provenance: Provenance) -> StoreResult:
        """Store a Part-10 file (STOW-RS, import) as it is.

        A file without File Meta Information, or whose meta has no Transfer
        Syntax UID, is stored with a File Meta Information written for it
        (the transfer syntax inferred, PS3.10 7.1); its dataset bytes are kept.
        """
        if len(data) > self.max_dataset_bytes:
            raise TooLarge(f"{len(data)} bytes is over the limit of {self.max_dataset_bytes}")
        part = split_part10(data)
        header = self._parse(part.dataset, part.transfer_syntax_uid)
        if part.has_meta:
            blob, offset = data, part.dataset_offset
        else:
            inst = header.instance
            meta = build_file_meta(inst.sop_class_uid, inst.sop_instance_uid, part.transfer_syntax_uid)
            blob, offset = meta + bytes(part.dataset), len(meta)
        return self._commit(header, blob, offset, part.transfer_syntax_uid, provenance)

    def _parse(self, dataset: bytes | memoryview, transfer_syntax_uid: str) -> ParsedHeader:
        """Every check on received bytes, before anything is stored.

        Sizes first (the dataset, a Deflated dataset inflated), then the
        structure and the sequence depth (PS3.5 7.1, 7.5, A.4), the UIDs (PS3.5
        9.1: transfer syntax here, Study/Series/SOP Instance and SOP Class in
        :func:`extract_header`), then the Image Pixel Module's declared size.
        """
        if len(dataset) > self.max_dataset_bytes:
            raise TooLarge(f"{len(dataset)} bytes is over the limit of {self.max_dataset_bytes}")
        if not is_valid_uid(transfer_syntax_uid):
            raise InvalidDataset("Transfer Syntax UID is not a valid UID")
        ds, has_pixels = read_header(
            bytes(dataset),
            transfer_syntax_uid,
            max_sequence_depth=self.max_sequence_depth,
            max_inflated_bytes=self.max_dataset_bytes,
        )
        header = extract_header(ds, has_pixels)
        check_pixel_limits(ds, has_pixels, self.max_decoded_bytes)
        return header

    def _commit(
        self,
        header: ParsedHeader,
        blob: bytes,
        dataset_offset: int,
        transfer_syntax_uid: str,
        provenance: Provenance,
    ) -> StoreResult:
        # The SHA-256 covers the dataset only: over DIMSE the File Meta
        # Information is ours, so the dataset is what the sender's bytes were.
        digest = hashlib.sha256(memoryview(blob)[dataset_offset:]).hexdigest()
        inst = header.instance
        key = new_storage_key()
        try:
            self.blobs.put(key, blob)
        except OSError as exc:
            # Disk full, permissions, an unreachable object store: the sender
            # may retry later (A700H, 503), nothing was stored.
            raise OutOfResources(f"blob store write failed: {type(exc).__name__}") from None
        try:
            result = self.index.record_instance(
                header,
                StoredBlob(key, len(blob), digest, transfer_syntax_uid),
                provenance,
                self.duplicate_policy,
            )
        except BaseException:
            self.blobs.delete(key)
            raise
        if result.orphaned_key is not None:
            self.blobs.delete(result.orphaned_key)
        stored_key = key if result.outcome in (RecordOutcome.STORED, RecordOutcome.REPLACED) else None
        if result.outcome is RecordOutcome.KEPT_EXISTING:
            log.warning(
                "re-sent instance with other content kept the stored copy (policy keep); "
                "source=%s calling_ae=%s",
                provenance.source,
                provenance.calling_ae,
            )
        log.debug(
            "stored key=%s outcome=%s size=%d ts=%s",
            stored_key,
            result.outcome.value,
            len(blob),
            transfer_syntax_uid,
        )
        if self.linker is not None and result.outcome in (
            RecordOutcome.STORED,
            RecordOutcome.REPLACED,
        ):
            try:
                self.linker.notice(header.study.study_instance_uid)
            except Exception as exc:  # never the sender's problem: the sweep catches up
                log.warning("reconciliation notice failed: %s", type(exc).__name__)
        if stored_key is None:
            kept = self.index.stored_blob(inst.sop_instance_uid)
            stored_key = kept.storage_key if kept else ""
        return self._result(header, transfer_syntax_uid, result.outcome, stored_key, len(blob))

    @staticmethod
    def _result(
        header: ParsedHeader, transfer_syntax_uid: str, outcome: RecordOutcome, key: str, size: int
    ) -> StoreResult:
        return StoreResult(
            sop_class_uid=header.instance.sop_class_uid,
            sop_instance_uid=header.instance.sop_instance_uid,
            study_instance_uid=header.study.study_instance_uid,
            series_instance_uid=header.series.series_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            outcome=outcome,
            storage_key=key,
            size=size,
            patient_id=header.patient.patient_id,
        )
