"""WADO-RS (PS3.18 10.4): instances, metadata, frames and bulk data.

Routes under ``/dicom-web`` (every one has ``{study}`` in its path, so the
router's :func:`api.access.study_access` refuses a referring physician
another's study with 404 and audits the access):

* ``GET /studies/{study}``, ``.../series/{series}``,
  ``.../instances/{instance}``: the instances as ``multipart/related;
  type="application/dicom"`` (PS3.18 10.4.1.1.1, 8.7.3.2), streamed one blob
  at a time. The stored Part-10 file is sent byte for byte when the stored
  syntax is acceptable; another syntax is produced by
  :mod:`pipeline.retrieve.transcode`. Negotiation: :mod:`api.wado_accept`
  (``transfer-syntax=*``: as stored; none named: Explicit VR Little Endian,
  PS3.18 8.7.3.5.2). 406 when an instance cannot be given in any acceptable
  syntax. One instance is read (and transcoded) before answering and sent as
  one body; a study or series is streamed.
* ``GET .../metadata`` (study, series, instance): DICOM JSON (PS3.18 10.4.1.1.2,
  F.2) from the precomputed documents of :mod:`pipeline.retrieve.metadata`;
  bulk data as BulkDataURIs to the route below. A series answer is the cached
  join, checked current against the series' storage keys: no file is read.
* ``GET .../instances/{instance}/frames/{frames}`` (comma-separated, from 1):
  ``application/octet-stream`` decoded frames from the Zarr pixel store, or
  cut from a native little endian stored file when that gives the same values
  (PS3.18 8.7.3.3.2), or the original compressed frames when a compressed
  media type (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``,
  ``image/jphc``, ``image/dicom-rle``) of the stored syntax, or
  ``transfer-syntax=*``, is asked (PS3.18 Table 8.7.3-5). Frames are not
  transcoded to another compressed syntax (406).
* ``GET .../instances/{instance}/bulkdata/{path}``: one bulk data value
  (PS3.18 10.4.1.2.3), ``application/octet-stream``; encapsulated Pixel Data
  as its frames.

Each part carries ``Content-Type`` (with ``transfer-syntax``) and
``Content-Location``. Answers carry a strong ``ETag`` made from the stored
instances' SHA-256 and what was negotiated; ``If-None-Match`` answers 304.
Errors are PHI-free reasons: 400 for a path UID that is not a UID (PS3.5
9.1), 404 for an unknown study, series, instance, frame or bulk data path.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from api.access import study_access
from api.auth import require
from api.deps import RuntimeDep
from api.dicom_json import DICOM_JSON
from api.multipart_out import OutPart, multipart_response, multipart_whole_response
from api.wado_accept import ANY_SYNTAX, EXPLICIT_VR_LE, Range, accepted
from pipeline.index.records import InstanceRow
from pipeline.index.schema import PixelState
from pipeline.ingest.parse import is_valid_uid
from pipeline.retrieve.corrections import Corrections, corrections_for
from pipeline.retrieve.frames import (
    COMPRESSED_MEDIA_TYPES,
    NATIVE_LITTLE_ENDIAN,
    bulk_value,
    decoded_frame,
    encapsulated_frames,
    media_type_of,
    stored_frame,
)
from pipeline.retrieve.metadata import (
    MetadataService,
    json_array,
    keys_version,
    with_base,
    with_corrections,
)
from pipeline.retrieve.transcode import can_transcode, transcode
from pipeline.runtime import Runtime
from pipeline.security.roles import Permission
from pipeline.storage.metadata import open_metadata_store

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/dicom-web",
    tags=["wado"],
    dependencies=[Depends(require(Permission.READ_IMAGES)), Depends(study_access)],
)

DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"
#: Immutable answers (one stored instance's bytes): the browser may keep them.
CACHE_IMMUTABLE = "private, max-age=3600"
#: Answers that change when a series gains instances: revalidate with the ETag.
CACHE_REVALIDATE = "private, no-cache"
#: The most frame numbers one request may list.
MAX_FRAMES_LISTED = 10_000
#: Decoded frames read before answering (sent as one body); more are streamed.
EAGER_FRAMES = 4

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


# --------------------------------------------------------------------------- helpers


def _check_uids(*uids: str) -> None:
    for uid in uids:
        if not is_valid_uid(uid):
            raise HTTPException(400, "a UID in the URL is not a valid UID (PS3.5 9.1)")


def _base(request: Request) -> str:
    """The DICOMweb root the client used, for BulkDataURIs and Content-Location."""
    return str(request.base_url).rstrip("/") + router.prefix


def _instance_url(base: str, row: InstanceRow) -> str:
    return (f"{base}/studies/{row.study_instance_uid}/series/{row.series_instance_uid}"
            f"/instances/{row.sop_instance_uid}")  # fmt: skip


def _etag(*parts: object) -> str:
    text = "\x1f".join(str(p) for p in parts)
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:40] + '"'


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _metadata_service(request: Request, runtime: Runtime) -> MetadataService:
    """The application's :class:`MetadataService` (one per runtime, made on first use)."""
    state = request.app.state
    current: tuple[Runtime, MetadataService] | None = getattr(state, "wado_metadata", None)
    if current is None or current[0] is not runtime:
        store = open_metadata_store(runtime.settings.resolved_storage_url)
        current = (runtime, MetadataService(runtime.blobs, store))
        state.wado_metadata = current
    return current[1]


# --------------------------------------------------------------------------- lookups


def _study_rows(runtime: Runtime, study: str) -> list[InstanceRow]:
    rows = runtime.index.list_instances(study_instance_uid=study)
    if not rows:
        raise HTTPException(404, "no such study")
    return rows


def _series_rows(runtime: Runtime, study: str, series: str) -> list[InstanceRow]:
    rows = [r for r in runtime.index.list_instances(series_instance_uid=series)
            if r.study_instance_uid == study]  # fmt: skip
    if not rows:
        raise HTTPException(404, "no such series in this study")
    return rows


def _instance_row(runtime: Runtime, study: str, series: str, instance: str) -> InstanceRow:
    row = runtime.index.get_instance(instance)
    if row is None or row.study_instance_uid != study or row.series_instance_uid != series:
        raise HTTPException(404, "no such instance in this study and series")
    return row


# --------------------------------------------------------------------------- instances


def _syntax_choices(request: Request) -> list[str]:
    """Acceptable transfer syntaxes for application/dicom parts, best first ("*": stored)."""
    choices = []
    for candidate in accepted(request.headers.get("accept"), DICOM):
        if candidate.media_type in (DICOM, "application/*"):
            syntax = candidate.syntax_or(EXPLICIT_VR_LE)
            if syntax not in choices:
                choices.append(syntax)
    if not choices:
        raise HTTPException(406, 'instances are answered as multipart/related; type="application/dicom"')
    return choices


def _pick_syntax(row: InstanceRow, choices: Sequence[str]) -> str | None:
    """The first acceptable syntax ``row`` can be given in, or None."""
    stored = row.transfer_syntax_uid
    for syntax in choices:
        if syntax in (ANY_SYNTAX, stored):
            return stored
        # Pixels that failed to decode cannot be decompressed for transcoding either.
        undecodable = row.pixel_state == PixelState.FAILED
        if not undecodable and can_transcode(stored, syntax):
            return syntax
    return None


def _plan(rows: Sequence[InstanceRow], choices: Sequence[str]) -> list[tuple[InstanceRow, str]]:
    plan = [(row, _pick_syntax(row, choices)) for row in rows]
    refused = sum(1 for _, syntax in plan if syntax is None)
    if refused:
        raise HTTPException(
            406,
            f"{refused} of {len(rows)} instance(s) cannot be given in an acceptable transfer "
            "syntax (ask transfer-syntax=* for the stored one)",
        )
    return [(row, syntax) for row, syntax in plan if syntax is not None]


def _instance_parts(
    runtime: Runtime,
    plan: Sequence[tuple[InstanceRow, str]],
    base: str,
    corrections: Corrections | None,
) -> Iterator[OutPart]:
    """The instances' parts, read (corrected, transcoded) one at a time in a worker thread."""
    limit = runtime.settings.max_decoded_bytes
    for row, syntax in plan:
        data = _stored(runtime, row, corrections)
        if syntax != row.transfer_syntax_uid:
            try:
                data = transcode(data, syntax, max_decoded_bytes=limit)
            except Exception as exc:
                # Headers are gone: end the body without its close delimiter.
                log.warning("retrieve: transcoding key=%s failed (%s)", row.storage_key,
                            getattr(exc, "reason", type(exc).__name__))  # fmt: skip
                raise
        yield OutPart(data, f"{DICOM}; transfer-syntax={syntax}", _instance_url(base, row))


def _stored(runtime: Runtime, row: InstanceRow, corrections: Corrections | None) -> bytes:
    """The stored bytes of ``row``, with the study's corrections (reconciliation) applied."""
    data = runtime.blobs.get(row.storage_key)
    if corrections is not None:
        data = corrections.apply(data, modifying_system=runtime.settings.ae_title)
    return data


def _instance_headers(
    plan: Sequence[tuple[InstanceRow, str]], corrections: Corrections | None
) -> dict[str, str]:
    etag = _etag(
        "instances",
        *(f"{row.sha256}:{syntax}" for row, syntax in plan),
        corrections.digest if corrections is not None else "",
    )
    # Revalidated, never cached blind: a study linked to its order later
    # (reconciliation) is answered with corrected attributes from then on.
    return {"ETag": etag, "Vary": "Accept", "Cache-Control": CACHE_REVALIDATE}


async def _retrieve(request: Request, runtime: Runtime, rows: list[InstanceRow]) -> Response:
    """Several instances (a study, a series): streamed one blob at a time."""
    plan = _plan(rows, _syntax_choices(request))
    corrections = await run_in_threadpool(corrections_for, runtime.index, rows[0].study_instance_uid)
    headers = _instance_headers(plan, corrections)
    if _not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    parts = _instance_parts(runtime, plan, _base(request), corrections)
    return multipart_response(DICOM, parts, headers=headers)


def _single_part(
    runtime: Runtime, row: InstanceRow, syntax: str, base: str, corrections: Corrections | None
) -> OutPart:
    data = _stored(runtime, row, corrections)
    if syntax != row.transfer_syntax_uid:
        # TranscodeRefused is a LightboxError: 406 through the error table.
        data = transcode(data, syntax, max_decoded_bytes=runtime.settings.max_decoded_bytes)
    return OutPart(data, f"{DICOM}; transfer-syntax={syntax}", _instance_url(base, row))


@router.get(_STUDY)
async def retrieve_study(study: str, request: Request, runtime: RuntimeDep) -> Response:
    """PS3.18 10.4.1.1.1: every instance of a study (multipart, application/dicom)."""
    rows = await run_in_threadpool(_study_rows, runtime, study)
    return await _retrieve(request, runtime, rows)


@router.get(_SERIES)
async def retrieve_series(
    study: str, series: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4.1.1.1: every instance of a series (multipart, application/dicom)."""
    _check_uids(series)
    rows = await run_in_threadpool(_series_rows, runtime, study, series)
    return await _retrieve(request, runtime, rows)


@router.get(_INSTANCE)
async def retrieve_instance(
    study: str, series: str, instance: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4.1.1.1: one instance (multipart with one application/dicom part)."""
    _check_uids(series, instance)
    choices = _syntax_choices(request)
    base = _base(request)

    def work() -> tuple[dict[str, str], OutPart | None]:
        # One thread-pool trip for the lookup, the read and any transcoding:
        # a refusal is still a 406, since nothing has been sent yet.
        row = _instance_row(runtime, study, series, instance)
        plan = _plan([row], choices)
        corrections = corrections_for(runtime.index, study)
        headers = _instance_headers(plan, corrections)
        if _not_modified(request, headers["ETag"]):
            return headers, None
        return headers, _single_part(runtime, row, plan[0][1], base, corrections)

    headers, part = await run_in_threadpool(work)
    if part is None:
        return Response(status_code=304, headers=headers)
    return multipart_whole_response(DICOM, [part], headers=headers)


# --------------------------------------------------------------------------- metadata


def _check_json_accept(request: Request) -> None:
    for candidate in accepted(request.headers.get("accept"), DICOM_JSON):
        if candidate.media_type in (DICOM_JSON, "application/json", "application/*"):
            return
    raise HTTPException(406, "metadata is answered as application/dicom+json (PS3.18 F.2)")


def _json_answer(request: Request, body: Callable[[], bytes], version: str) -> Response:
    base = _base(request)
    etag = _etag("metadata", version, base)
    headers = {"ETag": etag, "Cache-Control": CACHE_REVALIDATE, "Vary": "Accept"}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(with_base(body(), base), media_type=DICOM_JSON, headers=headers)


@router.get(_STUDY + "/metadata")
async def study_metadata(study: str, request: Request, runtime: RuntimeDep) -> Response:
    """PS3.18 10.4.1.1.2: the DICOM JSON of every instance of a study."""
    _check_json_accept(request)
    service = _metadata_service(request, runtime)

    def work() -> tuple[str, bytes]:
        rows = _study_rows(runtime, study)
        groups = service.grouped(rows, corrections_for(runtime.index, study))
        return _etag(*(g.version for g in groups)), json_array(g.members for g in groups)

    version, body = await run_in_threadpool(work)
    return _json_answer(request, lambda: body, version)


@router.get(_SERIES + "/metadata")
async def series_metadata(
    study: str, series: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4.1.1.2: the DICOM JSON of every instance of a series (cached join)."""
    _check_uids(series)
    _check_json_accept(request)
    service = _metadata_service(request, runtime)
    base = _base(request)

    def work() -> tuple[str, bytes | None]:
        # The keys alone tell whether the cached join is current; the full rows
        # (ten times dearer) are read only to build it again.
        found = runtime.index.select_instances(
            study_instance_uid=study, series_instance_uid=series, pixel_state=None
        )
        if not found:
            raise HTTPException(404, "no such series in this study")
        corrections = corrections_for(runtime.index, study)
        version = keys_version(key for _, key, _ in found)
        joined = service.cached(series, with_corrections(version, corrections))
        if joined is None:
            joined = service.series(series, _series_rows(runtime, study, series), corrections)
        etag = _etag("metadata", joined.version, base)
        return etag, None if _not_modified(request, etag) else joined.answer(base)

    etag, body = await run_in_threadpool(work)
    headers = {"ETag": etag, "Cache-Control": CACHE_REVALIDATE, "Vary": "Accept"}
    if body is None:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get(_INSTANCE + "/metadata")
async def instance_metadata(
    study: str, series: str, instance: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4.1.1.2: the DICOM JSON of one instance (an array of one object)."""
    _check_uids(series, instance)
    _check_json_accept(request)
    service = _metadata_service(request, runtime)

    def work() -> tuple[str, bytes]:
        row = _instance_row(runtime, study, series, instance)
        document = service.instance(row)
        corrections = corrections_for(runtime.index, study)
        if corrections is not None:
            document = corrections.patch_document(document)
        return with_corrections(f"{row.sha256}:{row.storage_key}", corrections), document

    version, document = await run_in_threadpool(work)
    return _json_answer(request, lambda: json_array([document]), version)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class FrameAnswer:
    """How frames are answered: ``decoded`` (Zarr) or the original fragments."""

    decoded: bool
    media_type: str
    transfer_syntax: str


def _parse_frame_list(text: str) -> list[int]:
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise HTTPException(400, "frames is a comma-separated list of frame numbers from 1")
        numbers.append(int(part))
    if len(numbers) > MAX_FRAMES_LISTED:
        raise HTTPException(400, f"at most {MAX_FRAMES_LISTED} frame numbers per request")
    return numbers


def _frame_answer(ranges: list[Range], row: InstanceRow) -> FrameAnswer:
    """The first acceptable way to answer frames of ``row``; 406 when there is none."""
    if row.pixel_state == PixelState.NONE:
        # Nothing to negotiate: an instance without Pixel Data has no frames.
        raise HTTPException(404, "the instance has no pixel data")
    stored = row.transfer_syntax_uid
    compressed = media_type_of(stored)
    decodable = row.pixel_state in (PixelState.READY, PixelState.PENDING)
    decoded = FrameAnswer(True, OCTET_STREAM, EXPLICIT_VR_LE)
    skipped_decode = False
    for candidate in ranges:
        media = candidate.media_type
        syntax = candidate.syntax_or(EXPLICIT_VR_LE)
        if media in (OCTET_STREAM, "application/*"):
            wants_original = syntax == ANY_SYNTAX or (syntax == stored and compressed is not None)
            if wants_original and compressed is not None:
                return FrameAnswer(False, OCTET_STREAM, stored)
            if syntax in (EXPLICIT_VR_LE, ANY_SYNTAX):
                if decodable:
                    return decoded
                skipped_decode = True
        elif media == "image/*" and compressed is not None:
            if syntax in (ANY_SYNTAX, stored) or candidate.transfer_syntax is None:
                return FrameAnswer(False, compressed, stored)
        elif stored in COMPRESSED_MEDIA_TYPES.get(media, ()):
            if candidate.transfer_syntax in (None, ANY_SYNTAX, stored):
                return FrameAnswer(False, media, stored)
    if skipped_decode and row.pixel_state == PixelState.FAILED:
        raise HTTPException(422, f"pixel data cannot be decoded: {row.pixel_error or 'unknown'}")
    offered = "application/octet-stream" + (f" or {compressed}" if compressed else "")
    raise HTTPException(406, f"frames of this instance are offered as {offered}")


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def _check_decoded(row: InstanceRow) -> None:
    if row.pixel_state == PixelState.READY:
        return
    if row.pixel_state == PixelState.PENDING:
        raise HTTPException(503, "pixels not decoded yet", headers={"Retry-After": "1"})
    if row.pixel_state == PixelState.FAILED:
        raise HTTPException(422, f"pixel data cannot be decoded: {row.pixel_error or 'unknown'}")
    raise HTTPException(404, "the instance has no pixel data")


def _decoded_setup(runtime: Runtime, row: InstanceRow, numbers: Sequence[int]) -> dict[str, Any]:
    """Check the frame numbers against the stored array; its pixel description."""
    _check_decoded(row)
    try:
        description = runtime.pixels.description(row.storage_key)
        # The description is cached by the pixel store; the array's shape means
        # opening it, so it is the last resort.
        count = (row.number_of_frames or _int_or_none(description.get("number_of_frames"))
                 or int(runtime.pixels.shape(row.storage_key)[0]))  # fmt: skip
    except FileNotFoundError:
        raise HTTPException(503, "pixels not stored yet", headers={"Retry-After": "1"}) from None
    if any(n > count for n in numbers):
        raise HTTPException(404, f"the instance has {count} frame(s)")
    return description


def _decoded_parts(
    runtime: Runtime, row: InstanceRow, numbers: Sequence[int], description: dict[str, Any],
    url: str,
) -> Iterator[OutPart]:
    """Decoded frames: cut from a native stored file when that gives the same
    values (:func:`stored_frame`), else read from the pixel store."""
    content_type = f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LE}"
    bits = description.get("bits_allocated")
    bits = int(bits) if isinstance(bits, int) else None
    native = row.transfer_syntax_uid in NATIVE_LITTLE_ENDIAN
    part10: bytes | None = None
    for number in numbers:
        data = None
        if native:
            try:
                part10 = part10 if part10 is not None else runtime.blobs.get(row.storage_key)
            except FileNotFoundError:
                native = False  # a lost blob: the decoded pixels still answer
            else:
                data = stored_frame(part10, description, number - 1)
                native = data is not None
        if data is None:
            data = decoded_frame(runtime.pixels, row.storage_key, number - 1, bits)
        yield OutPart(data, content_type, f"{url}/frames/{number}")


def _original_parts(
    runtime: Runtime, row: InstanceRow, numbers: Sequence[int], answer: FrameAnswer, url: str
) -> list[OutPart]:
    if row.pixel_state == PixelState.NONE:
        raise HTTPException(404, "the instance has no pixel data")
    syntax, frames = encapsulated_frames(runtime.blobs.get(row.storage_key), list(numbers))
    content_type = f"{answer.media_type}; transfer-syntax={syntax}"
    return [OutPart(data, content_type, f"{url}/frames/{number}")
            for number, data in zip(numbers, frames)]  # fmt: skip


@router.get(_INSTANCE + "/frames/{frames}")
async def retrieve_frames(
    study: str, series: str, instance: str, frames: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4.1.1.3: frames of an instance (multipart; see the module docstring)."""
    _check_uids(series, instance)
    numbers = _parse_frame_list(frames)
    ranges = accepted(request.headers.get("accept"), OCTET_STREAM)
    base = _base(request)

    def work() -> tuple[FrameAnswer, dict[str, str], Any]:
        # One thread-pool trip for the lookup, the checks and (for the usual
        # one-frame request) the frame itself.
        row = _instance_row(runtime, study, series, instance)
        answer = _frame_answer(ranges, row)
        etag = _etag("frames", row.sha256, row.storage_key, frames, answer)
        headers = {"ETag": etag, "Cache-Control": CACHE_IMMUTABLE, "Vary": "Accept"}
        if _not_modified(request, etag):
            return answer, headers, None
        url = _instance_url(base, row)
        if not answer.decoded:
            return answer, headers, _original_parts(runtime, row, numbers, answer, url)
        description = _decoded_setup(runtime, row, numbers)
        parts = _decoded_parts(runtime, row, numbers, description, url)
        # Many decoded frames are streamed one at a time; a few are read now.
        return answer, headers, list(parts) if len(numbers) <= EAGER_FRAMES else parts

    answer, headers, parts = await run_in_threadpool(work)
    if parts is None:
        return Response(status_code=304, headers=headers)
    if isinstance(parts, list):
        return multipart_whole_response(answer.media_type, parts, headers=headers)
    return multipart_response(answer.media_type, parts, headers=headers)


# --------------------------------------------------------------------------- bulk data


def _bulk_octet_stream(request: Request) -> None:
    for candidate in accepted(request.headers.get("accept"), OCTET_STREAM):
        syntax = candidate.syntax_or(EXPLICIT_VR_LE)
        if candidate.media_type in (OCTET_STREAM, "application/*") and syntax in (
            EXPLICIT_VR_LE,
            ANY_SYNTAX,
        ):
            return
    raise HTTPException(406, "bulk data is answered as application/octet-stream")


def _pixel_data_parts(
    runtime: Runtime, row: InstanceRow, answer: FrameAnswer, url: str
) -> list[OutPart] | Iterator[OutPart]:
    """Encapsulated Pixel Data as bulk data: its frames (PS3.18 8.7.3.3.2)."""
    count = row.number_of_frames or 1
    numbers = list(range(1, count + 1))
    if not answer.decoded:
        return _original_parts(runtime, row, numbers, answer, url)
    description = _decoded_setup(runtime, row, numbers)
    # Uncompressed bulk data is one part: every frame, one after the other.
    data = b"".join(bytes(p.content) for p in _decoded_parts(runtime, row, numbers, description, url))
    return [OutPart(data, f"{OCTET_STREAM}; transfer-syntax={EXPLICIT_VR_LE}", None)]


@router.get(_INSTANCE + "/bulkdata/{path:path}")
async def retrieve_bulkdata(
    study: str, series: str, instance: str, path: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4.1.2.3: the value a BulkDataURI of our metadata names."""
    _check_uids(series, instance)
    row = await run_in_threadpool(_instance_row, runtime, study, series, instance)
    etag = _etag("bulkdata", row.sha256, row.storage_key, path, request.headers.get("accept"))
    headers = {"ETag": etag, "Cache-Control": CACHE_IMMUTABLE, "Vary": "Accept"}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    url = f"{_instance_url(_base(request), row)}/bulkdata/{path}"

    def work() -> tuple[str, list[OutPart] | Iterator[OutPart]]:
        value = bulk_value(runtime.blobs.get(row.storage_key), path)
        if value.encapsulated:
            answer = _frame_answer(accepted(request.headers.get("accept"), OCTET_STREAM), row)
            return answer.media_type, _pixel_data_parts(runtime, row, answer, url)
        _bulk_octet_stream(request)
        return OCTET_STREAM, [OutPart(value.data or b"", OCTET_STREAM, url)]

    media_type, parts = await run_in_threadpool(work)
    return multipart_response(media_type, parts, headers=headers)
