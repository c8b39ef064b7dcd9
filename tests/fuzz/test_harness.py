"""The fuzz harness itself: its mutations are what they say, and its invariants catch what they must.

Not marked ``fuzz``: these run in ``make test`` in a few seconds, with the
regression inputs the fuzzing found.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.ingest.importer import Source, import_sources
from pipeline.ingest.parse import dataset_encoding, inflate
from pipeline.runtime import Runtime
from tests.fuzz.harness import FuzzArchive, FuzzFailure, TargetTally
from tests.fuzz.mutate import Seed, layout, nested_sequence


def first_frame(blob: bytes) -> int:
    """Offset of the first frame's bytes in an encapsulated Pixel Data (PS3.5 A.4)."""
    pixels_at = list(re.finditer(rb"\xe0\x7f\x10\x00O[BW]\x00\x00\xff\xff\xff\xff", blob))[-1].end()
    bot = struct.unpack_from("<I", blob, pixels_at + 4)[0]
    return pixels_at + 8 + bot + 8


def _dataset(seed: Seed) -> bytes:
    return inflate(seed.dataset) if seed.deflated else seed.dataset


def test_layout_walks_every_seed_to_its_end(seeds: list[Seed]) -> None:
    for seed in seeds:
        implicit, little = dataset_encoding(seed.transfer_syntax_uid)
        lay = layout(_dataset(seed), implicit, little)
        assert lay.top, seed.name
        last = lay.top[-1]
        end = lay.pixel_end if last.length == 0xFFFFFFFF else last.end
        assert end == len(_dataset(seed)), seed.name
        encapsulated = seed.transfer_syntax_uid not in (
            "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
        )  # fmt: skip
        if encapsulated and "pdf" not in seed.name and "SR" not in seed.name:
            assert len(lay.fragments) >= 2, seed.name  # the Basic Offset Table and a frame


@pytest.mark.parametrize("defined", [False, True])
def test_nested_sequence_depth(defined: bool) -> None:
    blob = nested_sequence(40, implicit=False, little=True, defined=defined)
    lay = layout(blob, implicit=False, little=True)
    assert max(e.depth for e in lay.elements) == 24  # the tolerant walk stops there
    assert lay.top and lay.top[0].tag == 0x0040A730


@pytest.fixture
def archive(settings: Settings, runtime: Runtime, seeds: list[Seed]) -> FuzzArchive:
    fuzz = FuzzArchive(settings, runtime, seeds)
    yield fuzz
    fuzz.close()


def test_lost_and_changed_instances_are_seen(archive: FuzzArchive, runtime: Runtime) -> None:
    tally = TargetTally()
    assert archive.check_nothing_lost(tally) == []
    first, second = list(archive.baseline.rows.values())[:2]
    path = runtime.settings.data_dir / "blobs" / first[0]
    path.write_bytes(path.read_bytes() + b"\0\0")
    (runtime.settings.data_dir / "blobs" / second[0]).unlink()
    problems = archive.check_nothing_lost(tally)
    assert any("changed" in p for p in problems) and any("no blob" in p for p in problems)
    assert tally.lost == len(problems)


def test_a_dying_decoder_is_seen_and_replaced(archive: FuzzArchive) -> None:
    archive.worker.proc.kill()
    archive.worker.proc.join(10)
    with pytest.raises(FuzzFailure, match="crash: the decode process died"):
        archive.worker.run()
    assert archive.worker.run() == []  # a new process took over


def test_regression_rle_segment_overrun_fails_only_its_instance(
    archive: FuzzArchive, runtime: Runtime, dicom_data: Path
) -> None:
    """Found by the fuzzing: an RLE segment decoding past Rows x Columns made
    pylibjpeg-rle panic (a BaseException) and escape DecodeService."""
    blob = (dicom_data / "transfer_syntaxes/rle/emri_small_RLE.dcm").read_bytes()
    at = blob.rindex(b"\x08\x00\x18\x00UI")  # the dataset's SOP Instance UID
    length = struct.unpack_from("<H", blob, at + 6)[0]
    new = (b"2.25." + b"7" * length)[:length]  # same length: a new instance
    blob = blob[: at + 8] + new + blob[at + 8 + length :]
    frame = first_frame(blob)  # its RLE header
    first, second = struct.unpack_from("<2I", blob, frame + 4)
    overrun = bytes([0x81, 0x00]) * ((second - first) // 2)  # runs of 128 zeros
    blob = blob[: frame + 64] + overrun + blob[frame + 64 + len(overrun) :]
    summary = import_sources(runtime.ingest, [Source("rle.dcm", len(blob), lambda: blob)])
    assert summary.stored == 1
    tally = TargetTally()
    archive.decode(tally)  # raises FuzzFailure if anything escaped
    assert tally.decoded == {"failed": 1}
    ((_uid, reason),) = runtime.index.pixel_failures()
    assert reason == "RLE Lossless: cannot decode pixel data (PanicException)"
    assert archive.check_nothing_lost(tally) == []


@pytest.mark.fuzz
def test_regression_charls_slow_refusal_is_bounded(dicom_data: Path) -> None:
    """Found by the fuzzing: CharLS (pyjpegls 1.5) spends ~5 s refusing this garbage
    JPEG-LS scan of a 64 x 64 frame, and pydicom tries a frame that failed twice:
    bounded (a DecodeFailed well within DECODE_BOUND), but why decoding has its own bound."""
    import time

    from pipeline.decode.pixels import decode_instance
    from pipeline.errors import DecodeFailed
    from tests.fuzz.harness import DECODE_BOUND

    blob = (dicom_data / "enhanced/emri_small_jpeg_ls_lossless.dcm").read_bytes()
    frame = first_frame(blob)
    length = struct.unpack_from("<I", blob, frame - 4)[0]
    blob = blob[: frame + 132] + b"\x7f" * (length - 132) + blob[frame + length :]
    started = time.monotonic()
    with pytest.raises(DecodeFailed, match=r"JPEG-LS Lossless: cannot decode pixel data"):
        decode_instance(blob, 1 << 30)
    assert time.monotonic() - started < DECODE_BOUND
