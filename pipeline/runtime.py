"""Composition helpers: open the stores and services a process needs from its settings."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.index import SqlIndex, migrate
from pipeline.ingest.service import IngestService
from pipeline.security.accounts import AccountService
from pipeline.security.audit import AuditTrail
from pipeline.storage.blobs import BlobStore, open_blob_store
from pipeline.storage.pixels import PixelStore, open_pixel_store
from pipeline.storage.renders import RenderStore, open_render_store
from pipeline.worklist.registration import RegistrationService


@dataclass
class Runtime:
    settings: Settings
    index: SqlIndex
    blobs: BlobStore
    ingest: IngestService
    pixels: PixelStore
    renders: RenderStore
    audit: AuditTrail
    accounts: AccountService
    registration: RegistrationService

    def close(self) -> None:
        self.audit.close()
        self.index.close()


def open_runtime(settings: Settings, *, run_migrations: bool = False) -> Runtime:
    """Open the index and the stores; ``run_migrations`` brings the schema to head first."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if run_migrations:
        migrate(settings.resolved_index_url)
    index = SqlIndex(settings.resolved_index_url)
    blobs = open_blob_store(settings.resolved_storage_url)
    url = settings.resolved_storage_url
    return Runtime(
        settings,
        index,
        blobs,
        IngestService.from_settings(settings, index, blobs),
        open_pixel_store(url),
        open_render_store(url),
        AuditTrail.from_settings(settings, index),
        AccountService(index, settings),
        RegistrationService(index, settings.accession_format),
    )
