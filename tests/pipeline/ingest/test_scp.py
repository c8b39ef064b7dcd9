"""The storage SCP against real peers: dcmtk's echoscu/storescu and pynetdicom as SCU.

The server runs in this process (no Ray); ``tests/test_serve.py`` covers the
Ray actors. Byte identity is checked on the dataset (everything after the File
Meta Information, which the receiver writes anew).
"""

from __future__ import annotations

import hashlib
from io import BytesIO
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, _config

from pipeline.config import DuplicatePolicy, Settings
from pipeline.ingest.part10 import build_file_meta, split_part10
from pipeline.ingest.scp import DicomIngestServer
from pipeline.runtime import Runtime
from tests.conftest import require_tool
from tests.corpus import SERIES, corpus_files, dataset_bytes, single_files

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
#: What storescu says when it finds no instance to send in a file.
DCMTK_NO_INSTANCE = r"missing SOP class \(or instance\)|No SOP Class or Instance UID"

#: Files outside edge_cases/ that a conformant SCP must refuse, with the status.
REFUSED = {"HTJ2KLossless_08_RGB.dcm": 0xA900}  # no Study Instance UID (Type 1)

#: Edge cases: what each must get. None: the file is no instance a client can send.
EDGE_EXPECTED: dict[str, int | None] = {
    "MR_truncated.dcm": 0xC000,
    "emri_small_jpeg_2k_lossless_too_short.dcm": 0xC000,
    "no_meta.dcm": None,
    "meta_missing_tsyntax.dcm": None,
    "priv_SQ.dcm": 0xA900,  # a fragment: no Study Instance UID
    "ExplVR_LitEndNoMeta.dcm": 0x0000,
    "PrivateMDNTags.dcm": 0x0000,
    "SC_rgb_small_odd.dcm": 0x0000,
    "explicit_VR-UN.dcm": 0x0000,
    "JPEG-lossy.dcm": 0x0000,
    "SC_jpeg_no_color_transform.dcm": 0x0000,
    # Declares 65535 x 65535 x 16 bits (8 GiB) over 256 bytes of pixel data:
    # refused before storage as over max_decoded_bytes (A700 Out of Resources,
    # PS3.4 B.2.3), so that no decode ever starts on it.
    "2026-05-26-oob-monochrome-65535.dcm": 0xA700,
    "UnknownSopClassUid.dcm": 0x0000,
    "Issue140.dcm": 0x0000,
    # Its File Meta names another SOP Instance UID than its dataset, and
    # pynetdicom's chunked mode sends the meta's: a mismatch (PS3.4 B.2.3).
    "12bitUnsigned_0x0F0F.dcm": 0xA900,
}


@pytest.fixture
def server(runtime: Runtime, settings: Settings) -> Iterator[DicomIngestServer]:
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit).start()
    yield srv
    srv.stop()


def echoscu(settings: Settings, calling: str = "ECHOSCU", called: str | None = None) -> int:
    cmd = [require_tool("echoscu"), "-aet", calling, "-aec", called or settings.ae_title]
    return subprocess.run(
        [*cmd, "127.0.0.1", str(settings.dicom_port)], env=DCMTK_ENV, capture_output=True
    ).returncode


def storescu(settings: Settings, *paths: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    cmd = [require_tool("storescu"), "-aet", "STORESCU", "-aec", settings.ae_title, *extra]
    return subprocess.run(
        [*cmd, "127.0.0.1", str(settings.dicom_port), *map(str, paths)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )


def send_file_bytes(settings: Settings, path: Path) -> int | None:
    """Send a file's own dataset bytes (pynetdicom's chunked path mode); the status.

    The presentation context proposes exactly the file's transfer syntax, so
    nothing is converted on the way.
    """
    try:
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        sop_class, ts = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    except Exception:
        return None
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(sop_class, [ts])
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


@pytest.fixture
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def assert_stored_as_sent(runtime: Runtime, path: Path) -> None:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    row = runtime.index.get_instance(ds.SOPInstanceUID)
    assert row is not None, path.name
    assert row.sop_class_uid == ds.SOPClassUID
    assert row.study_instance_uid == ds.StudyInstanceUID
    assert row.series_instance_uid == ds.SeriesInstanceUID
    assert row.patient_id == str(ds.get("PatientID", ""))
    assert row.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    sent = dataset_bytes(path)
    blob = runtime.blobs.get(row.storage_key)
    stored = split_part10(blob)
    assert bytes(stored.dataset) == sent, f"{path.name}: stored dataset differs from the sent one"
    assert row.sha256 == hashlib.sha256(sent).hexdigest()
    assert row.size == len(blob)
    assert row.source == "dimse"


def test_echoscu(server: DicomIngestServer, settings: Settings) -> None:
    assert echoscu(settings) == 0


@pytest.mark.parametrize("name", sorted(SERIES))
def test_storescu_series(
    name: str, server: DicomIngestServer, runtime: Runtime, settings: Settings, dicom_data: Path
) -> None:
    folder = dicom_data / SERIES[name]
    files = sorted(p for p in folder.iterdir() if p.is_file())
    result = storescu(settings, folder, extra=("+sd",))
    assert result.returncode == 0, result.stderr[-2000:]
    assert server.scp.stored == len(files)
    for path in files:
        assert_stored_as_sent(runtime, path)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    study = runtime.index.get_study(first.StudyInstanceUID)
    assert study is not None
    assert study.number_of_instances == len(files)
    assert study.number_of_series == 1
    assert study.modalities_in_study == (first.Modality,)
    assert study.patient_id == first.PatientID
    assert study.patient_name == str(first.PatientName)
    assert study.study_date == first.get("StudyDate", "")
    series = runtime.index.get_series(first.SeriesInstanceUID)
    assert series is not None and series.number_of_instances == len(files)
    counts = runtime.index.counts()
    assert counts.instances == len(files)
    assert counts.work["decode"] == {"pending": len(files)}


def test_every_single_file_byte_identical(
    server: DicomIngestServer,
    runtime: Runtime,
    settings: Settings,
    dicom_data: Path,
    chunked_send: None,
) -> None:
    first_sent: dict[str, Path] = {}
    # rtdose.dcm's File Meta names another SOP Instance UID than its dataset;
    # pynetdicom's chunked mode sends the meta's as the Affected SOP Instance
    # UID, so the mismatch is refused (A900H). storescu sends the dataset's
    # own UID: test_storescu_single_files_from_dcmtk stores it.
    refused = {**REFUSED, "rtdose.dcm": 0xA900}
    for path in single_files(dicom_data):
        status = send_file_bytes(settings, path)
        assert status == refused.get(path.name, 0x0000), path.name
        if status != 0x0000:
            continue
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        # A few corpus files are the same instance in two encodings: under the
        # default "keep" policy the first one sent stays.
        first_sent.setdefault(uid, path)
    assert len(first_sent) >= 40
    for path in first_sent.values():
        assert_stored_as_sent(runtime, path)
    assert server.scp.failed == len(refused)


#: dcmtk 3.6.7 (Debian 12) predates HTJ2K: it cannot take part in an
#: association using those syntaxes, so pynetdicom alone covers them.
DCMTK_UNKNOWN_SYNTAXES = {"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}


def storescu_own_syntax(settings: Settings, path: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    """storescu proposing exactly the file's SOP class and transfer syntax.

    storescu's -x options cover only some syntaxes; a configuration profile
    (``-xf``) names any UID, so nothing is converted on the way.
    """
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    config = workdir / "storescu.cfg"
    config.write_text(
        "[[TransferSyntaxes]]\n[Own]\n"
        f"TransferSyntax1 = {meta.TransferSyntaxUID}\n"
        "[[PresentationContexts]]\n[Contexts]\n"
        f"PresentationContext1 = {meta.MediaStorageSOPClassUID}\\Own\n"
        "[[Profiles]]\n[Own]\nPresentationContexts = Contexts\n"
    )
    return storescu(settings, path, extra=("-xf", str(config), "Own"))


def test_storescu_single_files_from_dcmtk(
    server: DicomIngestServer, runtime: Runtime, settings: Settings, dicom_data: Path, tmp_path: Path
) -> None:
    """dcmtk as the peer: every single-file image is stored in its own syntax."""
    sent = []
    for path in single_files(dicom_data):
        if path.name in REFUSED:
            continue
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        if meta.TransferSyntaxUID in DCMTK_UNKNOWN_SYNTAXES:
            continue
        result = storescu_own_syntax(settings, path, tmp_path)
        if path.name == "2022-03-08-RicSmi.dcm":
            # dcmtk 3.6.7 stumbles on this file's odd-length Pixel Data before
            # sending anything; pynetdicom sends it (test above).
            assert re.search(DCMTK_NO_INSTANCE, result.stderr)
            continue
        assert result.returncode == 0, f"{path.name}: {result.stderr[-2000:]}"
        sent.append(path)
    assert len(sent) >= 40
    assert server.scp.failed == 0
    first_sent: dict[str, Path] = {}
    for path in sent:
        first_sent.setdefault(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID, path)
    for uid, path in first_sent.items():
        row = runtime.index.get_instance(uid)
        assert row is not None, path.name
        assert row.transfer_syntax_uid == pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        # dcmtk re-encodes what it reads (lengths, padding, character data), so
        # compare the elements present and the pixels; pynetdicom's chunked
        # mode proves byte identity above.
        stored = pydicom.dcmread(BytesIO(runtime.blobs.get(row.storage_key)))
        original = pydicom.dcmread(path)
        if "PixelData" in original:
            # dcmtk pads an odd-length Pixel Data (dx_image.dcm) to even length,
            # as PS3.5 7.1.1 requires.
            pixels, padded = original.PixelData, stored.PixelData
            assert padded[: len(pixels)] == pixels and len(padded) - len(pixels) in (0, 1), path.name
        # dcmtk drops group lengths (gggg,0000), retired in datasets (PS3.5 7.2),
        # and Data Set Trailing Padding (FFFC,FFFC), which a writer may drop.
        kept = lambda ds: {t for t in ds.keys() if t.element and t != 0xFFFCFFFC}  # noqa: E731
        assert kept(stored) == kept(original), path.name


def test_edge_cases_fail_cleanly_and_server_carries_on(
    runtime: Runtime, settings: Settings, dicom_data: Path, chunked_send: None
) -> None:
    settings = settings.model_copy(update={"accept_unknown_sop_classes": True})
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit).start()
    try:
        edge = sorted((dicom_data / "edge_cases").iterdir())
        assert {p.name for p in edge} == set(EDGE_EXPECTED)
        for path in edge:
            if split_part10(path.read_bytes()).has_meta:
                status = send_file_bytes(settings, path)
            else:
                # pynetdicom sends only Part-10 files; dcmtk reads bare datasets.
                result = storescu(settings, path, extra=("-R",))
                status = 0x0000 if result.returncode == 0 else None
                if status is None:
                    assert re.search(DCMTK_NO_INSTANCE, result.stderr), result.stderr
            assert status == EDGE_EXPECTED[path.name], path.name
        stored = [p for p in edge if EDGE_EXPECTED[p.name] == 0x0000]
        for path in stored:
            if split_part10(path.read_bytes()).has_meta:
                assert_stored_as_sent(runtime, path)
        assert srv.scp.failed == sum(1 for v in EDGE_EXPECTED.values() if v not in (None, 0))
        assert echoscu(settings) == 0
    finally:
        srv.stop()


def test_files_without_meta_from_storescu(
    server: DicomIngestServer, runtime: Runtime, settings: Settings, dicom_data: Path
) -> None:
    """storescu reads a bare dataset, infers its syntax, and we store it."""
    path = dicom_data / "edge_cases" / "PrivateMDNTags.dcm"
    result = storescu(settings, path, extra=("-R",))
    assert result.returncode == 0, result.stderr[-2000:]
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    assert runtime.index.get_instance(ds.SOPInstanceUID) is not None


def test_garbage_dataset_is_refused_and_association_continues(
    server: DicomIngestServer, runtime: Runtime, settings: Settings, dicom_data: Path, tmp_path: Path, chunked_send: None
) -> None:
    good = dicom_data / "transfer_syntaxes" / "explicit_vr_le" / "dcm_qa_ts_1.dcm"
    part = split_part10(good.read_bytes())
    bad = tmp_path / "bad.dcm"
    # The good file's meta, then a dataset that ends in the middle of an element.
    bad.write_bytes(part.data[: part.dataset_offset] + bytes(part.dataset)[:301])
    meta = pydicom.dcmread(good, stop_before_pixels=True).file_meta
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.ae_title)
    assert assoc.is_established
    try:
        refused = assoc.send_c_store(bad)
        assert refused.Status == 0xC000
        assert refused.ErrorComment  # a reason for the operator of the modality
        accepted = assoc.send_c_store(good)
        assert accepted.Status == 0x0000
    finally:
        assoc.release()
    assert runtime.index.counts().instances == 1
    assert_stored_as_sent(runtime, good)


def test_mismatched_affected_sop_instance_is_refused(
    server: DicomIngestServer,
    runtime: Runtime,
    settings: Settings,
    dicom_data: Path,
    tmp_path: Path,
    chunked_send: None,
) -> None:
    """PS3.4 B.2.3: the dataset must be the instance the command names (A900H)."""
    path = dicom_data / "transfer_syntaxes" / "explicit_vr_le" / "dcm_qa_ts_1.dcm"
    part = split_part10(path.read_bytes())
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    # In chunked mode pynetdicom takes the Affected SOP Instance UID from the
    # file meta: make it name another instance than the dataset.
    lying = tmp_path / "lying.dcm"
    lying.write_bytes(
        build_file_meta(meta.MediaStorageSOPClassUID, "1.2.3.4.5.6.7", meta.TransferSyntaxUID)
        + bytes(part.dataset)
    )
    assert send_file_bytes(settings, lying) == 0xA900
    assert runtime.index.counts().instances == 0


def test_calling_ae_allow_list(runtime: Runtime, settings: Settings) -> None:
    settings = settings.model_copy(update={"allowed_calling_aes": ["CT01", "MR01"]})
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit).start()
    try:
        assert echoscu(settings, calling="CT01") == 0
        assert echoscu(settings, calling="INTRUDER") != 0
        assert echoscu(settings, calling="MR01") == 0
    finally:
        srv.stop()


def test_called_ae_must_be_ours(server: DicomIngestServer, settings: Settings) -> None:
    assert echoscu(settings, called="SOMEONEELSE") != 0
    assert echoscu(settings) == 0


def test_reject_policy_over_dimse(
    runtime: Runtime, settings: Settings, dicom_data: Path, tmp_path: Path, chunked_send: None
) -> None:
    runtime.ingest.duplicate_policy = DuplicatePolicy.REJECT
    srv = DicomIngestServer(settings, runtime.ingest, runtime.audit).start()
    try:
        path = dicom_data / "transfer_syntaxes" / "explicit_vr_le" / "dcm_qa_ts_1.dcm"
        assert send_file_bytes(settings, path) == 0x0000
        assert send_file_bytes(settings, path) == 0x0000  # identical re-send: Success
        changed = pydicom.dcmread(path)
        changed.StudyDescription = "changed"
        other = tmp_path / "changed.dcm"
        changed.save_as(other, enforce_file_format=True)
        assert send_file_bytes(settings, other) == 0x0111
    finally:
        srv.stop()
    assert_stored_as_sent(runtime, path)


def test_corpus_is_complete(dicom_data: Path) -> None:
    """The tests above assume the corpus the manifest describes."""
    assert len(corpus_files(dicom_data)) == 152


def test_no_phi_in_logs(
    server: DicomIngestServer,
    settings: Settings,
    dicom_data: Path,
    caplog: pytest.LogCaptureFixture,
    chunked_send: None,
) -> None:
    """Names, IDs and birth dates never reach a log line, even at DEBUG."""
    caplog.set_level("DEBUG")
    sent = [
        *sorted((dicom_data / SERIES["mr"]).iterdir())[:5],
        dicom_data / "edge_cases" / "MR_truncated.dcm",
        dicom_data / "transfer_syntaxes" / "htj2k_lossless" / "HTJ2KLossless_08_RGB.dcm",
    ]
    for path in sent:
        send_file_bytes(settings, path)
    secrets = set()
    for path in sent:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(keyword, "")).strip()
            if len(value) >= 4:
                secrets.add(value)
    assert secrets
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "C-STORE refused" in text  # the logs did capture the server's lines
    for secret in secrets:
        assert secret not in text
