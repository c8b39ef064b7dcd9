"""The matching rules of PS3.4 C.2.2.2, one by one, on the small archive (SQLite and PostgreSQL).

Each case is a Study Root query and the studies (by number, see conftest) it
must find; pure translation checks (wildcard escaping, bounds) come last.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from pipeline.errors import InvalidRequest
from pipeline.index import SqlIndex
from pipeline.query.matching import _time_bounds, condition, has_wildcard, is_single_value
from pipeline.query.model import ATTRIBUTES
from pipeline.query.service import QueryService
from tests.pipeline.query.conftest import STUDIES, series_uid, sop_uid, study_uid

ALL = set(STUDIES)


def studies(index: SqlIndex, **keys: str) -> set[int]:
    rows = QueryService(index).search("STUDY", keys, root="study")
    return {int(r["StudyInstanceUID"].rsplit(".", 1)[1]) for r in rows}


CASES = [
    # C.2.2.2.3 universal matching: empty value, and a lone "*" (C.2.2.2.4)
    ({"PatientID": ""}, ALL),
    ({"PatientName": "*", "StudyDate": "*", "StudyInstanceUID": ""}, ALL),
    # C.2.2.2.1 single value: case-sensitive for LO...
    ({"PatientID": "PAT-1"}, {1, 2}),
    ({"PatientID": "pat-1"}, set()),
    ({"PatientID": "pat-3"}, {4}),
    ({"AccessionNumber": "ACC-3"}, {3}),
    ({"StudyID": "S5"}, {5}),
    ({"PatientSex": "F"}, {1, 2, 4}),
    # ...and without case for PN (C.2.2.2.1), trailing empty components ignored
    ({"PatientName": "doe^jane"}, {1, 2}),
    ({"PatientName": "Doe^Jane^^"}, {1, 2}),
    ({"PatientName": "DOE^JOHN^^"}, {3}),
    ({"PatientName": "müller^jürgen"}, {6}),
    ({"ReferringPhysicianName": "who^doctor"}, {1, 4}),
    ({"ReferringPhysicianName": "WHO^DOCTOR^^"}, {1, 4}),
    # C.2.2.2.4 wild cards: * and ?, PN without case, others with case
    ({"PatientName": "doe*"}, {1, 2, 3}),
    ({"PatientName": "*^J*"}, {1, 2, 3, 6}),
    ({"PatientName": "D?E^JANE"}, {1, 2}),
    ({"PatientID": "PAT-*"}, {1, 2, 3}),
    ({"PatientID": "pat*"}, {4}),
    ({"StudyDescription": "*Knee*"}, {2, 6}),
    ({"StudyDescription": "*ead*"}, {1, 4}),
    ({"ReferringPhysicianName": "R*"}, {2, 5}),
    # SQL's own wildcards and GLOB's brackets are literal characters in DICOM
    ({"PatientName": "O%*"}, {5}),
    ({"PatientName": "O_*"}, set()),
    ({"PatientName": "*N_^*"}, {5}),
    ({"PatientID": "PAT_*"}, {5}),
    ({"PatientID": "PAT[5]"}, {6}),
    ({"PatientID": "PAT[*"}, {6}),
    ({"AccessionNumber": "X_?"}, {5}),
    ({"AccessionNumber": "X%?"}, set()),
    ({"StudyDescription": "100%*"}, {5}),
    # C.2.2.2.2 list of UIDs
    ({"StudyInstanceUID": study_uid(2)}, {2}),
    ({"StudyInstanceUID": f"{study_uid(1)}\\{study_uid(3)}\\1.2.3"}, {1, 3}),
    # C.2.2.2.5 ranges on DA (inclusive, open ends, empty values never match)
    ({"StudyDate": "20200115"}, {1}),
    ({"StudyDate": "20200101-20201231"}, {1, 2}),
    ({"StudyDate": "20201231-20210101"}, {2, 3}),
    ({"StudyDate": "-20201231"}, {1, 2, 5}),
    ({"StudyDate": "20210101-"}, {3, 6}),
    ({"StudyDate": "20210102-20201231"}, set()),
    ({"PatientBirthDate": "19700101-19801231"}, {1, 2, 3}),
    # ... and on TM, padded to their precision
    ({"StudyTime": "1015"}, {1}),
    ({"StudyTime": "10"}, {1}),
    ({"StudyTime": "235959.5"}, {2}),
    ({"StudyTime": "120000-"}, {2, 5, 6}),
    ({"StudyTime": "-1230"}, {1, 3, 5, 6}),
    ({"StudyTime": "12:00-12:30"}, {5, 6}),
    ({"StudyTime": "0800-1015"}, {1, 3}),
    # C.2.2.2.7 empty value matching
    ({"StudyDate": '""'}, {4}),
    ({"ReferringPhysicianName": '""'}, {3, 6}),
    ({"PatientBirthDate": '""'}, {5}),
    # several values: any of them (no extended negotiation of C.2.2.2.8)
    ({"PatientID": "PAT-2\\pat-3"}, {3, 4}),
    ({"AccessionNumber": "ACC-1\\X_*"}, {1, 5}),
    # Modalities in Study: multi-valued in the index
    ({"ModalitiesInStudy": "CT"}, {1, 3, 4}),
    ({"ModalitiesInStudy": "SR"}, {1}),
    ({"ModalitiesInStudy": "MR\\OT"}, {2, 5, 6}),
    ({"ModalitiesInStudy": "S*"}, {1}),
    ({"ModalitiesInStudy": "C"}, set()),
    # several keys: all of them
    ({"PatientName": "DOE*", "StudyDate": "20200101-", "ModalitiesInStudy": "CT"}, {1, 3}),
]


@pytest.mark.parametrize(("keys", "expected"), CASES, ids=[str(k) for k, _ in CASES])
def test_study_matching(archive: SqlIndex, keys: dict[str, str], expected: set[int]) -> None:
    assert studies(archive, **keys) == expected


def test_series_and_instance_matching(archive: SqlIndex) -> None:
    service = QueryService(archive)
    found = service.search("SERIES", {"Modality": "CT", "SeriesNumber": "1"})
    assert {r["SeriesInstanceUID"] for r in found} == {series_uid(1, 1), series_uid(4, 1)}
    found = service.search("SERIES", {"StudyInstanceUID": study_uid(1), "SeriesNumber": "1\\2"})
    assert {r["SeriesInstanceUID"] for r in found} == {series_uid(1, 1), series_uid(1, 2)}
    found = service.search("SERIES", {"BodyPartExamined": '""', "StudyDate": "-20201231"})
    assert {r["SeriesInstanceUID"] for r in found} == {series_uid(1, 2), series_uid(2, 1), series_uid(5, 1)}
    found = service.search("IMAGE", {"SeriesInstanceUID": series_uid(1, 1), "InstanceNumber": "2"})
    assert [r["SOPInstanceUID"] for r in found] == [sop_uid(1, 1, 2)]
    found = service.search("IMAGE", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.11"})
    assert [r["SOPInstanceUID"] for r in found] == [sop_uid(1, 2, 1)]
    found = service.search("IMAGE", {"Rows": '""'})
    assert [r["SOPInstanceUID"] for r in found] == [sop_uid(1, 2, 1)]


@pytest.mark.parametrize(
    ("level", "keys", "reason"),
    [
        ("STUDY", {"StudyDate": "2020-01-01"}, "YYYYMMDD"),
        ("STUDY", {"StudyDate": "202001"}, "YYYYMMDD"),
        ("STUDY", {"StudyDate": "-"}, "at least one bound"),
        ("STUDY", {"StudyTime": "25"}, "not a time"),
        ("STUDY", {"StudyTime": "10h"}, "HH[MM"),
        ("STUDY", {"StudyInstanceUID": "1.2.*"}, "wild cards do not apply to UIDs"),
        ("SERIES", {"SeriesNumber": "1*"}, "integer"),
        ("STUDY", {"NumberOfStudyRelatedInstances": "3"}, "cannot be matched"),
        ("STUDY", {"Modality": "CT"}, "SERIES attribute"),
        ("STUDY", {"OtherPatientIDs": "X"}, "not kept in the index"),
        ("PATIENT", {}, "not part of the Study Root"),
        ("FRAME", {}, "PATIENT, STUDY, SERIES or IMAGE"),
    ],
)
def test_values_that_cannot_be_matched(
    archive: SqlIndex, level: str, keys: dict[str, str], reason: str
) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(reason)):
        QueryService(archive).search(level, keys, root="study")


# -- the translation itself ----------------------------------------------------------------


def _sql(clause, dialect) -> str:  # type: ignore[no-untyped-def]
    compiled = clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    return str(compiled)


def test_wildcards_become_glob_on_sqlite_and_like_elsewhere() -> None:
    name = ATTRIBUTES["PatientName"]
    glob = _sql(condition(name, "o%b_[x]*?", dialect="sqlite"), sqlite.dialect())
    assert "GLOB 'O%B_[[]X]*?'" in glob
    # (psycopg's paramstyle doubles every % of the compiled text)
    like = _sql(condition(name, "o%b_!x*?", dialect="postgresql"), postgresql.dialect())
    like = like.replace("%%", "%")
    assert "LIKE 'O!%B!_!!X%_' ESCAPE '!'" in like


def test_universal_matching_sets_no_condition() -> None:
    for keyword in ("PatientName", "StudyDate", "StudyInstanceUID", "SeriesNumber"):
        assert condition(ATTRIBUTES[keyword], "") is None
        assert condition(ATTRIBUTES[keyword], "*") is None
        assert condition(ATTRIBUTES[keyword], "  ") is None
    assert condition(ATTRIBUTES["PatientID"], "A\\*") is None


def test_time_bounds() -> None:
    assert _time_bounds("T", "10") == ("100000", "105959.999999")
    assert _time_bounds("T", "1015") == ("101500", "101559.999999")
    assert _time_bounds("T", "101530") == ("101530", "101530.999999")
    assert _time_bounds("T", "101530.25") == ("101530.25", "101530.259999")
    assert _time_bounds("T", "10:15") == ("101500", "101559.999999")


def test_single_value_and_wildcard_detection() -> None:
    assert is_single_value("PAT-1")
    assert not is_single_value("PAT*")
    assert not is_single_value("A\\B")
    assert not is_single_value("")
    assert not is_single_value('""')
    assert has_wildcard("a?") and has_wildcard("*") and not has_wildcard("a-b")
