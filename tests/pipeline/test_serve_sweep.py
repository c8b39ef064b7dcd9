"""The reconciliation sweep ``lightbox serve`` starts: studies a crash left unlooked-at get linked.

A study stored by an ingest service without its linker (what a process
killed between the commit and the link leaves) has no ``study_links`` row;
:func:`pipeline.serve.sweep_reconciliation` finds it, links the one whose
Accession Number an order has, and lists the other on the reconciliation list.
"""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from pathlib import Path

import pydicom

from pipeline.index.records import Provenance
from pipeline.index.schema import LinkState
from pipeline.ingest.service import IngestService
from pipeline.runtime import Runtime
from pipeline.serve import sweep_reconciliation
from pipeline.worklist.reconcile import Reconciler
from pipeline.worklist.registration import ProcedureRequest
from tests.corpus import SERIES


def test_sweep_links_what_a_crash_left(runtime: Runtime, dicom_data: Path) -> None:
    patient = runtime.registration.register_patient("SWEEP-1", actor="t").patient
    order = runtime.registration.create_order(
        patient.id, [ProcedureRequest("CT", datetime(2026, 12, 4, 9))], actor="t",
        accession_number="ACC-SWEEP")  # fmt: skip
    # No linker: as if the process died right after each commit.
    ingest = IngestService(runtime.index, runtime.blobs, reconcile=False)
    assert ingest.linker is None
    ds = pydicom.dcmread(sorted((dicom_data / SERIES["ct"]).iterdir())[0])
    ds.AccessionNumber = "ACC-SWEEP"
    buffer = BytesIO()
    ds.save_as(buffer)
    ingest.store_part10(buffer.getvalue(), Provenance("import"))
    mr = sorted((dicom_data / SERIES["mr"]).iterdir())[0]
    ingest.store_part10(mr.read_bytes(), Provenance("import"))
    reconciler = Reconciler(runtime.index)
    assert reconciler.link_of(str(ds.StudyInstanceUID)) is None
    assert reconciler.unmatched() == []  # not looked at: not even on the list

    sweep_reconciliation(runtime.index).join(timeout=60)

    link = reconciler.link_of(str(ds.StudyInstanceUID))
    assert link is not None and (link.state, link.order_id) == (LinkState.LINKED, order.id)
    [unmatched] = reconciler.unmatched()
    assert unmatched.study_instance_uid == str(pydicom.dcmread(mr).StudyInstanceUID)
