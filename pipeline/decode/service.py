"""The decode service: a queued instance's pixel data into its Zarr pixel store.

It takes ``decode`` work items that ingest committed with each instance
(:meth:`pipeline.index.protocol.Index.claim_work`). Each decode is idempotent:
the pixel store's write replaces a group atomically, and the index records the
outcome and closes the work item in one transaction, so a crash anywhere
leaves either the old state (the lease runs out, the item is decoded again) or
the new one. An instance that cannot be decoded keeps its original bytes, stays
retrievable, and is marked ``failed`` with the reason (``lightbox status``,
``lightbox redecode``).

Since the stage reads every stored instance with pixel data anyway, it also
writes the instance's WADO-RS metadata document (DICOM JSON, PS3.18 F.2) into
the metadata store (:mod:`pipeline.retrieve.metadata`), before decoding, so
that an instance whose pixels fail still gets one. Like the renders, it is a
cache: a failure is logged and the document is built on demand later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.decode.pixels import DecodedPixels, decode_instance
from pipeline.errors import DecodeFailed
from pipeline.index.protocol import Index
from pipeline.index.records import WorkItem
from pipeline.index.schema import PixelState
from pipeline.storage.blobs import BlobStore
from pipeline.render.precompute import precompute
from pipeline.retrieve.metadata import instance_document
from pipeline.storage.metadata import MetadataStore, open_metadata_store
from pipeline.storage.pixels import PixelStore, open_pixel_store
from pipeline.storage.renders import RenderStore, open_render_store

log = logging.getLogger(__name__)

STAGE = "decode"

#: After this many claims an item whose decode keeps failing unexpectedly
#: (not bad data: an exception we did not foresee) is marked failed. An item
#: claimed more often than this never returned from a decode at all: its
#: process died in it (a codec crashing on a hostile frame, killed for memory),
#: and it is marked failed without decoding it again, so that one instance
#: cannot take its worker down over and over.
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class DecodeOutcome:
    pk: int
    state: PixelState
    frames: int = 0
    reason: str | None = None


class DecodeService:
    """Decode claimed work items; see the module docstring.

    Parameters
    ----------
    index, blobs, pixels
        The stores: originals are read from ``blobs``, arrays written to ``pixels``.
    max_decoded_bytes
        Instances that would decode to more are refused (decompression bombs).
    """

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        pixels: PixelStore,
        max_decoded_bytes: int,
        renders: RenderStore | None = None,
        metadata: MetadataStore | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.pixels = pixels
        self.max_decoded_bytes = max_decoded_bytes
        self.renders = renders
        self.metadata = metadata

    @classmethod
    def from_settings(cls, settings: Settings, index: Index, blobs: BlobStore) -> DecodeService:
        """The service on the pixel store under ``settings``' storage URL."""
        url = settings.resolved_storage_url
        return cls(
            index,
            blobs,
            open_pixel_store(url),
            settings.max_decoded_bytes,
            open_render_store(url),
            open_metadata_store(url),
        )

    def decode(self, item: WorkItem) -> DecodeOutcome:
        """Decode one item and record the outcome (never raises for bad data)."""
        if item.attempts > MAX_ATTEMPTS:
            # Every earlier attempt ended without an outcome, the last one
            # (which records any exception) included: the process died in it.
            return self._failed(
                item, f"gave up after {item.attempts - 1} attempts: the decoding process died"
            )
        try:
            data = self.blobs.get(item.storage_key)
            self._metadata(item, data)
            decoded = decode_instance(data, self.max_decoded_bytes)
            self.pixels.write(item.storage_key, decoded.frames, decoded.description, decoded.luts)
            self._precompute(item, decoded)
        except DecodeFailed as exc:
            return self._failed(item, exc.reason)
        except Exception as exc:
            # Storage trouble is worth retrying: leave the item claimed, its
            # lease runs out and it comes back, until MAX_ATTEMPTS.
            if item.attempts < MAX_ATTEMPTS:
                raise
            return self._failed(item, f"gave up after {item.attempts} attempts: {type(exc).__name__}")
        self.index.finish_pixel_work(item.pk, item.sop_instance_uid, PixelState.READY)
        return DecodeOutcome(item.pk, PixelState.READY, frames=int(decoded.frames.shape[0]))

    def _precompute(self, item: WorkItem, decoded: DecodedPixels) -> None:
        """Default renders and thumbnails: a cache, so a failure only costs speed later."""
        if self.renders is None:
            return
        try:
            self.renders.delete(item.storage_key)
            precompute(self.renders, item.storage_key, decoded.frames, decoded.description, decoded.luts)
        except Exception as exc:  # rendered on demand instead
            log.warning("precomputed renders failed key=%s (%s)", item.storage_key, type(exc).__name__)

    def _metadata(self, item: WorkItem, data: bytes) -> None:
        """The instance's DICOM JSON document: a cache, so a failure only costs speed later."""
        if self.metadata is None:
            return
        try:
            self.metadata.put(item.storage_key, instance_document(data))
        except Exception as exc:  # built on demand by the metadata route instead
            log.warning("metadata document failed key=%s (%s)", item.storage_key, type(exc).__name__)

    def _failed(self, item: WorkItem, reason: str) -> DecodeOutcome:
        log.warning("decode failed key=%s reason=%s", item.storage_key, reason)
        self.index.finish_pixel_work(item.pk, item.sop_instance_uid, PixelState.FAILED, reason)
        return DecodeOutcome(item.pk, PixelState.FAILED, reason=reason)

    def run_once(self, limit: int = 16, lease_seconds: float = 300.0) -> list[DecodeOutcome]:
        """Claim up to ``limit`` items and decode them here (tests, ``lightbox decode``)."""
        return [self.decode(item) for item in self.index.claim_work(STAGE, limit, lease_seconds)]
