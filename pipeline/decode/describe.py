"""The description kept beside a decoded pixel array: what a renderer needs.

Everything the rendering pipeline of PS3.4 N.2 (Modality LUT / rescale, VOI
LUT / window, palette colour, presentation) reads from the header, gathered
once at decode so that rendering never parses the DICOM dataset again. The
result is JSON-serialisable (plain ``int``, ``float``, ``str``, ``bool``,
``None``, ``list``, ``dict``).

Where the value comes from:

* Image Pixel Module, PS3.3 C.7.6.3: rows, columns, samples per pixel, bits
  allocated / stored, high bit, pixel representation, photometric
  interpretation, planar configuration, palette colour LUTs (C.7.6.3.1.5-6,
  segmented C.7.9.2; also the Supplemental Palette Color LUT of C.8.16.2.1.1.1).
* Rescale slope / intercept, per frame: (0028,1053) / (0028,1052) (C.11.1), or
  for enhanced multi-frame objects the Pixel Value Transformation functional
  group (C.7.6.16.2.9), per-frame before shared (C.7.6.16.1).
* Window presets, per frame: Window Center / Width / Explanation and VOI LUT
  Function (C.11.2), or the Frame VOI LUT functional group (C.7.6.16.2.10).
* Pixel spacing: Pixel Spacing (C.7.6.2, 10.7.1.3), the Pixel Measures
  functional group (C.7.6.16.2.1), or Imager Pixel Spacing (C.8.11.4 /
  C.7.6.19, at the detector, not calibrated to the patient).
* Modality LUT Sequence (C.11.1) and VOI LUT Sequence (C.11.2): descriptor and
  data as lists of integers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from pipeline.decode.registry import Decoder

__all__ = ["describe"]


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _values(value: Any) -> list[Any]:
    """A value of multiplicity one or more, as a list (``[]`` when empty)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return [value]
    return list(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _get(ds: Dataset, keyword: str) -> Any:
    """``ds.keyword`` or ``None``, tolerating values pydicom cannot convert."""
    try:
        return ds.get(keyword)
    except Exception:  # a malformed value (e.g. a DS that is not a number)
        return None


def _group_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of a functional group macro for ``frame`` (PS3.3 C.7.6.16).

    The Per-frame Functional Groups Sequence item of that frame wins over the
    Shared Functional Groups Sequence.
    """
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        items = _get(per_frame[frame], sequence)
        if items:
            return items[0]
    shared = _get(ds, "SharedFunctionalGroupsSequence")
    if shared:
        items = _get(shared[0], sequence)
        if items:
            return items[0]
    return None


def _rescale(ds: Dataset, frames: int) -> dict[str, Any]:
    slopes: list[float] = []
    intercepts: list[float] = []
    types: list[str | None] = []
    top = (_float(_get(ds, "RescaleSlope")), _float(_get(ds, "RescaleIntercept")))
    top_type = _text(_get(ds, "RescaleType"))
    for frame in range(frames):
        item = _group_item(ds, frame, "PixelValueTransformationSequence")
        slope = intercept = None
        kind = top_type
        if item is not None:
            slope, intercept = (
                _float(_get(item, "RescaleSlope")),
                _float(_get(item, "RescaleIntercept")),
            )
            kind = _text(_get(item, "RescaleType")) or top_type
        if slope is None and intercept is None:
            slope, intercept = top
        slopes.append(1.0 if slope is None or slope == 0 else slope)
        intercepts.append(0.0 if intercept is None else intercept)
        types.append(kind)
    return {"rescale_slope": slopes, "rescale_intercept": intercepts, "rescale_type": types}


def _window_presets(item: Dataset) -> list[dict[str, Any]]:
    centres = [_float(v) for v in _values(_get(item, "WindowCenter"))]
    widths = [_float(v) for v in _values(_get(item, "WindowWidth"))]
    explanations = _values(_get(item, "WindowCenterWidthExplanation"))
    function = _text(_get(item, "VOILUTFunction")) or "LINEAR"
    presets = []
    for i, (centre, width) in enumerate(zip(centres, widths)):
        if centre is None or width is None or width <= 0:
            continue
        presets.append(
            {
                "center": centre,
                "width": width,
                "explanation": _text(explanations[i]) if i < len(explanations) else None,
                "function": function,
            }
        )
    return presets


def _windows(ds: Dataset, frames: int) -> list[list[dict[str, Any]]]:
    top = _window_presets(ds)
    out = []
    for frame in range(frames):
        item = _group_item(ds, frame, "FrameVOILUTSequence")
        presets = _window_presets(item) if item is not None else []
        out.append(presets or top)
    return out


def _pixel_spacing(ds: Dataset) -> tuple[list[float] | None, str | None]:
    candidates: list[tuple[Any, str]] = [(_get(ds, "PixelSpacing"), "PixelSpacing")]
    measures = _group_item(ds, 0, "PixelMeasuresSequence")
    if measures is not None:
        candidates.append((_get(measures, "PixelSpacing"), "PixelMeasuresSequence"))
    candidates.append((_get(ds, "ImagerPixelSpacing"), "ImagerPixelSpacing"))
    for value, source in candidates:
        numbers = [_float(v) for v in _values(value)]
        if len(numbers) == 2 and all(n is not None and n > 0 for n in numbers):
            return [float(n) for n in numbers if n is not None], source
    return None, None


def _words(ds: Dataset, value: Any, entries: int | None = None, bits: int = 16) -> list[int]:
    """LUT Data as integers: US/SS values already are; OW bytes are unpacked
    in the dataset's byte order (PS3.5 7.3), 8-bit entries from one byte each
    when the data has exactly one byte per entry."""
    if value is None:
        return []
    if not isinstance(value, (bytes, bytearray)):
        return [int(v) for v in _values(value)]
    data = bytes(value)
    if bits <= 8 and entries is not None and len(data) in (entries, entries + 1):
        return list(data[:entries])
    little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
    count = len(data) // 2
    return list(struct.unpack(f"{'<' if little else '>'}{count}H", data[: count * 2]))


def _lut_items(ds: Dataset, keyword: str, extra: tuple[str, ...]) -> list[dict[str, Any]] | None:
    items = _get(ds, keyword)
    if not items:
        return None
    out = []
    for item in items:
        descriptor = [int(v) for v in _values(_get(item, "LUTDescriptor"))]
        if len(descriptor) != 3:
            continue
        entries = descriptor[0] or 65536  # PS3.3 C.11.1.1: 0 means 2^16
        value = item["LUTData"].value if "LUTData" in item else None
        data = _words(ds, value, entries, descriptor[2])
        row: dict[str, Any] = {"descriptor": descriptor, "data": data[:entries]}
        for name in extra:
            row[name] = _text(_get(item, name))
        out.append(row)
    return out or None


def _palette(ds: Dataset) -> dict[str, Any] | None:
    """Palette Color LUTs (PS3.3 C.7.6.3.1.5-6), segmented ones expanded (C.7.9.2)."""
    descriptors = {
        colour: [int(v) for v in _values(_get(ds, f"{colour}PaletteColorLookupTableDescriptor"))]
        for colour in ("Red", "Green", "Blue")
    }
    if not all(len(d) == 3 for d in descriptors.values()):
        return None
    out: dict[str, Any] = {
        "descriptor": {c.lower(): d for c, d in descriptors.items()},
        "segmented": False,
        "supplemental": str(_get(ds, "PhotometricInterpretation") or "") != "PALETTE COLOR",
    }
    segmented = "SegmentedRedPaletteColorLookupTableData" in ds
    out["segmented"] = segmented
    for colour, descriptor in descriptors.items():
        entries = descriptor[0] or 65536
        keyword = f"{'Segmented' if segmented else ''}{colour}PaletteColorLookupTableData"
        value = _get(ds, keyword)
        if value is None:
            return None
        if segmented:
            from pydicom.pixels.processing import _expand_segmented_lut

            words = _words(ds, value, None, 16) if descriptor[2] > 8 else list(bytes(value))
            little = ds.original_encoding[1] is not False
            fmt = ("<" if little else ">") + ("H" if descriptor[2] > 8 else "B")
            data = [int(v) for v in _expand_segmented_lut(tuple(words), fmt)]
        else:
            data = _words(ds, value, entries, descriptor[2])
        out[colour.lower()] = data[:entries]
    return out


def describe(
    ds: Dataset,
    decoder: Decoder,
    frames: int,
    decoded: dict[str, Any],
    dtype: str,
) -> dict[str, Any]:
    """The renderer's description of an instance's pixels.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset
        The instance (its header; pixel data is not read here).
    decoder : Decoder
        The transfer syntax's decoder (for the syntax and its lossiness).
    frames : int
        Number of frames actually decoded.
    decoded : dict
        pydicom's description of the decoded array (``Decoder.as_array``'s
        second value): the photometric interpretation after decoding.
    dtype : str
        The decoded array's numpy dtype name.

    Returns
    -------
    dict
        JSON-serialisable. ``photometric_interpretation`` and
        ``planar_configuration`` are the source's; ``decoded`` says what the
        array holds: YBR_FULL and YBR_FULL_422 (and JPEG 2000's YBR_ICT /
        YBR_RCT) are stored as ``RGB``, colour-by-pixel (planar configuration
        0), palette colour stays as indices with the LUT in ``palette``.
    """
    samples = _int(_get(ds, "SamplesPerPixel")) or 1
    spacing, spacing_source = _pixel_spacing(ds)
    lossy_attribute = str(_get(ds, "LossyImageCompression") or "").strip() == "01"
    description: dict[str, Any] = {
        "sop_class_uid": _text(_get(ds, "SOPClassUID")),
        "transfer_syntax_uid": decoder.uid,
        "transfer_syntax": decoder.name,
        "transfer_syntax_lossy": decoder.lossy,
        # PS3.3 C.7.6.1.1.5: the image has undergone lossy compression at some time.
        "lossy_image_compression": lossy_attribute or decoder.lossy,
        "rows": _int(_get(ds, "Rows")),
        "columns": _int(_get(ds, "Columns")),
        "number_of_frames": frames,
        "samples_per_pixel": samples,
        "bits_allocated": _int(_get(ds, "BitsAllocated")),
        "bits_stored": _int(_get(ds, "BitsStored")),
        "high_bit": _int(_get(ds, "HighBit")),
        "pixel_representation": _int(_get(ds, "PixelRepresentation")) or 0,
        "photometric_interpretation": _text(_get(ds, "PhotometricInterpretation")),
        "planar_configuration": _int(_get(ds, "PlanarConfiguration")) if samples > 1 else None,
        "decoded": {
            "photometric_interpretation": str(decoded.get("photometric_interpretation")),
            "planar_configuration": 0 if samples > 1 else None,
            "dtype": dtype,
            "bits_stored": _int(decoded.get("bits_stored")),
        },
        **_rescale(ds, frames),
        "windows": _windows(ds, frames),
        "pixel_spacing": spacing,
        "pixel_spacing_source": spacing_source,
        "modality_lut": _lut_items(
            ds, "ModalityLUTSequence", ("ModalityLUTType", "LUTExplanation")
        ),
        "voi_lut": _lut_items(ds, "VOILUTSequence", ("LUTExplanation",)),
        "palette": _palette(ds),
        "presentation_lut_shape": _text(_get(ds, "PresentationLUTShape")),
    }
    return description
