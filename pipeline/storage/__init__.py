"""Blob storage of original instances (and, later, Zarr pixels and renders)."""

from pipeline.storage.blobs import BlobStore, FsspecBlobStore, LocalBlobStore, new_storage_key, open_blob_store

__all__ = ["BlobStore", "FsspecBlobStore", "LocalBlobStore", "new_storage_key", "open_blob_store"]
