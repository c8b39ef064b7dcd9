"""WADO-RS rendered resources and thumbnails (PS3.18 10.4, 10.7)."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import api.routes.rendered as rendered_module
import pipeline.render.pipeline as render_pipeline
from api.instance_cache import ReadyInstances
from api.main import create_app
from pipeline.decode.service import DecodeService
from pipeline.index.records import Provenance
from pipeline.render.encode import PNG, encode
from pipeline.render.precompute import DEFAULT_VARIANT, THUMBNAIL_SIZE, THUMBNAIL_VARIANT
from pipeline.runtime import Runtime

CT_SERIES = "series/ct_philips_ingenuity_headphantom_54sl"
CR_FILE = "cr_dx/Monochrome1-Jpeg.dcm"


@dataclass
class Stored:
    study: str
    series: str
    instance: str
    key: str

    @property
    def url(self) -> str:
        return f"/dicom-web/studies/{self.study}/series/{self.series}/instances/{self.instance}"


@pytest.fixture
def stored(runtime: Runtime, dicom_data: Path) -> list[Stored]:
    paths = sorted((dicom_data / CT_SERIES).iterdir())[:5] + [dicom_data / CR_FILE]
    for path in paths:
        runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once(limit=100)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row = runtime.index.get_instance(ds.SOPInstanceUID)
        assert row is not None and row.pixel_state.value == "ready", path
        uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        out.append(Stored(*uids, row.storage_key))
    return out


def _image(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    picture.load()
    return picture


def _forbid_render(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("rendered again")

    monkeypatch.setattr(render_pipeline, "render", boom)
    monkeypatch.setattr(rendered_module, "render", boom)


def test_precompute_made_every_frame(runtime: Runtime, stored: list[Stored]) -> None:
    for item in stored:
        frames = runtime.pixels.shape(item.key)[0]
        for frame in range(1, frames + 1):
            assert runtime.renders.get(item.key, DEFAULT_VARIANT, frame)
            assert runtime.renders.get(item.key, THUMBNAIL_VARIANT, frame)


def test_default_rendition_is_precomputed(
    client: TestClient, runtime: Runtime, stored: list[Stored], monkeypatch: pytest.MonkeyPatch
) -> None:
    ct = stored[0]
    _forbid_render(monkeypatch)
    for path, variant in (
        ("/rendered", DEFAULT_VARIANT),
        ("/frames/1/rendered", DEFAULT_VARIANT),
        ("/thumbnail", THUMBNAIL_VARIANT),
        ("/frames/1/thumbnail", THUMBNAIL_VARIANT),
    ):
        for accept in (None, "*/*", "image/jpeg", "image/*"):
            headers = {"Accept": accept} if accept else {}
            response = client.get(ct.url + path, headers=headers)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"] == "image/jpeg"
            assert response.headers["x-lightbox-render"] == "precomputed"
            assert response.headers["cache-control"] == "private, max-age=3600"
            assert response.content == runtime.renders.get(ct.key, variant, 1)
    thumb = _image(client.get(ct.url + "/thumbnail").content)
    assert max(thumb.size) <= THUMBNAIL_SIZE


def test_window_renders_on_demand_exactly(
    client: TestClient, runtime: Runtime, stored: list[Stored]
) -> None:
    ct = stored[0]
    rows, columns = runtime.pixels.shape(ct.key)[1:3]
    jpeg = client.get(ct.url + "/rendered", params={"window": "40,400"})
    assert jpeg.status_code == 200
    assert jpeg.headers["x-lightbox-render"] == "on-demand"
    assert jpeg.headers["content-type"] == "image/jpeg"
    picture = _image(jpeg.content)
    assert picture.format == "JPEG" and picture.size == (columns, rows)

    png = client.get(ct.url + "/rendered?window=40,400", headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["x-lightbox-render"] == "on-demand"
    frames = runtime.pixels.read_frame(ct.key, 0)[np.newaxis]
    description = runtime.pixels.description(ct.key)
    expected = render_pipeline.render(frames, description, window=(40, 400))[0]
    got = np.asarray(_image(png.content))
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # The encoder is deterministic: the same bytes as encoding the reference.
    assert png.content == encode(np.asarray(expected), PNG)

    png_only = {"Accept": "image/png"}
    sigmoid = client.get(ct.url + "/rendered?window=40,400,sigmoid", headers=png_only)
    expected = render_pipeline.render(frames, description, window=(40, 400), function="SIGMOID")[0]
    np.testing.assert_array_equal(np.asarray(_image(sigmoid.content)), expected)

    webp = client.get(ct.url + "/rendered?window=40,400", headers={"Accept": "image/webp"})
    assert webp.headers["content-type"] == "image/webp" and _image(webp.content).format == "WEBP"


def test_viewport_and_quality(client: TestClient, runtime: Runtime, stored: list[Stored]) -> None:
    cr = stored[-1]
    rows, columns = runtime.pixels.shape(cr.key)[1:3]
    small = client.get(cr.url + "/rendered", params={"viewport": "100,100"})
    assert small.status_code == 200 and small.headers["x-lightbox-render"] == "on-demand"
    width, height = _image(small.content).size
    assert max(width, height) == 100 and width <= 100 and height <= 100
    assert abs(width / height - columns / rows) < 0.05

    bigger_thumb = client.get(cr.url + "/thumbnail", params={"viewport": "256,256"})
    assert bigger_thumb.headers["x-lightbox-render"] == "on-demand"
    assert max(_image(bigger_thumb.content).size) == 256

    low = client.get(cr.url + "/rendered", params={"quality": "10"})
    high = client.get(cr.url + "/rendered", params={"quality": "100"})
    assert low.status_code == high.status_code == 200
    assert low.headers["x-lightbox-render"] == "on-demand"
    assert len(low.content) < len(high.content)
    assert _image(low.content).size == (columns, rows)
    for bad in ("0", "101", "x"):
        assert client.get(cr.url + "/rendered", params={"quality": bad}).status_code == 400
    for bad in ("1", "0,10", "a,b"):
        assert client.get(cr.url + "/rendered", params={"viewport": bad}).status_code == 400
    for bad in ("40", "40,0", "40,400,cubic", "a,400"):
        assert client.get(cr.url + "/rendered", params={"window": bad}).status_code == 400


def test_etag_and_if_none_match(client: TestClient, stored: list[Stored]) -> None:
    ct = stored[1]
    first = client.get(ct.url + "/rendered")
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    assert client.get(ct.url + "/rendered").headers["etag"] == etag
    again = client.get(ct.url + "/rendered", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == etag
    assert client.get(ct.url + "/rendered", headers={"If-None-Match": '"other"'}).status_code == 200
    # Other parameters, frames, media types or instances: other tags.
    tags = {
        etag,
        client.get(ct.url + "/rendered?window=40,400").headers["etag"],
        client.get(ct.url + "/rendered?quality=50").headers["etag"],
        client.get(ct.url + "/rendered", headers={"Accept": "image/png"}).headers["etag"],
        client.get(ct.url + "/thumbnail").headers["etag"],
        client.get(stored[0].url + "/rendered").headers["etag"],
    }
    assert len(tags) == 6


def test_errors(client: TestClient, stored: list[Stored]) -> None:
    ct, other, cr = stored[0], stored[1], stored[-1]
    assert client.get(ct.url.replace(ct.instance, "not-a-uid") + "/rendered").status_code == 400
    assert client.get(ct.url.replace(ct.study, "1.2.x") + "/thumbnail").status_code == 400
    wrong_series = ct.url.replace(ct.series, cr.series)
    assert client.get(wrong_series + "/rendered").status_code == 404
    unknown_study = ct.url.replace(ct.study, "1.2.3.4.5")
    assert client.get(unknown_study + "/rendered").status_code == 404
    unknown_instance = ct.url.replace(ct.instance, "1.2.3.4.5")
    assert client.get(unknown_instance + "/rendered").status_code == 404
    assert client.get(ct.url + "/rendered", headers={"Accept": "image/gif"}).status_code == 406
    json_only = {"Accept": "application/json"}
    assert client.get(ct.url + "/thumbnail", headers=json_only).status_code == 406
    assert client.get(ct.url + "/frames/2/rendered").status_code == 404
    assert client.get(ct.url + "/frames/2/thumbnail").status_code == 404
    assert client.get(ct.url + "/frames/1,2/rendered").status_code == 200
    for bad in ("0", "a", "1,,2", "-1"):
        assert client.get(ct.url + f"/frames/{bad}/rendered").status_code == 400
    assert client.get("/dicom-web/studies/1.2.3.4.5/thumbnail").status_code == 404
    unknown_series = f"/dicom-web/studies/{ct.study}/series/1.2.3.4.5/thumbnail"
    assert client.get(unknown_series).status_code == 404
    assert other.study == ct.study


def test_series_and_study_thumbnails(
    client: TestClient, runtime: Runtime, stored: list[Stored]
) -> None:
    ct = stored[0]
    series = client.get(f"/dicom-web/studies/{ct.study}/series/{ct.series}/thumbnail")
    assert series.status_code == 200 and series.headers["content-type"] == "image/jpeg"
    assert series.headers["x-lightbox-render"] == "precomputed"
    rows = runtime.index.list_instances(series_instance_uid=ct.series)
    middle = rows[(len(rows) - 1) // 2]
    assert series.content == runtime.renders.get(middle.storage_key, THUMBNAIL_VARIANT, 1)
    study = client.get(f"/dicom-web/studies/{ct.study}/thumbnail")
    assert study.status_code == 200 and study.headers["content-type"] == "image/jpeg"
    assert max(_image(study.content).size) <= THUMBNAIL_SIZE
    cr = stored[-1]
    assert client.get(f"/dicom-web/studies/{cr.study}/thumbnail").status_code == 200


def test_pending_pixels_answer_503(client: TestClient, runtime: Runtime, dicom_data: Path) -> None:
    path = sorted((dicom_data / CT_SERIES).iterdir())[5]
    runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    url = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered"
    )
    response = client.get(url)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "not decoded" in response.json()["detail"]
    # A row not ready is not kept: once decoded, the next request is answered.
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once(limit=10)
    assert client.get(url).status_code == 200


def test_ready_rows_are_kept_for_a_moment(
    client: TestClient, runtime: Runtime, stored: list[Stored], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A viewer's next request for the same instance does not query the index again;
    a request naming the wrong series is still refused."""
    ct, cr = stored[0], stored[-1]
    # Kept for an hour here, so that a slow test machine cannot expire them.
    client.app.state.ready_instances = ReadyInstances(ttl=3600)  # type: ignore[attr-defined]
    assert client.get(ct.url + "/rendered").status_code == 200
    looked_up: list[str] = []
    original = runtime.index.get_instance

    def counted(uid: str) -> Any:
        looked_up.append(uid)
        return original(uid)

    monkeypatch.setattr(runtime.index, "get_instance", counted)
    for query in ({}, {"window": "40,400"}, {"quality": "70"}):
        assert client.get(ct.url + "/rendered", params=query).status_code == 200
    assert client.get(ct.url + "/thumbnail").status_code == 200
    assert looked_up == []
    assert client.get(ct.url.replace(ct.series, cr.series) + "/rendered").status_code == 404
    assert client.get(cr.url + "/rendered").status_code == 200
    assert looked_up == [cr.instance]


def test_pixels_gone_answer_503_and_the_row_is_looked_up_again(
    client: TestClient, runtime: Runtime, stored: list[Stored], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance was replaced under a kept row and its pixels are not there
    (yet): 503 with Retry-After, not a server error, and the row is forgotten."""
    ct = stored[0]
    assert client.get(ct.url + "/rendered").status_code == 200

    def gone(*_args: Any, **_kwargs: Any) -> Any:
        raise FileNotFoundError("no pixels")

    monkeypatch.setattr(runtime.pixels, "description", gone)
    answer = client.get(ct.url + "/rendered", params={"window": "10,100"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert ct.instance not in client.app.state.ready_instances._entries  # type: ignore[attr-defined]
    monkeypatch.undo()
    assert client.get(ct.url + "/rendered", params={"window": "10,100"}).status_code == 200


def test_ct_preset_is_rendered_once_then_cached(
    client: TestClient, runtime: Runtime, stored: list[Stored], monkeypatch: pytest.MonkeyPatch
) -> None:
    ct = stored[0]
    first = client.get(ct.url + "/rendered", params={"preset": "lung"})
    assert first.status_code == 200 and first.headers["x-lightbox-render"] == "on-demand"
    assert runtime.renders.get(ct.key, "preset-lung.jpg", 1) == first.content
    # Same as asking for the window itself (PS3.18 window=-600,1500), as PNG exactly.
    png = client.get(ct.url + "/rendered?preset=lung", headers={"Accept": "image/png"})
    frames = runtime.pixels.read_frame(ct.key, 0)[np.newaxis]
    expected = render_pipeline.render(frames, runtime.pixels.description(ct.key), window=(-600, 1500))[0]
    np.testing.assert_array_equal(np.asarray(_image(png.content)), expected)
    _forbid_render(monkeypatch)
    again = client.get(ct.url + "/rendered", params={"preset": "lung"})
    assert again.headers["x-lightbox-render"] == "precomputed" and again.content == first.content
    assert client.get(ct.url + "/rendered", params={"preset": "nope"}).status_code == 400
    both = client.get(ct.url + "/rendered", params={"preset": "lung", "window": "40,400"})
    assert both.status_code == 400


def test_tiles_of_a_large_image(
    client: TestClient, runtime: Runtime, dicom_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = dicom_data / "mg" / "MG1_J2KI"
    runtime.ingest.store_part10(path.read_bytes(), Provenance("import"))
    DecodeService.from_settings(runtime.settings, runtime.index, runtime.blobs).run_once()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    row = runtime.index.get_instance(ds.SOPInstanceUID)
    assert row is not None
    url = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1/tiles"
    )
    rows, columns = int(ds.Rows), int(ds.Columns)
    # A full tile and the last, partial one at full resolution.
    full = client.get(f"{url}/0/0/0")
    assert full.status_code == 200 and full.headers["x-lightbox-render"] == "on-demand"
    assert _image(full.content).size == (512, 512)
    last_r, last_c = (rows - 1) // 512, (columns - 1) // 512
    edge = client.get(f"{url}/0/{last_r}/{last_c}", headers={"Accept": "image/png"})
    assert edge.status_code == 200
    assert _image(edge.content).size == (columns - last_c * 512, rows - last_r * 512)
    # With the file's window, a PNG tile equals the same region of a whole-frame render.
    frame = runtime.pixels.read_frame(row.storage_key, 0)[np.newaxis]
    whole = render_pipeline.render(frame, runtime.pixels.description(row.storage_key))[0]
    np.testing.assert_array_equal(np.asarray(_image(edge.content)), whole[last_r * 512 :, last_c * 512 :])
    # A smaller level exists and is tiled too; past the end is 404.
    assert client.get(f"{url}/1/0/0").status_code == 200
    assert client.get(f"{url}/0/{last_r + 1}/0").status_code == 404
    assert client.get(f"{url}/9/0/0").status_code == 404
    # Default tiles are cached: the second time nothing is rendered.
    _forbid_render(monkeypatch)
    again = client.get(f"{url}/0/0/0")
    assert again.headers["x-lightbox-render"] == "precomputed" and again.content == full.content


@pytest.mark.parametrize(("slots", "workers", "bound"), [(1, 1, 1), (3, 1, 3), (3, 2, 2)])
def test_on_demand_renders_are_bounded(
    runtime: Runtime, stored: list[Stored], auth_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, slots: int, workers: int, bound: int,
) -> None:  # fmt: skip
    """At most ``render_concurrency`` on-demand renders run at once; the rest wait their turn.

    The setting is for all ``http_workers`` processes: each takes its share
    (rounded up), here the one process of the test.

    Six windowed requests arrive together; each render holds its slot 0.1 s.
    Past the cores, more threads rendering at once only contend for the GIL
    and memory bandwidth (benchmarks/README.md: 16 mammograms at once).
    """
    original = rendered_module.render_frame
    lock = threading.Lock()
    running = peak = 0

    def counted(*args: Any, **kwargs: Any) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            time.sleep(0.1)
            return original(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(rendered_module, "render_frame", counted)
    # Worker threads only: a small frame would be rendered on the event loop.
    settings = runtime.settings.model_copy(
        update={"render_concurrency": slots, "http_workers": workers, "render_inline_pixels": 0}
    )
    app = create_app(settings, runtime)

    async def fetch_all() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers=auth_headers) as client:  # fmt: skip
            answers = await asyncio.gather(*(
                client.get(f"{stored[0].url}/rendered", params={"window": f"40,{400 + n},linear"})
                for n in range(6)
            ))  # fmt: skip
        return [a.status_code for a in answers]

    assert asyncio.run(fetch_all()) == [200] * 6
    assert peak == bound


def test_concurrent_requests_for_one_rendition_render_it_once(
    runtime: Runtime, stored: list[Stored], auth_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Six viewers ask the same new window at once: one render, six equal answers.
    When that render fails, a waiting request renders in its place."""
    original = rendered_module.render_frame
    calls: list[float] = []
    fail_first = [True]

    def slow(*args: Any, **kwargs: Any) -> bytes:
        calls.append(time.monotonic())
        time.sleep(0.1)
        if fail_first[0]:
            fail_first[0] = False
            raise FileNotFoundError("replaced meanwhile")
        return original(*args, **kwargs)

    monkeypatch.setattr(rendered_module, "render_frame", slow)
    settings = runtime.settings.model_copy(
        update={"render_concurrency": 4, "render_inline_pixels": 0}
    )
    app = create_app(settings, runtime)

    async def fetch_all(window: str) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers=auth_headers) as client:  # fmt: skip
            return list(await asyncio.gather(*(
                client.get(f"{stored[0].url}/rendered", params={"window": window})
                for _ in range(6)
            )))  # fmt: skip

    answers = asyncio.run(fetch_all("40,400,linear"))
    # The first render failed (its request: 503); the next waiter rendered for the rest.
    assert sorted(a.status_code for a in answers) == [200] * 5 + [503]
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.1
    assert len({a.content for a in answers if a.status_code == 200}) == 1
    assert app.state.renders_in_flight == {}
    calls.clear()
    answers = asyncio.run(fetch_all("50,500,linear"))
    assert [a.status_code for a in answers] == [200] * 6 and len(calls) == 1
    assert len({a.content for a in answers}) == 1


class _Remote:
    """A pixel store that says it is not local files (an fsspec one would)."""

    local = False

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.mark.parametrize(
    ("limit", "local", "on_loop"),
    [(512 * 512, True, True), (512 * 512 - 1, True, False), (0, True, False),
     (512 * 512, False, False)],
)
def test_small_frames_are_rendered_on_the_event_loop(
    runtime: Runtime, stored: list[Stored], auth_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, limit: int, local: bool, on_loop: bool,
) -> None:  # fmt: skip
    """A 512 x 512 CT frame is rendered on the event loop when it is within
    ``render_inline_pixels`` and the pixel store is local; otherwise in a worker
    thread. Either way the answer is the same image."""
    original = rendered_module.render_frame
    threads: list[int] = []

    def noted(*args: Any, **kwargs: Any) -> bytes:
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(rendered_module, "render_frame", noted)
    if not local:  # as a remote store says of itself; reads are the local store's
        monkeypatch.setattr(runtime, "pixels", _Remote(runtime.pixels))
    settings = runtime.settings.model_copy(update={"render_inline_pixels": limit})
    app = create_app(settings, runtime)
    ct = stored[0]
    row = runtime.index.get_instance(ct.instance)
    assert row is not None and (row.rows, row.columns) == (512, 512)

    async def fetch() -> tuple[int, bytes, str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers=auth_headers) as client:  # fmt: skip
            answer = await client.get(f"{ct.url}/rendered", params={"window": "40,400,linear"})
        return answer.status_code, answer.content, answer.headers["x-lightbox-render"]

    status, content, how = asyncio.run(fetch())  # the loop runs in this thread
    assert (status, how) == (200, "on-demand")
    assert (threads == [threading.get_ident()]) is on_loop and len(threads) == 1
    with TestClient(create_app(runtime.settings.model_copy(update={"render_inline_pixels": 0}),
                               runtime), headers=auth_headers) as client:  # fmt: skip
        threaded = client.get(f"{ct.url}/rendered", params={"window": "40,400,linear"})
    assert threaded.content == content


def test_recent_on_demand_renders_are_kept(
    client: TestClient, stored: list[Stored], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same rendition asked again is answered from memory, byte for byte, not rendered again."""
    ct = stored[0]
    first = client.get(ct.url + "/rendered", params={"window": "40,400,linear"})
    assert first.headers["x-lightbox-render"] == "on-demand"
    _forbid_render(monkeypatch)
    again = client.get(ct.url + "/rendered", params={"window": "40,400,linear"})
    assert again.headers["x-lightbox-render"] == "recent"
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    # Another parameter is another rendition: rendered (here: refused, to prove it).
    with pytest.raises(AssertionError, match="rendered again"):
        client.get(ct.url + "/rendered", params={"window": "40,400,linear", "quality": "50"})
    with pytest.raises(AssertionError, match="rendered again"):
        client.get(ct.url + "/rendered", params={"window": "40,400,linear"},
                   headers={"Accept": "image/png"})  # fmt: skip


def test_no_recent_renders_when_the_budget_is_zero(
    runtime: Runtime, stored: list[Stored], auth_headers: dict[str, str]
) -> None:
    settings = runtime.settings.model_copy(update={"render_cache_bytes": 0})
    with TestClient(create_app(settings, runtime), headers=auth_headers) as client:
        for _ in range(2):
            answer = client.get(stored[0].url + "/rendered", params={"window": "40,400"})
            assert answer.headers["x-lightbox-render"] == "on-demand"
