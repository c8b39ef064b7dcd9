"""Retrieve: WADO-RS and DIMSE retrieval of stored instances (transcoding, metadata, frames)."""
