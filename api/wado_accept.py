"""WADO-RS content negotiation: the ``Accept`` header to media types and transfer syntaxes.

PS3.18 8.7 lets a client list acceptable representations, each a media range
with parameters and a quality (RFC 9110 12.5.1)::

    Accept: multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90,
            multipart/related; type="application/dicom"; transfer-syntax=*; q=0.5

:func:`accepted` reads the header into :class:`Range` objects, best first
(higher ``q``, then the client's order). The routes then take the first range
they can produce for each instance.

Defaults (PS3.18 8.7.3.5.2 and Tables 8.7.3-2/-5):

* ``type`` missing from ``multipart/related``, ``*/*``, ``multipart/*`` or no
  Accept at all: the resource's default media type (``application/dicom`` for
  instances, ``application/octet-stream`` for frames and bulk data);
* ``transfer-syntax`` missing: **Explicit VR Little Endian** (1.2.840.10008.1.2.1),
  as PS3.18 says for ``application/dicom`` and ``application/octet-stream``.
  Orthanc answers the stored syntax instead, and OHIF asks for
  ``transfer-syntax=*`` explicitly, which gets the stored syntax here too: a
  client that wants what was stored must say ``*``;
* a bare ``application/dicom`` (not ``multipart/related``) is answered as if
  it were the multipart type: PS3.18 retrieve answers are always multipart,
  and refusing a client that asks loosely helps no one.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.multipart import MultipartError, parse_media_type

__all__ = ["ANY_SYNTAX", "EXPLICIT_VR_LE", "Range", "accepted", "split_accept"]

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
#: ``transfer-syntax=*``: any syntax the origin server chooses (we choose the stored one).
ANY_SYNTAX = "*"
_WILDCARDS = frozenset({"*/*", "multipart/*", "multipart/related"})


@dataclass(frozen=True, slots=True)
class Range:
    """One acceptable representation of the parts.

    Attributes
    ----------
    media_type : str
        The parts' media type, lower case: ``application/dicom``,
        ``application/octet-stream``, ``image/jp2``..., or a wildcard
        (``*/*``, ``image/*``, ``application/*``).
    transfer_syntax : str or None
        The ``transfer-syntax`` parameter; None when absent (the media type's
        default applies), ``"*"`` for any.
    q : float
        The quality, 0 < q <= 1.
    """

    media_type: str
    transfer_syntax: str | None
    q: float = 1.0

    def syntax_or(self, default: str) -> str:
        """The transfer syntax asked, or ``default`` when none was named."""
        return self.transfer_syntax if self.transfer_syntax is not None else default


def split_accept(value: str) -> list[str]:
    """Split an Accept value on the commas outside quoted strings."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def _quality(params: dict[str, str]) -> float:
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return 0.0
    return q if 0 < q <= 1 else (1.0 if q > 1 else 0.0)


def accepted(accept: str | None, default_type: str) -> list[Range]:
    """The acceptable ranges of an Accept header, best first.

    Parameters
    ----------
    accept
        The header value (None or blank: anything, i.e. the default).
    default_type
        The part media type used where the header leaves it open.

    Returns
    -------
    list of Range
        Ranges with q = 0 are dropped ("not acceptable", RFC 9110 12.4.2);
        malformed ones are ignored. Empty when nothing acceptable was named.
    """
    if accept is None or not accept.strip():
        return [Range(default_type, None)]
    ranges: list[tuple[float, int, Range]] = []
    for order, item in enumerate(split_accept(accept)):
        try:
            media, params = parse_media_type(item)
        except MultipartError:
            continue
        q = _quality(params)
        if q <= 0:
            continue
        syntax = params.get("transfer-syntax")
        if media == "multipart/related":
            part = (params.get("type") or default_type).strip().lower()
        elif media in _WILDCARDS:
            part = default_type
        else:
            part = media
        if part in _WILDCARDS:
            part = default_type
        ranges.append((-q, order, Range(part, syntax.strip() if syntax else None, q)))
    ranges.sort(key=lambda entry: (entry[0], entry[1]))
    return [entry[2] for entry in ranges]
