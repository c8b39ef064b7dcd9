"""Accession numbers from the configurable scheme (setting ``accession_format``).

The format is a Python format string with two fields: ``{date}`` (the
registration's local date and time, a :class:`~datetime.datetime`, formatted
with ``strftime`` codes: ``{date:%Y%m%d}``) and ``{counter}`` (an integer:
``{counter:04d}``). The counter is kept per *scope*: the format rendered with
the date but with the counter left out, so that ``{date:%Y%m%d}{counter:04d}``
restarts each day and ``LB{counter:08d}`` never does.

An Accession Number is SH (PS3.5 6.2): at most 16 characters, no backslash
and no control character; a format whose numbers would not fit is refused
when the settings are read.
"""

from __future__ import annotations

import string
from datetime import datetime

from pipeline.errors import InvalidRequest

#: PS3.5 6.2: SH is at most 16 characters.
SH_MAX = 16
_FIELDS = frozenset({"date", "counter"})


class _Marker:
    """Formats as ``#`` whatever the format spec: the counter's place in a scope."""

    def __format__(self, spec: str) -> str:
        return "#"


def is_short_string(value: str) -> bool:
    """Whether ``value`` is a valid SH value (PS3.5 6.2): 16 characters, no ``\\`` or control."""
    return len(value) <= SH_MAX and "\\" not in value and value.isprintable()


def check_format(fmt: str) -> str:
    """``fmt`` if it is a usable accession format; raises ValueError otherwise.

    It must name ``{counter}`` exactly once (or two orders would share a
    number), name no other field than ``date`` and ``counter``, and give an
    SH value for a counter of 1.
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None]
    except ValueError as exc:
        raise ValueError(f"accession_format is not a format string: {exc}") from None
    if names.count("counter") != 1:
        raise ValueError("accession_format must contain {counter} exactly once")
    unknown = set(names) - _FIELDS
    if unknown:
        raise ValueError("accession_format may only use {date} and {counter}")
    try:
        sample = fmt.format(date=datetime(2099, 12, 31, 23, 59, 59), counter=1)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"accession_format cannot be rendered: {exc}") from None
    if not sample or not is_short_string(sample):
        raise ValueError(
            "accession_format must give an Accession Number of 1 to 16 characters without "
            "backslash (SH, PS3.5 6.2)"
        )
    return fmt


def scope(fmt: str, when: datetime) -> str:
    """The counter's scope: ``fmt`` rendered at ``when`` with ``#`` for the counter."""
    return fmt.format(date=when, counter=_Marker())


def render(fmt: str, when: datetime, counter: int) -> str:
    """The accession number for ``counter`` at ``when``.

    Raises
    ------
    InvalidRequest
        The counter has outgrown the 16 characters of SH (the format needs a
        shorter date or more room).
    """
    value = fmt.format(date=when, counter=counter)
    if not is_short_string(value):
        raise InvalidRequest(
            "the accession number scheme has run out of room (SH is 16 characters); "
            "change accession_format"
        )
    return value
