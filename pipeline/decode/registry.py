"""Which library decodes which transfer syntax (PS3.5 8, 10 and Annex A).

Decoding is pydicom's (``pydicom.pixels``); this module only chooses, per
transfer syntax, the pydicom *decoding plugin* to use and says which Python
modules that plugin imports and which pip package provides each, the way
pydicom names a missing dependency. Nothing here imports a codec: presence is
checked with :func:`importlib.util.find_spec` (cached), so a worker without
an optional codec still decodes every other syntax and fails the missing one
with :class:`~pipeline.errors.MissingDecoder` naming the package.

The choice, for the README (:func:`backend_table`):

* native syntaxes (PS3.5 A.1, A.2, A.5 deflated): pydicom itself, numpy only;
* JPEG Baseline, JPEG Lossless (Process 14 and SV1): pylibjpeg + pylibjpeg-libjpeg;
* JPEG Extended (Process 2 and 4): GDCM (python-gdcm) through
  :mod:`pipeline.decode.gdcm_plugin`. The NEMA WG04 12-bit samples (and other
  encoders of that era) write a Start Of Scan with Se = 0 instead of 63; the
  IJG decoder inside GDCM (as in DCMTK) accepts it with a warning, libjpeg
  (pylibjpeg-libjpeg) refuses it (error -1038), pydicom's own GDCM plugin
  refuses every 12-bit JPEG Extended stream, and Pillow has no 12-bit JPEG;
* JPEG-LS (PS3.5 A.4.3): pyjpegls (CharLS);
* JPEG 2000 and HTJ2K (PS3.5 A.4.4, A.4.11): pylibjpeg + pylibjpeg-openjpeg;
* RLE Lossless (PS3.5 Annex G): pylibjpeg + pylibjpeg-rle.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from functools import cache

from pydicom import uid

from pipeline.errors import DecodeFailed, MissingDecoder

__all__ = ["Decoder", "backend_table", "backend_table_markdown", "decoder_for", "module_available"]

#: The label under which :mod:`pipeline.decode.gdcm_plugin` is added to
#: pydicom's JPEG Extended decoder.
GDCM_PLUGIN = "lightbox-gdcm"

_PYLIBJPEG = ("pylibjpeg", "pylibjpeg")
_LIBJPEG = ("libjpeg", "pylibjpeg-libjpeg")
_OPENJPEG = ("openjpeg", "pylibjpeg-openjpeg")
_RLE = ("rle", "pylibjpeg-rle")
_JPEGLS = ("jpeg_ls", "pyjpegls")
_GDCM = ("gdcm", "python-gdcm")


@dataclass(frozen=True, slots=True)
class Decoder:
    """How one transfer syntax is decoded.

    Attributes
    ----------
    uid : str
        The Transfer Syntax UID (PS3.6 Table A-1).
    name : str
        A short human name, used in error reasons.
    plugin : str
        The pydicom decoding plugin (``decoding_plugin=``); ``""`` for the
        native (uncompressed) syntaxes, which pydicom decodes itself.
    lossy : bool
        Whether the transfer syntax may carry irreversibly compressed pixel
        data (PS3.5 8.2: JPEG processes 1, 2 and 4, JPEG-LS near-lossless,
        JPEG 2000 and HTJ2K "Image Compression"). A syntax that *allows* lossy
        compression is reported lossy even if a given stream is reversible.
    modules : tuple of (str, str)
        (import name, pip package) of every module the plugin needs.
    """

    uid: str
    name: str
    plugin: str
    lossy: bool
    modules: tuple[tuple[str, str], ...] = ()

    @property
    def packages(self) -> tuple[str, ...]:
        """The pip packages that provide :attr:`modules`."""
        return tuple(package for _module, package in self.modules)

    @property
    def library(self) -> str:
        """The library, as written in the README table."""
        return " + ".join(self.packages) if self.modules else "pydicom (numpy)"


_DECODERS: dict[str, Decoder] = {
    d.uid: d
    for d in (
        Decoder(uid.ImplicitVRLittleEndian, "Implicit VR Little Endian", "", False),
        Decoder(uid.ExplicitVRLittleEndian, "Explicit VR Little Endian", "", False),
        Decoder(uid.ExplicitVRBigEndian, "Explicit VR Big Endian", "", False),
        Decoder(
            uid.DeflatedExplicitVRLittleEndian, "Deflated Explicit VR Little Endian", "", False
        ),
        Decoder(uid.JPEGBaseline8Bit, "JPEG Baseline", "pylibjpeg", True, (_PYLIBJPEG, _LIBJPEG)),
        Decoder(uid.JPEGExtended12Bit, "JPEG Extended", GDCM_PLUGIN, True, (_GDCM,)),
        Decoder(uid.JPEGLossless, "JPEG Lossless", "pylibjpeg", False, (_PYLIBJPEG, _LIBJPEG)),
        Decoder(
            uid.JPEGLosslessSV1, "JPEG Lossless SV1", "pylibjpeg", False, (_PYLIBJPEG, _LIBJPEG)
        ),
        Decoder(uid.JPEGLSLossless, "JPEG-LS Lossless", "pyjpegls", False, (_JPEGLS,)),
        Decoder(uid.JPEGLSNearLossless, "JPEG-LS Near-Lossless", "pyjpegls", True, (_JPEGLS,)),
        Decoder(
            uid.JPEG2000Lossless, "JPEG 2000 Lossless", "pylibjpeg", False, (_PYLIBJPEG, _OPENJPEG)
        ),
        Decoder(uid.JPEG2000, "JPEG 2000", "pylibjpeg", True, (_PYLIBJPEG, _OPENJPEG)),
        Decoder(uid.HTJ2KLossless, "HTJ2K Lossless", "pylibjpeg", False, (_PYLIBJPEG, _OPENJPEG)),
        Decoder(
            uid.HTJ2KLosslessRPCL,
            "HTJ2K Lossless RPCL",
            "pylibjpeg",
            False,
            (_PYLIBJPEG, _OPENJPEG),
        ),
        Decoder(uid.HTJ2K, "HTJ2K", "pylibjpeg", True, (_PYLIBJPEG, _OPENJPEG)),
        Decoder(uid.RLELossless, "RLE Lossless", "pylibjpeg", False, (_PYLIBJPEG, _RLE)),
    )
}

_register_lock = threading.Lock()
_registered: set[str] = set()


@cache
def module_available(name: str) -> bool:
    """Whether the module ``name`` can be imported (checked once, not imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def decoder_for(transfer_syntax_uid: str) -> Decoder:
    """The decoder of ``transfer_syntax_uid``, its libraries checked present.

    Parameters
    ----------
    transfer_syntax_uid : str
        From the File Meta Information (PS3.10 7.1).

    Returns
    -------
    Decoder

    Raises
    ------
    MissingDecoder
        A module the plugin needs is not installed; the reason names the pip
        package, e.g. ``JPEG-LS Lossless needs pyjpegls (pip install pyjpegls)``.
    DecodeFailed
        The transfer syntax is not one we decode (unknown, or one of the
        retired or video syntaxes of PS3.5 8.2.5-8.2.8 / PS3.6 Table A-1).
    """
    tsyntax = str(transfer_syntax_uid).strip("\0 ")
    decoder = _DECODERS.get(tsyntax)
    if decoder is None:
        # A UID is not PHI: safe in the reason.
        shown = tsyntax if len(tsyntax) <= 64 else tsyntax[:64] + "..."
        raise DecodeFailed(f"no decoder for transfer syntax {shown!r}")
    missing = [package for module, package in decoder.modules if not module_available(module)]
    if missing:
        raise MissingDecoder(
            f"{decoder.name} needs {', '.join(missing)} (pip install {' '.join(missing)})"
        )
    if decoder.plugin == GDCM_PLUGIN:
        _register_gdcm_plugin()
    return decoder


def _register_gdcm_plugin() -> None:
    """Add :mod:`pipeline.decode.gdcm_plugin` to pydicom's JPEG Extended decoder, once."""
    if GDCM_PLUGIN in _registered:
        return
    with _register_lock:  # Decoder.add_plugin is not thread-safe
        if GDCM_PLUGIN in _registered:
            return
        from pydicom.pixels import get_decoder

        pydicom_decoder = get_decoder(uid.JPEGExtended12Bit)
        try:
            pydicom_decoder.add_plugin(GDCM_PLUGIN, ("pipeline.decode.gdcm_plugin", "decode_frame"))
        except ValueError:  # already added
            pass
        if GDCM_PLUGIN not in pydicom_decoder.available_plugins:
            raise MissingDecoder("JPEG Extended needs python-gdcm (pip install python-gdcm)")
        _registered.add(GDCM_PLUGIN)


def known_syntaxes() -> tuple[str, ...]:
    """Every transfer syntax with a decoder, in table order."""
    return tuple(_DECODERS)


def backend_table() -> list[dict[str, str | bool]]:
    """The syntax -> library table, one row per transfer syntax, for the README.

    Returns
    -------
    list of dict
        Keys ``uid``, ``name``, ``plugin`` (pydicom's ``decoding_plugin``),
        ``library`` (pip packages), ``lossy``.
    """
    return [
        {
            "uid": d.uid,
            "name": d.name,
            "plugin": d.plugin or "(native)",
            "library": d.library,
            "lossy": d.lossy,
        }
        for d in _DECODERS.values()
    ]


def backend_table_markdown() -> str:
    """:func:`backend_table` as a Markdown table."""
    lines = [
        "| Transfer syntax | UID | pydicom plugin | Library | Lossy |",
        "|---|---|---|---|---|",
    ]
    for row in backend_table():
        lines.append(
            f"| {row['name']} | `{row['uid']}` | {row['plugin']} | {row['library']} | "
            f"{'yes' if row['lossy'] else 'no'} |"
        )
    return "\n".join(lines)
