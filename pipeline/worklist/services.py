"""The worklist's DIMSE services for a DICOM server, built in one call.

For the composition root (``lightbox serve``, the ingest actors):
``DicomIngestServer(settings, ingest, audit, services=[qr_find, *worklist_services(...)])``.
pynetdicom binds one ``EVT_C_FIND`` handler per server, the last one given:
pass the Query/Retrieve SCP's ``handle_find`` as ``other_find`` and list these
after it, and C-FIND requests that are not for the worklist go there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pipeline.worklist.mpps import PerformedProcedureStepSCP
from pipeline.worklist.mwl import ModalityWorklistSCP
from pipeline.worklist.performed import PerformedProcedureSteps
from pipeline.worklist.query import WorklistQuery

if TYPE_CHECKING:
    from pipeline.index.sql import SqlIndex
    from pipeline.ingest.scp import DicomService
    from pipeline.security.audit import AuditTrail


def worklist_services(
    index: SqlIndex,
    audit: AuditTrail,
    ae_title: str,
    *,
    other_find: Callable[[Any], Iterator[Any]] | None = None,
) -> list[DicomService]:
    """The Modality Worklist SCP (PS3.4 K) and the MPPS SCP (PS3.4 F) over ``index``."""
    return [
        ModalityWorklistSCP(WorklistQuery(index), audit, ae_title, other_find=other_find),
        PerformedProcedureStepSCP(PerformedProcedureSteps(index), audit, ae_title),
    ]
