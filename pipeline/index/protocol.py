"""The index interface: what every metadata database backend offers.

One contract test (``tests/pipeline/index/test_index_contract.py``) runs
against every backend (SQLite and PostgreSQL through SQLAlchemy).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pipeline.config import DuplicatePolicy
from pipeline.index.schema import PixelState
from pipeline.index.records import (
    IndexCounts,
    InstanceRow,
    ParsedHeader,
    Provenance,
    RecordResult,
    SeriesRow,
    StoredBlob,
    StudyRow,
    WorkItem,
)


@runtime_checkable
class Index(Protocol):
    """Metadata of every stored instance, and the durable pipeline work queue."""

    def record_instance(
        self,
        header: ParsedHeader,
        blob: StoredBlob,
        provenance: Provenance,
        duplicate_policy: DuplicatePolicy,
        stages: tuple[str, ...] = ("decode",),
    ) -> RecordResult:
        """Insert or update one instance and queue its pipeline work, in one commit.

        Returns only once the transaction is durable. Raises
        :class:`pipeline.errors.DuplicateInstance` under the ``reject`` policy.
        """

    def get_instance(self, sop_instance_uid: str) -> InstanceRow | None: ...

    def stored_blob(self, sop_instance_uid: str) -> StoredBlob | None:
        """Where and what is stored for an instance, or None (one indexed lookup)."""

    def list_instances(
        self, study_instance_uid: str | None = None, series_instance_uid: str | None = None
    ) -> list[InstanceRow]: ...

    def get_series(self, series_instance_uid: str) -> SeriesRow | None: ...

    def get_study(self, study_instance_uid: str) -> StudyRow | None: ...

    def search_studies(
        self,
        *,
        patient_id: str | None = None,
        accession_number: str | None = None,
        study_date_from: str | None = None,
        study_date_to: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[StudyRow]: ...

    def counts(self) -> IndexCounts: ...

    def claim_work(self, stage: str, limit: int, lease_seconds: float = 300.0) -> list[WorkItem]:
        """Claim up to ``limit`` pending items (or claimed items whose lease ran out)."""

    def complete_work(self, pks: list[int]) -> None: ...

    def fail_work(self, pk: int, reason: str) -> None: ...

    def finish_pixel_work(
        self, pk: int, sop_instance_uid: str, state: PixelState, error: str | None = None
    ) -> None:
        """Set an instance's pixel state and close its work item in one transaction."""

    def requeue_pixels(self, stage: str, states: tuple[PixelState, ...]) -> int:
        """Queue ``stage`` again for instances in ``states``; returns how many."""

    def pixel_failures(self, limit: int = 100) -> list[tuple[str, str]]:
        """(SOP Instance UID, reason) of instances whose pixels failed to decode."""

    def release_claims(self) -> int:
        """Make every claimed work item pending again (a lone server restarting)."""

    def select_instances(
        self,
        *,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        modality: str | None = None,
        study_date_from: str | None = None,
        study_date_to: str | None = None,
        pixel_state: PixelState | None = PixelState.READY,
    ) -> list[tuple[str, str, int]]:
        """(SOP Instance UID, storage key, frames) of the instances a batch job selects."""

    def close(self) -> None: ...
