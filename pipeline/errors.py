"""Domain errors and the one table that maps each to a DIMSE and an HTTP status.

Protocol adapters (the SCPs, the HTTP routes, the CLI) catch
:class:`LightboxError` and translate it with :attr:`LightboxError.dimse_status`
or :attr:`LightboxError.http_status`; nothing else in the code picks a status.
"""

from __future__ import annotations

from typing import ClassVar


class LightboxError(Exception):
    """Base of every domain error; ``reason`` is safe to log (no PHI)."""

    #: DIMSE status (PS3.7 Annex C, PS3.4 B.2.3 for C-STORE).
    dimse_status: ClassVar[int] = 0xC000
    #: HTTP status (PS3.18 10.5.3 for STOW-RS).
    http_status: ClassVar[int] = 500
    #: STOW-RS Failure Reason (0008,1197) (PS3.18 Table 10.5.3-2 / PS3.4 B.2.3).
    failure_reason: ClassVar[int] = 0x0110

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidDataset(LightboxError):
    """The bytes are not a DICOM dataset we can parse (PS3.4 B.2.3 "Cannot understand")."""

    dimse_status = 0xC000
    http_status = 400
    failure_reason = 0xC000


class DatasetMismatch(LightboxError):
    """Required attributes missing or inconsistent with the request (A900H)."""

    dimse_status = 0xA900
    http_status = 409
    failure_reason = 0xA900


class StudyMismatch(LightboxError):
    """STOW-RS to a study URL with an instance of another study (PS3.18 10.5.3)."""

    dimse_status = 0xA900
    http_status = 409
    failure_reason = 0xA900


class DuplicateInstance(LightboxError):
    """Re-sent SOP Instance UID refused by the ``reject`` policy (0111H)."""

    dimse_status = 0x0111
    http_status = 409
    failure_reason = 0x0111


class TooLarge(LightboxError):
    """The dataset is over the configured size limit (out of resources, A700H)."""

    dimse_status = 0xA700
    http_status = 413
    failure_reason = 0xA700


class OutOfResources(LightboxError):
    """Storage or index unavailable: the instance was not stored (A700H, 503)."""

    dimse_status = 0xA700
    http_status = 503
    failure_reason = 0xA700


class NotFound(LightboxError):
    """No such resource."""

    dimse_status = 0xC000
    http_status = 404
    failure_reason = 0x0110


class DecodeFailed(LightboxError):
    """The stored pixel data cannot be decoded (the instance stays stored and retrievable)."""

    dimse_status = 0xC000
    http_status = 422
    failure_reason = 0x0110


class MissingDecoder(DecodeFailed):
    """No decoder installed for the transfer syntax; the reason names the package."""

    dimse_status = 0xC000
    http_status = 501
    failure_reason = 0x0110


class InvalidRequest(LightboxError):
    """A request's parameters are malformed or break a rule (a weak password, a bad name)."""

    dimse_status = 0xA900
    http_status = 400
    failure_reason = 0x0110


class AlreadyExists(LightboxError):
    """The thing to create exists already (a user name, a device)."""

    dimse_status = 0xA900
    http_status = 409
    failure_reason = 0x0110


class InvalidState(LightboxError):
    """The thing exists but its state forbids the change: a cancelled order
    rescheduled, a completed Performed Procedure Step set again (PS3.4 F.7.2.2:
    0110H Processing failure)."""

    dimse_status = 0x0110
    http_status = 409
    failure_reason = 0x0110


class AttributeRuleBroken(InvalidRequest):
    """A DIMSE-N attribute rule broken; ``keyword`` names the attribute, for the
    response's Attribute Identifier List (0000,1005) (PS3.7 C.4.2)."""

    def __init__(self, reason: str, keyword: str = "") -> None:
        super().__init__(reason)
        self.keyword = keyword


class MissingAttribute(AttributeRuleBroken):
    """An attribute the SOP Class requires is absent (0120H, PS3.7 C.4.2; PS3.4 F.7.2)."""

    dimse_status = 0x0120
    http_status = 400
    failure_reason = 0x0110


class MissingAttributeValue(MissingAttribute):
    """A type 1 attribute is present but empty (0121H, PS3.7 C.4.2)."""

    dimse_status = 0x0121


class InvalidAttributeValue(AttributeRuleBroken):
    """An attribute's value is not one the SOP Class allows, or the attribute
    may not be set by this operation (0106H, PS3.7 C.4.2; PS3.4 F.7.2)."""

    dimse_status = 0x0106
    http_status = 400
    failure_reason = 0x0110


class NoSuchInstance(NotFound):
    """A DIMSE-N operation names a SOP Instance that does not exist (0112H, PS3.7 C.4.2)."""

    dimse_status = 0x0112
    http_status = 404
    failure_reason = 0x0110


class NotAuthenticated(LightboxError):
    """No valid credential (HTTP 401). DIMSE 0124H: Refused, not authorized (PS3.7 C.5)."""

    dimse_status = 0x0124
    http_status = 401
    failure_reason = 0x0110


class Forbidden(LightboxError):
    """A valid credential whose role does not allow the call (HTTP 403, DIMSE 0124H)."""

    dimse_status = 0x0124
    http_status = 403
    failure_reason = 0x0110


#: The table, for documentation and tests: error class -> (DIMSE, HTTP).
ERROR_TABLE: dict[type[LightboxError], tuple[int, int]] = {
    cls: (cls.dimse_status, cls.http_status)
    for cls in (
        InvalidDataset,
        DatasetMismatch,
        StudyMismatch,
        DuplicateInstance,
        TooLarge,
        OutOfResources,
        NotFound,
        DecodeFailed,
        MissingDecoder,
        InvalidRequest,
        AlreadyExists,
        InvalidState,
        AttributeRuleBroken,
        MissingAttribute,
        MissingAttributeValue,
        InvalidAttributeValue,
        NoSuchInstance,
        NotAuthenticated,
        Forbidden,
    )
}
