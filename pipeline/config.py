"""Settings: one pydantic-settings object per process, made by :func:`get_settings`.

Every key is read from a ``LIGHTBOX_<KEY>`` environment variable, then from an
optional TOML file named by ``LIGHTBOX_CONFIG``, then from the defaults below.
``lightbox.example.toml`` at the top of the repository documents every key.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class DuplicatePolicy(str, Enum):
    """What a re-sent SOP Instance UID does (see README, "Re-sent instances").

    ``keep``: the first stored copy stays; the re-send is answered Success and
    logged (what Orthanc and dcm4chee do by default, so that a modality's retry
    queue does not block). ``replace``: the new copy replaces the old one
    atomically. ``reject``: the re-send is refused with status 0111H
    (Duplicate SOP Instance, PS3.7 C.4.2). An identical re-send (same SHA-256)
    is always Success and changes nothing.
    """

    KEEP = "keep"
    REPLACE = "replace"
    REJECT = "reject"


class Settings(BaseSettings):
    """Lightbox settings. See ``lightbox.example.toml`` for each key."""

    model_config = SettingsConfigDict(env_prefix="LIGHTBOX_", extra="forbid")

    data_dir: Path = Field(Path("./lightbox-data"), description="Root for all local data.")
    storage_url: str | None = Field(
        None,
        description="fsspec URL of the blob store; default file://<data_dir>/blobs.",
    )
    index_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the index; default sqlite:///<data_dir>/index.sqlite.",
    )
    ae_title: str = Field("LIGHTBOX", description="Our AE title (called AE checked).")
    dicom_host: str = Field("0.0.0.0", description="Address the DICOM SCP listens on.")
    dicom_port: int = Field(11112, ge=0, le=65535)
    allowed_calling_aes: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Calling AE titles allowed to associate; '*' allows any.",
    )
    require_called_ae: bool = Field(True, description="Refuse associations to another AE title.")
    accept_unknown_sop_classes: bool = Field(
        False,
        description="Store instances of SOP classes pynetdicom does not know (private ones).",
    )
    max_associations: int = Field(64, ge=1, description="Concurrent associations per actor.")
    max_pdu_size: int = Field(262144, ge=0, description="Max PDU we receive (0: unlimited).")
    network_timeout: float = Field(60.0, gt=0, description="Seconds of silence before abort.")
    max_dataset_bytes: int = Field(
        2 * 1024**3, gt=0, description="Largest dataset accepted by STOW-RS and import."
    )
    max_request_bytes: int = Field(
        4 * 1024**3, gt=0, description="Largest STOW-RS request body (all parts together)."
    )
    duplicate_policy: DuplicatePolicy = Field(DuplicatePolicy.KEEP)
    ingest_actors: int = Field(
        default_factory=lambda: max(4, os.cpu_count() or 1),
        ge=1,
        description="Ingest actors (processes) sharing the DICOM port.",
    )
    decode_actors: int = Field(
        default_factory=lambda: max(1, (os.cpu_count() or 1) - 1),
        ge=1,
        description="Decode actors (one CPU each) turning stored pixel data into Zarr.",
    )
    max_decoded_bytes: int = Field(
        4 * 1024**3,
        gt=0,
        description="Largest decoded pixel array accepted (a decompression bomb guard).",
    )
    max_sequence_depth: int = Field(
        16, ge=1, le=64, description="Deepest nesting of sequences accepted in a dataset."
    )
    render_cache_bytes: int = Field(
        256 * 1024**2,
        ge=0,
        description="Recent on-demand renders kept in memory per HTTP process; 0: none.",
    )
    render_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        description="On-demand renders running at once over all HTTP processes; more wait.",
    )
    render_inline_pixels: int = Field(
        1024 * 1024,
        ge=0,
        description=(
            "On-demand renders of frames of at most this many pixels run on the HTTP "
            "process's event loop, not in a worker thread, when the pixel and render "
            "stores are local files; 0: always a worker thread."
        ),
    )
    http_host: str = Field("127.0.0.1", description="Address the HTTP API listens on.")
    http_port: int = Field(8080, ge=0, le=65535)
    http_workers: int = Field(
        default_factory=lambda: max(1, min(8, os.cpu_count() or 1)),
        ge=1,
        le=64,
        description="HTTP processes sharing the HTTP port (one GIL each).",
    )
    # -- security: transport ------------------------------------------------
    http_tls_cert: Path | None = Field(None, description="PEM certificate (chain): HTTPS.")
    http_tls_key: Path | None = Field(None, description="PEM private key of http_tls_cert.")
    dicom_tls_cert: Path | None = Field(
        None, description="PEM certificate: the DICOM port speaks TLS only (PS3.15 B.1)."
    )
    dicom_tls_key: Path | None = Field(None, description="PEM private key of dicom_tls_cert.")
    dicom_tls_ca: Path | None = Field(
        None, description="PEM CA bundle: DICOM peers must present a certificate it signed."
    )
    max_associations_per_peer: int = Field(
        16, ge=1, description="Concurrent DICOM associations from one network address."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins allowed cross-origin (CORS)."
    )
    # -- security: accounts and credentials ----------------------------------
    session_minutes: int = Field(480, ge=1, description="Life of a web login session.")
    token_minutes: int = Field(60, ge=1, description="Life of an OAuth2 bearer token.")
    login_max_failures: int = Field(
        5, ge=1, description="Failed logins in a row before the account is locked for a while."
    )
    login_lockout_seconds: int = Field(300, ge=1, description="How long a lock lasts.")
    credential_cache_seconds: float = Field(
        5.0, ge=0, description="How long a checked credential is trusted without the database."
    )
    referring_own_studies_only: bool = Field(
        True,
        description="Referring physicians read only studies naming them as referring physician.",
    )
    # -- registration -------------------------------------------------------
    accession_format: str = Field(
        "{date:%Y%m%d}{counter:04d}",
        description="Accession numbers the registration generates: {date} and {counter}.",
    )
    # -- HL7 v2 intake (MLLP) -------------------------------------------------
    hl7_host: str = Field(
        "127.0.0.1", description="Address the HL7 MLLP listener listens on (no authentication)."
    )
    hl7_port: int = Field(
        2575, ge=0, le=65535, description="HL7 MLLP port (2575, IANA 'hl7'); 0 disables it."
    )
    hl7_max_message_bytes: int = Field(
        1024**2, ge=1024, description="Largest HL7 message read; a longer one is answered AR."
    )
    # -- security: audit trail ------------------------------------------------
    audit_syslog_url: str | None = Field(
        None, description="IHE ATNA audit repository: udp://, tcp:// or tls://host:port."
    )
    audit_source_id: str = Field(
        "", description="Audit Source ID of our ATNA messages; default: the AE title."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address; empty starts an embedded local Ray."
    )
    log_level: str = Field("INFO")

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        # PS3.5 6.2: AE is 16 characters at most, no backslash or control characters.
        value = value.strip()
        if not value or len(value) > 16 or "\\" in value or not value.isprintable():
            raise ValueError("an AE title is 1 to 16 printable characters without '\\'")
        return value

    @field_validator("accession_format")
    @classmethod
    def _check_accession_format(cls, value: str) -> str:
        from pipeline.worklist.accession import check_format

        return check_format(value)

    @model_validator(mode="after")
    def _check_pairs(self) -> Settings:
        for cert, key in (("http_tls_cert", "http_tls_key"), ("dicom_tls_cert", "dicom_tls_key")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} are set together")
        if self.dicom_tls_ca is not None and self.dicom_tls_cert is None:
            raise ValueError("dicom_tls_ca needs dicom_tls_cert and dicom_tls_key")
        return self

    @property
    def resolved_storage_url(self) -> str:
        return self.storage_url or f"file://{(self.data_dir / 'blobs').resolve()}"

    @property
    def resolved_index_url(self) -> str:
        return self.index_url or f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("LIGHTBOX_CONFIG")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"LIGHTBOX_CONFIG names a missing file: {config_file}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


def get_settings(**overrides: Any) -> Settings:
    """Make the process's settings; keyword overrides win over every source."""
    return Settings(**overrides)
