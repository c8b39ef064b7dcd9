"""The grey-scale and colour rendering pipeline of PS3.4 N.2, as array functions.

Stored values (the decode stage's frames) become displayable 8-bit values:

1. **Modality LUT** (PS3.3 C.11.1): Rescale Slope / Intercept per frame (the
   description's ``rescale_slope`` / ``rescale_intercept``, functional groups
   already resolved), or the Modality LUT Sequence when present (it replaces
   the rescale).
2. **VOI LUT** (PS3.3 C.11.2), first that applies:

   * the caller's ``window=(center, width)``, for every frame;
   * the VOI LUT Sequence (first LUT) when present;
   * the instance's first window of each frame (``description["windows"]``);
   * a full-range default per frame: the LINEAR window that maps the smallest
     modality value of the frame to 0 and the largest to 255
     (center ``(min + max + 1) / 2``, width ``max - min + 1``, which is what
     DCMTK's min-max window computes).

   The window function is the caller's ``function``, else the window's VOI LUT
   Function, else LINEAR: LINEAR (C.11.2.1.2.1), LINEAR_EXACT (C.11.2.1.3.2),
   SIGMOID (C.11.2.1.3.1), with ``y_min = 0`` and ``y_max = 255``.
3. **Presentation**: MONOCHROME1 (C.7.6.3.1.2) or a Presentation LUT Shape of
   INVERSE is displayed inverted, ``y -> 255 - y`` (once: a DX MONOCHROME1
   image carries INVERSE as the description of the same inversion, PS3.3
   C.8.11.1.1.1).

**Rounding rule**: every step above is computed in float64 on the continuous
scale 0..255; the output is ``floor(y + 0.5)`` (round half up), clipped to
0..255. A VOI LUT Sequence is indexed with the modality value rounded the same
way, and its output (``0 .. 2**bits - 1``, C.11.2.1.1) is scaled to 0..255
before inversion and rounding.

**Colour**: RGB (and the YBR kinds the decode stage stores as RGB) passes
through; samples of more than 8 bits stored are scaled to 8 bits with
``floor(v * 255 / (2**bits - 1) + 0.5)``. PALETTE COLOR goes through the
palette's LUTs (C.7.6.3.1.5): index ``clip(v - first_mapped, 0, entries - 1)``,
16-bit entries scaled to 8 bits by the same rule. A Supplemental Palette
(C.8.16.2.1.1.1) is not applied: such an image renders as grey.

**Two paths, same bytes**: integer stored values of at most 16 bits with the
same modality transformation for every frame take the fast path, one 256- or
64Ki-entry uint8 table per distinct VOI setting, indexed by the raw values (a
signed array is read through its unsigned view): the table is the float path
evaluated on every possible stored value, with the same float64 operations, so
both give the same bytes. Everything else (per-frame rescale, 32-bit or float
pixel data) takes the batched float path.

Every function takes ``xp``, the array namespace (``numpy``, or ``cupy`` from
:func:`get_xp`), and uses only ``xp`` operations on its arrays.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy

__all__ = [
    "FUNCTIONS",
    "apply_palette",
    "get_xp",
    "modality_values",
    "render",
    "voi_window",
]

#: VOI LUT Functions implemented (PS3.3 C.11.2.1.3).
FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")

_Y_MAX = 255.0


def get_xp(prefer_gpu: bool = True) -> Any:
    """``cupy`` when wanted, importable and a CUDA device is present, else ``numpy``."""
    if prefer_gpu:
        try:
            import cupy  # type: ignore[import-not-found]

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return cupy
        except Exception:  # not installed, no driver, no device
            pass
    return numpy


# --------------------------------------------------------------------------- helpers


def _signed(value: int, bits: int = 16) -> int:
    """A LUT Descriptor's first value mapped read as signed (US stored for SS)."""
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _lut_table(item: Mapping[str, Any], xp: Any) -> tuple[Any, int, int]:
    """A Modality or VOI LUT item: (data as float64, first mapped, bits)."""
    entries, first, bits = (int(v) for v in item["descriptor"])
    data = xp.asarray(numpy.asarray(item["data"], dtype=numpy.float64))
    entries = entries or 65536
    return data[:entries], first, bits


def _lookup(table: Any, values: Any, first: int, xp: Any) -> Any:
    """``table[clip(values - first, 0, n - 1)]`` for integer ``values``."""
    index = xp.clip(values.astype(xp.int64) - first, 0, table.shape[0] - 1)
    return xp.take(table, index)


def _round8(y: Any, xp: Any) -> Any:
    """The rounding rule: ``floor(y + 0.5)`` clipped to 0..255, as uint8."""
    return xp.clip(xp.floor(y + 0.5), 0, _Y_MAX).astype(xp.uint8)


def _frame_column(values: Sequence[float], frames: int, xp: Any, ndim: int) -> Any:
    """Per-frame numbers broadcastable against a (frames, ...) array of ``ndim`` dims."""
    column = numpy.asarray(list(values), dtype=numpy.float64)
    if column.shape[0] != frames:
        raise ValueError(f"description has {column.shape[0]} frame entries, frames has {frames}")
    return xp.asarray(column.reshape((frames,) + (1,) * (ndim - 1)))


# --------------------------------------------------------------------------- modality


def _modality_lut_item(description: Mapping[str, Any]) -> Mapping[str, Any] | None:
    items = description.get("modality_lut")
    return items[0] if items else None


def _modality(
    raw: Any, description: Mapping[str, Any], slope: Any, intercept: Any, xp: Any
) -> Any:
    """Modality values (float64) of integer or float stored values ``raw``."""
    item = _modality_lut_item(description)
    if item is not None and raw.dtype.kind in "iu":
        table, first, _ = _lut_table(item, xp)
        if description.get("pixel_representation") == 1:
            first = _signed(first)
        return _lookup(table, raw, first, xp)
    return raw.astype(xp.float64) * slope + intercept


def modality_values(frames: Any, description: Mapping[str, Any], *, xp: Any = numpy) -> Any:
    """The Modality LUT of PS3.3 C.11.1 over ``frames`` (F, R, C): float64 values."""
    frames = xp.asarray(frames)
    count = frames.shape[0]
    slope = _frame_column(description["rescale_slope"], count, xp, frames.ndim)
    intercept = _frame_column(description["rescale_intercept"], count, xp, frames.ndim)
    return _modality(frames, description, slope, intercept, xp)


# --------------------------------------------------------------------------- VOI


def voi_window(x: Any, center: Any, width: Any, function: str, xp: Any = numpy) -> Any:
    """A window on modality values ``x``: float64 on the continuous scale 0..255.

    ``center`` and ``width`` broadcast against ``x``. The formulas of PS3.3
    C.11.2.1.2.1 (LINEAR, width >= 1; a width of 1 is a threshold at
    ``center - 0.5``), C.11.2.1.3.2 (LINEAR_EXACT, width > 0) and C.11.2.1.3.1
    (SIGMOID), with ``y_min = 0``, ``y_max = 255``.
    """
    function = (function or "LINEAR").upper()
    if function == "LINEAR":
        width_1 = width - 1.0
        centre = center - 0.5
        lower = centre - width_1 / 2.0
        upper = centre + width_1 / 2.0
        denominator = xp.where(width_1 > 0, width_1, 1.0)
        ramp = ((x - centre) / denominator + 0.5) * _Y_MAX
        return xp.where(x <= lower, 0.0, xp.where(x > upper, _Y_MAX, ramp))
    if function == "LINEAR_EXACT":
        lower = center - width / 2.0
        upper = center + width / 2.0
        ramp = ((x - center) / width + 0.5) * _Y_MAX
        return xp.where(x <= lower, 0.0, xp.where(x > upper, _Y_MAX, ramp))
    if function == "SIGMOID":
        # The exponent is clipped where exp would overflow float64 (the
        # result, ~0 or 255, is the same after rounding).
        return _Y_MAX / (1.0 + xp.exp(xp.clip(-4.0 * (x - center) / width, -700.0, 700.0)))
    raise ValueError(f"unknown VOI LUT Function {function!r} (one of {', '.join(FUNCTIONS)})")


def _voi_lut_item(description: Mapping[str, Any]) -> Mapping[str, Any] | None:
    items = description.get("voi_lut")
    return items[0] if items else None


def _apply_voi_lut(x: Any, item: Mapping[str, Any], signed: bool, xp: Any) -> Any:
    """The VOI LUT Sequence's first LUT on modality values: 0..255 float64."""
    table, first, bits = _lut_table(item, xp)
    if signed:
        first = _signed(first)
    index = xp.floor(x + 0.5)
    scale = _Y_MAX / float((1 << bits) - 1) if bits > 0 else 1.0
    return _lookup(table, index, first, xp) * scale


def _inverted(description: Mapping[str, Any]) -> bool:
    photometric = str(description.get("photometric_interpretation") or "").upper()
    shape = str(description.get("presentation_lut_shape") or "").upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _voi_plan(
    description: Mapping[str, Any],
    count: int,
    window: tuple[float, float] | None,
    function: str | None,
) -> tuple[str, list[tuple[float, float, str] | None]]:
    """What VOI applies: ``("window", per-frame (c, w, fn) or None for the
    full-range default)`` or ``("lut", [])``."""
    if window is not None:
        centre, width = float(window[0]), float(window[1])
        if not width > 0:
            raise ValueError("window width must be positive")
        return "window", [(centre, width, (function or "LINEAR").upper())] * count
    if _voi_lut_item(description) is not None:
        return "lut", []
    presets = description.get("windows") or []
    plan: list[tuple[float, float, str] | None] = []
    for frame in range(count):
        frame_presets = presets[frame] if frame < len(presets) else []
        if frame_presets:
            first = frame_presets[0]
            fn = (function or first.get("function") or "LINEAR").upper()
            plan.append((float(first["center"]), float(first["width"]), fn))
        else:
            plan.append(None)
    return "window", plan


def _full_range(vmin: float, vmax: float, function: str | None) -> tuple[float, float, str]:
    """The default window: LINEAR maps ``vmin`` to 0 and ``vmax`` to 255 exactly."""
    return (vmin + vmax + 1.0) / 2.0, vmax - vmin + 1.0, (function or "LINEAR").upper()


def _grey(
    x: Any,
    description: Mapping[str, Any],
    kind: str,
    params: list[tuple[float, float, str]],
    signed: bool,
    xp: Any,
) -> Any:
    """Modality values ``x`` (K, ...) to uint8, one parameter set per leading row.

    The one function both paths run: the float path on the frames, the LUT
    path on every possible stored value (K tables).
    """
    if kind == "lut":
        item = _voi_lut_item(description)
        assert item is not None
        y = _apply_voi_lut(x, item, signed, xp)
    else:
        shape = (len(params),) + (1,) * (x.ndim - 1)
        centre = xp.asarray(numpy.asarray([p[0] for p in params]).reshape(shape))
        width = xp.asarray(numpy.asarray([p[1] for p in params]).reshape(shape))
        functions = [p[2] for p in params]
        if len(set(functions)) == 1:
            y = voi_window(x, centre, width, functions[0], xp)
        else:
            y = xp.zeros(x.shape, dtype=xp.float64)
            for fn in sorted(set(functions)):
                rows = xp.asarray(numpy.asarray([f == fn for f in functions]).reshape(shape))
                y = xp.where(rows, voi_window(x, centre, width, fn, xp), y)
    if _inverted(description):
        y = _Y_MAX - y
    return _round8(y, xp)


# --------------------------------------------------------------------------- colour


def apply_palette(
    indices: Any, palette: Mapping[str, Any], luts: Mapping[str, Any], *, xp: Any = numpy
) -> Any:
    """PALETTE COLOR indices to the LUTs' values (PS3.3 C.7.6.3.1.5-6), as uint16.

    ``palette`` is the description's ``palette`` (descriptors and the names of
    its LUT arrays), ``luts`` the decode stage's arrays. Equals pydicom's
    ``apply_color_lut``; the last axis is R, G, B.
    """
    channels = []
    for colour in ("red", "green", "blue"):
        entries, first, _ = (int(v) for v in palette["descriptor"][colour])
        name = (palette.get("luts") or {}).get(colour, f"palette_{colour}")
        table = xp.asarray(luts[name]).astype(xp.uint16)[: entries or 65536]
        channels.append(_lookup(table, indices, first, xp))
    return xp.stack(channels, axis=-1)


def _to_8_bits(values: Any, bits: int, xp: Any) -> Any:
    if bits <= 8 and values.dtype == xp.uint8:
        return values
    if bits <= 8:
        return xp.clip(values, 0, 255).astype(xp.uint8)
    return _round8(values.astype(xp.float64) * (_Y_MAX / float((1 << bits) - 1)), xp)


# --------------------------------------------------------------------------- render


def _same_rescale(description: Mapping[str, Any]) -> bool:
    if _modality_lut_item(description) is not None:
        return True
    return (
        len(set(description["rescale_slope"])) <= 1
        and len(set(description["rescale_intercept"])) <= 1
    )


def render(
    frames: Any,
    description: Mapping[str, Any],
    *,
    window: tuple[float, float] | None = None,
    function: str | None = None,
    luts: Mapping[str, Any] | None = None,
    xp: Any = numpy,
    fast: bool = True,
) -> Any:
    """Render every frame to 8 bits, batched.

    Parameters
    ----------
    frames : array
        The decode stage's ``(F, R, C)`` or ``(F, R, C, 3)`` stored values.
    description : dict
        Its description (:func:`pipeline.decode.describe.describe`), with one
        entry per frame of ``frames`` in the per-frame lists.
    window : (center, width), optional
        The caller's window, for every frame; overrides the instance's.
    function : str, optional
        LINEAR, LINEAR_EXACT or SIGMOID; default: the window's VOI LUT Function.
    luts : mapping, optional
        The decode stage's LUT arrays (the palette's), by name.
    xp : module
        ``numpy`` or ``cupy``; the result is an array of that namespace.
    fast : bool
        Use the LUT path where it applies (``False``: always the float path).

    Returns
    -------
    array of uint8
        ``(F, R, C)`` grey or ``(F, R, C, 3)`` RGB.
    """
    frames = xp.asarray(frames)
    if frames.ndim == 4:  # colour, pixel-interleaved
        bits = int(description.get("bits_stored") or frames.dtype.itemsize * 8)
        return _to_8_bits(frames, bits, xp)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (F, R, C) or (F, R, C, 3), not {frames.shape}")
    decoded = str((description.get("decoded") or {}).get("photometric_interpretation") or "")
    palette = description.get("palette")
    if decoded.upper() == "PALETTE COLOR" and palette and not palette.get("supplemental"):
        if luts is None:
            raise ValueError("a PALETTE COLOR image needs its LUT arrays (luts=)")
        bits = int(palette["descriptor"]["red"][2])
        return _to_8_bits(apply_palette(frames, palette, luts, xp=xp), bits, xp)

    if function is not None and function.upper() not in FUNCTIONS:
        raise ValueError(f"unknown VOI LUT Function {function!r}")
    count = frames.shape[0]
    kind, plan = _voi_plan(description, count, window, function)
    signed = description.get("pixel_representation") == 1 or any(
        i < 0 for i in description.get("rescale_intercept") or []
    )
    small_int = frames.dtype.kind in "iu" and frames.dtype.itemsize <= 2
    if fast and small_int and _same_rescale(description):
        return _render_lut(frames, description, kind, plan, function, signed, xp)
    return _render_float(frames, description, kind, plan, function, signed, xp)


def _render_float(
    frames: Any,
    description: Mapping[str, Any],
    kind: str,
    plan: list[tuple[float, float, str] | None],
    function: str | None,
    signed: bool,
    xp: Any,
) -> Any:
    x = modality_values(frames, description, xp=xp)
    if kind == "lut":
        return _grey(x, description, kind, [], signed, xp)
    if any(p is None for p in plan):
        lows = xp.min(x, axis=(1, 2))
        highs = xp.max(x, axis=(1, 2))
        plan = [
            p if p is not None else _full_range(float(lows[i]), float(highs[i]), function)
            for i, p in enumerate(plan)
        ]
    return _grey(x, description, kind, plan, signed, xp)  # type: ignore[arg-type]


class _TableCache:
    """The last few VOI tables of :func:`_render_lut`, by everything they depend on.

    A viewer scrolling a series asks for the same window on slice after slice
    of one description: building the 64 Ki-entry table cost ~0.5 ms of the
    ~1 ms that an on-demand 512 x 512 render took. The key is the array
    namespace, the stored dtype, the VOI kind, the window parameters, the
    signedness and the whole description (its ``repr``: rescale, Modality and
    VOI LUTs, photometric interpretation, Presentation LUT Shape, bits), so a
    hit is the table that would have been built. Tables are read-only once
    made; a lock keeps the LRU order consistent across the HTTP threads.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._tables: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(xp: Any, dtype: Any, kind: str, params: list[Any], signed: bool,
             description: Mapping[str, Any]) -> tuple[Any, ...]:
        return (xp.__name__, str(dtype), kind, tuple(params), signed, repr(description))

    def get(self, xp: Any, dtype: Any, kind: str, params: list[Any], signed: bool,
            description: Mapping[str, Any]) -> Any:
        key = self._key(xp, dtype, kind, params, signed, description)
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
            return table

    def put(self, xp: Any, dtype: Any, kind: str, params: list[Any], signed: bool,
            description: Mapping[str, Any], tables: Any) -> None:
        key = self._key(xp, dtype, kind, params, signed, description)
        with self._lock:
            self._tables[key] = tables
            while len(self._tables) > self.size:
                self._tables.popitem(last=False)


_TABLES = _TableCache()


def _domain(dtype: Any, xp: Any, start: int | None = None, stop: int | None = None) -> Any:
    """Stored values ``start .. stop - 1`` (default: every value of ``dtype``), as ``dtype``."""
    info = numpy.iinfo(dtype)
    start = info.min if start is None else start
    stop = info.max + 1 if stop is None else stop
    return xp.arange(start, stop, dtype=xp.int64).astype(dtype)


def _unsigned_order(values: Any, dtype: Any, xp: Any) -> Any:
    """A table in value order (smallest stored value first) re-ordered so that it
    is indexed by the raw bits, i.e. the unsigned view of a signed array."""
    if numpy.dtype(dtype).kind != "i":
        return values
    half = values.shape[-1] // 2  # value 0 sits in the middle; negatives index the upper half
    return xp.concatenate([values[..., half:], values[..., :half]], axis=-1)


def _saturating_row(
    description: Mapping[str, Any],
    param: tuple[float, float, str],
    signed: bool,
    dtype: Any,
    slope: Any,
    intercept: Any,
    xp: Any,
) -> Any | None:
    """The table of one LINEAR or LINEAR_EXACT window, computing only its ramp.

    Below the window's lower edge the output is one extreme and above its upper
    edge the other: with a rescale (no Modality LUT) the modality value is
    monotonic in the stored value, and so is the rounded output, in float64 as
    on paper. So the float path runs only on the stored values around the ramp
    (found by inverting the rescale, with a margin) and the rest of the table
    is filled with the end values: a 400-wide CT window evaluates ~400 entries
    instead of 65,536 (0.27 ms down to ~0.08 ms, on every new window a viewer
    asks). The fill is used only when an end value is the extreme (0 or 255)
    in the table's direction; anything else (a window beyond the stored range,
    a rescale too small to invert) returns None and the caller builds the
    whole table. Same bytes as the whole table, by the argument above and by
    test_saturating_rows_equal_whole_tables.
    """
    centre, width, function = param
    s, b = float(slope.reshape(-1)[0]), float(intercept.reshape(-1)[0])
    if function == "LINEAR":
        lower = (centre - 0.5) - (width - 1.0) / 2.0
        upper = (centre - 0.5) + (width - 1.0) / 2.0
    else:
        lower, upper = centre - width / 2.0, centre + width / 2.0
    if s == 0.0 or not all(numpy.isfinite((s, b, lower, upper))):
        return None
    ends = sorted(((lower - b) / s, (upper - b) / s))
    if not all(numpy.isfinite(ends)) or max(abs(e) for e in ends) > 2**40:
        return None
    info = numpy.iinfo(dtype)
    start = max(info.min, int(numpy.floor(ends[0])) - 2)
    stop = min(info.max, int(numpy.ceil(ends[1])) + 2) + 1
    if stop - start < 2:
        return None
    x = _modality(_domain(dtype, xp, start, stop).reshape(1, -1), description, slope, intercept, xp)
    ramp = _grey(x, description, "window", [param], signed, xp)[0]
    first, last = int(ramp[0]), int(ramp[-1])
    if first == last:  # no ramp in sight: nothing says which way the table goes
        return None
    rising = first < last
    if start > info.min and first != (0 if rising else 255):
        return None
    if stop <= info.max and last != (255 if rising else 0):
        return None
    row = xp.empty(info.max - info.min + 1, dtype=xp.uint8)
    row[: start - info.min] = first
    row[start - info.min : stop - info.min] = ramp
    row[stop - info.min :] = last
    return _unsigned_order(row, dtype, xp)


def _build_tables(
    description: Mapping[str, Any],
    kind: str,
    params: list[tuple[float, float, str]],
    signed: bool,
    dtype: Any,
    xp: Any,
) -> Any:
    """``(K, size)`` uint8 tables, indexed by the raw bits, one per VOI setting."""
    slope = _frame_column(description["rescale_slope"][:1], 1, xp, 2)
    intercept = _frame_column(description["rescale_intercept"][:1], 1, xp, 2)
    rows: list[Any] = []
    whole = None
    for param in params or [None]:  # type: ignore[list-item]
        row = None
        linear = kind == "window" and param[2] in ("LINEAR", "LINEAR_EXACT")
        if linear and _modality_lut_item(description) is None:
            row = _saturating_row(description, param, signed, dtype, slope, intercept, xp)
        if row is None:
            if whole is None:
                domain = _domain(dtype, xp).reshape(1, -1)
                whole = _modality(domain, description, slope, intercept, xp)  # (1, size)
            row = _grey(whole, description, kind, [param] if param else [], signed, xp)[0]
            row = _unsigned_order(row, dtype, xp)
        rows.append(row)
    return xp.stack(rows)


#: Values looked up per numpy.take call in :func:`_apply_table`.
_TAKE_SLICE = 1 << 18


def _apply_table(table: Any, index: Any, xp: Any) -> Any:
    """``table[index]`` for raw bits ``index`` (every value is inside the table).

    numpy's take turns the index into a temporary array of intp, 8 bytes a
    value: for a 4664 x 3064 mammogram 114 MB, written and read back from
    memory. In slices of 256 Ki values that temporary stays in the cache,
    and the lookup takes half the time (23 -> 11 ms); a CT slice is one
    slice. ``mode="clip"`` lets numpy write into ``out`` unbuffered.
    """
    if xp is not numpy or index.size <= _TAKE_SLICE:
        return xp.take(table, index)
    source = numpy.ascontiguousarray(index).reshape(-1)
    out = numpy.empty(index.shape, dtype=table.dtype)
    flat = out.reshape(-1)
    for start in range(0, source.shape[0], _TAKE_SLICE):
        stop = start + _TAKE_SLICE
        numpy.take(table, source[start:stop], out=flat[start:stop], mode="clip")
    return out


def _render_lut(
    frames: Any,
    description: Mapping[str, Any],
    kind: str,
    plan: list[tuple[float, float, str] | None],
    function: str | None,
    signed: bool,
    xp: Any,
) -> Any:
    """One uint8 table per distinct VOI setting, indexed by the raw values."""
    unsigned = xp.uint8 if frames.dtype.itemsize == 1 else xp.uint16
    index = frames.view(unsigned) if frames.dtype.kind == "i" else frames
    count = frames.shape[0]

    if kind == "lut":
        tables = _TABLES.get(xp, frames.dtype, kind, [], signed, description)
        if tables is None:
            tables = _build_tables(description, kind, [], signed, frames.dtype, xp)
            _TABLES.put(xp, frames.dtype, kind, [], signed, description, tables)
        return _apply_table(tables[0], index, xp)

    if any(p is None for p in plan):
        # Full-range default: the smallest and largest modality value present.
        # A rescale is monotonic, so they are those of the raw extremes; a
        # Modality LUT need not be, so there the values are gathered.
        needs = [i for i, p in enumerate(plan) if p is None]
        slope = _frame_column(description["rescale_slope"][:1], 1, xp, 2)
        intercept = _frame_column(description["rescale_intercept"][:1], 1, xp, 2)
        if _modality_lut_item(description) is None:
            lo = xp.min(frames, axis=(1, 2))
            hi = xp.max(frames, axis=(1, 2))
            values = _modality(xp.stack([lo, hi], axis=1), description, slope, intercept, xp)
        else:
            gathered = _modality(frames.reshape(count, -1), description, slope, intercept, xp)
            values = xp.stack([xp.min(gathered, axis=1), xp.max(gathered, axis=1)], axis=1)
        lows = xp.min(values, axis=1)
        highs = xp.max(values, axis=1)
        for i in needs:
            plan[i] = _full_range(float(lows[i]), float(highs[i]), function)

    keys: dict[tuple[float, float, str], int] = {}
    per_frame = [keys.setdefault(p, len(keys)) for p in plan if p is not None]
    params = list(keys)
    tables = _TABLES.get(xp, frames.dtype, kind, params, signed, description)
    if tables is None:
        tables = _build_tables(description, kind, params, signed, frames.dtype, xp)
        _TABLES.put(xp, frames.dtype, kind, params, signed, description, tables)
    if len(params) == 1:
        return _apply_table(tables[0], index, xp)
    if xp is numpy:
        return numpy.stack([_apply_table(tables[g], index[f], xp) for f, g in enumerate(per_frame)])
    group = xp.asarray(numpy.asarray(per_frame, dtype=numpy.int64)).reshape(count, 1, 1)
    return tables[group, index.astype(xp.int64)]
