"""WADO-RS rendered resources (PS3.18 10.4) and thumbnails (PS3.18 10.7).

``.../instances/{instance}/rendered`` and ``.../frames/{frames}/rendered``
answer a consumer-ready image of one frame (the first one listed);
``/thumbnail`` on a study, a series, an instance or frames answers a small
one. A study's or series' thumbnail is that of a representative instance: the
middle instance (by Instance Number) of the series, or of the study's first
series (by Series Number).

The default rendition (no ``window``, no ``viewport`` other than a
thumbnail's own, JPEG at the default quality) is served from the renders the
decode stage precomputed (:mod:`pipeline.render.precompute`); anything else is
rendered on demand from the stored pixels. The response header
``X-Lightbox-Render`` says which (``precomputed``, ``recent`` or
``on-demand``).

Where the work runs: with local stores, a precomputed render is read and a
frame of at most ``render_inline_pixels`` (a CT, MR or ultrasound frame) is
rendered on the event loop itself; larger frames, tiles and remote stores go
to a worker thread, at most ``render_concurrency`` at once. On a machine of a
few cores a trip to a worker thread cost more than the work: the loop and the
worker thread run on different cores, and every object both touch (the
interpreter's own among them) moves between their caches. Measured on 2
cores, a 512 x 512 CT slice with a new window took 3.6-4.3 ms of CPU through
worker threads and 1.9-2.8 ms on the loop; the render itself is ~1 ms, so
the loop is held no longer than a small request takes anyway.

Query parameters (PS3.18 8.3.5.1): ``window=center,width[,function]``
(function ``linear``, ``linear-exact`` or ``sigmoid``), ``quality`` 1..100,
``viewport=vw,vh`` (the image is shrunk to fit, aspect kept; never enlarged).
Media types by ``Accept``: image/jpeg (the default), image/png, image/webp.

A rendition of given parameters never changes while the instance's bytes do
not, so the ETag is a strong hash of the instance's SHA-256, its storage key,
the frame and the normalised parameters; ``If-None-Match`` answers 304.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from api.access import study_access
from api.auth import require
from api.deps import RuntimeDep
from api.instance_cache import ReadyInstances
from api.render_cache import RecentRenders
from pipeline.index.records import InstanceRow
from pipeline.index.schema import PixelState
from pipeline.ingest.parse import is_valid_uid
from pipeline.render.encode import JPEG, MEDIA_TYPES, encode
from pipeline.render.pipeline import modality_values, render
from pipeline.render.precompute import (
    DEFAULT_QUALITY,
    DEFAULT_VARIANT,
    THUMBNAIL_QUALITY,
    THUMBNAIL_SIZE,
    THUMBNAIL_VARIANT,
)
from pipeline.render.presets import CT_PRESETS, preset_variant
from pipeline.render.source import frame_description, palette_luts
from pipeline.runtime import Runtime
from pipeline.security.roles import Permission

router = APIRouter(
    prefix="/dicom-web",
    tags=["rendered"],
    dependencies=[Depends(require(Permission.READ_IMAGES)), Depends(study_access)],
)

CACHE_CONTROL = "private, max-age=3600"
#: PS3.18 8.3.5.1.4 VOI LUT Function names in the query to PS3.3 C.11.2.1.3.
_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}
#: Largest viewport side we accept (a shrink-only fit never needs more).
_MAX_VIEWPORT = 65536


@dataclass(frozen=True)
class Rendition:
    """The normalised request: what is rendered, and how."""

    thumbnail: bool
    media_type: str
    quality: int
    window: tuple[float, float, str | None] | None
    viewport: tuple[int, int] | None
    preset: str | None = None

    @property
    def variant(self) -> str | None:
        """The precomputed (or cached) variant that answers this rendition, if any."""
        if self.preset is not None:
            plain = self.media_type == JPEG and self.quality == DEFAULT_QUALITY
            if plain and not self.thumbnail and self.viewport is None:
                return preset_variant(self.preset)
            return None
        if self.media_type != JPEG or self.window is not None:
            return None
        if self.thumbnail:
            default = self.viewport == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
            return THUMBNAIL_VARIANT if default and self.quality == THUMBNAIL_QUALITY else None
        if self.quality == DEFAULT_QUALITY and self.viewport is None:
            return DEFAULT_VARIANT
        return None

    def etag(self, row: InstanceRow, frame: int) -> str:
        variant = self.variant
        params = (
            f"variant={variant}"
            if variant is not None
            else f"thumb={self.thumbnail};q={self.quality};w={self.window};v={self.viewport}"
        )
        text = "\x1f".join((row.sha256, row.storage_key, str(frame), params, self.media_type))
        return '"' + hashlib.sha256(text.encode()).hexdigest()[:40] + '"'


# --------------------------------------------------------------------------- parsing


def _check_uids(*uids: str) -> None:
    for uid in uids:
        if not is_valid_uid(uid):
            raise HTTPException(400, "not a valid UID (PS3.5 9.1)")


def _parse_frames(text: str) -> int:
    """The first frame number of a PS3.18 frame list (1-based)."""
    numbers = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise HTTPException(400, "frames is a comma-separated list of frame numbers from 1")
        numbers.append(int(part))
    return numbers[0]


def _parse_window(text: str | None) -> tuple[float, float, str | None] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise HTTPException(400, "window is center,width[,function] (PS3.18 8.3.5.1.4)")
    try:
        centre, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise HTTPException(400, "window center and width are numbers") from None
    if not (np.isfinite(centre) and np.isfinite(width)) or width <= 0:
        raise HTTPException(400, "window width must be positive")
    function = None
    if len(parts) == 3:
        function = _FUNCTIONS.get(parts[2].lower())
        if function is None:
            raise HTTPException(400, "window function is linear, linear-exact or sigmoid")
    return centre, width, function


def _parse_quality(text: str | None, default: int) -> int:
    if text is None:
        return default
    if not text.strip().isdigit() or not 1 <= int(text) <= 100:
        raise HTTPException(400, "quality is an integer 1..100 (PS3.18 8.3.5.1.3)")
    return int(text)


def _parse_viewport(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    # PS3.18 8.3.5.1.2 allows sx,sy,sw,sh after vw,vh; we take the size only.
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise HTTPException(400, "viewport is vw,vh (PS3.18 8.3.5.1.2)")
    vw, vh = int(parts[0]), int(parts[1])
    if not (0 < vw <= _MAX_VIEWPORT and 0 < vh <= _MAX_VIEWPORT):
        raise HTTPException(400, "viewport sides are positive")
    return vw, vh


def _negotiate(accept: str | None) -> str:
    """The media type to answer for ``Accept`` (RFC 9110 12.5.1); 406 if none fits."""
    if accept is None or not accept.strip():
        return JPEG
    offers: list[tuple[float, int, int, str]] = []
    for item in accept.split(","):
        fields = [f.strip() for f in item.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media in ("*/*", "image/*"):
            candidates = list(MEDIA_TYPES)
        elif media in MEDIA_TYPES:
            candidates = [media]
        else:
            continue
        # Higher q first, then an exact type before a wildcard, then our order.
        offers += [(q, int(media == c), -MEDIA_TYPES.index(c), c) for c in candidates]
    if not offers:
        raise HTTPException(406, f"renders are offered as {', '.join(MEDIA_TYPES)}")
    return max(offers)[3]


def _rendition(request: Request, thumbnail: bool) -> Rendition:
    query = request.query_params
    viewport = _parse_viewport(query.get("viewport"))
    if thumbnail and viewport is None:
        viewport = (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    window = _parse_window(query.get("window"))
    preset = query.get("preset")
    if preset is not None:
        # Our extension to PS3.18 8.3.5.1: a named CT window, cached once rendered.
        if window is not None:
            raise HTTPException(400, "give either window or preset, not both")
        if preset not in CT_PRESETS:
            raise HTTPException(400, f"unknown preset; known: {', '.join(CT_PRESETS)}")
        center, width = CT_PRESETS[preset]
        window = (center, width, None)
    return Rendition(
        thumbnail=thumbnail,
        media_type=_negotiate(request.headers.get("accept")),
        quality=_parse_quality(
            query.get("quality"), THUMBNAIL_QUALITY if thumbnail else DEFAULT_QUALITY
        ),
        window=window,
        viewport=viewport,
        preset=preset,
    )


# --------------------------------------------------------------------------- lookups


def _check_ready(row: InstanceRow) -> None:
    if row.pixel_state == PixelState.READY:
        return
    if row.pixel_state == PixelState.PENDING:
        raise HTTPException(503, "pixels not decoded yet", headers={"Retry-After": "1"})
    if row.pixel_state == PixelState.FAILED:
        raise HTTPException(422, f"pixel data cannot be decoded: {row.pixel_error or 'unknown'}")
    raise HTTPException(404, "the instance has no pixel data")


def _frame_count(runtime: Runtime, row: InstanceRow) -> int:
    # The index knows Number of Frames; opening the Zarr array to ask costs
    # more than answering a precomputed render.
    if row.number_of_frames:
        return int(row.number_of_frames)
    try:
        return int(runtime.pixels.shape(row.storage_key)[0])
    except FileNotFoundError:
        raise HTTPException(503, "pixels not stored yet", headers={"Retry-After": "1"}) from None


async def _instance(
    request: Request, runtime: Runtime, study: str, series: str, instance: str
) -> tuple[InstanceRow, int]:
    """The instance's row and frame count; 404 unless it is in ``study`` and ``series``.

    Ready rows come from the process's :class:`~api.instance_cache.ReadyInstances`
    when it has them (no trip to a worker thread and the index).
    """
    ready: ReadyInstances = request.app.state.ready_instances
    row = ready.get(instance)
    if row is None:
        row = await run_in_threadpool(runtime.index.get_instance, instance)
        if row is not None:
            ready.put(row)
    if row is None or row.study_instance_uid != study or row.series_instance_uid != series:
        raise HTTPException(404, "no such instance in this study and series")
    _check_ready(row)
    if row.number_of_frames:
        return row, int(row.number_of_frames)
    return row, await run_in_threadpool(_frame_count, runtime, row)


def _representative(rows: list[InstanceRow]) -> InstanceRow:
    """The middle instance by Instance Number (``rows`` are in that order)."""
    return rows[(len(rows) - 1) // 2]


def _series_representative(runtime: Runtime, study: str, series: str) -> tuple[InstanceRow, int]:
    rows = [
        r
        for r in runtime.index.list_instances(series_instance_uid=series)
        if r.study_instance_uid == study and r.pixel_state != PixelState.NONE
    ]
    if not rows:
        raise HTTPException(404, "no such series with images in this study")
    row = _representative(rows)
    _check_ready(row)
    return row, _frame_count(runtime, row)


def _study_representative(runtime: Runtime, study: str) -> tuple[InstanceRow, int]:
    rows = [
        r
        for r in runtime.index.list_instances(study_instance_uid=study)
        if r.pixel_state != PixelState.NONE
    ]
    if not rows:
        raise HTTPException(404, "no such study with images")
    by_series: dict[str, list[InstanceRow]] = {}
    for r in rows:
        by_series.setdefault(r.series_instance_uid, []).append(r)

    def order(uid: str) -> tuple[bool, int]:
        found = runtime.index.get_series(uid)
        number = found.series_number if found is not None else None
        return number is None, number or 0

    first = min(by_series, key=order)  # ties keep the order of first appearance
    row = _representative(by_series[first])
    _check_ready(row)
    return row, _frame_count(runtime, row)


# --------------------------------------------------------------------------- rendering


def _fit(image: np.ndarray, viewport: tuple[int, int]) -> np.ndarray:
    """``image`` shrunk to fit ``viewport`` (vw, vh), aspect kept, never enlarged."""
    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail(viewport, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(picture)


def render_frame(runtime: Runtime, key: str, frame: int, rendition: Rendition) -> bytes:
    """Render frame ``frame`` (1-based) of ``key`` on demand and encode it."""
    index = frame - 1
    description = runtime.pixels.description(key)
    luts = palette_luts(runtime.pixels, key, description)
    pixels = np.asarray(runtime.pixels.read_frame(key, index))[np.newaxis]
    window = rendition.window
    image = render(
        pixels,
        frame_description(description, index),
        window=(window[0], window[1]) if window is not None else None,
        function=window[2] if window is not None else None,
        luts=luts or None,
    )[0]
    image = np.asarray(image)
    if rendition.viewport is not None:
        image = _fit(image, rendition.viewport)
    return encode(image, rendition.media_type, rendition.quality)


def _if_none_match(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = [t.strip() for t in header.split(",")]
    # RFC 9110 13.1.2: weak comparison.
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


async def _answer(
    request: Request,
    runtime: Runtime,
    found: tuple[InstanceRow, int],
    frame: int,
    rendition: Rendition,
) -> Response:
    row, count = found
    if frame > count:
        raise HTTPException(404, f"the instance has {count} frame(s)")
    return await _pixels_gone_is_503(request, row, _serve(
        request,
        runtime,
        row.storage_key,
        frame,
        rendition.media_type,
        rendition.etag(row, frame),
        rendition.variant,
        # Presets are rendered on first request, then served from the store.
        cache=rendition.preset is not None,
        produce=lambda: render_frame(runtime, row.storage_key, frame, rendition),
        pixels=row.rows * row.columns if row.rows and row.columns else None,
    ))


async def _pixels_gone_is_503(
    request: Request, row: InstanceRow, answer: Coroutine[Any, Any, Response]
) -> Response:
    """``await answer``; pixels not found (the instance was replaced, its pixels are
    being decoded again) is 503 with Retry-After, and the row is looked up anew."""
    try:
        return await answer
    except FileNotFoundError:
        request.app.state.ready_instances.forget(row.sop_instance_uid)
        raise HTTPException(503, "pixels not stored yet", headers={"Retry-After": "1"}) from None


def _inline(request: Request, runtime: Runtime, pixels: int | None) -> bool:
    """Whether an on-demand render of a frame of ``pixels`` runs on the event loop."""
    limit = request.app.state.settings.render_inline_pixels
    return pixels is not None and 0 < pixels <= limit and runtime.pixels.local


async def _serve(
    request: Request,
    runtime: Runtime,
    key: str,
    frame: int,
    media_type: str,
    etag: str,
    variant: str | None,
    *,
    cache: bool,
    produce: Callable[[], bytes],
    pixels: int | None = None,
) -> Response:
    """Answer from the render store's ``variant`` when it is there, else from the
    recent on-demand renders (keyed by ``etag``), else ``produce()``.

    ``cache``: store what was produced under ``variant`` for the next request;
    otherwise it is kept among the recent renders (:mod:`api.render_cache`).
    ``X-Lightbox-Render`` says which: precomputed, recent or on-demand.
    ``pixels``: the size of the frame ``produce`` renders, if known; small
    ones are rendered on the event loop (see the module docstring).
    """
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept"}
    if _if_none_match(request, etag):
        return Response(status_code=304, headers=headers)
    data: bytes | None = None
    if variant is not None:
        if runtime.renders.local:  # one small file, read from the page cache
            data = runtime.renders.get(key, variant, frame)
        else:
            data = await run_in_threadpool(runtime.renders.get, key, variant, frame)
    if data is not None:
        headers["X-Lightbox-Render"] = "precomputed"
        return Response(content=data, media_type=media_type, headers=headers)
    recent: RecentRenders = request.app.state.recent_renders
    data = recent.get(etag)
    if data is not None:
        headers["X-Lightbox-Render"] = "recent"
        return Response(content=data, media_type=media_type, headers=headers)
    if _inline(request, runtime, pixels):
        data = produce()
    else:
        data = await _render_once(request, etag, produce)
    headers["X-Lightbox-Render"] = "on-demand"
    if cache and variant is not None:
        await run_in_threadpool(runtime.renders.put, key, variant, frame, data)
    else:
        recent.put(etag, data)
    return Response(content=data, media_type=media_type, headers=headers)


class _Flight:
    """One on-demand render in a worker thread, awaited by every request for its ETag."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.data: bytes | None = None


async def _render_once(request: Request, etag: str, produce: Callable[[], bytes]) -> bytes:
    """``produce()`` in a worker thread, once for concurrent requests of one rendition.

    Sixteen viewers opening the same mammogram with the same window would
    otherwise render it sixteen times, one after another through the limiter
    (measured: p99 615 ms against 50 ms for one render). The others wait for
    the first and answer its bytes; if it fails or is cancelled (its client
    went away), the next waiter renders in its place.
    """
    flights: dict[str, _Flight] = request.app.state.renders_in_flight
    while (flight := flights.get(etag)) is not None:
        await flight.done.wait()
        if flight.data is not None:
            return flight.data
    flight = flights[etag] = _Flight()
    try:
        # At most render_concurrency renders at once; the rest wait here,
        # not in threads contending for the GIL.
        flight.data = await anyio.to_thread.run_sync(
            produce, limiter=request.app.state.render_limiter
        )
        return flight.data
    finally:
        del flights[etag]
        flight.done.set()


# --------------------------------------------------------------------------- routes

_INSTANCE = "/studies/{study}/series/{series}/instances/{instance}"


@router.get(_INSTANCE + "/rendered")
async def instance_rendered(
    study: str, series: str, instance: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4: the first frame of an instance, rendered."""
    _check_uids(study, series, instance)
    rendition = _rendition(request, thumbnail=False)
    found = await _instance(request, runtime, study, series, instance)
    return await _answer(request, runtime, found, 1, rendition)


@router.get(_INSTANCE + "/frames/{frames}/rendered")
async def frames_rendered(
    study: str, series: str, instance: str, frames: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.4: the first listed frame, rendered."""
    _check_uids(study, series, instance)
    frame = _parse_frames(frames)
    rendition = _rendition(request, thumbnail=False)
    found = await _instance(request, runtime, study, series, instance)
    return await _answer(request, runtime, found, frame, rendition)


@router.get("/studies/{study}/thumbnail")
async def study_thumbnail(study: str, request: Request, runtime: RuntimeDep) -> Response:
    """PS3.18 10.7: the study's representative image (first series, middle instance)."""
    _check_uids(study)
    rendition = _rendition(request, thumbnail=True)
    found = await run_in_threadpool(_study_representative, runtime, study)
    return await _answer(request, runtime, found, 1, rendition)


@router.get("/studies/{study}/series/{series}/thumbnail")
async def series_thumbnail(
    study: str, series: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.7: the series' representative image (its middle instance)."""
    _check_uids(study, series)
    rendition = _rendition(request, thumbnail=True)
    found = await run_in_threadpool(_series_representative, runtime, study, series)
    return await _answer(request, runtime, found, 1, rendition)


@router.get(_INSTANCE + "/thumbnail")
async def instance_thumbnail(
    study: str, series: str, instance: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.7: the instance's first frame as a thumbnail."""
    _check_uids(study, series, instance)
    rendition = _rendition(request, thumbnail=True)
    found = await _instance(request, runtime, study, series, instance)
    return await _answer(request, runtime, found, 1, rendition)


@router.get(_INSTANCE + "/frames/{frames}/thumbnail")
async def frames_thumbnail(
    study: str, series: str, instance: str, frames: str, request: Request, runtime: RuntimeDep
) -> Response:
    """PS3.18 10.7: the first listed frame as a thumbnail."""
    _check_uids(study, series, instance)
    frame = _parse_frames(frames)
    rendition = _rendition(request, thumbnail=True)
    found = await _instance(request, runtime, study, series, instance)
    return await _answer(request, runtime, found, frame, rendition)


# --------------------------------------------------------------------------- tiles

#: Tile edge in pixels: the Zarr chunk of a large frame, so a tile reads one chunk.
TILE = 512


def _tile_window(
    runtime: Runtime, key: str, index: int, description: dict[str, Any]
) -> tuple[float, float] | None:
    """The window every tile of a frame shares when the request names none.

    The instance's own window if it has one (render() takes it); else the full
    range of the frame, measured once on its smallest level, so that all tiles
    of a frame have the same contrast (a per-tile full range would not).
    """
    windows = description.get("windows")
    if isinstance(windows, list) and windows and windows[min(index, len(windows) - 1)]:
        return None
    smallest = _level_count(runtime, key) - 1
    small = np.asarray(runtime.pixels.read_frame(key, index, level=smallest))[np.newaxis]
    values = modality_values(small, frame_description(description, index))
    low, high = float(values.min()), float(values.max())
    return (low + high + 1) / 2, high - low + 1


def render_tile(
    runtime: Runtime,
    key: str,
    frame: int,
    level: int,
    y: int,
    x: int,
    size: tuple[int, int],
    rendition: Rendition,
) -> bytes:
    """Render the tile at (``y``, ``x``) of ``level``; ``size`` is the level's (rows, columns)."""
    index = frame - 1
    description = runtime.pixels.description(key)
    height, width = min(TILE, size[0] - y), min(TILE, size[1] - x)  # edge tiles are smaller
    region = np.asarray(runtime.pixels.read_region(key, index, y, x, height, width, level=level))
    window = rendition.window
    chosen = (
        (window[0], window[1])
        if window is not None
        else _tile_window(runtime, key, index, description)
    )
    image = render(
        region[np.newaxis],
        frame_description(description, index),
        window=chosen,
        function=window[2] if window is not None else None,
    )[0]
    return encode(np.asarray(image), rendition.media_type, rendition.quality)


def _level_count(runtime: Runtime, key: str) -> int:
    count = 1
    while True:
        try:
            runtime.pixels.shape(key, count)
        except (IndexError, KeyError, FileNotFoundError):
            return count
        count += 1


@router.get(_INSTANCE + "/frames/{frames}/tiles/{level}/{tile_row}/{tile_column}")
async def frame_tile(
    study: str,
    series: str,
    instance: str,
    frames: str,
    level: int,
    tile_row: int,
    tile_column: int,
    request: Request,
    runtime: RuntimeDep,
) -> Response:
    """One 512x512 tile of a frame at a pyramid level (0: full resolution).

    Our extension for large images (mammography, WSI): a viewer fetches only
    the tiles it shows. Levels are the Zarr pyramid's (each halves the one
    before); ``window``, ``preset``, ``quality`` and ``Accept`` work as on
    ``rendered``. Default tiles are cached in the render store once made.
    """
    _check_uids(study, series, instance)
    frame = _parse_frames(frames)
    rendition = _rendition(request, thumbnail=False)
    row, count = await _instance(request, runtime, study, series, instance)
    if frame > count or level < 0 or tile_row < 0 or tile_column < 0:
        raise HTTPException(404, "no such frame or tile")
    try:
        shape = await run_in_threadpool(runtime.pixels.shape, row.storage_key, level)
    except (IndexError, KeyError, FileNotFoundError):
        raise HTTPException(404, "no such pyramid level") from None
    rows, columns = int(shape[1]), int(shape[2])
    y, x = tile_row * TILE, tile_column * TILE
    if y >= rows or x >= columns:
        raise HTTPException(404, f"the level is {columns}x{rows}: no such tile")
    default = rendition.window is None and rendition.media_type == JPEG
    default = default and rendition.quality == DEFAULT_QUALITY
    variant = f"tile-{level}-{tile_row}-{tile_column}.jpg" if default else None
    text = "\x1f".join(
        (row.sha256, row.storage_key, str(frame), f"tile={level},{tile_row},{tile_column}",
         f"q={rendition.quality};w={rendition.window}", rendition.media_type)
    )  # fmt: skip
    etag = '"' + hashlib.sha256(text.encode()).hexdigest()[:40] + '"'
    return await _pixels_gone_is_503(request, row, _serve(
        request,
        runtime,
        row.storage_key,
        frame,
        rendition.media_type,
        etag,
        variant,
        cache=True,
        produce=lambda: render_tile(
            runtime, row.storage_key, frame, level, y, x, (rows, columns), rendition
        ),
    ))
