"""Decode stage: stored instances' pixel data into Zarr arrays (issue 3).

It consumes the ``decode`` work items that ingest commits with each instance
(:meth:`pipeline.index.protocol.Index.claim_work`).
"""
