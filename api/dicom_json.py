"""Building DICOM JSON objects (DICOM PS3.18 Annex F.2).

Each attribute is keyed by its tag as eight upper-case hex digits and holds
``{"vr": ..., "Value": [...]}`` (F.2.2, F.2.3); a sequence's items are nested
objects (F.2.5). Only the VRs the HTTP layer writes are covered.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

#: The media type of DICOM JSON (PS3.18 Annex F).
DICOM_JSON = "application/dicom+json"

DicomJson = dict[str, Any]

# Tags of the Store Instances Response Module (PS3.18 10.5.3).
RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


def element(vr: str, *values: Any) -> dict[str, Any]:
    """One attribute (F.2.2); no values gives an empty attribute (no ``Value``)."""
    if not values:
        return {"vr": vr}
    return {"vr": vr, "Value": list(values)}


def sequence(items: list[DicomJson]) -> dict[str, Any]:
    """A sequence attribute (VR SQ) of ``items`` (F.2.5)."""
    return element("SQ", *items)


class DicomJsonResponse(JSONResponse):
    """A JSON response with the ``application/dicom+json`` media type."""

    media_type = DICOM_JSON
