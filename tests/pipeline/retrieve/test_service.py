"""RetrieveService: which stored instances a C-MOVE/C-GET Identifier names (PS3.4 C.4.2.2.1).

Small instances are made here and stored through ``runtime.ingest`` (what
C-STORE does), so that the index rows and blobs are the real ones.
"""

from __future__ import annotations

import io

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from pipeline.errors import InvalidRequest, NotFound
from pipeline.index.records import Provenance
from pipeline.retrieve.service import QueryModel, RetrieveService, retrieve_keys
from pipeline.runtime import Runtime

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ROOT = "1.2.826.0.1.3680043.8.498.91"

#: study number -> (patient id, [(sop class, instances)])
STUDIES = {
    1: ("PID-1", [(CT, 3), (MR, 2)]),
    2: ("PID-1", [(CT, 1)]),
    3: ("PID-2", [(MR, 2)]),
}


def study_uid(n: int) -> str:
    return f"{ROOT}.{n}"


def series_uid(n: int, k: int) -> str:
    return f"{ROOT}.{n}.{k}"


def sop_uid(n: int, k: int, i: int) -> str:
    return f"{ROOT}.{n}.{k}.{i}"


def make_instance(pid: str, n: int, k: int, i: int, sop_class: str, number: int | None) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid(n, k, i)
    ds.PatientID = pid
    ds.PatientName = "Test^Retrieve"
    ds.StudyInstanceUID = study_uid(n)
    ds.SeriesInstanceUID = series_uid(n, k)
    ds.Modality = "CT" if sop_class == CT else "MR"
    ds.SeriesNumber = k
    if number is not None:
        ds.InstanceNumber = number
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture
def retrieve(runtime: Runtime) -> RetrieveService:
    for n, (pid, series_list) in STUDIES.items():
        for k, (sop_class, count) in enumerate(series_list, 1):
            # Stored in reverse so that the order of the answer is not the arrival order.
            for i in range(count, 0, -1):
                data = make_instance(pid, n, k, i, sop_class, i)
                runtime.ingest.store_part10(data, Provenance("import"))
    return RetrieveService(runtime.index, runtime.blobs)


def ident(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def sops(items: list) -> list[str]:
    return [item.sop_instance_uid for item in items]


def test_study_level_study_root(retrieve: RetrieveService) -> None:
    items = retrieve.resolve(ident(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid(1)), QueryModel.STUDY_ROOT)
    # Whole series, in series then Instance Number order (not arrival order).
    assert sops(items) == [sop_uid(1, 1, 1), sop_uid(1, 1, 2), sop_uid(1, 1, 3), sop_uid(1, 2, 1), sop_uid(1, 2, 2)]
    first = items[0]
    assert (first.sop_class_uid, first.transfer_syntax_uid) == (CT, ExplicitVRLittleEndian)
    assert (first.study_instance_uid, first.series_instance_uid, first.patient_id) == (study_uid(1), series_uid(1, 1), "PID-1")


def test_study_level_uid_list(retrieve: RetrieveService) -> None:
    listed = "\\".join([study_uid(1), study_uid(3), "1.2.3.4"])
    items = retrieve.resolve(ident(QueryRetrieveLevel="STUDY", StudyInstanceUID=listed), QueryModel.STUDY_ROOT)
    assert {i.study_instance_uid for i in items} == {study_uid(1), study_uid(3)}
    assert len(items) == 7


def test_series_and_image_level(retrieve: RetrieveService) -> None:
    series_items = retrieve.resolve(
        ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=study_uid(1), SeriesInstanceUID=series_uid(1, 2)),
        QueryModel.STUDY_ROOT,
    )
    assert sops(series_items) == [sop_uid(1, 2, 1), sop_uid(1, 2, 2)]
    # The study key narrows the match (hierarchical): the series is not in study 2.
    assert retrieve.resolve(
        ident(QueryRetrieveLevel="SERIES", StudyInstanceUID=study_uid(2), SeriesInstanceUID=series_uid(1, 2)),
        QueryModel.STUDY_ROOT,
    ) == []
    images = retrieve.resolve(
        ident(QueryRetrieveLevel="IMAGE", StudyInstanceUID=study_uid(1), SeriesInstanceUID=series_uid(1, 1),
              SOPInstanceUID=f"{sop_uid(1, 1, 3)}\\{sop_uid(1, 1, 1)}"),
        QueryModel.STUDY_ROOT,
    )  # fmt: skip
    assert sops(images) == [sop_uid(1, 1, 1), sop_uid(1, 1, 3)]
    # An SCU that leaves out the keys above the level is served all the same.
    alone = retrieve.resolve(ident(QueryRetrieveLevel="IMAGE", SOPInstanceUID=sop_uid(3, 1, 2)), QueryModel.STUDY_ROOT)
    assert sops(alone) == [sop_uid(3, 1, 2)]


def test_patient_root(retrieve: RetrieveService) -> None:
    everything = retrieve.resolve(ident(QueryRetrieveLevel="PATIENT", PatientID="PID-1"), QueryModel.PATIENT_ROOT)
    assert {i.study_instance_uid for i in everything} == {study_uid(1), study_uid(2)}
    assert len(everything) == 6
    study = retrieve.resolve(
        ident(QueryRetrieveLevel="STUDY", PatientID="PID-1", StudyInstanceUID=study_uid(2)), QueryModel.PATIENT_ROOT
    )
    assert sops(study) == [sop_uid(2, 1, 1)]
    # The patient key narrows: study 3 is PID-2's.
    assert retrieve.resolve(
        ident(QueryRetrieveLevel="STUDY", PatientID="PID-1", StudyInstanceUID=study_uid(3)), QueryModel.PATIENT_ROOT
    ) == []
    assert retrieve.resolve(ident(QueryRetrieveLevel="PATIENT", PatientID="NOBODY"), QueryModel.PATIENT_ROOT) == []


@pytest.mark.parametrize(
    ("model", "keys", "message"),
    [
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PID-1"}, "Level"),
        (QueryModel.STUDY_ROOT, {"StudyInstanceUID": "1.2.3"}, "Level"),
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "FRAME", "StudyInstanceUID": "1.2.3"}, "Level"),
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY"}, "required"),
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": ""}, "required"),
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, "UID"),
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.02.3"}, "UID"),
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2\\1.3",
                                 "SeriesInstanceUID": "1.2.3"}, "one value"),
        (QueryModel.STUDY_ROOT, {"QueryRetrieveLevel": "IMAGE", "SeriesInstanceUID": "1.2.3"}, "required"),
        (QueryModel.PATIENT_ROOT, {"QueryRetrieveLevel": "PATIENT", "PatientID": "PID*"}, "wildcards"),
        (QueryModel.PATIENT_ROOT, {"QueryRetrieveLevel": "PATIENT"}, "required"),
    ],
)  # fmt: skip
def test_bad_identifiers(retrieve: RetrieveService, model: QueryModel, keys: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        retrieve.resolve(ident(**keys), model)
    assert caught.value.dimse_status == 0xA900


def test_level_is_case_and_space_tolerant() -> None:
    keys = retrieve_keys(ident(QueryRetrieveLevel="series ", SeriesInstanceUID="1.2.3"), QueryModel.STUDY_ROOT)
    assert (keys.level, keys.series_uids, keys.study_uids) == ("SERIES", ("1.2.3",), ())


def test_long_uid_list_is_chunked(retrieve: RetrieveService) -> None:
    # Over the 500 bound parameters of one IN clause: every chunk is asked.
    padding = [f"1.2.3.{n}" for n in range(1200)]
    listed = "\\".join(padding[:700] + [sop_uid(1, 1, 2)] + padding[700:] + [sop_uid(3, 1, 1)])
    items = retrieve.resolve(ident(QueryRetrieveLevel="IMAGE", SOPInstanceUID=listed), QueryModel.STUDY_ROOT)
    assert sops(items) == [sop_uid(1, 1, 2), sop_uid(3, 1, 1)]


def test_read_returns_the_stored_bytes(runtime: Runtime, retrieve: RetrieveService) -> None:
    (item,) = retrieve.resolve(ident(QueryRetrieveLevel="IMAGE", SOPInstanceUID=sop_uid(2, 1, 1)), QueryModel.STUDY_ROOT)
    assert retrieve.read(item) == make_instance("PID-1", 2, 1, 1, CT, 1)
    runtime.blobs.delete(item.storage_key)
    with pytest.raises(NotFound):
        retrieve.read(item)
