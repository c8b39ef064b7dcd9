"""QueryService: levels, returned values, pages, batches, counts and the referring physician's scope.

The archive of conftest has no blobs at all: every answer here comes from the
index alone (no file is opened at query time).
"""

from __future__ import annotations

import pytest

from pipeline.errors import InvalidRequest
from pipeline.index import SqlIndex
from pipeline.index.records import person_name_key
from pipeline.query.model import ATTRIBUTES, Level, Root, unique_keys_above, visible_at
from pipeline.query.service import QueryService
from tests.pipeline.query.conftest import CT, SR, series_uid, sop_uid, study_uid


def test_study_values(archive: SqlIndex) -> None:
    (row,) = QueryService(archive).search("STUDY", {"StudyInstanceUID": study_uid(1)})
    assert row == {
        "PatientName": "Doe^Jane",
        "PatientID": "PAT-1",
        "IssuerOfPatientID": "",
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
        "NumberOfPatientRelatedStudies": 2,
        "NumberOfPatientRelatedSeries": 3,
        "NumberOfPatientRelatedInstances": 6,
        "StudyInstanceUID": study_uid(1),
        "StudyDate": "20200115",
        "StudyTime": "101500",
        "AccessionNumber": "ACC-1",
        "StudyID": "S1",
        "StudyDescription": "CT Head",
        "ReferringPhysicianName": "Who^Doctor",
        "ModalitiesInStudy": ["CT", "SR"],
        "NumberOfStudyRelatedSeries": 2,
        "NumberOfStudyRelatedInstances": 4,
        "SOPClassesInStudy": sorted([CT, SR]),
    }


def test_patient_level_is_patient_root_only(archive: SqlIndex) -> None:
    service = QueryService(archive)
    rows = service.search("PATIENT", {"PatientName": "DOE*"}, root=Root.PATIENT)
    assert [(r["PatientID"], r["NumberOfPatientRelatedStudies"]) for r in rows] == [
        ("PAT-1", 2),
        ("PAT-2", 1),
    ]
    assert "StudyInstanceUID" not in rows[0]
    with pytest.raises(InvalidRequest, match="Study Root"):
        service.search("PATIENT", {}, root=Root.STUDY)
    with pytest.raises(InvalidRequest, match="STUDY attribute"):
        service.search("PATIENT", {"StudyDate": "2020"}, root=Root.PATIENT)


def test_series_and_instance_values(archive: SqlIndex) -> None:
    service = QueryService(archive)
    (row,) = service.search(
        "SERIES", {"SeriesInstanceUID": series_uid(1, 1)}, fields=["Modality", "NumberOfSeriesRelatedInstances"]
    )
    # The Unique Keys of the level and above always come back.
    assert row == {
        "PatientID": "PAT-1",
        "StudyInstanceUID": study_uid(1),
        "SeriesInstanceUID": series_uid(1, 1),
        "Modality": "CT",
        "NumberOfSeriesRelatedInstances": 3,
    }
    (sr,) = service.search("IMAGE", {"SOPInstanceUID": sop_uid(1, 2, 1)}, fields=list(visible_at(Level.IMAGE)))
    assert sr["SOPClassUID"] == SR
    assert sr["Rows"] is None and sr["NumberOfFrames"] is None and sr["PhotometricInterpretation"] == ""
    assert sr["AvailableTransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert sr["SeriesNumber"] == 2 and sr["Modality"] == "SR"
    fields = service.search("IMAGE", {"SOPInstanceUID": sop_uid(1, 1, 1)}, fields=["Rows", "NoSuchThing"])
    assert set(fields[0]) == {"PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Rows"}


def test_pages_are_in_storage_order(archive: SqlIndex) -> None:
    service = QueryService(archive)
    everything = [r["SOPInstanceUID"] for r in service.search("IMAGE", {}, fields=[])]
    assert len(everything) == 10
    page = [r["SOPInstanceUID"] for r in service.search("IMAGE", {}, fields=[], limit=4, offset=3)]
    assert page == everything[3:7]
    assert service.search("IMAGE", {}, fields=[], offset=100) == []
    assert service.count("IMAGE", {}) == 10
    assert service.count("STUDY", {"PatientName": "doe*"}) == 3
    assert service.count("SERIES", {"Modality": "CT"}) == 3


def test_iter_search_reads_in_batches(archive: SqlIndex) -> None:
    service = QueryService(archive)
    expected = service.search("IMAGE", {"Modality": "CT\\MR"})
    walked = list(service.iter_search("IMAGE", {"Modality": "CT\\MR"}, batch_size=2))
    assert walked == expected and len(walked) == 8
    # Exactly a multiple of the batch: the last (empty) read ends it.
    assert len(list(service.iter_search("IMAGE", {"Modality": "CT\\MR"}, batch_size=4))) == 8
    with pytest.raises(InvalidRequest):
        next(service.iter_search("IMAGE", {"StudyDate": "bad"}))


def test_referring_physician_scope(archive: SqlIndex) -> None:
    service = QueryService(archive)
    mine = person_name_key("who^doctor")

    def uids(level: str, **kw: object) -> set[str]:
        rows = service.search(level, {}, root=Root.PATIENT, referring_physician=mine, **kw)  # type: ignore[arg-type]
        return {r[{"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
                   "IMAGE": "SOPInstanceUID"}[level]] for r in rows}  # fmt: skip

    assert uids("STUDY") == {study_uid(1), study_uid(4)}
    assert uids("PATIENT") == {"PAT-1", "pat-3"}
    assert uids("SERIES") == {series_uid(1, 1), series_uid(1, 2), series_uid(4, 1)}
    assert len(uids("IMAGE")) == 5
    assert service.count("STUDY", {"PatientID": "PAT-1"}, referring_physician=mine) == 1
    # An account without a name sees nothing (not the studies without a referring physician).
    assert service.search("STUDY", {}, referring_physician="") == []


def test_the_model() -> None:
    assert unique_keys_above(Level.STUDY, Root.PATIENT) == ("PatientID",)
    assert unique_keys_above(Level.IMAGE, Root.PATIENT) == (
        "PatientID", "StudyInstanceUID", "SeriesInstanceUID")  # fmt: skip
    assert unique_keys_above(Level.STUDY, Root.STUDY) == ()
    assert unique_keys_above(Level.IMAGE, Root.STUDY) == ("StudyInstanceUID", "SeriesInstanceUID")
    # Every attribute is a DICOM keyword with its dictionary VR.
    assert ATTRIBUTES["PatientName"].vr == "PN" and ATTRIBUTES["PatientName"].tag == 0x00100010
    assert ATTRIBUTES["NumberOfStudyRelatedInstances"].vr == "IS"
    assert set(visible_at(Level.PATIENT)) < set(visible_at(Level.STUDY)) < set(visible_at(Level.IMAGE))
