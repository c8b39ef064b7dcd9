"""QIDO-RS (PS3.18 10.6) through the real application: dicomweb-client over HTTP,
TestClient for the edges (errors, headers, scope, audit).

The corpus' CT (PLASTIC, 54 slices) and MR (crlab, 35 slices) series are
stored through ``runtime.ingest``, plus a CT slice re-identified into two more
studies with referring physicians (``with_referring``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi import FastAPI
from fastapi.testclient import TestClient
from requests.exceptions import HTTPError

import api.qido
from api.main import create_app
from pipeline.config import Settings
from pipeline.index.records import Provenance
from pipeline.runtime import Runtime
from pipeline.security.roles import Role
from tests.api.conftest import api_key_for, bearer
from tests.api.test_auth import audit_rows, with_referring
from tests.corpus import SERIES

CT_STUDY = "1.3.46.670589.33.1.15053592413351079234.27718218421047494460"
CT_SERIES = "1.3.46.670589.33.1.7303547162003802183.31761132431540865648"
MR_STUDY = "1.3.12.2.1107.5.2.43.67060.30000022040717195958300000010"
MR_SERIES = "1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0"
DOE_STUDY = "1.2.826.0.1.3680043.8.498.71"
ROE_STUDY = "1.2.826.0.1.3680043.8.498.72"

PATIENT_ID, PATIENT_NAME, STUDY_UID, SERIES_UID, SOP_UID = (
    "00100020", "00100010", "0020000D", "0020000E", "00080018")  # fmt: skip
STUDY_DATE, MODALITIES, RETRIEVE_URL, AVAILABILITY = "00080020", "00080061", "00081190", "00080056"


@pytest.fixture
def stored(runtime: Runtime, dicom_data: Path) -> Runtime:
    for name in ("ct", "mr"):
        for path in sorted((dicom_data / SERIES[name]).iterdir()):
            runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    ct = sorted((dicom_data / SERIES["ct"]).iterdir())[0].read_bytes()
    runtime.ingest.store_part10(with_referring(ct, "Doe^Jane^^Dr", DOE_STUDY), Provenance("import"))
    runtime.ingest.store_part10(with_referring(ct, "Roe^Rick", ROE_STUDY), Provenance("import"))
    return runtime


@pytest.fixture
def dicomweb(stored: Runtime, live_url: str, auth_headers: dict[str, str]) -> Iterator[DICOMwebClient]:
    yield DICOMwebClient(url=f"{live_url}/dicom-web", headers=auth_headers)


def values(result: list[dict], tag: str) -> list:  # type: ignore[type-arg]
    return [r[tag]["Value"][0] if "Value" in r[tag] else None for r in result]


# -- dicomweb-client ---------------------------------------------------------------------------


def test_search_for_studies(dicomweb: DICOMwebClient) -> None:
    everything = dicomweb.search_for_studies()
    assert sorted(values(everything, STUDY_UID)) == sorted([CT_STUDY, MR_STUDY, DOE_STUDY, ROE_STUDY])
    assert len(dicomweb.search_for_studies(search_filters={"PatientID": "PLASTIC"})) == 3
    (ct,) = dicomweb.search_for_studies(search_filters={"PatientID": "PLASTIC", "StudyInstanceUID": CT_STUDY})
    # The required attributes of PS3.18 Table 10.6.3-3.
    for tag in ("00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
                "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206",
                "00201208"):  # fmt: skip
        assert tag in ct, tag
    assert ct[PATIENT_NAME] == {"vr": "PN", "Value": [{"Alphabetic": "HEAD"}]}
    assert ct[MODALITIES] == {"vr": "CS", "Value": ["CT"]}
    assert ct["00201208"] == {"vr": "IS", "Value": [54]}
    assert ct[AVAILABILITY]["Value"] == ["ONLINE"]
    assert ct[RETRIEVE_URL]["Value"][0].endswith(f"/dicom-web/studies/{CT_STUDY}")
    assert ct["00100030"] == {"vr": "DA"}  # empty in the file: present, without a Value
    assert list(ct) == sorted(ct)
    # Filters by keyword and by tag; wild card and case on PN; ranges; lists of UIDs.
    assert values(dicomweb.search_for_studies(search_filters={"00100020": "crlab"}), STUDY_UID) == [MR_STUDY]
    assert len(dicomweb.search_for_studies(search_filters={"PatientName": "h*"})) == 4
    assert values(dicomweb.search_for_studies(search_filters={"StudyDate": "20200101-"}), STUDY_UID) == [MR_STUDY]
    listed = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": f"{MR_STUDY},{DOE_STUDY}"})
    assert sorted(values(listed, STUDY_UID)) == sorted([MR_STUDY, DOE_STUDY])
    assert values(dicomweb.search_for_studies(search_filters={"ModalitiesInStudy": "MR"}), STUDY_UID) == [MR_STUDY]
    assert values(dicomweb.search_for_studies(search_filters={"ReferringPhysicianName": "ROE^RICK"}),
                  STUDY_UID) == [ROE_STUDY]  # fmt: skip
    assert dicomweb.search_for_studies(search_filters={"PatientID": "nobody"}) == []
    # Fuzzy matching: a word that begins a component of the name.
    fuzzy = dicomweb.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "hf"})
    assert values(fuzzy, STUDY_UID) == [MR_STUDY]


def test_includefield_limit_offset(dicomweb: DICOMwebClient) -> None:
    (ct,) = dicomweb.search_for_studies(search_filters={"StudyInstanceUID": CT_STUDY},
                                        fields=["StudyDescription", "00080062", "PatientBirthTime"])  # fmt: skip
    assert ct["00081030"]["Value"] == ["1A TRAUMA/PLAIN HEAD DM"]
    assert ct["00080062"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]  # SOP Classes in Study
    assert "00100032" not in ct  # Patient Birth Time: not in the index, left out
    (mr,) = dicomweb.search_for_studies(search_filters={"PatientID": "crlab"}, fields=["all"])
    assert mr["00201200"]["Value"] == [1]  # Number of Patient Related Studies
    assert mr["00201208"]["Value"] == [35]
    pages = [dicomweb.search_for_studies(limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(p) for p in pages] == [2, 2, 0]
    assert sorted(values(pages[0] + pages[1], STUDY_UID)) == sorted(
        [CT_STUDY, MR_STUDY, DOE_STUDY, ROE_STUDY])  # fmt: skip
    # dicomweb-client's own paging (offset until an empty page).
    assert len(dicomweb.search_for_instances(get_remaining=True, limit=20)) == 54 + 35 + 2


def test_search_for_series_and_instances(dicomweb: DICOMwebClient) -> None:
    (mr,) = dicomweb.search_for_series(study_instance_uid=MR_STUDY)
    assert mr[SERIES_UID]["Value"] == [MR_SERIES] and mr["00080060"]["Value"] == ["MR"]
    assert mr["00200011"] == {"vr": "IS", "Value": [3]} and mr["00201209"]["Value"] == [35]
    assert mr[RETRIEVE_URL]["Value"][0].endswith(f"/studies/{MR_STUDY}/series/{MR_SERIES}")
    assert PATIENT_ID not in mr  # the study is the URL's: no study attributes
    every = dicomweb.search_for_series(search_filters={"Modality": "CT"})
    assert sorted(values(every, STUDY_UID)) == sorted([CT_STUDY, DOE_STUDY, ROE_STUDY])
    assert all(PATIENT_ID in s and STUDY_DATE in s for s in every)  # series of all studies: study attributes too
    instances = dicomweb.search_for_instances(study_instance_uid=CT_STUDY, series_instance_uid=CT_SERIES)
    assert len(instances) == 54
    first = instances[0]
    for tag in ("00080016", "00080018", "00080056", "00081190", "00200013", "00280010", "00280011",
                "00280100", "00280008"):  # fmt: skip
        assert tag in first, tag
    assert first["00280010"] == {"vr": "US", "Value": [512]}
    assert first[RETRIEVE_URL]["Value"][0].endswith(
        f"/studies/{CT_STUDY}/series/{CT_SERIES}/instances/{first[SOP_UID]['Value'][0]}")  # fmt: skip
    page = dicomweb.search_for_instances(study_instance_uid=CT_STUDY, series_instance_uid=CT_SERIES,
                                         limit=10, offset=50)  # fmt: skip
    assert len(page) == 4 and values(page, SOP_UID) == values(instances, SOP_UID)[50:]
    of_study = dicomweb.search_for_instances(study_instance_uid=MR_STUDY, search_filters={"InstanceNumber": "7"})
    assert len(of_study) == 1 and of_study[0]["00080060"]["Value"] == ["MR"]  # series attributes too
    anywhere = dicomweb.search_for_instances(search_filters={"PatientName": "hfs", "InstanceNumber": "1\\2"})
    assert len(anywhere) == 2 and all(PATIENT_ID in i for i in anywhere)


def test_bad_parameters_are_400_through_the_client(dicomweb: DICOMwebClient) -> None:
    with pytest.raises(HTTPError) as raised:
        dicomweb.search_for_studies(search_filters={"StudyDate": "2015"})
    assert raised.value.response.status_code == 400


# -- errors, headers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("Foo=1", "unknown query parameter or attribute keyword: Foo"),
        ("StudyDate=2015-01-01", "YYYYMMDD"),
        ("limit=ten", "limit is a non-negative integer"),
        ("offset=-1", "offset is a non-negative integer"),
        ("fuzzymatching=yes", "fuzzymatching is true or false"),
        ("PatientID=a&PatientID=b", "given more than once"),
        ("00100020=a&PatientID=b", "given more than once"),
        ("Modality=CT", "SERIES attribute"),
        ("NumberOfStudyRelatedInstances=1", "cannot be matched"),
        ("PatientBirthTime=1200", "not kept in the index"),
        ("RequestAttributeSequence.ScheduledProcedureStepID=1", "inside sequences"),
        ("00091001=x", "private"),
        ("includefield=NoSuchKeyword", "NoSuchKeyword"),
        ("StudyInstanceUID=1.2.*", "wild cards do not apply to UIDs"),
    ],
)
def test_invalid_parameters(client: TestClient, query: str, reason: str) -> None:
    response = client.get(f"/dicom-web/studies?{query}")
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"]


def test_no_match_is_an_empty_array(client: TestClient) -> None:
    response = client.get("/dicom-web/studies?PatientID=nobody")
    assert response.status_code == 200 and response.json() == []
    assert response.headers["content-type"] == "application/dicom+json"
    # A study that is not there: its series search is empty too.
    assert client.get("/dicom-web/studies/1.2.3.4/series").json() == []


def test_bad_uids_and_media_types(client: TestClient) -> None:
    assert client.get("/dicom-web/studies/not-a-uid/series").status_code == 400
    assert client.get(f"/dicom-web/studies/{CT_STUDY}/series/x_y/instances").status_code == 400
    assert client.get(f"/dicom-web/studies/{CT_STUDY}/series?StudyInstanceUID=1.2").status_code == 400
    assert client.get("/dicom-web/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406
    ok = client.get("/dicom-web/studies", headers={"Accept": "application/json;q=0.9, text/html"})
    assert ok.status_code == 200


def test_warning_when_the_page_is_not_the_last(stored: Runtime, client: TestClient,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    response = client.get("/dicom-web/studies?limit=3")
    assert len(response.json()) == 3
    assert response.headers["warning"].startswith("299 http://testserver/dicom-web: ")
    assert "offset=3" in response.headers["warning"]
    assert "warning" not in client.get("/dicom-web/studies?limit=4").headers
    # The server's own maximum (PS3.18 8.3.4.4's wording).
    monkeypatch.setattr(api.qido, "MAX_RESULTS", 2)
    capped = client.get("/dicom-web/studies?limit=100")
    assert len(capped.json()) == 2
    assert "exceeded the maximum supported by the server" in capped.headers["warning"]
    assert "offset=2" in capped.headers["warning"]


# -- the referring physician's scope, the audit trail --------------------------------------------


def test_referring_physician_sees_only_own_studies(stored: Runtime, app: FastAPI, settings: Settings) -> None:
    key = api_key_for(stored, "dr-doe", Role.REFERRING_PHYSICIAN, referring_physician_name="doe^jane^^dr")
    with TestClient(app, headers=bearer(key)) as doe:
        assert [s[STUDY_UID]["Value"] for s in doe.get("/dicom-web/studies").json()] == [[DOE_STUDY]]
        # The same patient's other studies are not found by patient either.
        found = doe.get("/dicom-web/studies?PatientID=PLASTIC").json()
        assert values(found, STUDY_UID) == [DOE_STUDY]
        assert values(doe.get("/dicom-web/series").json(), STUDY_UID) == [DOE_STUDY]
        assert values(doe.get("/dicom-web/instances").json(), STUDY_UID) == [DOE_STUDY]
        assert len(doe.get(f"/dicom-web/studies/{DOE_STUDY}/instances").json()) == 1
        for path in (f"/studies/{ROE_STUDY}/series", f"/studies/{CT_STUDY}/instances",
                     f"/studies/{ROE_STUDY}/series/{ROE_STUDY}.1/instances"):  # fmt: skip
            assert doe.get(f"/dicom-web{path}").status_code == 404, path
    nameless = api_key_for(stored, "dr-nobody", Role.REFERRING_PHYSICIAN)
    with TestClient(app, headers=bearer(nameless)) as nobody:
        assert nobody.get("/dicom-web/studies").json() == []
    open_app = create_app(settings.model_copy(update={"referring_own_studies_only": False}), stored)
    with TestClient(open_app, headers=bearer(key)) as doe:
        assert len(doe.get("/dicom-web/studies").json()) == 4


def test_searches_are_audited(stored: Runtime, client: TestClient) -> None:
    assert client.get("/dicom-web/studies?PatientID=PLASTIC&StudyDate=2015").status_code == 400  # not audited
    assert len(client.get("/dicom-web/studies?PatientID=PLASTIC&includefield=all").json()) == 3
    assert len(client.get(f"/dicom-web/studies/{MR_STUDY}/series?Modality=MR").json()) == 1
    assert len(client.get("/dicom-web/instances?PatientName=h*&limit=5").json()) == 5
    rows = audit_rows(stored, event_id="110112")
    got = [(r["actor"], r["action"], r["role"], r["destination"], r["patient_id"], r["study_instance_uid"],
            json.loads(str(r["detail"]))) for r in rows]  # fmt: skip
    assert got == [
        ("test-admin", "E", "administrator", "/dicom-web/studies", "PLASTIC", "",
         {"level": "STUDY", "keys": ["PatientID"], "matches": 3}),
        ("test-admin", "E", "administrator", "/dicom-web/studies/{study}/series", "", MR_STUDY,
         {"level": "SERIES", "keys": ["Modality", "StudyInstanceUID"], "matches": 1}),
        ("test-admin", "E", "administrator", "/dicom-web/instances", "", "",
         {"level": "IMAGE", "keys": ["PatientName"], "matches": 5}),
    ]  # fmt: skip
    # The study named by the URL is also recorded as accessed (api.access).
    accessed = audit_rows(stored, event_id="110103", study_instance_uid=MR_STUDY)
    assert accessed and accessed[0]["patient_id"] == "crlab"


def test_every_route_needs_images_read_and_study_routes_check_the_study() -> None:
    """Read from the router itself (FastAPI nests included routers: the route
    walk's permission check does not see into them)."""
    from api.access import study_access
    from api.routes import qido
    from pipeline.security.roles import Permission

    paths = set()
    for route in qido.router.routes:
        calls = [d.call for d in route.dependant.dependencies]  # type: ignore[attr-defined]
        assert Permission.READ_IMAGES in [getattr(c, "permission", None) for c in calls], route.path  # type: ignore[attr-defined]
        assert (study_access in calls) == ("{study}" in route.path), route.path  # type: ignore[attr-defined]
        paths.add(route.path)  # type: ignore[attr-defined]
    assert paths == {f"/dicom-web{p}" for p in (
        "/studies", "/studies/{study}/series", "/series", "/studies/{study}/series/{series}/instances",
        "/studies/{study}/instances", "/instances")}  # fmt: skip


def test_routes_need_a_credential(anonymous: TestClient) -> None:
    for path in ("/studies", f"/studies/{CT_STUDY}/series", "/series", f"/studies/{CT_STUDY}/instances",
                 f"/studies/{CT_STUDY}/series/{CT_SERIES}/instances", "/instances"):  # fmt: skip
        assert anonymous.get(f"/dicom-web{path}").status_code == 401, path
