"""Reconciliation's corrections, applied to what retrieval sends.

When a stored study is linked to its order (:mod:`pipeline.worklist.reconcile`)
the index takes the registration's Patient ID, issuer, name, birth date and
sex, Accession Number and Referring Physician's Name (IHE RAD TF-1 5, Patient
Information Reconciliation). The stored files stay byte for byte as the
modality sent them: the archive never rewrites an original. What leaves the
archive carries the corrected values instead, as an archive that coerces
attributes on retrieval does:

* WADO-RS instances (and C-MOVE, C-GET sub-operations) get the corrected
  attributes written into the dataset they send, with an Original Attributes
  Sequence (0400,0561) item holding the values they replace, Reason for the
  Attribute Modification ``CORRECT`` (PS3.3 C.12.1.1.9.2: "replace incorrect
  values, such as Patient Name or ID, due to ... patient reconciliation");
* WADO-RS metadata gets the same values in its DICOM JSON.

A study whose received values equal the registration's (a modality that
took them from the worklist) has nothing to correct, and its instances go
out exactly as stored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from sqlalchemy import select

from pipeline.index.schema import LinkState, patients, studies, study_links
from pipeline.worklist.reconcile import CORRECTED

__all__ = ["Corrections", "corrections_for"]

#: PS3.3 C.12.1.1.9.2, defined term for a correction by reconciliation.
REASON = "CORRECT"


@dataclass(frozen=True)
class Corrections:
    """The attributes of one study that retrieval gives corrected values.

    Parameters
    ----------
    values
        DICOM keyword -> the corrected value (index form: PN with ``^``, DA
        as ``YYYYMMDD``; "" removes the value).
    modified_at
        When the link was made (Attribute Modification DateTime).
    """

    values: dict[str, str]
    modified_at: datetime

    @property
    def digest(self) -> str:
        """Changes whenever the corrected values do (part of ETags and cache keys)."""
        text = json.dumps(self.values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # -- instances -----------------------------------------------------------------

    def apply(self, part10: bytes, *, modifying_system: str) -> bytes:
        """The Part-10 file ``part10`` with the corrected values.

        The dataset is read whole and written again in its own transfer
        syntax (encapsulated pixel data are copied, never decoded), with an
        Original Attributes Sequence item added to any it already has.
        """
        ds = dcmread(BytesIO(part10), force=True)
        original = Dataset()
        for keyword, value in self.values.items():
            tag = tag_for_keyword(keyword)
            assert tag is not None
            vr = dictionary_VR(tag)
            if tag in ds:
                original.add(DataElement(tag, ds[tag].VR, ds[tag].value))
            else:
                # Absent before: recorded with an empty value, so that the
                # item says the attribute was added rather than changed.
                original.add(DataElement(tag, vr, None))
            ds.add(DataElement(tag, vr, value or None))
        item = Dataset()
        item.ModifiedAttributesSequence = DicomSequence([original])
        item.AttributeModificationDateTime = self.modified_at.astimezone(UTC).strftime(
            "%Y%m%d%H%M%S+0000"
        )
        item.ModifyingSystem = modifying_system[:64]
        item.SourceOfPreviousValues = ""
        item.ReasonForTheAttributeModification = REASON
        history = list(ds.get("OriginalAttributesSequence") or [])
        ds.OriginalAttributesSequence = DicomSequence([*history, item])
        out = BytesIO()
        # enforce_file_format: keep the file meta as read (group length redone).
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    # -- metadata ------------------------------------------------------------------

    def patch_document(self, document: bytes) -> bytes:
        """The DICOM JSON object ``document`` (PS3.18 F.2) with the corrected values."""
        obj: dict[str, Any] = json.loads(document)
        for keyword, value in self.values.items():
            tag = tag_for_keyword(keyword)
            assert tag is not None
            vr = dictionary_VR(tag)
            key = f"{tag:08X}"
            if not value:
                obj[key] = {"vr": vr}
            elif vr == "PN":
                obj[key] = {"vr": vr, "Value": [{"Alphabetic": value}]}
            else:
                obj[key] = {"vr": vr, "Value": [value]}
        ordered = {k: obj[k] for k in sorted(obj)}  # F.2.1: ordered by tag
        return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def corrections_for(index: Any, study_instance_uid: str) -> Corrections | None:
    """The corrections retrieval applies to the study, or None (nothing to correct).

    Only a study linked to an order has corrections, and only the attributes
    whose value in the index differs from what its images carried when it
    was first looked at (``study_links.received``).
    """
    columns = [patients.c[c] for c in CORRECTED if c in patients.c] + [
        studies.c[c] for c in CORRECTED if c not in patients.c
    ]
    query = (
        select(study_links.c.received, study_links.c.updated_at, *columns)
        .join(studies, studies.c.pk == study_links.c.study_pk)
        .join(patients, patients.c.pk == studies.c.patient_pk)
        .where(
            studies.c.study_instance_uid == study_instance_uid,
            study_links.c.state == LinkState.LINKED.value,
        )
    )
    with index.engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    received = json.loads(row.received or "{}")
    values = {
        keyword: str(getattr(row, column) or "")
        for column, keyword in CORRECTED.items()
        if str(getattr(row, column) or "") != str(received.get(column) or "")
    }
    if not values:
        return None
    modified = row.updated_at
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return Corrections(values, modified)
