"""Fuzzing C-STORE: mutated datasets sent as is to a real DicomIngestServer, then decoded.

The SCU is pynetdicom in its chunked mode (``STORE_SEND_CHUNKED_DATASET``):
it sends the bytes of a file after its File Meta Information unchanged, so a
malformed dataset reaches the server exactly as mutated. The File Meta is
written here for each input (PS3.10 7.1; DIMSE carries none), naming the
seed's SOP Class and transfer syntax and the dataset's own SOP Instance UID
when it has a valid one (else the seed's: the server must answer A900H).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from pynetdicom import AE, _config

from pipeline.config import Settings
from pipeline.ingest.parse import dataset_encoding, is_valid_uid
from pipeline.ingest.part10 import build_file_meta
from pipeline.ingest.scp import DicomIngestServer
from pipeline.runtime import Runtime
from tests.fuzz.harness import (
    BOUND,
    FUZZ_SETTINGS,
    FuzzArchive,
    FuzzFailure,
    check_reason,
    one_input,
    run_fuzz,
)
from tests.fuzz.mutate import FuzzInput, Seed, fuzz_inputs, layout

pytestmark = pytest.mark.fuzz

#: What C-STORE may answer (PS3.4 B.2.3, PS3.7 C): success, out of resources,
#: data set does not match, cannot understand, duplicate. Never C001H, our
#: "internal error": a parse problem is not one.
ALLOWED = {0x0000, 0xA700, 0xA900, 0xC000, 0x0111}


def dataset_uid(seed: Seed, data: bytes) -> str:
    """The SOP Instance UID the dataset carries, if it is a valid one; else the seed's."""
    if seed.deflated:
        return seed.sop_instance_uid
    implicit, little = dataset_encoding(seed.transfer_syntax_uid)
    for e in layout(data, implicit, little).top:
        if e.tag == 0x00080018 and e.length < 128:
            value = data[e.value_at : e.value_at + e.length].rstrip(b"\0 ").decode("ascii", "replace")
            return value if is_valid_uid(value) else seed.sop_instance_uid
    return seed.sop_instance_uid


class Sender:
    """One association, proposing each seed's SOP class in its own transfer syntax; reopened when lost."""

    def __init__(self, settings: Settings, seeds: list[Seed], workdir: Path) -> None:
        self.settings = settings
        self.ae = AE(ae_title="FUZZSCU")
        self.ae.dimse_timeout = BOUND
        self.ae.acse_timeout = BOUND
        self.ae.network_timeout = BOUND
        for pair in sorted({(s.sop_class_uid, s.transfer_syntax_uid) for s in seeds}):
            self.ae.add_requested_context(*pair)
        self.path = workdir / "input.dcm"
        self.assoc = None

    def send(self, seed: Seed, data: bytes) -> tuple[int | None, str]:
        """The status and Error Comment of one C-STORE of ``data`` (None: no answer)."""
        meta = build_file_meta(seed.sop_class_uid, dataset_uid(seed, data), seed.transfer_syntax_uid)
        self.path.write_bytes(meta + data)
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate(
                "127.0.0.1", self.settings.dicom_port, ae_title=self.settings.ae_title
            )
            if not self.assoc.is_established:
                raise FuzzFailure("crash: the server refused an association")
        status = self.assoc.send_c_store(self.path)
        if "Status" not in status:
            return None, ""
        return int(status.Status), str(status.get("ErrorComment", ""))

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def sender(settings: Settings, seeds: list[Seed], tmp_path: Path) -> Iterator[Sender]:
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    s = Sender(settings, seeds, tmp_path)
    try:
        yield s
    finally:
        s.close()
        _config.STORE_SEND_CHUNKED_DATASET = previous


def store_one(archive: FuzzArchive, sender: Sender, inp: FuzzInput) -> None:
    with one_input("cstore", inp) as tally:
        status, comment = sender.send(inp.seed, inp.data)
        if status is None:
            raise FuzzFailure(f"hang: no C-STORE response within {BOUND} s for {inp.describe()}")
        if status not in ALLOWED:
            raise FuzzFailure(f"crash: C-STORE status 0x{status:04X} ({comment}) for {inp.describe()}")
        tally.outcomes[f"0x{status:04X}" + (f" {comment.split(':')[0][:50]}" if comment else "")] += 1
        if status:
            check_reason(comment, inp)
            tally.refused += 1
        archive.decode(tally)


def test_fuzz_cstore(
    settings: Settings, runtime: Runtime, seeds: list[Seed], sender: Sender
) -> None:
    archive = FuzzArchive(settings, runtime, seeds)
    server = DicomIngestServer(settings, runtime.ingest, runtime.audit).start()

    @FUZZ_SETTINGS
    @given(inp=fuzz_inputs(seeds, part10=False))
    def fuzz(inp: FuzzInput) -> None:
        store_one(archive, sender, inp)

    try:
        run_fuzz("cstore", archive, fuzz)
    finally:
        sender.close()
        server.stop()
        archive.close()


def test_sent_bytes_arrive_unchanged(
    settings: Settings, runtime: Runtime, seeds: list[Seed], sender: Sender
) -> None:
    """The sender really sends the dataset bytes as they are (what the fuzzing relies on)."""
    server = DicomIngestServer(settings, runtime.ingest, runtime.audit).start()
    try:
        seed = next(s for s in seeds if s.transfer_syntax_uid == "1.2.840.10008.1.2")
        assert sender.send(seed, seed.dataset) == (0x0000, "")
        row = runtime.index.get_instance(seed.sop_instance_uid)
        assert row is not None
        blob = runtime.blobs.get(row.storage_key)
        assert blob.endswith(seed.dataset)
        # A dataset cut in the middle of an element arrives cut, and is refused.
        status, comment = sender.send(seed, seed.dataset[:101])
        assert status == 0xC000 and comment
        # An odd length and an element header with no value are sent as they are.
        status, _ = sender.send(seed, seed.dataset + struct.pack("<HH", 0x7FE1, 0x0010))
        assert status == 0xC000
    finally:
        sender.close()
        server.stop()
