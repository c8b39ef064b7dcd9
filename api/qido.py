"""QIDO-RS requests and answers (PS3.18 10.6): query parameters in, DICOM JSON out.

:func:`parse_search` reads the query string of a search (PS3.18 8.3.4,
10.6.1.2): matching keys by keyword or tag (``PatientID=X``,
``00100020=X``), ``includefield`` (keywords or tags, comma-separated or
repeated, or ``all``), ``fuzzymatching``, ``limit`` and ``offset``; anything
else is refused with a reason (400). Lists of UIDs (and of codes: Modality,
ModalitiesInStudy) may be separated by commas as well as backslashes.

:func:`to_dicom_json` writes one match as a DICOM JSON object (PS3.18 F.2)
with the attributes PS3.18 10.6.3.3 requires for the target (Tables
10.6.3-3 to -5; the study attributes too when searching series or instances
of all studies, the series attributes when searching the instances of a
study), the Unique Keys down to the level, the matching keys and the
included fields. Attributes the index does not keep (Timezone Offset From
UTC, Request Attribute Sequence...) are left out ("if available");
Instance Availability is ONLINE and Retrieve URL points at the WADO-RS
resource (PS3.18 10.4.1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from pipeline.errors import InvalidRequest
from pipeline.query.model import ATTRIBUTES, INSTANCE_AVAILABILITY, UNIQUE_KEYS, Kind, Level, visible_at

#: Most matches one answer holds; more are left for the next page with a
#: Warning (PS3.18 8.3.4.4: the origin server may limit the results).
MAX_RESULTS = 10_000

#: Required return attributes of PS3.18 Tables 10.6.3-3 (study), -4 (series)
#: and -5 (instance) that the index keeps; StudyDescription is added for the
#: study lists of viewers.
STUDY_FIELDS = (
    "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
    "ReferringPhysicianName", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate",
    "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "StudyDescription",
)  # fmt: skip
SERIES_FIELDS = (
    "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID", "SeriesNumber",
    "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)  # fmt: skip
INSTANCE_FIELDS = (
    "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL", "InstanceNumber",
    "Rows", "Columns", "BitsAllocated", "NumberOfFrames",
)  # fmt: skip

#: Attributes answered without the index.
CONSTANT_FIELDS = {"InstanceAvailability": "CS", "RetrieveURL": "UR", "RetrieveAETitle": "AE"}

_PARAMETERS = frozenset({"limit", "offset", "fuzzymatching", "includefield"})
_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
#: VRs whose values never hold a comma: a comma separates values there (PS3.18 8.3.4.1).
_COMMA_LISTS = frozenset({"UI", "CS"})
_NUMBERS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD"})


@dataclass(frozen=True)
class Search:
    """A parsed QIDO-RS request."""

    level: Level
    #: Keyword -> key value (multi-values joined by backslashes), URL keys included.
    keys: dict[str, str]
    #: Keywords to answer (index attributes and :data:`CONSTANT_FIELDS`).
    fields: frozenset[str]
    #: The page: ``limit`` is what the client asked (None: none), capped at MAX_RESULTS.
    limit: int
    client_limit: int | None
    offset: int
    fuzzy: bool


def attribute_keyword(name: str) -> str:
    """The keyword of an attribute named by keyword or by tag (``00100020``).

    Raises
    ------
    InvalidRequest
        Not a DICOM attribute, a private tag, or a path into a sequence.
    """
    if "." in name:
        raise InvalidRequest(f"{name}: matching or including attributes inside sequences is not supported")
    if _TAG.match(name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag)
        if (tag >> 16) % 2:
            raise InvalidRequest(f"{name}: private attributes are not supported")
        if not keyword:
            raise InvalidRequest(f"{name}: not a tag of the DICOM dictionary")
        return keyword
    if tag_for_keyword(name) is None:
        raise InvalidRequest(f"unknown query parameter or attribute keyword: {name}")
    return name


def default_fields(level: Level, scope: Level | None) -> set[str]:
    """What PS3.18 10.6.3.3 requires for a search at ``level`` under ``scope``.

    ``scope`` is the deepest level the URL names (None: all studies).
    """
    fields = {Level.STUDY: set(STUDY_FIELDS), Level.SERIES: set(SERIES_FIELDS),
              Level.IMAGE: set(INSTANCE_FIELDS)}[level]  # fmt: skip
    if level is not Level.STUDY and scope is None:
        fields |= set(STUDY_FIELDS)
    if level is Level.IMAGE and scope is not Level.SERIES:
        fields |= set(SERIES_FIELDS)
    return fields


def parse_search(
    params: list[tuple[str, str]], level: Level, fixed: dict[str, str], scope: Level | None
) -> Search:
    """Read a QIDO-RS query string (PS3.18 8.3.4, 10.6.1.2).

    Parameters
    ----------
    params
        The query parameters in order (``request.query_params.multi_items()``).
    level
        STUDY, SERIES or IMAGE (the search's target).
    fixed
        Keys the URL gives (StudyInstanceUID, SeriesInstanceUID).
    scope
        The deepest level the URL names, see :func:`default_fields`.
    """
    keys = dict(fixed)
    includes: set[str] = set()
    include_all = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    seen: set[str] = set()
    for name, value in params:
        if name in _PARAMETERS:
            if name == "includefield":
                for item in (i.strip() for i in value.split(",")):
                    if item == "all":
                        include_all = True
                    elif item:
                        includes.add(attribute_keyword(item))
                continue
            if name in seen:
                raise InvalidRequest(f"{name} is given more than once")
            seen.add(name)
            if name == "limit":
                limit = _count(name, value) or None  # 0: no limit of the client's
            elif name == "offset":
                offset = _count(name, value)
            else:
                if value.lower() not in ("true", "false"):
                    raise InvalidRequest("fuzzymatching is true or false")
                fuzzy = value.lower() == "true"
            continue
        keyword = attribute_keyword(name)
        if keyword in fixed:
            raise InvalidRequest(f"{keyword} is given by the URL")
        if keyword in keys:
            raise InvalidRequest(f"{keyword} is given more than once")
        keys[keyword] = _key_value(keyword, value)
    fields = default_fields(level, scope) | set(keys) | includes
    if include_all:
        fields |= set(visible_at(level))
    visible = visible_at(level)
    fields = {f for f in fields if f in visible or f in CONSTANT_FIELDS}
    fields |= {UNIQUE_KEYS[lv] for lv in Level if Level.STUDY.depth <= lv.depth <= level.depth}
    capped = min(limit, MAX_RESULTS) if limit is not None else MAX_RESULTS
    return Search(level, keys, frozenset(fields), capped, limit, offset, fuzzy)


def _count(name: str, value: str) -> int:
    if not value.strip().isdigit():
        raise InvalidRequest(f"{name} is a non-negative integer")
    return int(value)


def _key_value(keyword: str, value: str) -> str:
    vr = str(dictionary_VR(keyword))
    if vr in _COMMA_LISTS:
        value = value.replace(",", "\\")
    return value


# -- DICOM JSON (PS3.18 F.2) ----------------------------------------------------------------


def _person_name(value: str) -> dict[str, str]:
    """A PN value as its component groups (F.2.2: Alphabetic, Ideographic, Phonetic)."""
    groups = value.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: group for name, group in zip(names, groups) if group}


def _json_values(vr: str, value: Any) -> list[Any]:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, list):
        values = value
    elif isinstance(value, str):
        values = value.split("\\")  # multiple values as the index keeps them
    else:
        values = [value]
    if vr == "PN":
        return [_person_name(v) for v in values]
    if vr in _NUMBERS:
        return [float(v) if vr in ("DS", "FL", "FD") else int(v) for v in values]
    return [str(v) for v in values]


def retrieve_url(base: str, level: Level, row: dict[str, Any]) -> str:
    """The WADO-RS URL of a match (PS3.18 10.4.1): its study, series or instance."""
    url = f"{base}/studies/{row['StudyInstanceUID']}"
    if level.depth >= Level.SERIES.depth:
        url += f"/series/{row['SeriesInstanceUID']}"
    if level is Level.IMAGE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def to_dicom_json(row: dict[str, Any], search: Search, base: str, ae_title: str) -> dict[str, Any]:
    """One match as a DICOM JSON object, attributes in tag order (PS3.18 F.2)."""
    out: list[tuple[int, dict[str, Any]]] = []
    for keyword in search.fields:
        tag = tag_for_keyword(keyword)
        assert tag is not None
        if keyword in CONSTANT_FIELDS:
            vr = CONSTANT_FIELDS[keyword]
            value: Any = {"InstanceAvailability": INSTANCE_AVAILABILITY, "RetrieveAETitle": ae_title,
                          "RetrieveURL": None}[keyword]  # fmt: skip
            if keyword == "RetrieveURL":
                value = retrieve_url(base, search.level, row)
        else:
            attribute = ATTRIBUTES[keyword]
            vr, value = attribute.vr, row.get(keyword)
            if attribute.kind is Kind.NONE and value is None:
                value = []
        values = _json_values(vr, value)
        out.append((int(tag), {"vr": vr, "Value": values} if values else {"vr": vr}))
    return {f"{tag:08X}": element for tag, element in sorted(out, key=lambda item: item[0])}
