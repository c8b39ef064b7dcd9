"""STOW-RS Store Instances (DICOM PS3.18 10.5): store each part, then build the answer.

Each body part is one instance, stored through
:meth:`pipeline.ingest.service.IngestService.store_part10`. A part that cannot
be stored is a failure of that part only (PS3.18 10.5.3): its
:class:`pipeline.errors.LightboxError` gives the Failure Reason (0008,1197)
and, when nothing was stored, the HTTP status, through the one error table.

Nothing here logs PHI or UIDs: only part numbers, sizes, outcomes and the
errors' ``reason`` (which :class:`~pipeline.errors.LightboxError` keeps PHI-free).
"""

from __future__ import annotations

import logging
import traceback
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO

import pydicom

from api.dicom_json import (
    FAILED_SOP_SEQUENCE,
    FAILURE_REASON,
    REFERENCED_SOP_CLASS_UID,
    REFERENCED_SOP_INSTANCE_UID,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
    DicomJson,
    element,
    sequence,
)
from api.multipart import Buffer, MultipartError, Part, parse_media_type
from pipeline.errors import InvalidDataset, LightboxError, StudyMismatch
from pipeline.index.records import Provenance
from pipeline.ingest.parse import extract_header, is_valid_uid, read_header
from pipeline.ingest.part10 import split_part10
from pipeline.ingest.service import IngestService, StoreResult

log = logging.getLogger(__name__)

#: The only part media type stored (PS3.18 10.5.1, "application/dicom").
DICOM_MEDIA_TYPE = "application/dicom"

#: Status when nothing was stored for a mixture of reasons (PS3.18 10.5.3 Table 10.5.3-1).
MIXED_FAILURES_STATUS = 409


@dataclass(frozen=True, slots=True)
class PartOutcome:
    """What happened to one body part: ``result`` when stored, else ``error``.

    The UIDs are the instance's when they could be read (empty otherwise); they
    go into the response, never into a log.
    """

    number: int
    result: StoreResult | None = None
    error: LightboxError | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""


def store_parts(
    ingest: IngestService,
    buffer: Buffer,
    parts: Iterable[Part],
    *,
    root_type: str | None,
    study_instance_uid: str | None,
) -> list[PartOutcome]:
    """Store every part in body order (blocking: call from a worker thread).

    Parameters
    ----------
    ingest
        The ingest service.
    buffer, parts
        The body and its parts from :func:`api.multipart.parse_multipart`.
    root_type
        The request's ``type`` parameter, used for a part without Content-Type
        (RFC 2387 3.1).
    study_instance_uid
        The study of the target URL (``/studies/{study}``), or None. An instance
        of another study is refused before anything of it is stored.
    """
    outcomes = []
    for part in parts:
        content_type = part.content_type if part.content_type is not None else root_type
        outcomes.append(
            store_part(ingest, part.content(buffer), part.number, content_type, study_instance_uid)
        )
    return outcomes


def store_part(
    ingest: IngestService,
    data: bytes,
    number: int,
    content_type: str | None,
    study_instance_uid: str | None,
) -> PartOutcome:
    """Store one part's bytes; every failure becomes a :class:`PartOutcome` with an error."""
    try:
        _check_media_type(content_type)
        if study_instance_uid is not None:
            _check_study(data, study_instance_uid)
        result = ingest.store_part10(data, Provenance("stow", calling_ae=""))
    except LightboxError as err:
        log.warning("stow part %d (%d bytes) refused: %s: %s", number, len(data),
                    type(err).__name__, err.reason)  # fmt: skip
        return PartOutcome(number, None, err, *_identify(data))
    except Exception as exc:  # noqa: BLE001 - one bad part must not fail the others
        # The message may quote data (PHI); log the type and the frames only.
        log.error("stow part %d: unexpected %s\n%s", number, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))  # fmt: skip
        error = LightboxError(f"internal error ({type(exc).__name__}) while storing")
        return PartOutcome(number, None, error, *_identify(data))
    log.info("stow part %d (%d bytes) %s ts=%s", number, result.size, result.outcome.value,
             result.transfer_syntax_uid)  # fmt: skip
    return PartOutcome(
        number,
        result=result,
        sop_class_uid=result.sop_class_uid,
        sop_instance_uid=result.sop_instance_uid,
    )


def response_status(outcomes: list[PartOutcome]) -> int:
    """The HTTP status of the answer (PS3.18 10.5.3.1, Table 10.5.3-1).

    200 when every part was stored, 202 when some were. When none was, the
    status of the failures' error class from the error table if they all share
    one (400 for bad syntax, 409 for a study mismatch, 503 when storage is
    down...), else 409 ("unable to store any instances for a mixture of reasons").
    """
    errors = [o.error for o in outcomes if o.error is not None]
    if not errors:
        return 200
    if len(errors) < len(outcomes):
        return 202
    statuses = {err.http_status for err in errors}
    return statuses.pop() if len(statuses) == 1 else MIXED_FAILURES_STATUS


def response_body(
    outcomes: list[PartOutcome], service_url: str, study_instance_uid: str | None
) -> DicomJson:
    """The Store Instances Response Module as DICOM JSON (PS3.18 10.5.3, F.2).

    Retrieve URL (0008,1190) of the study is given for a study URL, or when
    every stored instance belongs to one study. Referenced SOP Sequence
    (0008,1199) lists the stored instances with their Retrieve URL; Failed SOP
    Sequence (0008,1198) the others with their Failure Reason (0008,1197) and,
    where they could be read, their SOP Class and Instance UIDs.
    """
    body: DicomJson = {}
    stored = [o.result for o in outcomes if o.result is not None]
    studies = {r.study_instance_uid for r in stored}
    study = study_instance_uid or (studies.pop() if len(studies) == 1 else None)
    if study is not None:
        body[RETRIEVE_URL] = element("UR", f"{service_url}/studies/{study}")
    failed = [_failed_item(o) for o in outcomes if o.error is not None]
    if failed:
        body[FAILED_SOP_SEQUENCE] = sequence(failed)
    if stored:
        body[REFERENCED_SOP_SEQUENCE] = sequence([_referenced_item(r, service_url) for r in stored])
    return body


def warning_lines(outcomes: list[PartOutcome], service_url: str) -> list[str]:
    """One ``Warning: 299 <service>: <text>`` value per failed part (PS3.18 8.4, RFC 7234 5.5).

    The text is the error's ``reason``, reduced to printable ASCII so that it
    is a valid header value.
    """
    return [
        _header_safe(f"299 {service_url}: part {o.number}: {o.error.reason}")
        for o in outcomes
        if o.error is not None
    ]


def _referenced_item(result: StoreResult, service_url: str) -> DicomJson:
    url = (
        f"{service_url}/studies/{result.study_instance_uid}"
        f"/series/{result.series_instance_uid}/instances/{result.sop_instance_uid}"
    )
    return {
        REFERENCED_SOP_CLASS_UID: element("UI", result.sop_class_uid),
        REFERENCED_SOP_INSTANCE_UID: element("UI", result.sop_instance_uid),
        RETRIEVE_URL: element("UR", url),
    }


def _failed_item(outcome: PartOutcome) -> DicomJson:
    assert outcome.error is not None
    item: DicomJson = {}
    if outcome.sop_class_uid:
        item[REFERENCED_SOP_CLASS_UID] = element("UI", outcome.sop_class_uid)
    if outcome.sop_instance_uid:
        item[REFERENCED_SOP_INSTANCE_UID] = element("UI", outcome.sop_instance_uid)
    item[FAILURE_REASON] = element("US", outcome.error.failure_reason)
    return item


def _check_media_type(content_type: str | None) -> None:
    """Refuse a part that is not ``application/dicom`` (PS3.18 10.5.1)."""
    if content_type is None:
        raise InvalidDataset("the part has no Content-Type")
    try:
        media_type, _params = parse_media_type(content_type)
    except MultipartError as exc:
        raise InvalidDataset(f"the part's Content-Type is malformed: {exc.reason}") from None
    if media_type != DICOM_MEDIA_TYPE:
        raise InvalidDataset(f"the part's media type {media_type[:80]!r} is not {DICOM_MEDIA_TYPE}")


def _check_study(data: bytes, study_instance_uid: str) -> None:
    """Refuse an instance of another study than the target URL's, before storing it.

    The header is read the way the ingest service reads it, so the UID compared
    is the one that would be indexed; a header that cannot be read raises the
    same error the service would.
    """
    part = split_part10(data)
    dataset, has_pixels = read_header(bytes(part.dataset), part.transfer_syntax_uid)
    header = extract_header(dataset, has_pixels)
    if header.study.study_instance_uid != study_instance_uid:
        raise StudyMismatch("the instance's Study Instance UID is not the study of the URL")


def _identify(data: bytes) -> tuple[str, str]:
    """Best effort: the SOP Class and Instance UIDs of a part that was not stored.

    Empty strings for what cannot be read or is not a valid UID.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(
                BytesIO(data),
                force=True,
                stop_before_pixels=True,
                specific_tags=["SOPClassUID", "SOPInstanceUID"],
            )
            found = (
                str(dataset.get("SOPClassUID", "") or "").strip("\0 "),
                str(dataset.get("SOPInstanceUID", "") or "").strip("\0 "),
            )
    except Exception:  # noqa: BLE001 - unreadable bytes simply have no UIDs
        return "", ""
    class_uid, instance_uid = (uid if is_valid_uid(uid) else "" for uid in found)
    return class_uid, instance_uid


def _header_safe(text: str, limit: int = 512) -> str:
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:limit]
