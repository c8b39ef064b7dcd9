"""Checks of registered values against their DICOM Value Representations (PS3.5 6.2).

What the registration stores is what the Modality Worklist later returns to
the modalities and what they copy into their images: a value that breaks its
VR (a 70-character LO, a backslash in a name) would be refused or truncated
there. So every value is checked when it is registered, and refused with
:class:`~pipeline.errors.InvalidRequest` naming the field (never its value:
reasons are logged, values may be PHI).
"""

from __future__ import annotations

import re
from datetime import date, datetime

from pipeline.devices.registry import normalise_ae_title
from pipeline.errors import InvalidRequest

#: PS3.5 6.2: CS is upper-case letters, digits, space and underscore, 16 at most.
_CS = re.compile(r"[A-Z0-9 _]{1,16}")
#: PS3.3 C.7.1.1: Patient's Sex enumerated values (empty: unknown, type 2).
SEXES = frozenset({"M", "F", "O", ""})


def _text(value: str, field: str, limit: int) -> str:
    """A LO/SH-like value: at most ``limit`` characters, no backslash or control character.

    Leading and trailing spaces carry no meaning (PS3.5 6.2) and are dropped.
    """
    value = str(value).strip(" ")
    if len(value) > limit or "\\" in value or not value.isprintable():
        raise InvalidRequest(
            f"{field}: at most {limit} characters, without backslash or control characters "
            "(PS3.5 6.2)"
        )
    return value


def long_string(value: str, field: str) -> str:
    """LO: 64 characters (PS3.5 6.2)."""
    return _text(value, field, 64)


def short_string(value: str, field: str) -> str:
    """SH: 16 characters (PS3.5 6.2)."""
    return _text(value, field, 16)


def person_name(value: str, field: str) -> str:
    """PN (PS3.5 6.2.1): up to three component groups (``=``) of up to five
    components (``^``), each group 64 characters at most; no backslash."""
    value = str(value).strip(" ")
    groups = value.split("=")
    if (
        len(groups) > 3
        or any(len(g) > 64 or g.count("^") > 4 for g in groups)
        or "\\" in value
        or not value.isprintable()
    ):
        raise InvalidRequest(
            f"{field}: a person name is Family^Given^Middle^Prefix^Suffix, 64 characters "
            "per component group, without backslash (PS3.5 6.2.1)"
        )
    return value


def code_string(value: str, field: str) -> str:
    """CS (PS3.5 6.2): 16 upper-case letters, digits, spaces or underscores."""
    value = str(value).strip(" ")
    if not _CS.fullmatch(value):
        raise InvalidRequest(f"{field}: 1 to 16 upper-case letters, digits or '_' (CS, PS3.5 6.2)")
    return value


def sex(value: str) -> str:
    """Patient's Sex (0010,0040): M, F, O or empty (PS3.3 C.7.1.1)."""
    value = str(value or "").strip().upper()
    if value not in SEXES:
        raise InvalidRequest("sex: M, F, O or empty (PS3.3 C.7.1.1)")
    return value


def dicom_date(value: date | None) -> str:
    """DA (YYYYMMDD) of ``value``; empty for None."""
    # Not strftime: glibc writes year 1 as "1", and DA is always 8 digits.
    return "" if value is None else f"{value.year:04d}{value.month:02d}{value.day:02d}"


def dicom_date_time(value: datetime) -> tuple[str, str]:
    """(DA, TM) of a scheduled start: the wall-clock time of the place the
    procedure happens, as the modality shows it; an offset is dropped."""
    return dicom_date(value), f"{value.hour:02d}{value.minute:02d}{value.second:02d}"


def ae_title(value: str, field: str) -> str:
    """An AE title (PS3.5 6.2, VR AE), or empty."""
    value = str(value or "").strip(" ")
    if not value:
        return ""
    try:
        return normalise_ae_title(value)
    except InvalidRequest:
        raise InvalidRequest(
            f"{field}: 1 to 16 characters, without backslash (AE, PS3.5 6.2)"
        ) from None
