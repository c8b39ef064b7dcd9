"""A pydicom decoding plugin for JPEG Extended (Process 2 and 4) backed by GDCM.

PS3.5 A.4.1 / 10.3: JPEG Extended carries 8- or 12-bit sequential DCT
(ISO/IEC 10918-1 processes 2 and 4). pydicom's own GDCM plugin refuses every
12-bit stream, Pillow has no 12-bit JPEG, and pylibjpeg-libjpeg refuses the
streams of encoders (the NEMA WG04 samples among them) whose Start Of Scan says
Se = 0 instead of 63 (ISO/IEC 10918-1 B.2.3 requires 63 for sequential DCT).
GDCM decodes through the IJG library, which (like DCMTK) warns and decodes
them; this plugin hands GDCM one frame at a time, as pydicom's GDCM plugin
does, without the 12-bit refusal.

The module follows pydicom's plugin interface (``is_available``,
``DECODER_DEPENDENCIES`` and a frame function); :mod:`pipeline.decode.registry`
adds it to pydicom's JPEG Extended decoder under the label ``lightbox-gdcm``.
GDCM's IJG layer prints its warnings ("Invalid SOS parameters for sequential
JPEG", "Unsupported JPEG data precision 12" before it retries at 12 bits) to
the process's standard error; they are harmless.
"""

from __future__ import annotations

from pydicom import uid
from pydicom.pixels.decoders.base import DecodeRunner

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # pragma: no cover - the registry checks before adding the plugin
    HAVE_GDCM = False

DECODER_DEPENDENCIES = {uid.JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}

_SOF = {0xC0, 0xC1}  # baseline and extended sequential DCT (Huffman)


def is_available(uid_: str) -> bool:
    """Whether this plugin can decode ``uid_`` (pydicom's plugin interface)."""
    return HAVE_GDCM and uid_ in DECODER_DEPENDENCIES


def jpeg_precision(src: bytes) -> int | None:
    """The sample precision P of the first Start Of Frame (ISO/IEC 10918-1 B.2.2)."""
    pos = 2
    end = len(src)
    while pos + 4 <= end:
        if src[pos] != 0xFF:
            return None
        marker = src[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(src[pos + 2 : pos + 4], "big")
        if marker in _SOF and pos + 4 < end:
            return src[pos + 4]
        if marker == 0xDA:  # scan data follows: no SOF before it
            return None
        pos += 2 + length
    return None


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one JPEG Extended frame with GDCM.

    Parameters
    ----------
    src : bytes
        One encoded frame (PS3.5 A.4: the fragments of one frame, joined).
    runner : pydicom.pixels.decoders.base.DecodeRunner
        pydicom's decoding state (rows, columns, samples, bits, photometric).

    Returns
    -------
    bytes
        The decoded frame, samples of ``runner.bits_allocated`` bits, colour by
        pixel. Values are the codestream's, at the JPEG precision; pydicom then
        masks or sign-extends them to Bits Stored (PS3.5 8.1.1).
    """
    precision = jpeg_precision(src) or (8 if runner.bits_stored <= 8 else 12)
    bits_allocated = 8 if precision <= 8 else 16
    runner.set_option("bits_allocated", bits_allocated)

    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())

    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    if runner.samples_per_pixel > 1:
        image.SetPlanarConfiguration(runner.planar_configuration)
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    image.SetPixelFormat(
        gdcm.PixelFormat(
            runner.samples_per_pixel,
            bits_allocated,
            precision,
            precision - 1,
            runner.pixel_representation,
        )
    )
    # python-gdcm returns char* as str: back to bytes (as pydicom's plugin does).
    frame = image.GetBuffer()
    if frame is None:
        raise RuntimeError("GDCM could not decode the JPEG Extended frame")
    data = frame.encode("utf-8", "surrogateescape")
    expected = runner.rows * runner.columns * runner.samples_per_pixel * (bits_allocated // 8)
    if len(data) != expected:
        raise RuntimeError("GDCM returned a frame of the wrong length")
    return data
