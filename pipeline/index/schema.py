"""Tables of the index (SQLAlchemy Core). Alembic migrations create them.

The attributes are those C-FIND matches and returns at each level
(PS3.4 C.6.1.1.2-5, Patient Root and Study Root) and those QIDO-RS requires
(PS3.18 10.6.3.3): they are kept in columns so that a search never opens a file.
``patient_name_search`` holds the name upper-cased for the case-insensitive
matching of PN that PS3.4 C.2.2.2.1 allows.
"""

from __future__ import annotations

import enum

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class PixelState(str, enum.Enum):
    """Where the decode stage stands for an instance."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    NONE = "none"  # no pixel data (SR, PDF, waveform...)


class WorkState(str, enum.Enum):
    PENDING = "pending"
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


UID = String(64)  # PS3.5 6.2: UI is at most 64 characters.

patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", String, nullable=False, default=""),
    Column("issuer_of_patient_id", String, nullable=False, default=""),
    Column("patient_name", String, nullable=False, default=""),
    Column("patient_name_search", String, nullable=False, default=""),
    Column("patient_birth_date", String, nullable=False, default=""),
    Column("patient_sex", String, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("patient_id", "issuer_of_patient_id"),
    Index(None, "patient_name_search"),
)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("patient_pk", ForeignKey("patients.pk"), nullable=False, index=True),
    Column("study_date", String, nullable=False, default=""),
    Column("study_time", String, nullable=False, default=""),
    Column("accession_number", String, nullable=False, default=""),
    Column("study_id", String, nullable=False, default=""),
    Column("study_description", String, nullable=False, default=""),
    Column("referring_physician_name", String, nullable=False, default=""),
    # person_name_key(referring_physician_name): the referring physician's
    # scope (api.access) and case-insensitive PN matching select on it.
    Column("referring_physician_search", String, nullable=False, default=""),
    Column("modalities_in_study", String, nullable=False, default=""),
    Column("number_of_series", Integer, nullable=False, default=0),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "study_date"),
    Index(None, "accession_number"),
    Index(None, "referring_physician_search"),
)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_instance_uid", UID, nullable=False, unique=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False, index=True),
    Column("modality", String, nullable=False, default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", String, nullable=False, default=""),
    Column("series_date", String, nullable=False, default=""),
    Column("series_time", String, nullable=False, default=""),
    Column("body_part_examined", String, nullable=False, default=""),
    Column("performed_procedure_step_start_date", String, nullable=False, default=""),
    Column("performed_procedure_step_start_time", String, nullable=False, default=""),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "modality"),
)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("series_pk", ForeignKey("series.pk"), nullable=False, index=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("number_of_frames", Integer, nullable=True),
    Column("bits_allocated", Integer, nullable=True),
    Column("photometric_interpretation", String, nullable=False, default=""),
    Column("content_date", String, nullable=False, default=""),
    Column("content_time", String, nullable=False, default=""),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("storage_key", String(128), nullable=False, unique=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("calling_ae", String, nullable=False, default=""),
    Column("source", String, nullable=False),
    Column(
        "pixel_state",
        Enum(PixelState, name="pixel_state", values_callable=lambda e: [m.value for m in e]),
        nullable=False,
    ),
    Column("pixel_error", Text, nullable=True),
)

work_items = Table(
    "work_items",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("instance_pk", ForeignKey("instances.pk", ondelete="CASCADE"), nullable=False),
    Column("stage", String(32), nullable=False),
    Column(
        "state",
        Enum(WorkState, name="work_state", values_callable=lambda e: [m.value for m in e]),
        nullable=False,
    ),
    Column("attempts", Integer, nullable=False, default=0),
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "stage", "state"),
    Index(None, "instance_pk"),
)

# -- security: accounts, credentials and the audit trail ---------------------
# They share the index's database so that one backup and one migration history
# cover everything; they are reached through their own services
# (pipeline.security), never through the Index protocol.

users = Table(
    "users",
    metadata,
    Column("pk", Integer, primary_key=True),
    # Stored lower-case: user names compare case-insensitively.
    Column("username", String(64), nullable=False, unique=True),
    Column("display_name", String, nullable=False, default=""),
    Column("role", String(32), nullable=False),
    # argon2id (PHC string); NULL for an account that signs in only with API keys.
    Column("password_hash", String, nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("must_change_password", Boolean, nullable=False, default=False),
    # For a referring physician: the Referring Physician's Name (PN, as the
    # studies carry it) whose studies the account may read when the
    # ``referring_own_studies_only`` setting is on.
    Column("referring_physician_name", String, nullable=False, default=""),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("pk", Integer, primary_key=True),
    # A credential is "<token_id>.<secret>": the id finds the row, the secret
    # is kept only as its SHA-256 (it has 256 bits of entropy: no slow hash needed).
    Column("token_id", String(32), nullable=False, unique=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("user_pk", ForeignKey("users.pk", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # session | bearer | apikey
    Column("name", String, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("pk", Integer, primary_key=True),
    # When the (first of the coalesced) event(s) happened, and the last one.
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("last_time", DateTime(timezone=True), nullable=False),
    Column("count", Integer, nullable=False, default=1),
    # DICOM PS3.15 A.5.3 / PS3.16 CID 400 EventID code (e.g. "110104") and,
    # where the event has one, its EventTypeCode (CID 401, e.g. "110122" Login).
    Column("event_id", String(16), nullable=False),
    Column("event_type_code", String(16), nullable=False, default=""),
    # RFC 3881 EventActionCode C, R, U, D, E and EventOutcomeIndicator 0/4/8/12.
    Column("action", String(1), nullable=False),
    Column("outcome", Integer, nullable=False, default=0),
    Column("actor_kind", String(8), nullable=False),  # user | ae | system
    Column("actor", String, nullable=False, default=""),
    Column("role", String(32), nullable=False, default=""),
    Column("source_address", String, nullable=False, default=""),
    Column("destination", String, nullable=False, default=""),
    Column("patient_id", String, nullable=False, default=""),
    Column("study_instance_uid", String(64), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
    Index(None, "event_time"),
    Index(None, "patient_id"),
    Index(None, "actor"),
    Index(None, "study_instance_uid"),
)


# -- remote application entities (devices) ------------------------------------


class DeviceSetup(str, enum.Enum):
    """How a device works with the archive (see README, "Devices").

    ``bi-directional``: worklist, MPPS, storage commitment, query/retrieve and
    storage. ``uni-directional``: the device only sends (C-ECHO, C-STORE);
    its studies are reconciled to orders.
    """

    BI_DIRECTIONAL = "bi-directional"
    UNI_DIRECTIONAL = "uni-directional"


devices = Table(
    "devices",
    metadata,
    Column("pk", Integer, primary_key=True),
    # PS3.5 6.2 AE: 16 characters at most; unique (C-MOVE destinations are named by it).
    Column("ae_title", String(16), nullable=False, unique=True),
    Column("host", String, nullable=False, default=""),
    Column("port", Integer, nullable=True),
    Column("setup", String(32), nullable=False),
    # Comma-separated DIMSE services the device may use (echo, store, find,
    # move, get, commitment, worklist, mpps); empty: those of its setup.
    Column("services", String, nullable=False, default=""),
    # Whether we open TLS connections to it (C-MOVE sub-operations, N-EVENT-REPORT).
    Column("tls", Boolean, nullable=False, default=False),
    Column("description", String, nullable=False, default=""),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# -- registration: patients, orders, scheduled and performed steps -------------
# The front of the workflow (pipeline.worklist): what the registration desk,
# HL7 and the modalities' MPPS write, and what the Modality Worklist answers
# from. ``registered_patients`` is the registration's own record of a patient
# (the demographics as registered); ``patients`` above stays what the received
# instances say. Rows are written by pipeline.worklist through
# SqlIndex.write_transaction(), each change with its row in
# ``registration_history`` in the same transaction.


class OrderState(str, enum.Enum):
    """Where an order (a "bill", one Accession Number) stands.

    Follows its steps' MPPS (PS3.4 F.7.1): SCHEDULED until a step starts,
    IN_PROGRESS while one runs, COMPLETED or DISCONTINUED when the steps are
    done; CANCELLED by the registration (an HL7 cancel, an API call).
    """

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELLED = "CANCELLED"


class StepStatus(str, enum.Enum):
    """Scheduled Procedure Step Status (0040,0020), PS3.3 C.4.10 defined terms."""

    SCHEDULED = "SCHEDULED"
    ARRIVED = "ARRIVED"
    READY = "READY"
    STARTED = "STARTED"
    DEPARTED = "DEPARTED"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"
    CANCELED = "CANCELED"  # sic: the standard's spelling


class PerformedStatus(str, enum.Enum):
    """Performed Procedure Step Status (0040,0252), PS3.3 C.4.14 enumerated values."""

    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


registered_patients = Table(
    "registered_patients",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer_of_patient_id", String(64), nullable=False, default=""),
    Column("patient_name", String, nullable=False, default=""),
    # person_name_key(patient_name): case-insensitive matching (PS3.4 C.2.2.2.1)
    # and the duplicate check.
    Column("patient_name_search", String, nullable=False, default=""),
    Column("patient_birth_date", String(8), nullable=False, default=""),
    Column("patient_sex", String(1), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("patient_id", "issuer_of_patient_id"),
    Index(None, "patient_name_search", "patient_birth_date"),
)

orders = Table(
    "orders",
    metadata,
    Column("pk", Integer, primary_key=True),
    # PS3.5 6.2 SH: 16 characters at most. One per order (IHE RAD TF-1 4.2.1).
    Column("accession_number", String(16), nullable=False, unique=True),
    Column("patient_pk", ForeignKey("registered_patients.pk"), nullable=False, index=True),
    Column("placer_order_number", String(64), nullable=False, default=""),
    Column("referring_physician_name", String, nullable=False, default=""),
    Column("referring_physician_search", String, nullable=False, default=""),
    Column("reason", String, nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "state"),
)

requested_procedures = Table(
    "requested_procedures",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("order_pk", ForeignKey("orders.pk"), nullable=False, index=True),
    # Requested Procedure ID (0040,1001), SH.
    Column("requested_procedure_id", String(16), nullable=False, unique=True),
    Column("description", String, nullable=False, default=""),
    # Requested Procedure Code Sequence (0032,1064): one item.
    Column("code_value", String, nullable=False, default=""),
    Column("coding_scheme", String, nullable=False, default=""),
    Column("code_meaning", String, nullable=False, default=""),
    # Generated when the order is made, so that the images the modality
    # makes carry it (IHE RAD TF-2 4.5.4.1.2.2).
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

scheduled_procedure_steps = Table(
    "scheduled_procedure_steps",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column(
        "procedure_pk", ForeignKey("requested_procedures.pk"), nullable=False, index=True
    ),
    # Scheduled Procedure Step ID (0040,0009), SH.
    Column("sps_id", String(16), nullable=False, unique=True),
    Column("modality", String(16), nullable=False),
    Column("station_ae_title", String(16), nullable=False, default=""),
    Column("station_name", String(16), nullable=False, default=""),
    # DA and TM strings (YYYYMMDD, HHMMSS): range matching is a string
    # comparison, as in the studies table (pipeline.query.matching).
    Column("start_date", String(8), nullable=False),
    Column("start_time", String(16), nullable=False, default=""),
    Column("performing_physician_name", String, nullable=False, default=""),
    Column("description", String, nullable=False, default=""),
    # Scheduled Protocol Code Sequence (0040,0008): one item.
    Column("protocol_code_value", String, nullable=False, default=""),
    Column("protocol_coding_scheme", String, nullable=False, default=""),
    Column("protocol_code_meaning", String, nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "start_date"),
    Index(None, "station_ae_title"),
)

performed_procedure_steps = Table(
    "performed_procedure_steps",
    metadata,
    Column("pk", Integer, primary_key=True),
    # Affected SOP Instance UID of the N-CREATE (PS3.4 F.7.2.1).
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    # The scheduled step and order it reports on, when it names one (an
    # unscheduled procedure names none, IHE RAD TF-2 4.6.4.1.2.2).
    Column("sps_pk", ForeignKey("scheduled_procedure_steps.pk"), nullable=True, index=True),
    Column("order_pk", ForeignKey("orders.pk"), nullable=True, index=True),
    Column("calling_ae", String(16), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("study_instance_uid", String(64), nullable=False, default=""),
    Column("start_date", String(8), nullable=False, default=""),
    Column("start_time", String(16), nullable=False, default=""),
    Column("end_date", String(8), nullable=False, default=""),
    Column("end_time", String(16), nullable=False, default=""),
    # Every attribute the modality sent, merged over N-CREATE and N-SETs, as
    # DICOM JSON (PS3.18 F.2).
    Column("attributes", Text, nullable=False, default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

registration_history = Table(
    "registration_history",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("event_time", DateTime(timezone=True), nullable=False),
    # "user:<name>", "ae:<AE title>" or "hl7:<sending application>".
    Column("actor", String, nullable=False),
    # patient | order | procedure | step | mpps, and the row's pk.
    Column("entity", String(16), nullable=False),
    Column("entity_pk", Integer, nullable=False),
    Column("action", String(16), nullable=False),  # create | update | cancel | ...
    # The row's fields before and after (JSON objects; null for a creation).
    Column("before", Text, nullable=True),
    Column("after", Text, nullable=True),
    Index(None, "entity", "entity_pk"),
    Index(None, "event_time"),
)

#: Named counters (accession numbers, procedure and step IDs): the next value
#: is taken in the writer's transaction, so that two registrations never get one.
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)


# -- reconciliation: which order a stored study belongs to ----------------------
# Written by pipeline.worklist.reconcile once per study, after the study's first
# instance is committed (IHE RAD TF-1 4: Scheduled Workflow links the images to
# the order; TF-1 5 Patient Information Reconciliation corrects the rest). A
# study without a row has not been looked at yet.


class LinkState(str, enum.Enum):
    """Whether a stored study is linked to an order."""

    LINKED = "linked"
    #: No order matched: the study is on the reconciliation list.
    UNMATCHED = "unmatched"


study_links = Table(
    "study_links",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", ForeignKey("studies.pk", ondelete="CASCADE"), nullable=False, unique=True),
    Column("order_pk", ForeignKey("orders.pk"), nullable=True, index=True),
    Column("state", String(16), nullable=False),
    # study_uid | accession | patient_modality_date | manual, "" when unmatched.
    Column("method", String(32), nullable=False, default=""),
    # Why no order matched (no candidate, several candidates), for the list.
    Column("reason", String, nullable=False, default=""),
    # "system" for the automatic link, "user:<name>" for a manual one.
    Column("actor", String, nullable=False, default=""),
    # The patient and study attributes the index held before the first
    # correction (JSON): what the modality sent, kept for the reviewer.
    Column("received", Text, nullable=False, default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(None, "state"),
)
