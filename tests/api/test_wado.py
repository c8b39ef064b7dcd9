"""WADO-RS (PS3.18 10.4) against a real uvicorn server, with the real client
``dicomweb-client``: instances byte-identical when ``transfer-syntax=*`` is
asked and Explicit VR Little Endian by default, metadata equal to pydicom's
reading with resolvable BulkDataURIs, frames equal to pydicom's decode or the
original codestreams, errors, access control and CORS.

One archive per module (ingest, then the real decode stage, which writes the
pixels and the metadata documents): decoding is the slow part.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
import uvicorn
from dicomweb_client.api import DICOMwebClient
from fastapi.testclient import TestClient
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from api.main import create_app
from api.multipart import check_boundary, parse_media_type, parse_multipart
from pipeline.config import Settings, get_settings
from pipeline.decode.service import DecodeService
from pipeline.index.records import Provenance
from pipeline.runtime import Runtime, open_runtime
from pipeline.security.roles import Role
from tests.api.conftest import api_key_for, bearer
from tests.conftest import free_port
from tests.pipeline.decode.test_pixels import reference

CT_SERIES = "series/ct_philips_ingenuity_headphantom_54sl"
MR_SERIES = "series/mr_siemens_prisma_t1_fl2d_sag_35sl"
#: Single files: (corpus path, compressed media type of its frames or None).
SINGLES = {
    "jpeg": ("us/Issue16.dcm", "image/jpeg"),  # JPEG baseline YBR_FULL_422, 34 frames
    "rle": ("transfer_syntaxes/rle/emri_small_RLE.dcm", "image/dicom-rle"),  # 10 frames
    "j2k": ("transfer_syntaxes/jpeg2000_lossless/dcm_qa_ts_9.dcm", "image/jp2"),
    "jls": ("transfer_syntaxes/jpeg_ls_lossless/CT2_JLSL", "image/jls"),
    "j2k_lossy": ("transfer_syntaxes/jpeg2000_lossy/CT2_J2KI", "image/jp2"),
    "big_endian": ("transfer_syntaxes/explicit_vr_be/dcm_qa_ts_3.dcm", None),
    "multiframe": ("enhanced/philips_IM_0027_fMAP.dcm", None),  # native, 64 frames
    "sr": ("other/test-SR.dcm", None),  # no pixel data
}
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
REFERRER = "Welby^Marcus"


@dataclass(frozen=True)
class Item:
    path: Path
    study: str
    series: str
    instance: str

    @property
    def url(self) -> str:
        return f"/dicom-web/studies/{self.study}/series/{self.series}/instances/{self.instance}"


@dataclass
class Archive:
    settings: Settings
    runtime: Runtime
    base: str  # http://127.0.0.1:port
    key: str  # an administrator's API key
    ct: list[Item]
    mr: list[Item]
    single: dict[str, Item]
    referred: Item  # a study naming REFERRER as referring physician

    def client(self, key: str | None = None, session: requests.Session | None = None) -> DICOMwebClient:
        return DICOMwebClient(f"{self.base}/dicom-web", headers=bearer(key or self.key),
                              session=session)  # fmt: skip

    def get(self, path: str, key: str | None = None, **headers: str) -> requests.Response:
        auth = {} if key == "" else bearer(key or self.key)
        return requests.get(self.base + path, headers={**auth, **headers}, timeout=60)


def _item(path: Path, data: bytes | None = None) -> Item:
    ds = pydicom.dcmread(BytesIO(data) if data else path, stop_before_pixels=True)
    return Item(path, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


@contextmanager
def _serve(app: Any, port: int) -> Iterator[None]:
    """A real uvicorn server for ``app`` in a thread (as ``live_url``, for a module)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn-wado", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            pytest.fail("the uvicorn test server did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        assert not thread.is_alive(), "the uvicorn test server did not stop"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, dicom_data: Path) -> Iterator[Archive]:
    settings = get_settings(
        data_dir=tmp_path_factory.mktemp("wado") / "data", dicom_host="127.0.0.1",
        dicom_port=free_port(), http_host="127.0.0.1", http_port=free_port(), ingest_actors=1,
        cors_origins=["https://viewer.example"],
    )  # fmt: skip
    runtime = open_runtime(settings, run_migrations=True)
    ct = [_item(p) for p in sorted((dicom_data / CT_SERIES).iterdir())[:4]]
    mr = [_item(p) for p in sorted((dicom_data / MR_SERIES).iterdir())[:2]]
    single = {name: _item(dicom_data / rel) for name, (rel, _) in SINGLES.items()}
    for item in [*ct, *mr, *single.values()]:
        runtime.ingest.store_part10(item.path.read_bytes(), Provenance("import"))
    # A study of its own naming a referring physician (for the scope test).
    ds = pydicom.dcmread(dicom_data / "transfer_syntaxes/implicit_vr_le/MR_small_implicit.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.ReferringPhysicianName = REFERRER
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    runtime.ingest.store_part10(out.getvalue(), Provenance("import"))
    referred = _item(dicom_data / "unused", out.getvalue())
    outcomes = DecodeService.from_settings(settings, runtime.index, runtime.blobs).run_once(limit=100)
    # Every instance with pixel data was decoded (the SR has none: no work item).
    assert len(outcomes) == 4 + 2 + len(SINGLES) + 1 - 1
    assert {o.state.value for o in outcomes} == {"ready"}
    key = api_key_for(runtime, "wado-admin", Role.ADMINISTRATOR)
    app = create_app(settings, runtime)
    try:
        with _serve(app, settings.http_port):
            yield Archive(settings, runtime, f"http://127.0.0.1:{settings.http_port}", key,
                          ct, mr, single, referred)  # fmt: skip
    finally:
        runtime.close()


#: dicomweb-client 0.61 sends ``Host: 127.0.0.1`` without the port on every
#: non-streamed GET (web.py ``_http_get``); absolute URLs the server builds from
#: the Host header (Content-Location, BulkDataURI) then name port 80.
AS_SENT = "http://127.0.0.1"


def _routable(archive: Archive, uri: str) -> str:
    """A URL from an answer to a dicomweb-client request, pointed at our port again."""
    assert uri.startswith(AS_SENT + "/dicom-web/"), uri
    return archive.base + uri.removeprefix(AS_SENT)


def _raw_parts(response: requests.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related answer, parsed with our own parser."""
    media, params = parse_media_type(response.headers["content-type"])
    assert media == "multipart/related"
    body = response.content
    parts = parse_multipart(body, check_boundary(params["boundary"]), max_part_bytes=1 << 31)
    return [(p.headers, p.content(body)) for p in parts]


class Capture:
    """A requests session whose responses are kept (what dicomweb-client received)."""

    def __init__(self) -> None:
        self.session = requests.Session()
        self.responses: list[requests.Response] = []
        self.session.hooks["response"].append(lambda r, *a, **k: self.responses.append(r))


# --------------------------------------------------------------------------- instances


def test_retrieve_study_as_stored_is_byte_identical(archive: Archive) -> None:
    capture = Capture()
    client = archive.client(session=capture.session)
    for name in ("jpeg", "rle", "j2k", "big_endian", "sr"):
        item = archive.single[name]
        capture.responses.clear()
        # (The big endian and JPEG 2000 MR slices share one study.)
        datasets = client.retrieve_study(item.study, media_types=(("application/dicom", "*"),))
        (got,) = [ds for ds in datasets if ds.SOPInstanceUID == item.instance]
        original = pydicom.dcmread(item.path)
        assert got == original, name
        assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        parts = _raw_parts(capture.responses[-1])
        assert len(parts) == len(datasets)
        (headers, content), = [(h, c) for h, c in parts if item.instance in h["content-location"]]
        assert content == item.path.read_bytes(), name
        syntax = original.file_meta.TransferSyntaxUID
        assert headers["content-type"] == f"application/dicom; transfer-syntax={syntax}"
        assert headers["content-location"] == AS_SENT + item.url


def test_retrieve_series_as_stored_in_order(archive: Archive) -> None:
    capture = Capture()
    client = archive.client(session=capture.session)
    first = archive.ct[0]
    got = client.retrieve_series(first.study, first.series, media_types=(("application/dicom", "*"),))
    assert len(got) == len(archive.ct)
    parts = _raw_parts(capture.responses[-1])
    originals = {item.instance: item.path.read_bytes() for item in archive.ct}
    assert {pydicom.dcmread(BytesIO(c)).SOPInstanceUID: c for _, c in parts} == originals
    numbers = [int(ds.InstanceNumber) for ds in got]
    assert numbers == sorted(numbers)


def test_retrieve_instance_defaults_to_explicit_little(archive: Archive) -> None:
    """PS3.18 8.7.3.5.2: no transfer-syntax asked -> Explicit VR Little Endian."""
    client = archive.client()
    for name in ("jpeg", "rle", "j2k", "jls", "j2k_lossy", "big_endian"):
        item = archive.single[name]
        # dicomweb-client's own default is "*": ask the bare media type.
        ds = client.retrieve_instance(item.study, item.series, item.instance,
                                      media_types=("application/dicom",))  # fmt: skip
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert ds.SOPInstanceUID == item.instance
        want = reference(item.path)
        assert np.array_equal(ds.pixel_array.reshape(want.shape), want), name
    # Already Explicit VR Little Endian: the stored bytes, not a re-encoding.
    response = archive.get(archive.ct[0].url, Accept='multipart/related; type="application/dicom"')
    ((headers, content),) = _raw_parts(response)
    assert content == archive.ct[0].path.read_bytes()
    assert headers["content-type"].endswith(f"transfer-syntax={ExplicitVRLittleEndian}")


def test_named_syntax_and_q_preference(archive: Archive) -> None:
    item = archive.mr[0]
    rle = "1.2.840.10008.1.2.5"
    accept = (f'multipart/related; type="application/dicom"; transfer-syntax={rle}, '
              f'{DICOM_ANY}; q=0.5')  # fmt: skip
    ((headers, content),) = _raw_parts(archive.get(item.url, Accept=accept))
    ds = pydicom.dcmread(BytesIO(content))
    assert ds.file_meta.TransferSyntaxUID == rle
    assert headers["content-type"] == f"application/dicom; transfer-syntax={rle}"
    assert np.array_equal(ds.pixel_array, pydicom.dcmread(item.path).pixel_array)
    # The JPEG baseline encoder does not exist: the q=0.5 "*" range wins.
    accept = (f'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
              f'{DICOM_ANY}; q=0.5')  # fmt: skip
    ((_, content),) = _raw_parts(archive.get(item.url, Accept=accept))
    assert content == item.path.read_bytes()


def test_not_acceptable(archive: Archive) -> None:
    ct, lossy = archive.ct[0], archive.single["j2k_lossy"]
    jpeg = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    assert archive.get(ct.url, Accept=jpeg).status_code == 406
    assert archive.get(f"/dicom-web/studies/{ct.study}", Accept=jpeg).status_code == 406
    # Lossy pixels are never relabelled lossless (PS3.5 8.2).
    j2k_lossless = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'
    assert archive.get(lossy.url, Accept=j2k_lossless).status_code == 406
    assert archive.get(ct.url, Accept="text/html").status_code == 406
    assert archive.get(ct.url, Accept="garbage;;, //").status_code == 406
    assert archive.get(ct.url + "/metadata", Accept="image/png").status_code == 406
    assert archive.get(ct.url + "/frames/1", Accept='multipart/related; type="image/png"').status_code == 406
    assert archive.get(ct.url + "/frames/1", Accept='multipart/related; type="image/jpeg"').status_code == 406


def test_etag_revalidation(archive: Archive) -> None:
    item = archive.single["rle"]
    first = archive.get(item.url, Accept=DICOM_ANY)
    etag = first.headers["etag"]
    again = archive.get(item.url, **{"Accept": DICOM_ANY, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = archive.get(item.url, **{"If-None-Match": etag})  # default syntax: another ETag
    assert other.status_code == 200 and other.headers["etag"] != etag


# --------------------------------------------------------------------------- metadata


def _bulk_fetcher(archive: Archive, client: DICOMwebClient, fetched: list[str]) -> Any:
    def fetch(tag: str, vr: str, uri: str) -> bytes:
        fetched.append(uri)
        return b"".join(client.retrieve_bulkdata(_routable(archive, uri)))

    return fetch


def test_series_metadata_equals_pydicom(archive: Archive) -> None:
    client = archive.client()
    first = archive.ct[0]
    documents = client.retrieve_series_metadata(first.study, first.series)
    assert len(documents) == len(archive.ct)
    by_uid = {item.instance: item for item in archive.ct}
    fetched: list[str] = []
    for document in documents:
        json.dumps(document)  # valid JSON values (no NaN)
        item = by_uid[document["00080018"]["Value"][0]]
        assert document["7FE00010"]["BulkDataURI"] == f"{AS_SENT}{item.url}/bulkdata/7FE00010"
        original = pydicom.dcmread(item.path)
        rebuilt = pydicom.Dataset.from_json(document, _bulk_fetcher(archive, client, fetched))
        # Every attribute, Pixel Data fetched through its BulkDataURI included.
        for element in original:
            assert element.tag in rebuilt, element.tag
            assert rebuilt[element.tag].value == element.value, element.tag
        assert set(rebuilt.keys()) == set(original.keys())
    assert len(fetched) >= len(archive.ct)


def test_instance_and_study_metadata(archive: Archive) -> None:
    client = archive.client()
    for name in ("jpeg", "multiframe", "sr", "big_endian"):
        item = archive.single[name]
        document = client.retrieve_instance_metadata(item.study, item.series, item.instance)
        original = pydicom.dcmread(item.path)
        fetched: list[str] = []
        rebuilt = pydicom.Dataset.from_json(document, _bulk_fetcher(archive, client, fetched))
        for element in original:
            if element.tag == 0x7FE00010:
                continue  # below, as frames
            assert rebuilt[element.tag].value == element.value, (name, element.tag)
        if name == "multiframe":
            want = reference(item.path)
            assert rebuilt["PixelData"].value == want.astype(want.dtype.newbyteorder("<")).tobytes()
        if name == "big_endian":
            assert rebuilt["PixelData"].value == original.pixel_array.astype("<u2").tobytes()
    (study_doc,) = client.retrieve_study_metadata(archive.single["jpeg"].study)
    assert study_doc["00080018"]["Value"] == [archive.single["jpeg"].instance]


def test_encapsulated_pixel_data_bulk_is_its_frames(archive: Archive) -> None:
    item = archive.single["rle"]
    client = archive.client()
    document = client.retrieve_instance_metadata(item.study, item.series, item.instance)
    uri = _routable(archive, document["7FE00010"]["BulkDataURI"])
    frames = client.retrieve_bulkdata(uri, media_types=(("application/octet-stream", "*"),))
    original = pydicom.dcmread(item.path)
    want = list(generate_frames(original.PixelData, number_of_frames=int(original.NumberOfFrames)))
    assert frames == want
    decoded = b"".join(client.retrieve_bulkdata(uri))
    pixels = reference(item.path)
    assert decoded == pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def test_bulkdata_inside_a_sequence_resolves(archive: Archive) -> None:
    item = archive.single["multiframe"]
    response = archive.get(item.url + "/metadata")
    text = response.text
    uris = [u for u in _uris(json.loads(text)) if "/bulkdata/7FE00010" not in u]
    original = pydicom.dcmread(item.path)
    client = archive.client()
    for uri in uris:
        path = uri.split("/bulkdata/")[1].split("/")
        current: Any = original
        for i in range(0, len(path) - 1, 2):
            current = current[int(path[i], 16)].value[int(path[i + 1]) - 1]
        assert b"".join(client.retrieve_bulkdata(uri)) == bytes(current[int(path[-1], 16)].value)
    assert archive.get(item.url + "/bulkdata/00080018").status_code == 404  # not binary
    assert archive.get(item.url + "/bulkdata/7FE00010/1/00280010").status_code == 404


def _uris(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if "BulkDataURI" in value:
            yield value["BulkDataURI"]
        for v in value.values():
            yield from _uris(v)
    elif isinstance(value, list):
        for v in value:
            yield from _uris(v)


# --------------------------------------------------------------------------- frames


def _decoded(data: bytes, want: np.ndarray) -> np.ndarray:
    return np.frombuffer(data, dtype=want.dtype.newbyteorder("<")).reshape(want.shape[1:])


def test_frames_decoded_equal_pydicom(archive: Archive) -> None:
    client = archive.client()
    cases = [(archive.ct[0], [1]), (archive.single["jpeg"], [1, 17, 34]),
             (archive.single["rle"], [10, 1]), (archive.single["j2k"], [1]),
             (archive.single["jls"], [1]), (archive.single["multiframe"], [64, 2]),
             (archive.single["big_endian"], [1])]  # fmt: skip
    for item, numbers in cases:
        want = reference(item.path)
        frames = client.retrieve_instance_frames(item.study, item.series, item.instance, numbers)
        assert len(frames) == len(numbers)
        for number, data in zip(numbers, frames):
            assert np.array_equal(_decoded(data, want), want[number - 1]), (item.path.name, number)


def test_frames_original_codestreams(archive: Archive) -> None:
    client = archive.client()
    for name in ("jpeg", "rle", "j2k", "jls"):
        item = archive.single[name]
        media = SINGLES[name][1]
        original = pydicom.dcmread(item.path)
        count = int(original.get("NumberOfFrames") or 1)
        want = list(generate_frames(original.PixelData, number_of_frames=count))
        numbers = [count, 1]
        frames = client.retrieve_instance_frames(
            item.study, item.series, item.instance, numbers, media_types=(media,))
        assert frames == [want[n - 1] for n in numbers], name
        response = archive.get(f"{item.url}/frames/1",
                               Accept=f'multipart/related; type="{media}"')  # fmt: skip
        ((headers, _),) = _raw_parts(response)
        syntax = original.file_meta.TransferSyntaxUID
        assert headers["content-type"] == f"{media}; transfer-syntax={syntax}"
    jpeg = archive.single["jpeg"]
    start = client.retrieve_instance_frames(jpeg.study, jpeg.series, jpeg.instance, [1],
                                            media_types=("image/jpeg",))[0]  # fmt: skip
    assert start[:2] == b"\xff\xd8"  # a JPEG SOI marker


def test_frame_errors(archive: Archive) -> None:
    ct = archive.ct[0]
    assert archive.get(ct.url + "/frames/2").status_code == 404
    assert archive.get(ct.url + "/frames/0").status_code == 400
    assert archive.get(ct.url + "/frames/1,x").status_code == 400
    assert archive.get(archive.single["sr"].url + "/frames/1").status_code == 404
    assert archive.get(archive.single["jpeg"].url + "/frames/35").status_code == 404


# --------------------------------------------------------------------------- errors, access


def test_unknown_and_malformed_uids(archive: Archive) -> None:
    ct = archive.ct[0]
    unknown = "1.2.826.0.1.3680043.8.498.1"
    study, series = f"/dicom-web/studies/{ct.study}", f"/dicom-web/studies/{ct.study}/series/{ct.series}"
    for path in (f"/dicom-web/studies/{unknown}", f"/dicom-web/studies/{unknown}/metadata",
                 f"{study}/series/{unknown}", f"{study}/series/{unknown}/metadata",
                 f"{series}/instances/{unknown}", f"{series}/instances/{unknown}/metadata",
                 f"{series}/instances/{unknown}/frames/1",
                 f"/dicom-web/studies/{archive.mr[0].study}/series/{ct.series}"):  # fmt: skip
        assert archive.get(path).status_code == 404, path
    for path in ("/dicom-web/studies/1.2.abc", "/dicom-web/studies/1.2.-3/metadata",
                 f"{study}/series/1..2", f"{series}/instances/x/metadata",
                 f"{series}/instances/{'1' * 65}/frames/1"):  # fmt: skip
        response = archive.get(path)
        assert response.status_code == 400, path
        assert "UID" in response.json()["detail"]


def test_access(archive: Archive) -> None:
    ct = archive.ct[0]
    paths = [f"/dicom-web/studies/{ct.study}", f"/dicom-web/studies/{ct.study}/metadata",
             ct.url + "/metadata", ct.url + "/frames/1", ct.url + "/bulkdata/7FE00010"]  # fmt: skip
    for path in paths:
        assert archive.get(path, key="").status_code == 401, path
    radiologist = api_key_for(archive.runtime, "wado-rad", Role.RADIOLOGIST)
    referrer = api_key_for(archive.runtime, "wado-ref", Role.REFERRING_PHYSICIAN,
                           referring_physician_name=REFERRER)  # fmt: skip
    for path in paths:
        assert archive.get(path, key=radiologist).status_code == 200, path
        # Not their study: 404, as if it did not exist.
        assert archive.get(path, key=referrer).status_code == 404, path
    own = archive.referred
    client = archive.client(referrer)
    (ds,) = client.retrieve_study(own.study)
    assert ds.SOPInstanceUID == own.instance
    assert client.retrieve_series_metadata(own.study, own.series)[0]["00080090"]["Value"] == [
        {"Alphabetic": REFERRER}]


def test_cors_preflight(archive: Archive) -> None:
    ct = archive.ct[0]
    url = archive.base + ct.url + "/frames/1"
    asked = {"Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "authorization, accept"}  # fmt: skip
    allowed = requests.options(url, headers={"Origin": "https://viewer.example", **asked}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.example"
    assert "GET" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert allowed.headers.get("access-control-allow-credentials") == "true"
    refused = requests.options(url, headers={"Origin": "https://evil.example", **asked}, timeout=10)
    assert refused.status_code >= 400
    assert "access-control-allow-origin" not in refused.headers
    # The actual request: readable by the listed origin, with ETag exposed.
    got = archive.get(ct.url + "/metadata", Origin="https://viewer.example")
    assert got.status_code == 200
    assert got.headers["access-control-allow-origin"] == "https://viewer.example"
    assert "etag" in got.headers["access-control-expose-headers"].lower()
    other = archive.get(ct.url + "/metadata", Origin="https://evil.example")
    assert "access-control-allow-origin" not in other.headers


# --------------------------------------------------------------------------- metadata speed


class CountingBlobs:
    """A blob store that counts reads (proves no Part-10 file is read)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.reads = 0

    def get(self, key: str) -> bytes:
        self.reads += 1
        return self.inner.get(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_300_slice_series_metadata_reads_no_file(
    runtime: Runtime, settings: Settings, client: TestClient
) -> None:
    """The series metadata of 300 slices comes from the decode stage's documents:
    no blob is read at request time (ARCHITECTURE: precomputed, never every file)."""
    from benchmarks.datasets import CT_SIZE, ct_dataset

    zeros = bytes(CT_SIZE * CT_SIZE * 2)  # the header is what matters here
    for index in range(300):
        out = BytesIO()
        ct_dataset(index, 300, zeros, seed=5).save_as(out, enforce_file_format=True)
        runtime.ingest.store_part10(out.getvalue(), Provenance("import"))
    service = DecodeService.from_settings(settings, runtime.index, runtime.blobs)
    service.renders = None  # renders are not what this test is about
    assert len(service.run_once(limit=300)) == 300
    rows = runtime.index.list_instances()
    study, series = rows[0].study_instance_uid, rows[0].series_instance_uid
    counting = CountingBlobs(runtime.blobs)
    runtime.blobs = counting  # type: ignore[assignment]
    url = f"/dicom-web/studies/{study}/series/{series}/metadata"
    started = time.perf_counter()
    response = client.get(url)
    first_ms = (time.perf_counter() - started) * 1e3
    assert response.status_code == 200
    documents = response.json()
    assert len(documents) == 300 and counting.reads == 0
    assert [d["00200013"]["Value"][0] for d in documents] == list(range(1, 301))
    started = time.perf_counter()
    again = client.get(url)
    cached_ms = (time.perf_counter() - started) * 1e3
    assert again.content == response.content and counting.reads == 0
    print(f"\n300-slice series metadata: first {first_ms:.0f} ms, cached {cached_ms:.1f} ms, "
          f"{len(response.content) / 1e6:.2f} MB")
    # A study's metadata is the same documents.
    assert len(client.get(f"/dicom-web/studies/{study}/metadata").json()) == 300
    assert counting.reads == 0

