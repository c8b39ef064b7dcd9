"""WADO-RS metadata (PS3.18 10.4.1.1.2, 10.4.3): DICOM JSON of instances, fast.

Each instance's document (PS3.18 Annex F.2, the DICOM JSON Model) is made
once, by the decode stage after the instance is stored
(:meth:`pipeline.decode.service.DecodeService.decode`), and kept in the
metadata store (:mod:`pipeline.storage.metadata`). A series' metadata is then
the documents of its instances joined into one JSON array, with no file read
and no JSON parsed at request time; the joined series is cached in memory
until the series changes. A study's metadata is its series' arrays joined.

The document (:func:`instance_document`):

* every attribute of the dataset (not the File Meta Information group, which
  describes the file, not the instance: PS3.10 7.1), converted by pydicom's
  DICOM JSON encoder (PN components, AT as hex, IS/DS as numbers, SQ items
  nested, PS3.18 F.2.2-F.2.5);
* a binary value (OB, OD, OF, OL, OV, OW, UN) longer than
  :data:`BULK_DATA_THRESHOLD` as a ``BulkDataURI`` (F.2.6), shorter ones as
  ``InlineBinary`` (base64, F.2.7). Pixel Data is always large enough to be
  bulk data: a viewer fetches it as frames.
* A ``BulkDataURI`` is stored *relative*:
  ``studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}``,
  where ``path`` is the attribute's tag (eight hex digits), preceded for an
  attribute inside a sequence by the sequence's tag and the item number from
  1 (``00880200/1/7FE00010``: the icon's pixel data). :func:`with_base` makes
  them absolute for the request's base URL when answering, so the stored
  documents do not depend on the host name a client used.
* Values JSON cannot hold (NaN, infinity in FL/FD) become ``null``
  (F.2.5's empty value) rather than invalid JSON.

Invalidation: a document is keyed by the blob's storage key, which names
immutable bytes; the series cache is keyed by the set of the series' storage
keys (a new, removed or replaced instance changes it), read from the index on
every request with a light query (keys only: ~0.5 ms for 300 instances,
where the full rows take ~4 ms).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from pipeline.index.records import InstanceRow
from pipeline.storage.blobs import BlobStore
from pipeline.storage.metadata import MetadataStore

if TYPE_CHECKING:
    from pipeline.retrieve.corrections import Corrections

log = logging.getLogger(__name__)

__all__ = [
    "BULK_DATA_THRESHOLD",
    "MetadataService",
    "SeriesMetadata",
    "bulkdata_uri",
    "instance_document",
    "json_array",
    "keys_version",
    "with_base",
    "with_corrections",
]

#: Binary values longer than this many bytes *encoded in base64* become bulk
#: data (pydicom's rule: raw bytes over ``threshold // 4 * 3``, i.e. 768 raw
#: bytes for 1024).
BULK_DATA_THRESHOLD = 1024

#: How a BulkDataURI begins in our compact JSON. In JSON text a ``"`` inside a
#: string is always escaped, so ``I":"`` can only end a key: this byte string
#: occurs nowhere but before a BulkDataURI value.
_BULK_KEY = b'"BulkDataURI":"'
_SQ = "SQ"


def bulkdata_uri(study: str, series: str, instance: str, path: str) -> str:
    """The relative BulkDataURI of ``path`` (tags and item numbers, ``/``-separated)."""
    return f"studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}"


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _encode(document: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or infinity in an FL/FD/DS value
        text = json.dumps(_finite(document), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _dataset_json(ds: Dataset, prefix: str, uri: str) -> dict[str, Any]:
    """DICOM JSON of ``ds`` whose bulk data URIs are ``uri + prefix + tag``.

    Our own walk over the items (pydicom's handler is given the element, not
    where it is) with pydicom's conversion of every other element. An element
    pydicom cannot convert (a malformed value) is left out, as pydicom's
    ``suppress_invalid_tags`` does; the reason is logged without the value.
    """
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        key = f"{int(tag):08X}"
        try:
            element = ds[tag]
            if element.VR == _SQ:
                items = [
                    _dataset_json(item, f"{prefix}{key}/{number}/", uri)
                    for number, item in enumerate(element.value or (), start=1)
                ]
                out[key] = {"vr": _SQ, "Value": items} if items else {"vr": _SQ}
                continue
            path = f"{uri}{prefix}{key}"
            out[key] = element.to_json_dict(lambda _element: path, BULK_DATA_THRESHOLD)
        except Exception as exc:  # noqa: BLE001 - one bad value must not lose the document
            log.info("metadata: attribute %s left out (%s)", key, type(exc).__name__)
    return out


def instance_document(part10: bytes) -> bytes:
    """The DICOM JSON object (PS3.18 F.2) of a stored instance, compact UTF-8.

    Parameters
    ----------
    part10 : bytes
        The stored blob (PS3.10 file with File Meta Information).

    Returns
    -------
    bytes
        One JSON object; BulkDataURIs relative (see the module docstring).

    Raises
    ------
    ValueError
        The bytes cannot be parsed, or lack Study, Series or SOP Instance UID
        (ingest refuses such instances, so this means the blob is not ours).
    """
    try:
        ds = dcmread(BytesIO(part10), force=True)
    except Exception as exc:  # pydicom raises many kinds on bad bytes
        raise ValueError(f"cannot parse the stored instance ({type(exc).__name__})") from None
    uids = [str(ds.get(k, "") or "") for k in
            ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]  # fmt: skip
    if not all(uids):
        raise ValueError("the stored instance lacks a Study, Series or SOP Instance UID")
    uri = bulkdata_uri(*uids, "")
    return _encode(_dataset_json(ds, "", uri))


def with_base(document: bytes, base: str) -> bytes:
    """``document`` with every relative BulkDataURI made absolute under ``base``.

    ``base`` is the DICOMweb root the client used, e.g.
    ``https://pacs.example/dicom-web`` (no trailing slash).
    """
    if _BULK_KEY not in document:
        return document
    return document.replace(_BULK_KEY, _BULK_KEY + base.rstrip("/").encode() + b"/")


def _fallback_document(row: InstanceRow) -> bytes:
    """The index's identifying attributes, when the blob cannot be read as DICOM."""
    return _encode(
        {
            "00080016": {"vr": "UI", "Value": [row.sop_class_uid]},
            "00080018": {"vr": "UI", "Value": [row.sop_instance_uid]},
            "0020000D": {"vr": "UI", "Value": [row.study_instance_uid]},
            "0020000E": {"vr": "UI", "Value": [row.series_instance_uid]},
            **({"00200013": {"vr": "IS", "Value": [row.instance_number]}}
               if row.instance_number is not None else {}),  # fmt: skip
        }
    )


@dataclass(frozen=True, slots=True)
class SeriesMetadata:
    """One series' documents joined with commas (no brackets) and its version.

    ``version`` changes whenever the series' instances (the set of their
    storage keys) do: the cache key, and the base of the HTTP ETag.
    """

    members: bytes
    version: str
    instances: int
    #: The whole answer for the last base URL asked (see :meth:`answer`).
    _answers: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def answer(self, base: str) -> bytes:
        """``[documents]`` with BulkDataURIs under ``base``, kept for the next request.

        Joining and rewriting a 300-instance series costs ~2 ms; clients of one
        server use one host name, so only the last base is kept (at most twice
        the members' size per cached series).
        """
        body = self._answers.get(base)
        if body is None:
            body = with_base(json_array([self.members]), base)
            self._answers.clear()
            self._answers[base] = body
        return body


def keys_version(storage_keys: Iterable[str]) -> str:
    """The version of a series holding the blobs ``storage_keys`` (any order).

    A storage key names immutable bytes, so the set of keys changes whenever
    an instance is added, removed or replaced; the order is not part of it, so
    the index can be asked for the keys alone, cheaply, before the rows.
    """
    digest = hashlib.sha256()
    for key in sorted(storage_keys):
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:32]


def with_corrections(version: str, corrections: Corrections | None) -> str:
    """``version`` of a series or instance whose study has ``corrections``
    (reconciliation): a link made or changed is a new version."""
    return version if corrections is None else f"{version}:{corrections.digest}"


def _version(rows: Sequence[InstanceRow], corrections: Corrections | None = None) -> str:
    return with_corrections(keys_version(row.storage_key for row in rows), corrections)


class MetadataService:
    """Instance documents from the store (built on demand), series joined and cached.

    Parameters
    ----------
    blobs, store
        The originals, and the precomputed documents.
    cache_bytes
        The joined series kept in memory, least recently used dropped first.
        A 300-slice CT series is about 1-2 MB.
    """

    def __init__(self, blobs: BlobStore, store: MetadataStore, cache_bytes: int = 256 << 20) -> None:
        self.blobs = blobs
        self.store = store
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, SeriesMetadata] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()

    # -- instances ---------------------------------------------------------------

    def build(self, storage_key: str, part10: bytes | None = None) -> bytes:
        """Build and store the document of ``storage_key`` (the decode stage's call)."""
        document = instance_document(part10 if part10 is not None else self.blobs.get(storage_key))
        self.store.put(storage_key, document)
        return document

    def _build_for(self, row: InstanceRow) -> bytes:
        try:
            return self.build(row.storage_key)
        except (ValueError, FileNotFoundError) as exc:
            # Ingest checked the dataset, so only a lost or damaged blob gets here.
            log.warning("metadata of key=%s built from the index (%s)", row.storage_key,
                        type(exc).__name__)  # fmt: skip
            return _fallback_document(row)

    def instance(self, row: InstanceRow) -> bytes:
        """The stored document of ``row``, built and saved if it is not there yet."""
        document = self.store.get(row.storage_key)
        return document if document is not None else self._build_for(row)

    def documents(self, rows: Sequence[InstanceRow]) -> list[bytes]:
        """The documents of ``rows``, in order; missing ones built and saved."""
        found = self.store.get_many([row.storage_key for row in rows])
        return [doc if doc is not None else self._build_for(row) for doc, row in zip(found, rows)]

    # -- series and studies ------------------------------------------------------

    def cached(self, series_uid: str, version: str) -> SeriesMetadata | None:
        """The cached join of ``series_uid`` if it is still at ``version`` (:func:`keys_version`)."""
        with self._lock:
            cached = self._cache.get(series_uid)
            if cached is None or cached.version != version:
                return None
            self._cache.move_to_end(series_uid)
            return cached

    def series(
        self,
        series_uid: str,
        rows: Sequence[InstanceRow],
        corrections: Corrections | None = None,
    ) -> SeriesMetadata:
        """The joined documents of one series' ``rows`` (in the order given), cached.

        ``corrections`` (the study's, :mod:`pipeline.retrieve.corrections`) are
        applied to every document of the join; the stored documents stay as
        the files are.
        """
        version = _version(rows, corrections)
        with self._lock:
            cached = self._cache.get(series_uid)
            if cached is not None and cached.version == version:
                self._cache.move_to_end(series_uid)
                return cached
        documents = self.documents(rows)
        if corrections is not None:
            documents = [corrections.patch_document(d) for d in documents]
        joined = SeriesMetadata(b",".join(documents), version, len(rows))
        with self._lock:
            previous = self._cache.pop(series_uid, None)
            if previous is not None:
                self._cached -= len(previous.members)
            if len(joined.members) <= self.cache_bytes:
                self._cache[series_uid] = joined
                self._cached += len(joined.members)
            while self._cached > self.cache_bytes and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cached -= len(dropped.members)
        return joined

    def grouped(
        self, rows: Iterable[InstanceRow], corrections: Corrections | None = None
    ) -> list[SeriesMetadata]:
        """:meth:`series` of every series among ``rows`` (a study), in order of appearance."""
        by_series: dict[str, list[InstanceRow]] = {}
        for row in rows:
            by_series.setdefault(row.series_instance_uid, []).append(row)
        return [self.series(uid, members, corrections) for uid, members in by_series.items()]

    def invalidate(self, series_uid: str | None = None) -> None:
        """Drop the cached join of one series (or of all)."""
        with self._lock:
            if series_uid is None:
                self._cache.clear()
                self._cached = 0
            else:
                dropped = self._cache.pop(series_uid, None)
                if dropped is not None:
                    self._cached -= len(dropped.members)


def json_array(parts: Iterable[bytes]) -> bytes:
    """``[part,part,...]`` of JSON texts, skipping empty ones."""
    return b"[" + b",".join(p for p in parts if p) + b"]"
