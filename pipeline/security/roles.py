"""Roles and permissions: the one table that says who may do what.

Every HTTP route names the :class:`Permission` it needs (``api.auth.require``);
a role grants a set of permissions (:data:`ROLE_PERMISSIONS`). The README's
"Roles" table is generated from here (``lightbox roles``) and a test keeps the
two equal. Only ``/health`` and the login routes need no permission.
"""

from __future__ import annotations

import enum


class Role(str, enum.Enum):
    """The roles of a Lightbox account."""

    ADMINISTRATOR = "administrator"
    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    REFERRING_PHYSICIAN = "referring_physician"


class Permission(str, enum.Enum):
    """What a route or service call needs. The value is what docs and tokens show."""

    #: Images, renders, thumbnails, tiles, metadata, instance records (QIDO/WADO).
    READ_IMAGES = "images:read"
    #: STOW-RS and other ways of adding instances over HTTP.
    STORE_IMAGES = "images:store"
    #: Archive counts and pipeline failures (``/api/status``).
    READ_ARCHIVE_STATUS = "archive:status"
    #: Export studies out of the archive (download, C-MOVE to a new destination).
    EXPORT_IMAGES = "images:export"
    #: Delete studies, series or instances.
    DELETE_IMAGES = "images:delete"
    #: Annotations and measurements.
    ANNOTATE = "annotations:write"
    #: Write and sign reports.
    REPORT = "reports:write"
    #: Register patients and orders, link unmatched studies.
    REGISTER = "registration:write"
    #: Users, roles and API keys.
    MANAGE_USERS = "users:manage"
    #: Remote AEs (devices) and their setup.
    MANAGE_DEVICES = "devices:manage"
    #: Read the audit trail.
    READ_AUDIT = "audit:read"


_ALL = frozenset(Permission)

#: Role -> permissions. A referring physician reads only; with the setting
#: ``referring_own_studies_only`` only the studies whose Referring Physician's
#: Name is the account's (see :mod:`api.auth`).
ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMINISTRATOR: _ALL,
    Role.RADIOLOGIST: frozenset(
        {
            Permission.READ_IMAGES,
            Permission.READ_ARCHIVE_STATUS,
            Permission.EXPORT_IMAGES,
            Permission.ANNOTATE,
            Permission.REPORT,
        }
    ),
    Role.TECHNOLOGIST: frozenset(
        {
            Permission.READ_IMAGES,
            Permission.STORE_IMAGES,
            Permission.READ_ARCHIVE_STATUS,
            Permission.ANNOTATE,
            Permission.REGISTER,
        }
    ),
    Role.REFERRING_PHYSICIAN: frozenset({Permission.READ_IMAGES}),
}


def allows(role: Role | str, permission: Permission) -> bool:
    """Whether ``role`` grants ``permission`` (an unknown role grants nothing)."""
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


def permission_table() -> str:
    """The role/permission table as Markdown (for the README and ``lightbox roles``)."""
    roles = list(Role)
    lines = [
        "| permission | " + " | ".join(r.value for r in roles) + " |",
        "|---|" + "---|" * len(roles),
    ]
    for permission in Permission:
        marks = ["yes" if permission in ROLE_PERMISSIONS[r] else "" for r in roles]
        lines.append(f"| `{permission.value}` | " + " | ".join(marks) + " |")
    return "\n".join(lines)
