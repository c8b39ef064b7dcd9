"""DICOM attribute matching (PS3.4 C.2.2.2) as SQLAlchemy Core conditions.

:func:`condition` turns one key value into a WHERE clause on the index column
of an :class:`~pipeline.query.model.Attribute` (None: the key matches
everything). The rules, by the attribute's :class:`~pipeline.query.model.Kind`:

* **Universal matching** (C.2.2.2.3): an empty value, or a lone ``*``
  (C.2.2.2.4: "equivalent to Universal Matching"), sets no condition.
* **Empty value matching** (C.2.2.2.7): ``""`` (two quotation marks) matches
  entities whose value is empty.
* **Single value matching** (C.2.2.2.1): equality. Case-sensitive, except for
  PN, which is compared upper-cased on its search column (C.2.2.2.1 lets PN be
  matched without case; the index keeps the names upper-cased).
* **Wild card matching** (C.2.2.2.4) on text VRs: ``*`` any run of characters,
  ``?`` one character. SQLite gets ``GLOB`` (case-sensitive, like DICOM, and
  able to use an index for a literal prefix with the default BINARY
  collation; its ``LIKE`` is neither), other databases ``LIKE ... ESCAPE``;
  the other special characters of each (``%``, ``_``, ``[``) are escaped.
* **List of UID matching** (C.2.2.2.2): backslash-separated UIDs, ``IN``.
* **Range matching** (C.2.2.2.5) on DA and TM: ``a-b``, ``-b``, ``a-``. DA and
  TM are kept as their DICOM strings, whose zero-padded digits sort like the
  dates and times they mean, so a range is a string comparison (and DA uses
  the column's index). A TM bound is padded: the lower one with zeros, the
  upper one to the end of its precision (``-1230`` includes 12:30:59).
  A single TM value matches the whole of its precision the same way.
  Empty values never match a range.
* **Multiple values** in a non-UID key (``CT\\MR``): any of them matches. The
  standard's Multiple Value Matching (C.2.2.2.8, AND) needs an extended
  negotiation we do not offer, and leaves the semantics undefined without it;
  "any of" is what Orthanc and dcm4chee do.
* **ModalitiesInStudy** is multi-valued in the index (``CT\\SR``): a key value
  matches when it matches one of the stored values.

Fuzzy matching of person names (PS3.18 8.3.4.1 ``fuzzymatching=true``, the
C-FIND extended negotiation of C.2.2.2.1 we do not offer over DIMSE): each
word of the key must begin a component or a word of the name, in any order,
without case (``joh smi`` finds ``SMITH^JOHN``).

Values that cannot be matched (a malformed date, a wildcard in a UID, a
number that is not one) raise :class:`~pipeline.errors.InvalidRequest`
(DIMSE A900H, HTTP 400).
"""

from __future__ import annotations

import re

from sqlalchemy import and_, false, literal, or_, true
from sqlalchemy.sql.elements import ColumnElement

from pipeline.errors import InvalidRequest
from pipeline.index.records import person_name_key
from pipeline.query.model import Attribute, Kind

_WILDCARDS = frozenset("*?")
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")
#: The escape character of LIKE patterns (never special in DICOM values).
_ESCAPE = "!"


def has_wildcard(value: str) -> bool:
    """Whether ``value`` asks for wild card matching (PS3.4 C.2.2.2.4)."""
    return any(c in _WILDCARDS for c in value)


def is_single_value(value: str) -> bool:
    """A value for single value matching: not empty, no wildcard, no list, no range marker."""
    value = value.strip()
    return bool(value) and value != '""' and not has_wildcard(value) and "\\" not in value


def condition(
    attribute: Attribute, value: str, *, dialect: str = "sqlite", fuzzy: bool = False
) -> ColumnElement[bool] | None:
    """The WHERE clause for ``attribute`` matched against the key ``value``.

    Parameters
    ----------
    attribute
        What is matched (its column and :class:`Kind`).
    value
        The key's value as received: DICOM multi-values joined by backslashes.
    dialect
        The SQLAlchemy dialect name (``sqlite``, ``postgresql``): wildcards
        become GLOB on SQLite, LIKE elsewhere.
    fuzzy
        Fuzzy semantic matching of person names (see the module docstring).

    Returns
    -------
    ColumnElement or None
        None for universal matching.

    Raises
    ------
    InvalidRequest
        The value cannot be matched against this attribute.
    """
    value = value.strip(" \0")
    if value in ("", "*"):
        return None
    kind = attribute.kind
    if kind is Kind.NONE:
        raise InvalidRequest(f"{attribute.keyword} is returned but cannot be matched")
    column = attribute.column
    if value == '""':
        # Empty Value Matching: the index keeps "" (text) or NULL (numbers).
        return column.is_(None) if kind is Kind.NUMBER else column == ""
    if kind is Kind.UID:
        return _uids(attribute, value)
    if kind is Kind.DATE:
        return _date(attribute, value)
    if kind is Kind.TIME:
        return _time(attribute, value)
    if kind is Kind.NUMBER:
        return _numbers(attribute, value)
    parts = [p.strip(" \0") for p in value.split("\\")]
    if any(p in ("", "*") for p in parts):
        return None  # one alternative matches everything
    if kind is Kind.PERSON:
        clauses = [_person(attribute, p, dialect, fuzzy) for p in parts]
    elif kind is Kind.CODES:
        clauses = [_codes(column, p, dialect) for p in parts]
    else:
        clauses = [
            _wildcard(column, p, dialect) if has_wildcard(p) else column == p for p in parts
        ]
    return clauses[0] if len(clauses) == 1 else or_(*clauses)


# -- per kind ---------------------------------------------------------------------


def _uids(attribute: Attribute, value: str) -> ColumnElement[bool]:
    uids = [u.strip(" \0") for u in value.split("\\")]
    if any(has_wildcard(u) for u in uids):
        raise InvalidRequest(
            f"{attribute.keyword}: wild cards do not apply to UIDs (PS3.4 C.2.2.2.4); "
            "give one UID or a list (C.2.2.2.2)"
        )
    uids = [u for u in uids if u]
    if not uids:
        return true()
    return attribute.column == uids[0] if len(uids) == 1 else attribute.column.in_(uids)


def _date(attribute: Attribute, value: str) -> ColumnElement[bool]:
    column = attribute.column
    low, dash, high = value.partition("-")
    low, high = low.strip(), high.strip()
    for part in (low, high):
        if part and not _DATE.match(part):
            raise InvalidRequest(
                f"{attribute.keyword}: a date is YYYYMMDD, a range YYYYMMDD-YYYYMMDD, "
                "-YYYYMMDD or YYYYMMDD- (PS3.4 C.2.2.2.5)"
            )
    if not dash:
        return column == low
    if not low and not high:
        raise InvalidRequest(f"{attribute.keyword}: a range needs at least one bound")
    # "> ''" keeps empty values out of an open range (and still uses the index).
    clauses = [column >= low] if low else [column > ""]
    if high:
        clauses.append(column <= high)
    return and_(*clauses)


def _time_bounds(keyword: str, text: str) -> tuple[str, str]:
    """(lowest, highest) TM strings a time of the given precision covers."""
    match = _TIME.match(text.replace(":", ""))
    if match is None:
        raise InvalidRequest(
            f"{keyword}: a time is HH[MM[SS[.F{{1,6}}]]], a range HHMMSS-HHMMSS, "
            "-HHMMSS or HHMMSS- (PS3.4 C.2.2.2.5)"
        )
    hh, mm, ss, fraction = match.groups()
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise InvalidRequest(f"{keyword}: not a time of day")
    digits = hh + (mm or "") + (ss or "")
    low = digits.ljust(6, "0") + (f".{fraction}" if fraction and int(fraction) else "")
    high_digits = digits + "5959"[len(digits) - 2 :]
    high = high_digits + "." + (fraction or "").ljust(6, "9")
    return low, high


def _time(attribute: Attribute, value: str) -> ColumnElement[bool]:
    column = attribute.column
    low, dash, high = (part.strip() for part in value.partition("-"))
    if not dash:
        first, last = _time_bounds(attribute.keyword, low)
        return and_(column >= first, column <= last)
    if not low and not high:
        raise InvalidRequest(f"{attribute.keyword}: a range needs at least one bound")
    clauses = [column >= _time_bounds(attribute.keyword, low)[0]] if low else [column > ""]
    if high:
        clauses.append(column <= _time_bounds(attribute.keyword, high)[1])
    return and_(*clauses)


def _numbers(attribute: Attribute, value: str) -> ColumnElement[bool]:
    numbers = []
    for part in value.split("\\"):
        part = part.strip(" \0")
        try:
            numbers.append(int(part))
        except ValueError:
            raise InvalidRequest(
                f"{attribute.keyword}: an integer (or integers separated by backslashes) "
                "is expected; wild cards and ranges do not apply to numbers"
            ) from None
    column = attribute.column
    return column == numbers[0] if len(numbers) == 1 else column.in_(numbers)


def _person(attribute: Attribute, value: str, dialect: str, fuzzy: bool) -> ColumnElement[bool]:
    column = attribute.column
    upper = value.upper()
    if has_wildcard(upper):
        return _wildcard(column, upper, dialect)
    if fuzzy:
        return _fuzzy(column, upper, dialect)
    # "Doe^Jane^^" and "DOE^JANE" are one name (PS3.5 6.2: trailing empty
    # components carry no meaning): try the key as given and normalised.
    forms = sorted({upper, person_name_key(value)} - {""})
    return column == forms[0] if len(forms) == 1 else column.in_(forms)


def _fuzzy(column: ColumnElement, upper: str, dialect: str) -> ColumnElement[bool]:
    words = [w for w in re.split(r"[\s^=,]+", upper) if w]
    if not words:
        return true()
    clauses = []
    for word in words:
        # The word begins the name, a component (after ^) or a word (after a space).
        starts = [f"{word}*", f"*^{word}*", f"* {word}*", f"*={word}*"]
        clauses.append(or_(*(_wildcard(column, s, dialect) for s in starts)))
    return and_(*clauses)


def _codes(column: ColumnElement, value: str, dialect: str) -> ColumnElement[bool]:
    """One value against a backslash-joined multi-valued column (ModalitiesInStudy)."""
    if not has_wildcard(value):
        # Exact value: the whole column, or first, last or middle of the list.
        return or_(
            column == value,
            _wildcard(column, value + "\\*", dialect),
            _wildcard(column, "*\\" + value, dialect),
            _wildcard(column, "*\\" + value + "\\*", dialect),
        )
    framed = literal("\\") + column + literal("\\")
    return _wildcard(framed, "*\\" + value + "\\*", dialect)


# -- wildcards ----------------------------------------------------------------------


def _glob_escape(text: str) -> str:
    # GLOB's special characters are * ? [ ; a bracket expression quotes one.
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _like_escape(text: str) -> str:
    return "".join(_ESCAPE + c if c in ("%", "_", _ESCAPE) else c for c in text)


def _wildcard(column: ColumnElement, pattern: str, dialect: str) -> ColumnElement[bool]:
    """``column`` against a DICOM wildcard pattern (``*``, ``?``; everything else literal)."""
    glob = dialect == "sqlite"
    out = []
    for c in pattern:
        if c == "*":
            out.append("*" if glob else "%")
        elif c == "?":
            out.append("?" if glob else "_")
        else:
            out.append(_glob_escape(c) if glob else _like_escape(c))
    translated = "".join(out)
    if glob:
        return column.op("GLOB")(translated)
    return column.like(translated, escape=_ESCAPE)


def never() -> ColumnElement[bool]:
    """A condition no row meets (an empty scope)."""
    return false()
