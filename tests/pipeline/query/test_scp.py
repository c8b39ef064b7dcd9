"""The C-FIND SCP against real peers: dcmtk's findscu and pynetdicom, over 127.0.0.1.

A :class:`DicomIngestServer` runs in this process with the
:class:`QueryRetrieveFindSCP` service; the corpus' CT and MR series are stored
through ``runtime.ingest`` first. Statuses are those of PS3.4 C.4.1.1.4.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PATIENT_ROOT,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as STUDY_ROOT,
)

from pipeline.config import Settings
from pipeline.index.records import Provenance
from pipeline.ingest.scp import DicomIngestServer
from pipeline.query.scp import QueryRetrieveFindSCP
from pipeline.query.service import QueryService
from pipeline.runtime import Runtime
from tests.conftest import require_tool
from tests.corpus import SERIES
from tests.pipeline.security.test_tls import DCMTK_ENV, audit_rows, wait_for

QUERY = "110112"
CT_STUDY = "1.3.46.670589.33.1.15053592413351079234.27718218421047494460"
CT_SERIES = "1.3.46.670589.33.1.7303547162003802183.31761132431540865648"
MR_STUDY = "1.3.12.2.1107.5.2.43.67060.30000022040717195958300000010"
MR_SERIES = "1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0"
UTF8_STUDY = "1.2.826.0.1.3680043.8.498.5151"


@pytest.fixture
def stored(runtime: Runtime, dicom_data: Path) -> Runtime:
    """The CT (PLASTIC, 54 slices) and MR (crlab, 35 slices) series, and one
    CT slice re-identified with a non-ASCII name (UTF-8)."""
    for name in ("ct", "mr"):
        for path in sorted((dicom_data / SERIES[name]).iterdir()):
            runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    first = sorted((dicom_data / SERIES["ct"]).iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "UTF8-1"
    ds.StudyDate = "20000101"
    ds.StudyInstanceUID = UTF8_STUDY
    ds.SeriesInstanceUID = UTF8_STUDY + ".1"
    ds.SOPInstanceUID = UTF8_STUDY + ".1.1"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    runtime.ingest.store_part10(out.getvalue(), Provenance("import"))
    return runtime


@pytest.fixture
def start(runtime: Runtime, settings: Settings) -> Iterator[Callable[..., DicomIngestServer]]:
    started: list[DicomIngestServer] = []

    def start_(service: Any = None) -> DicomIngestServer:
        find = QueryRetrieveFindSCP(service or QueryService(runtime.index), runtime.audit, settings.ae_title)
        srv = DicomIngestServer(settings, runtime.ingest, runtime.audit, services=[find]).start()
        started.append(srv)
        return srv

    yield start_
    for srv in started:
        srv.stop()


def findscu(settings: Settings, out: Path, model: str, *keys: str) -> list[Dataset]:
    """Run findscu (``-P`` or ``-S``) with ``-k`` keys; the responses it extracted."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    cmd = [require_tool("findscu"), model, "-aet", "FINDSCU", "-aec", settings.ae_title, "-X", "-od", str(out)]
    for key in keys:
        cmd += ["-k", key]
    done = subprocess.run([*cmd, "127.0.0.1", str(settings.dicom_port)],
                          env=DCMTK_ENV, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def c_find(settings: Settings, model: str, keys: dict[str, Any], calling: str = "PYFIND") -> list[tuple[Dataset, Dataset | None]]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    try:
        return list(assoc.send_c_find(identifier, model))
    finally:
        assoc.release()


def uids(responses: list[Dataset], keyword: str) -> set[str]:
    return {str(ds.get(keyword)) for ds in responses}


# -- findscu, study root -------------------------------------------------------------


def test_study_root_every_level(stored: Runtime, start: Callable[..., DicomIngestServer],
                                settings: Settings, tmp_path: Path) -> None:  # fmt: skip
    start()
    study = ["QueryRetrieveLevel=STUDY", "StudyInstanceUID", "StudyDate", "PatientName",
             "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]  # fmt: skip
    by_id = findscu(settings, tmp_path, "-S", *study, "PatientID=PLASTIC")
    assert uids(by_id, "StudyInstanceUID") == {CT_STUDY}
    (ct,) = by_id
    assert ct.StudyDate == "20150206" and ct.PatientID == "PLASTIC" and str(ct.PatientName) == "HEAD"
    assert ct.ModalitiesInStudy == "CT" and int(ct.NumberOfStudyRelatedInstances) == 54
    assert ct.QueryRetrieveLevel == "STUDY" and ct.RetrieveAETitle == settings.ae_title
    # Wild card, case-insensitive on PN.
    assert uids(findscu(settings, tmp_path, "-S", *study, "PatientName=h*"), "StudyInstanceUID") == {CT_STUDY, MR_STUDY}
    # Date ranges, closed and open.
    assert uids(findscu(settings, tmp_path, "-S", *study, "StudyDate=20150101-20151231"), "StudyInstanceUID") == {CT_STUDY}
    assert uids(findscu(settings, tmp_path, "-S", *study, "StudyDate=20200101-"), "StudyInstanceUID") == {MR_STUDY}
    assert uids(findscu(settings, tmp_path, "-S", *study[:-2], "StudyDate=-20151231"), "StudyInstanceUID") == {CT_STUDY, UTF8_STUDY}
    # A list of UIDs.
    listed = findscu(settings, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={CT_STUDY}\\{MR_STUDY}\\1.2.3")
    assert uids(listed, "StudyInstanceUID") == {CT_STUDY, MR_STUDY}
    # SERIES: the study's Unique Key is given.
    series = findscu(settings, tmp_path, "-S", "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={MR_STUDY}",
                     "SeriesInstanceUID", "Modality", "SeriesNumber", "NumberOfSeriesRelatedInstances")  # fmt: skip
    (mr,) = series
    assert (mr.SeriesInstanceUID, mr.Modality, int(mr.SeriesNumber)) == (MR_SERIES, "MR", 3)
    assert int(mr.NumberOfSeriesRelatedInstances) == 35 and mr.StudyInstanceUID == MR_STUDY
    # IMAGE: study and series given; a wild card on a number is refused, a number matched.
    images = findscu(settings, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={CT_STUDY}",
                     f"SeriesInstanceUID={CT_SERIES}", "SOPInstanceUID", "InstanceNumber", "SOPClassUID")  # fmt: skip
    assert len(images) == 54 and len(uids(images, "SOPInstanceUID")) == 54
    assert {ds.SOPClassUID for ds in images} == {"1.2.840.10008.5.1.4.1.1.2"}
    one = findscu(settings, tmp_path, "-S", "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={CT_STUDY}",
                  f"SeriesInstanceUID={CT_SERIES}", "SOPInstanceUID", "InstanceNumber=10")  # fmt: skip
    assert [int(ds.InstanceNumber) for ds in one] == [10]


def test_patient_root_every_level(stored: Runtime, start: Callable[..., DicomIngestServer],
                                  settings: Settings, tmp_path: Path) -> None:  # fmt: skip
    start()
    patients = findscu(settings, tmp_path, "-P", "QueryRetrieveLevel=PATIENT", "PatientName=hfs", "PatientID",
                       "PatientBirthDate", "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedInstances")  # fmt: skip
    (p,) = patients
    assert (p.PatientID, p.PatientBirthDate, str(p.PatientName)) == ("crlab", "19700606", "HFS")
    assert int(p.NumberOfPatientRelatedStudies) == 1 and int(p.NumberOfPatientRelatedInstances) == 35
    studies = findscu(settings, tmp_path, "-P", "QueryRetrieveLevel=STUDY", "PatientID=crlab",
                      "StudyInstanceUID", "StudyDescription")  # fmt: skip
    assert uids(studies, "StudyInstanceUID") == {MR_STUDY}
    series = findscu(settings, tmp_path, "-P", "QueryRetrieveLevel=SERIES", "PatientID=PLASTIC",
                     f"StudyInstanceUID={CT_STUDY}", "SeriesInstanceUID", "Modality=C*")  # fmt: skip
    assert uids(series, "SeriesInstanceUID") == {CT_SERIES}
    images = findscu(settings, tmp_path, "-P", "QueryRetrieveLevel=IMAGE", "PatientID=crlab",
                     f"StudyInstanceUID={MR_STUDY}", f"SeriesInstanceUID={MR_SERIES}", "SOPInstanceUID",
                     "InstanceNumber=1\\2\\3")  # fmt: skip
    assert sorted(int(ds.InstanceNumber) for ds in images) == [1, 2, 3]
    # The patient's Unique Key is part of the hierarchy: another patient's study matches nothing.
    assert findscu(settings, tmp_path, "-P", "QueryRetrieveLevel=SERIES", "PatientID=crlab",
                   f"StudyInstanceUID={CT_STUDY}", "SeriesInstanceUID") == []  # fmt: skip


def test_return_keys(stored: Runtime, start: Callable[..., DicomIngestServer],
                     settings: Settings, tmp_path: Path) -> None:  # fmt: skip
    start()
    (ds,) = findscu(
        settings, tmp_path, "-S", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={CT_STUDY}",
        "SpecificCharacterSet=ISO_IR 100", "PatientBirthTime", "OtherPatientIDsSequence",
        "InstanceAvailability", "RetrieveAETitle", "TimezoneOffsetFromUTC", "Modality", "StudyTime",
        "ReferringPhysicianName", "SOPClassesInStudy", "(0009,0010)",
    )  # fmt: skip
    # Every key asked for comes back; those the index does not keep are empty.
    for keyword in ("PatientBirthTime", "TimezoneOffsetFromUTC", "Modality", "ReferringPhysicianName"):
        assert keyword in ds and ds[keyword].value in ("", None), keyword
    assert "OtherPatientIDsSequence" in ds and len(ds.OtherPatientIDsSequence) == 0
    assert ds.InstanceAvailability == "ONLINE" and ds.RetrieveAETitle == settings.ae_title
    assert ds.StudyTime == "093425.394" and ds.SOPClassesInStudy == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert (0x0009, 0x0010) not in ds  # private keys are not answered


def test_non_ascii_values_come_back_in_utf8(stored: Runtime, start: Callable[..., DicomIngestServer],
                                           settings: Settings) -> None:  # fmt: skip
    start()
    keys = {"QueryRetrieveLevel": "STUDY", "PatientName": "müller*", "PatientID": "", "StudyInstanceUID": ""}
    pending = [ds for status, ds in c_find(settings, STUDY_ROOT, keys) if status.Status == 0xFF00]
    (ds,) = pending
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen" and ds.StudyInstanceUID == UTF8_STUDY


# -- failures, cancel -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "keys", "comment"),
    [
        (STUDY_ROOT, {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": ""}, "StudyInstanceUID must be a single value"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": CT_STUDY, "SeriesInstanceUID": "1.2*"}, "SeriesInstanceUID must be"),
        (PATIENT_ROOT, {"QueryRetrieveLevel": "STUDY", "PatientID": "PL*"}, "PatientID must be a single value"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "X"}, "PATIENT level is not in the study root"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "FRAME"}, "Query/Retrieve Level"),
        (STUDY_ROOT, {"PatientID": "X"}, "Query/Retrieve Level"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyDate": "2015"}, "StudyDate: a date is YYYYMMDD"),
    ],
)
def test_identifier_does_not_match_sop_class(stored: Runtime, start: Callable[..., DicomIngestServer],
                                             settings: Settings, model: str, keys: dict[str, str],
                                             comment: str) -> None:  # fmt: skip
    start()
    ((status, identifier),) = c_find(settings, model, keys)
    assert status.Status == 0xA900 and identifier is None
    assert status.ErrorComment.startswith(comment[:64]), status.ErrorComment


class _Broken(QueryService):
    def iter_search(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        raise RuntimeError("database is gone")


class _Slow(QueryService):
    """Each match takes 50 ms: time for a C-CANCEL to arrive mid-answer."""

    def iter_search(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        for row in super().iter_search(*args, **kwargs):
            time.sleep(0.05)
            yield row


def test_unable_to_process(stored: Runtime, start: Callable[..., DicomIngestServer], settings: Settings) -> None:
    start(_Broken(stored.index))
    ((status, _),) = c_find(settings, STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "PatientID": "PLASTIC"})
    assert status.Status == 0xC000 and "unable to process" in status.ErrorComment
    rows = wait_for(lambda: audit_rows(stored, event_id=QUERY, actor="PYFIND"))
    assert rows and rows[0]["outcome"] == 8
    detail = json.loads(str(rows[0]["detail"]))
    assert detail["status"] == "C000" and detail["reason"] == "RuntimeError"


def test_cancel(stored: Runtime, start: Callable[..., DicomIngestServer], settings: Settings) -> None:
    start(_Slow(stored.index))
    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(STUDY_ROOT)
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = CT_STUDY
    identifier.SeriesInstanceUID = CT_SERIES
    identifier.SOPInstanceUID = ""
    statuses = []
    try:
        for status, _ in assoc.send_c_find(identifier, STUDY_ROOT, msg_id=7):
            statuses.append(status.Status)
            if len(statuses) == 2:
                context_id = assoc._get_valid_context(STUDY_ROOT, "", "scu").context_id
                assoc.send_c_cancel(7, context_id)
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00
    assert 2 <= statuses.count(0xFF00) < 54
    rows = wait_for(lambda: audit_rows(stored, event_id=QUERY, actor="CANCELLER"))
    detail = json.loads(str(rows[0]["detail"]))
    assert detail["cancelled"] is True and detail["matches"] == statuses.count(0xFF00)


# -- the audit trail ---------------------------------------------------------------------------------


def test_every_find_is_audited(stored: Runtime, start: Callable[..., DicomIngestServer],
                               settings: Settings, tmp_path: Path) -> None:  # fmt: skip
    start()
    findscu(settings, tmp_path, "-P", "QueryRetrieveLevel=STUDY", "PatientID=PLASTIC", "StudyInstanceUID",
            "StudyDate=20150101-")
    findscu(settings, tmp_path, "-S", "QueryRetrieveLevel=STUDY", "PatientName=H*", "PatientID")
    rows = wait_for(lambda: len(audit_rows(stored, event_id=QUERY, actor="FINDSCU")) >= 2 and
                    audit_rows(stored, event_id=QUERY, actor="FINDSCU"))  # fmt: skip
    assert isinstance(rows, list)
    first, second = sorted(rows, key=lambda r: r["pk"])  # type: ignore[no-any-return]
    assert (first["action"], first["actor_kind"], first["outcome"]) == ("E", "ae", 0)
    assert first["source_address"] == "127.0.0.1" and first["destination"] == settings.ae_title
    assert first["patient_id"] == "PLASTIC"
    assert json.loads(str(first["detail"])) == {
        "level": "STUDY", "model": "patient", "keys": ["PatientID", "StudyDate"], "matches": 1}  # fmt: skip
    # A wild card is no patient: no patient_id on the event.
    assert second["patient_id"] == ""
    assert json.loads(str(second["detail"]))["keys"] == ["PatientName"]
    assert json.loads(str(second["detail"]))["matches"] == 2


def test_concurrent_finds(stored: Runtime, start: Callable[..., DicomIngestServer], settings: Settings) -> None:
    """Several associations query at once (one thread each in the server)."""
    start()
    results: list[int] = []

    def one() -> None:
        keys = {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": MR_STUDY, "SeriesInstanceUID": MR_SERIES,
                "SOPInstanceUID": ""}  # fmt: skip
        results.append(sum(1 for status, _ in c_find(settings, STUDY_ROOT, keys) if status.Status == 0xFF00))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == [35, 35, 35, 35]
