"""STOW-RS (PS3.18 10.5): ``POST /dicom-web/studies[/{study}]``.

(a) through FastAPI's TestClient; (b) against a real uvicorn server, with the
``dicomweb-client`` peer and with raw bytes over httpx.
"""

from __future__ import annotations

import importlib.util
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from pipeline.config import Settings
from pipeline.errors import DatasetMismatch, InvalidDataset, StudyMismatch
from pipeline.runtime import Runtime, open_runtime
from tests.api.conftest import BOUNDARY, CONTENT_TYPE, api_key_for, bearer, multipart_body
from tests.conftest import require
from tests.corpus import SERIES, single_files

URL = "/dicom-web/studies"
FAILED = "00081198"
REFERENCED = "00081199"
RETRIEVE_URL = "00081190"
CLASS_UID = "00081150"
INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


# --- helpers ---------------------------------------------------------------------------


def ct_files(root: Path) -> list[Path]:
    files = sorted((root / SERIES["ct"]).iterdir())
    require(len(files) == 54, "the 54-slice CT series of the corpus")
    return files


def post(client: TestClient, parts: list[Any], url: str = URL, **headers: str) -> httpx.Response:
    return client.post(
        url, content=multipart_body(parts), headers={"Content-Type": CONTENT_TYPE, **headers}
    )


def items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return body.get(tag, {}).get("Value", [])


def value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def malformed(path: Path) -> bytes:
    """A DICOM file cut in the middle of its header: InvalidDataset."""
    return path.read_bytes()[:1000]


def header_of(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def blob_files(settings: Settings) -> list[Path]:
    root = settings.data_dir / "blobs"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def assert_stored(runtime: Runtime, ds: pydicom.Dataset, sent: bytes) -> None:
    """The index row has the file's attributes and the blob is the bytes sent."""
    row = runtime.index.get_instance(ds.SOPInstanceUID)
    assert row is not None, "instance not in the index"
    assert row.study_instance_uid == ds.StudyInstanceUID
    assert row.series_instance_uid == ds.SeriesInstanceUID
    assert row.sop_class_uid == ds.SOPClassUID
    assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert row.patient_id == str(ds.get("PatientID", "")).strip()
    assert row.source == "stow"
    assert runtime.blobs.get(row.storage_key) == sent


# --- (a) TestClient ---------------------------------------------------------------------


class TestRequestErrors:
    @pytest.mark.parametrize(
        "content_type",
        [
            "application/dicom",
            "application/json",
            "multipart/form-data; boundary=x",
            'multipart/related; type="application/dicom+json"; boundary=x',
            "multipart/related; type=application/dicom+xml; boundary=x",
        ],
    )
    def test_unsupported_media_type_is_415(self, client: TestClient, content_type: str) -> None:
        response = client.post(URL, content=b"x", headers={"Content-Type": content_type})
        assert response.status_code == 415
        assert "application/dicom" in response.json()["detail"]

    def test_no_content_type_is_415(self, client: TestClient) -> None:
        response = client.post(URL, content=b"x", headers={"Content-Type": ""})
        assert response.status_code == 415

    def test_unquoted_type_and_quoted_boundary_are_accepted(
        self, client: TestClient, dicom_data: Path
    ) -> None:
        data = ct_files(dicom_data)[0].read_bytes()
        response = client.post(
            URL,
            content=multipart_body([data]),
            headers={
                "Content-Type": f'Multipart/Related; boundary="{BOUNDARY}"; type=application/dicom'
            },
        )
        assert response.status_code == 200

    def test_missing_boundary_is_400(self, client: TestClient, settings: Settings) -> None:
        response = client.post(
            URL,
            content=b"x",
            headers={"Content-Type": 'multipart/related; type="application/dicom"'},
        )
        assert response.status_code == 400
        assert "boundary" in response.json()["detail"]

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            f"--{BOUNDARY}--\r\n".encode(),
            multipart_body([b"\0" * 300])[:-10],  # truncated: no close delimiter
        ],
        ids=["empty", "no-parts", "truncated"],
    )
    def test_malformed_body_is_400_and_stores_nothing(
        self, client: TestClient, runtime: Runtime, settings: Settings, body: bytes
    ) -> None:
        response = client.post(URL, content=body, headers={"Content-Type": CONTENT_TYPE})
        assert response.status_code == 400
        assert response.json()["detail"]
        assert runtime.index.counts().instances == 0
        assert blob_files(settings) == []

    def test_xml_only_accept_is_406(self, client: TestClient, dicom_data: Path) -> None:
        data = ct_files(dicom_data)[0].read_bytes()
        response = post(client, [data], Accept="application/dicom+xml")
        assert response.status_code == 406
        assert post(client, [data], Accept="application/dicom+json, */*;q=0.1").status_code == 200

    def test_invalid_study_uid_in_url_is_400(self, client: TestClient, dicom_data: Path) -> None:
        data = ct_files(dicom_data)[0].read_bytes()
        assert post(client, [data], url=f"{URL}/not-a-uid").status_code == 400


class TestSizeLimits:
    def test_request_over_limit_is_413(
        self, settings: Settings, runtime: Runtime, dicom_data: Path, auth_headers: dict[str, str]
    ) -> None:
        data = ct_files(dicom_data)[0].read_bytes()
        body = multipart_body([data])
        app = create_app(
            settings.model_copy(
                update={"max_request_bytes": len(body) - 1, "max_dataset_bytes": len(body) - 1}
            ),
            runtime,
        )
        with TestClient(app, headers=auth_headers) as client:
            # Declared by Content-Length...
            response = client.post(URL, content=body, headers={"Content-Type": CONTENT_TYPE})
            assert response.status_code == 413
            # ...or only found while streaming (chunked, no Content-Length).
            chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
            response = client.post(URL, content=chunks, headers={"Content-Type": CONTENT_TYPE})
            assert response.status_code == 413
            assert "limit" in response.json()["detail"]
            app.state.max_request_bytes = len(body)
            assert (
                client.post(URL, content=body, headers={"Content-Type": CONTENT_TYPE}).status_code
                == 200
            )

    def test_part_over_max_dataset_bytes_is_413_and_stores_nothing(
        self, settings: Settings, dicom_data: Path
    ) -> None:
        small, large = sorted((p.read_bytes() for p in ct_files(dicom_data)[:2]), key=len)
        limited = settings.model_copy(update={"max_dataset_bytes": len(large) - 1})
        runtime = open_runtime(limited, run_migrations=True)
        key = api_key_for(runtime, "stow-tech", "technologist")
        try:
            with TestClient(create_app(limited, runtime), headers=bearer(key)) as client:
                response = post(client, [small[: len(large) - 1], large])
                assert response.status_code == 413
                assert runtime.index.counts().instances == 0
        finally:
            runtime.close()


class TestPerInstance:
    def test_malformed_part_and_good_part_is_202(
        self, client: TestClient, runtime: Runtime, dicom_data: Path
    ) -> None:
        path, other = ct_files(dicom_data)[:2]
        data = path.read_bytes()
        ds = header_of(path)
        response = post(client, [malformed(other), data])
        assert response.status_code == 202
        assert response.headers["content-type"] == "application/dicom+json"
        body = response.json()
        failed = items(body, FAILED)
        assert len(failed) == 1
        assert value(failed[0], FAILURE_REASON) == InvalidDataset.failure_reason
        assert failed[0][FAILURE_REASON]["vr"] == "US"
        referenced = items(body, REFERENCED)
        assert len(referenced) == 1
        assert value(referenced[0], CLASS_UID) == ds.SOPClassUID
        assert value(referenced[0], INSTANCE_UID) == ds.SOPInstanceUID
        study_url = f"http://testserver/dicom-web/studies/{ds.StudyInstanceUID}"
        assert value(referenced[0], RETRIEVE_URL) == (
            f"{study_url}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
        assert value(body, RETRIEVE_URL) == study_url
        warnings = response.headers.get_list("warning")
        assert len(warnings) == 1
        assert warnings[0].startswith("299 http://testserver/dicom-web: part 1: ")
        assert_stored(runtime, ds, data)
        # The response is valid DICOM JSON.
        parsed = pydicom.Dataset.from_json(body)
        assert parsed.FailedSOPSequence[0].FailureReason == 0xC000
        assert parsed.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID

    def test_part_of_another_media_type_fails_alone(
        self, client: TestClient, runtime: Runtime, dicom_data: Path
    ) -> None:
        first, second = ct_files(dicom_data)[:2]
        response = post(client, [("image/jpeg", first.read_bytes()), (None, second.read_bytes())])
        assert response.status_code == 202
        failed = items(response.json(), FAILED)
        assert len(failed) == 1
        # The UIDs are known: the bytes were DICOM, only labelled otherwise.
        assert value(failed[0], INSTANCE_UID) == header_of(first).SOPInstanceUID
        assert "image/jpeg" in response.headers["warning"]
        assert runtime.index.get_instance(header_of(first).SOPInstanceUID) is None
        # A part without Content-Type is of the request's type parameter.
        assert_stored(runtime, header_of(second), second.read_bytes())

    def test_other_study_on_study_url_is_409_and_stores_nothing(
        self, client: TestClient, runtime: Runtime, settings: Settings, dicom_data: Path
    ) -> None:
        path = ct_files(dicom_data)[0]
        ds = header_of(path)
        response = post(client, [path.read_bytes()], url=f"{URL}/1.2.3.4")
        assert response.status_code == StudyMismatch.http_status == 409
        body = response.json()
        assert value(body, RETRIEVE_URL) == "http://testserver/dicom-web/studies/1.2.3.4"
        failed = items(body, FAILED)
        assert len(failed) == 1
        assert value(failed[0], FAILURE_REASON) == StudyMismatch.failure_reason == 0xA900
        assert value(failed[0], INSTANCE_UID) == ds.SOPInstanceUID
        assert value(failed[0], CLASS_UID) == ds.SOPClassUID
        assert REFERENCED not in body
        assert runtime.index.get_instance(ds.SOPInstanceUID) is None
        assert runtime.index.counts().instances == 0
        assert blob_files(settings) == []

    def test_study_url_stores_its_own_instances_only(
        self, client: TestClient, runtime: Runtime, dicom_data: Path
    ) -> None:
        ct = ct_files(dicom_data)[0]
        other = next(p for p in single_files(dicom_data) if p.name == "dx_image.dcm")
        study = header_of(ct).StudyInstanceUID
        response = post(client, [ct.read_bytes(), other.read_bytes()], url=f"{URL}/{study}")
        assert response.status_code == 202
        assert [value(i, INSTANCE_UID) for i in items(response.json(), REFERENCED)] == [
            header_of(ct).SOPInstanceUID
        ]
        assert runtime.index.get_instance(header_of(other).SOPInstanceUID) is None
        assert post(client, [ct.read_bytes()], url=f"{URL}/{study}").status_code == 200

    def test_missing_study_uid_is_409(self, client: TestClient, dicom_data: Path) -> None:
        path = dicom_data / "transfer_syntaxes/htj2k_lossless/HTJ2KLossless_08_RGB.dcm"
        require(path.is_file(), str(path))
        response = post(client, [path.read_bytes()])
        assert response.status_code == DatasetMismatch.http_status == 409
        assert value(items(response.json(), FAILED)[0], FAILURE_REASON) == 0xA900
        assert "StudyInstanceUID" in response.headers["warning"]

    def test_mixed_reasons_with_nothing_stored_is_409(
        self, client: TestClient, dicom_data: Path
    ) -> None:
        htj2k = dicom_data / "transfer_syntaxes/htj2k_lossless/HTJ2KLossless_08_RGB.dcm"
        require(htj2k.is_file(), str(htj2k))
        response = post(client, [malformed(ct_files(dicom_data)[0]), htj2k.read_bytes()])
        assert response.status_code == 409
        reasons = [value(i, FAILURE_REASON) for i in items(response.json(), FAILED)]
        assert reasons == [0xC000, 0xA900]
        assert len(response.headers.get_list("warning")) == 2


class TestEdgeCases:
    def test_truncated_file_fails_with_reason(
        self, client: TestClient, runtime: Runtime, dicom_data: Path
    ) -> None:
        path = dicom_data / "edge_cases/MR_truncated.dcm"
        require(path.is_file(), str(path))
        response = post(client, [path.read_bytes()])
        assert response.status_code == InvalidDataset.http_status == 400
        failed = items(response.json(), FAILED)
        assert len(failed) == 1
        assert value(failed[0], FAILURE_REASON) == 0xC000
        # Its header is whole, so the failure still names the instance.
        uid = header_of(path).SOPInstanceUID
        assert value(failed[0], INSTANCE_UID) == uid
        assert "truncated" in response.headers["warning"]
        assert runtime.index.get_instance(uid) is None
        assert client.get("/health").status_code == 200

    def test_each_edge_case_is_stored_or_refused_cleanly(
        self, client: TestClient, runtime: Runtime, dicom_data: Path
    ) -> None:
        files = sorted((dicom_data / "edge_cases").iterdir())
        require(len(files) >= 10, "the edge_cases of the corpus")
        stored = 0
        for path in files:
            response = post(client, [path.read_bytes()])
            body = response.json()
            # 413 only for the file that declares an 8 GiB image (over
            # max_decoded_bytes): Out of Resources, PS3.18 10.5.3, PS3.4 B.2.3.
            expected = (413,) if path.name == "2026-05-26-oob-monochrome-65535.dcm" else (200, 400, 409)
            assert response.status_code in expected, path.name
            if response.status_code == 200:
                (item,) = items(body, REFERENCED)
                assert FAILED not in body
                row = runtime.index.get_instance(value(item, INSTANCE_UID))
                assert row is not None, path.name
                assert runtime.blobs.get(row.storage_key)[-64:] == path.read_bytes()[-64:]
                stored += 1
            else:
                (item,) = items(body, FAILED)
                assert value(item, FAILURE_REASON) in (0xC000, 0xA900, 0xA700), path.name
                assert len(response.headers["warning"]) > len("299 x: part 1: "), path.name
                assert REFERENCED not in body
            assert client.get("/health").status_code == 200
        assert runtime.index.counts().instances == stored
        # The files that must fail do.
        for name in ("MR_truncated.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"):
            assert (
                post(client, [(dicom_data / "edge_cases" / name).read_bytes()]).status_code == 400
            )
        assert 0 < stored < len(files)

    def test_all_edge_cases_in_one_request(
        self, client: TestClient, runtime: Runtime, dicom_data: Path
    ) -> None:
        files = sorted((dicom_data / "edge_cases").iterdir())
        response = post(client, [p.read_bytes() for p in files])
        assert response.status_code == 202
        body = response.json()
        failed, referenced = items(body, FAILED), items(body, REFERENCED)
        assert len(failed) + len(referenced) == len(files)
        assert len(response.headers.get_list("warning")) == len(failed)
        assert runtime.index.counts().instances == len(referenced)
        assert RETRIEVE_URL not in body  # instances of several studies


# --- (b) a real server ------------------------------------------------------------------


def client_bytes(ds: pydicom.Dataset) -> bytes:
    """What dicomweb-client's store_instances sends for ``ds`` (it calls dcmwrite)."""
    with BytesIO() as buf:
        pydicom.dcmwrite(buf, ds)
        return buf.getvalue()


@pytest.fixture
def dicomweb(live_url: str, auth_headers: dict[str, str]) -> Any:
    require(importlib.util.find_spec("dicomweb_client") is not None, "dicomweb-client")
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(url=f"{live_url}/dicom-web", headers=auth_headers)


@pytest.mark.slow
class TestDicomwebClient:
    def test_ct_series(self, dicomweb: Any, runtime: Runtime, dicom_data: Path) -> None:
        paths = ct_files(dicom_data)
        datasets = [pydicom.dcmread(p) for p in paths]
        sent = [client_bytes(ds) for ds in datasets]
        result = dicomweb.store_instances(datasets)
        assert len(result.ReferencedSOPSequence) == 54
        assert "FailedSOPSequence" not in result
        assert result.RetrieveURL.endswith(
            f"/dicom-web/studies/{header_of(paths[0]).StudyInstanceUID}"
        )
        for path, data in zip(paths, sent, strict=True):
            assert_stored(runtime, header_of(path), data)
        assert runtime.index.counts().instances == 54

    def test_single_files(self, dicomweb: Any, runtime: Runtime, dicom_data: Path) -> None:
        paths = single_files(dicom_data)
        require(len(paths) > 40, "the single files of the corpus")
        datasets = [pydicom.dcmread(p) for p in paths]
        # What the client will send, computed before any attribute access: pydicom
        # turns an accessed UN element into its dictionary VR, which changes dcmwrite.
        sent = [client_bytes(ds) for ds in datasets]
        result = dicomweb.store_instances(datasets)  # 202: the client returns the answer
        headers = [header_of(p) for p in paths]
        refused = [h for h in headers if "StudyInstanceUID" not in h]
        assert len(refused) == 1  # HTJ2KLossless_08_RGB.dcm
        (failed,) = result.FailedSOPSequence
        assert failed.ReferencedSOPInstanceUID == refused[0].SOPInstanceUID
        assert failed.FailureReason == 0xA900
        assert len(result.ReferencedSOPSequence) == len(paths) - 1
        first: dict[str, tuple[pydicom.Dataset, bytes]] = {}
        for header, data in zip(headers, sent, strict=True):
            first.setdefault(header.SOPInstanceUID, (header, data))
        assert len(first) < len(paths)  # some files share a SOP Instance UID
        for uid, (header, data) in first.items():
            if header is refused[0]:
                assert runtime.index.get_instance(uid) is None
            else:
                # Under the default policy "keep", the first copy sent stays.
                assert_stored(runtime, header, data)
        assert runtime.index.counts().instances == len(first) - 1

    def test_refused_alone_raises_409(self, dicomweb: Any, dicom_data: Path) -> None:
        import requests

        path = dicom_data / "transfer_syntaxes/htj2k_lossless/HTJ2KLossless_08_RGB.dcm"
        require(path.is_file(), str(path))
        with pytest.raises(requests.HTTPError) as info:
            dicomweb.store_instances([pydicom.dcmread(path)])
        assert info.value.response.status_code == 409


@pytest.mark.slow
def test_raw_bytes_are_stored_byte_identical(
    live_url: str, runtime: Runtime, dicom_data: Path, auth_headers: dict[str, str]
) -> None:
    """Raw files over httpx: every stored blob is the file as sent."""
    paths = ct_files(dicom_data) + single_files(dicom_data)
    response = httpx.post(
        f"{live_url}{URL}",
        content=multipart_body([p.read_bytes() for p in paths]),
        headers={"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json", **auth_headers},
        timeout=120,
    )
    assert response.status_code == 202
    assert len(items(response.json(), FAILED)) == 1
    seen: set[str] = set()
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "StudyInstanceUID" not in ds or ds.SOPInstanceUID in seen:
            continue
        seen.add(ds.SOPInstanceUID)
        assert_stored(runtime, ds, path.read_bytes())
    assert runtime.index.counts().instances == len(seen)
    assert httpx.get(f"{live_url}/health").json()["status"] == "ok"


def test_logs_hold_no_phi_or_uids(
    settings: Settings,
    runtime: Runtime,
    dicom_data: Path,
    caplog: pytest.LogCaptureFixture,
    auth_headers: dict[str, str],
) -> None:
    ct, other = ct_files(dicom_data)[:2]
    truncated = dicom_data / "edge_cases/MR_truncated.dcm"
    require(truncated.is_file(), str(truncated))
    caplog.set_level("DEBUG")
    study = header_of(ct).StudyInstanceUID
    with TestClient(create_app(settings, runtime), headers=auth_headers) as client:
        post(client, [ct.read_bytes(), truncated.read_bytes()])
        post(client, [other.read_bytes()], url=f"{URL}/1.2.3.4")
        post(client, [("text/plain", other.read_bytes())])
    small = settings.model_copy(update={"max_request_bytes": 10, "max_dataset_bytes": 10})
    with TestClient(create_app(small, runtime), headers=auth_headers) as client:
        assert post(client, [ct.read_bytes()], url=f"{URL}/{study}").status_code == 413
    assert any(r.name.startswith("api") for r in caplog.records)
    secrets = set()
    for path in (ct, other, truncated):
        ds = header_of(path)
        secrets |= {str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID,
                    ds.SeriesInstanceUID, ds.SOPInstanceUID}  # fmt: skip
    secrets = {s for s in secrets if len(s) > 3}
    for record in caplog.records:
        if record.name.split(".")[0] in ("httpx", "httpcore"):
            continue  # the test's own HTTP client logs its request URLs
        message = record.getMessage()
        assert not [s for s in secrets if s in message], (record.name, message)


def test_unexpected_error_fails_its_part_only(
    client: TestClient,
    runtime: Runtime,
    dicom_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = ct_files(dicom_data)[:2]
    real = runtime.ingest.store_part10
    calls: list[int] = []
    phi = "patient " + "DOE^JOHN"

    def flaky(data: bytes, provenance: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(phi)  # an exception message may quote data
        return real(data, provenance)

    monkeypatch.setattr(runtime.ingest, "store_part10", flaky)
    response = post(client, [first.read_bytes(), second.read_bytes()])
    assert response.status_code == 202
    (failed,) = items(response.json(), FAILED)
    assert value(failed, FAILURE_REASON) == 0x0110  # processing failure
    assert value(failed, INSTANCE_UID) == header_of(first).SOPInstanceUID
    assert "RuntimeError" in response.headers["warning"]
    assert "DOE" not in response.headers["warning"]
    assert not [r for r in caplog.records if "DOE" in r.getMessage()]
    assert_stored(runtime, header_of(second), second.read_bytes())
