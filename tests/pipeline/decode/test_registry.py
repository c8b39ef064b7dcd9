"""Which decoder each transfer syntax gets, and the errors when one is missing."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import uid
from pydicom.pixels import get_decoder

from pipeline.decode import registry
from pipeline.decode.registry import (
    backend_table,
    backend_table_markdown,
    decoder_for,
    known_syntaxes,
    module_available,
)
from pipeline.errors import DecodeFailed, MissingDecoder
from pipeline.ingest.part10 import split_part10
from tests.corpus import corpus_files

#: PS3.5 8.2: the syntaxes that allow irreversible compression.
LOSSY = {
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLSNearLossless,
    uid.JPEG2000,
    uid.HTJ2K,
}


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """Forget the cached find_spec answers before and after a test that fakes them."""
    module_available.cache_clear()
    yield
    module_available.cache_clear()


def _hide_modules(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name in hidden:
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(registry.importlib.util, "find_spec", find_spec)


def test_every_corpus_syntax_resolves_to_an_available_plugin(dicom_data: Path) -> None:
    seen = set()
    for path in corpus_files(dicom_data):
        part = split_part10(path.read_bytes())
        if part.has_meta:
            seen.add(part.transfer_syntax_uid)
    assert len(seen) >= 15  # the corpus covers every syntax but HTJ2K (lossy)
    for tsyntax in seen:
        decoder = decoder_for(tsyntax)
        assert decoder.uid == tsyntax
        assert decoder.lossy == (tsyntax in LOSSY)
        if decoder.plugin:
            assert decoder.plugin in get_decoder(tsyntax).available_plugins, tsyntax


def test_every_requested_syntax_has_a_decoder() -> None:
    requested = {
        uid.ImplicitVRLittleEndian,
        uid.ExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEGLSNearLossless,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.HTJ2KLossless,
        uid.HTJ2KLosslessRPCL,
        uid.HTJ2K,
        uid.RLELossless,
    }
    assert set(known_syntaxes()) == requested
    for tsyntax in requested:
        decoder = decoder_for(tsyntax)
        assert decoder.name and decoder.lossy == (tsyntax in LOSSY)
        native = not uid.UID(tsyntax).is_compressed
        assert (decoder.plugin == "") == native


def test_backend_choice() -> None:
    plugins = {row["uid"]: (row["plugin"], row["library"]) for row in backend_table()}
    assert plugins[uid.JPEGExtended12Bit] == (registry.GDCM_PLUGIN, "python-gdcm")
    assert plugins[uid.JPEGLSLossless] == ("pyjpegls", "pyjpegls")
    assert plugins[uid.HTJ2KLossless] == ("pylibjpeg", "pylibjpeg + pylibjpeg-openjpeg")
    assert plugins[uid.RLELossless] == ("pylibjpeg", "pylibjpeg + pylibjpeg-rle")
    assert plugins[uid.ExplicitVRBigEndian] == ("(native)", "pydicom (numpy)")
    table = backend_table_markdown()
    assert table.count("\n") == len(known_syntaxes()) + 1
    assert "| JPEG-LS Lossless | `1.2.840.10008.1.2.4.80` | pyjpegls | pyjpegls | no |" in table


@pytest.mark.usefixtures("fresh_cache")
def test_missing_module_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "jpeg_ls", "openjpeg")
    with pytest.raises(MissingDecoder) as caught:
        decoder_for(uid.JPEGLSLossless)
    assert caught.value.reason == "JPEG-LS Lossless needs pyjpegls (pip install pyjpegls)"
    with pytest.raises(MissingDecoder) as caught:
        decoder_for(uid.HTJ2K)
    assert caught.value.reason == "HTJ2K needs pylibjpeg-openjpeg (pip install pylibjpeg-openjpeg)"
    assert caught.value.http_status == 501
    # The others still resolve.
    assert decoder_for(uid.RLELossless).plugin == "pylibjpeg"


@pytest.mark.usefixtures("fresh_cache")
def test_several_missing_modules_are_all_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "pylibjpeg", "libjpeg")
    with pytest.raises(
        MissingDecoder,
        match=r"^JPEG Baseline needs pylibjpeg, pylibjpeg-libjpeg "
        r"\(pip install pylibjpeg pylibjpeg-libjpeg\)$",
    ):
        decoder_for(uid.JPEGBaseline8Bit)


@pytest.mark.usefixtures("fresh_cache")
def test_missing_gdcm(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "gdcm")
    with pytest.raises(MissingDecoder, match=r"python-gdcm \(pip install python-gdcm\)"):
        decoder_for(uid.JPEGExtended12Bit)


@pytest.mark.usefixtures("fresh_cache")
def test_find_spec_answers_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = importlib.util.find_spec

    def counting(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(registry.importlib.util, "find_spec", counting)
    for _ in range(3):
        decoder_for(uid.JPEGLSLossless)
    assert calls == ["jpeg_ls"]


@pytest.mark.parametrize(
    "tsyntax",
    [
        "1.2.3.4",
        "",
        "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile: video, not decoded here
        "1.2.840.10008.1.2.4.52",  # retired JPEG Extended (3, 5)
    ],
)
def test_unknown_syntax_is_decode_failed(tsyntax: str) -> None:
    with pytest.raises(DecodeFailed) as caught:
        decoder_for(tsyntax)
    assert not isinstance(caught.value, MissingDecoder)
    assert caught.value.reason.startswith("no decoder for transfer syntax")


def test_padded_uid_resolves() -> None:
    assert decoder_for(uid.RLELossless + "\0").uid == uid.RLELossless
