"""Lightbox: a PACS. Ingest, storage, index, decode, render and annotate pipelines."""

__version__ = "0.1.0"
