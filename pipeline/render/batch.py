"""``lightbox rerender``: batch re-rendering of a selection, as Ray tasks.

A selection (study, series, modality, study date range) of decoded instances
is rendered with one window (explicit, a named CT preset, or the default
rendition) into one output format, and stored in the render store as a named
variant, where the rendered routes and later batch runs find it. Resumable:
an instance whose last frame is already rendered is skipped, so a run that
was interrupted simply runs again. Each instance is one Ray task (spread over
the cluster), at most ``2 x CPUs`` in flight, waited on with ``ray.wait``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import Settings
from pipeline.render.encode import JPEG, PNG, WEBP, encode
from pipeline.render.pipeline import render
from pipeline.render.precompute import DEFAULT_QUALITY, DEFAULT_VARIANT
from pipeline.render.presets import CT_PRESETS, preset_variant
from pipeline.render.source import frame_description, palette_luts
from pipeline.storage.pixels import open_pixel_store
from pipeline.storage.renders import open_render_store

log = logging.getLogger(__name__)

FORMATS = {"jpeg": (JPEG, "jpg"), "png": (PNG, "png"), "webp": (WEBP, "webp")}


@dataclass(frozen=True)
class RenderSpec:
    """What every selected frame is rendered to, and the variant it is stored as."""

    variant: str
    media_type: str
    quality: int
    window: tuple[float, float] | None = None
    function: str | None = None


def render_spec(
    window: str | None = None, preset: str | None = None, fmt: str = "jpeg", quality: int = DEFAULT_QUALITY
) -> RenderSpec:
    """The spec for ``--window C,W[,FUNCTION]`` or ``--preset NAME`` (or neither: the default)."""
    if fmt not in FORMATS:
        raise ValueError(f"format is one of {', '.join(FORMATS)}")
    media_type, extension = FORMATS[fmt]
    if window and preset:
        raise ValueError("give either a window or a preset")
    if preset:
        if preset not in CT_PRESETS:
            raise ValueError(f"unknown preset; known: {', '.join(CT_PRESETS)}")
        center, width = CT_PRESETS[preset]
        name = preset_variant(preset) if (fmt, quality) == ("jpeg", DEFAULT_QUALITY) else f"preset-{preset}-q{quality}.{extension}"
        return RenderSpec(name, media_type, quality, (center, width))
    if window:
        parts = [p.strip() for p in window.split(",")]
        if len(parts) not in (2, 3):
            raise ValueError("window is CENTER,WIDTH[,FUNCTION]")
        center, width = float(parts[0]), float(parts[1])
        if width <= 0:
            raise ValueError("window width must be positive")
        function = parts[2].upper().replace("-", "_") if len(parts) == 3 else None
        tag = f"{center:g}_{width:g}".replace("-", "m").replace(".", "p")
        if function:
            tag += "_" + function.lower()
        return RenderSpec(f"window-{tag}-q{quality}.{extension}", media_type, quality, (center, width), function)
    if (fmt, quality) == ("jpeg", DEFAULT_QUALITY):
        return RenderSpec(DEFAULT_VARIANT, media_type, quality)
    return RenderSpec(f"default-q{quality}.{extension}", media_type, quality)


def rerender_instance(settings_json: str, key: str, spec: RenderSpec) -> tuple[str, int, str | None]:
    """Render every frame of one instance into the render store: (key, frames, error)."""
    settings = Settings.model_validate_json(settings_json)
    url = settings.resolved_storage_url
    pixels, renders = open_pixel_store(url), open_render_store(url)
    try:
        description = pixels.description(key)
        count = pixels.shape(key)[0]
        luts = palette_luts(pixels, key, description)
        for index in range(count):
            frame = np.asarray(pixels.read_frame(key, index))[np.newaxis]
            image = render(
                frame,
                frame_description(description, index),
                window=spec.window,
                function=spec.function,
                luts=luts or None,
            )[0]
            renders.put(key, spec.variant, index + 1, encode(np.asarray(image), spec.media_type, spec.quality))
        return key, count, None
    except Exception as exc:  # one instance's failure is reported, the batch goes on
        return key, 0, f"{type(exc).__name__}: {exc}"[:200]


@dataclass
class BatchSummary:
    rendered: int = 0
    frames: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def run_batch(
    settings: Settings,
    selected: list[tuple[str, str, int]],
    spec: RenderSpec,
    *,
    use_ray: bool = True,
    on_progress: Callable[[], None] | None = None,
) -> BatchSummary:
    """Render ``selected`` (from :meth:`Index.select_instances`); resumable (see module)."""
    summary = BatchSummary()
    renders = open_render_store(settings.resolved_storage_url)
    todo = []
    for uid, key, frames in selected:
        if renders.get(key, spec.variant, frames) is not None:
            summary.skipped += 1  # done by an earlier (interrupted) run
            if on_progress:
                on_progress()
        else:
            todo.append((uid, key))
    settings_json = settings.model_dump_json()
    uid_of = {key: uid for uid, key in todo}

    def record(result: tuple[str, int, str | None]) -> None:
        key, frames, error = result
        if error is None:
            summary.rendered += 1
            summary.frames += frames
        else:
            summary.failures.append((uid_of[key], error))
        if on_progress:
            on_progress()

    if not use_ray:
        for _, key in todo:
            record(rerender_instance(settings_json, key, spec))
        return summary

    import ray

    task = ray.remote(num_cpus=1)(rerender_instance)
    limit = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    pending: list[Any] = []
    for _, key in todo:
        if len(pending) >= limit:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                record(ray.get(ref))
        pending.append(task.remote(settings_json, key, spec))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            record(ray.get(ref))
    return summary
