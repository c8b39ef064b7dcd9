"""Micro-benchmarks of the ingest path without the network, each on a CT slice
(525 kB) and a small MR image (9.5 kB).

``store_dataset`` is what one C-STORE costs an ingest actor once pynetdicom has
the dataset; the other benchmarks are its parts: header parse, File Meta
Information, SHA-256, blob put (write + fsync + rename + directory fsync),
index ``record_instance`` (one SQLite transaction, synchronous=FULL).
Their sum should come close to ``store_dataset``; what is left is copies and
glue.

    pytest benchmarks/ -p no:cacheprovider --benchmark-only
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from benchmarks.conftest import Template, fresh_uid
from pipeline.config import DuplicatePolicy
from pipeline.index.records import Provenance, RecordOutcome, StoredBlob
from pipeline.ingest.parse import extract_header, read_header
from pipeline.ingest.part10 import build_file_meta
from pipeline.runtime import Runtime
from pipeline.storage.blobs import new_storage_key

PROVENANCE = Provenance("dimse", calling_ae="BENCH")


def test_store_dataset(benchmark, runtime: Runtime, template: Template, rounds) -> None:  # type: ignore[no-untyped-def]
    """The whole service call: parse, meta, SHA-256, blob put, index, work item."""
    benchmark.group = f"store_dataset {template.name}"

    def setup():  # type: ignore[no-untyped-def]
        uid, data = template.fresh()
        return (data, template.transfer_syntax_uid, PROVENANCE), {
            "sop_class_uid": template.sop_class_uid,
            "sop_instance_uid": uid,
        }

    result = benchmark.pedantic(
        runtime.ingest.store_dataset, setup=setup, rounds=rounds(template), warmup_rounds=3
    )
    assert result.outcome is RecordOutcome.STORED


def test_store_dataset_identical_resend(
    benchmark, runtime: Runtime, template: Template, rounds
) -> None:  # type: ignore[no-untyped-def]
    """A re-send of the same instance: still parses, hashes and writes the blob, then drops it."""
    benchmark.group = f"store_dataset {template.name}"
    _uid, data = template.fresh()
    runtime.ingest.store_dataset(data, template.transfer_syntax_uid, PROVENANCE)
    result = benchmark.pedantic(
        runtime.ingest.store_dataset,
        args=(data, template.transfer_syntax_uid, PROVENANCE),
        rounds=rounds(template),
        warmup_rounds=1,
    )
    assert result.outcome is RecordOutcome.IDENTICAL


def test_parse_header(benchmark, template: Template) -> None:  # type: ignore[no-untyped-def]
    """read_header (pydicom up to Pixel Data, length checks) + extract_header."""
    benchmark.group = f"parts {template.name}"

    def parse():  # type: ignore[no-untyped-def]
        ds, has_pixels = read_header(template.data, template.transfer_syntax_uid)
        return extract_header(ds, has_pixels)

    header = benchmark(parse)
    assert header.instance.sop_instance_uid == template.sop_instance_uid


def test_file_meta(benchmark, template: Template) -> None:  # type: ignore[no-untyped-def]
    """build_file_meta: the File Meta Information written for a DIMSE dataset."""
    benchmark.group = f"parts {template.name}"
    meta = benchmark(
        build_file_meta, template.sop_class_uid, template.sop_instance_uid,
        template.transfer_syntax_uid, "BENCH",
    )  # fmt: skip
    assert meta[128:132] == b"DICM"


def test_sha256(benchmark, template: Template) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"parts {template.name}"
    benchmark(lambda: hashlib.sha256(template.data).hexdigest())


def test_blob_put(benchmark, runtime: Runtime, template: Template, rounds) -> None:  # type: ignore[no-untyped-def]
    """LocalBlobStore.put of a new key: temp file, write, fsync, rename, fsync folder."""
    benchmark.group = f"parts {template.name}"
    blob = template.data

    def setup():  # type: ignore[no-untyped-def]
        return (new_storage_key(), blob), {}

    benchmark.pedantic(runtime.blobs.put, setup=setup, rounds=rounds(template), warmup_rounds=3)


def test_record_instance(benchmark, runtime: Runtime, template: Template) -> None:  # type: ignore[no-untyped-def]
    """SqlIndex.record_instance of a new instance in an existing series (one transaction)."""
    benchmark.group = f"parts {template.name}"
    ds, has_pixels = read_header(template.data, template.transfer_syntax_uid)
    header = extract_header(ds, has_pixels)
    size = len(template.data)

    def setup():  # type: ignore[no-untyped-def]
        uid = fresh_uid()
        h = replace(header, instance=replace(header.instance, sop_instance_uid=uid))
        blob = StoredBlob(new_storage_key(), size, hashlib.sha256(uid.encode()).hexdigest(),
                          template.transfer_syntax_uid)  # fmt: skip
        return (h, blob, PROVENANCE, DuplicatePolicy.KEEP), {}

    result = benchmark.pedantic(
        runtime.index.record_instance, setup=setup, rounds=200, warmup_rounds=3
    )
    assert result.outcome is RecordOutcome.STORED
