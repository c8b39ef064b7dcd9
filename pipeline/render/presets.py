"""Named CT windows (centre, width in HU), as radiologists know them.

Rendered on request (``?preset=lung``) and cached beside the default render.
Values are the common teaching ones (e.g. Radiopaedia's "Windowing (CT)"),
which most viewers ship in some variation.
"""

from __future__ import annotations

from typing import Final

CT_PRESETS: Final[dict[str, tuple[float, float]]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
}


def preset_variant(name: str) -> str:
    """The render store variant caching a preset's JPEG."""
    return f"preset-{name}.jpg"
