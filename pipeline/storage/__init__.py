"""Storage: original instances as blobs, decoded pixels as Zarr (and, later, renders)."""

from pipeline.storage.blobs import BlobStore, FsspecBlobStore, LocalBlobStore, new_storage_key, open_blob_store
from pipeline.storage.pixels import PixelStore, ZarrPixelStore, open_pixel_store

__all__ = [
    "BlobStore",
    "FsspecBlobStore",
    "LocalBlobStore",
    "PixelStore",
    "ZarrPixelStore",
    "new_storage_key",
    "open_blob_store",
    "open_pixel_store",
]
