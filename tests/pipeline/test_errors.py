"""The one error table: each domain error has a DIMSE and an HTTP status."""

from __future__ import annotations

import pytest

from pipeline import errors


def test_every_error_is_in_the_table() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.LightboxError) and obj is not errors.LightboxError
    }
    assert defined == set(errors.ERROR_TABLE)


@pytest.mark.parametrize(
    ("error", "dimse", "http"),
    [
        # PS3.4 B.2.3 C-STORE statuses; PS3.18 10.5.3 STOW-RS statuses.
        (errors.InvalidDataset, 0xC000, 400),
        (errors.DatasetMismatch, 0xA900, 409),
        (errors.DuplicateInstance, 0x0111, 409),
        (errors.OutOfResources, 0xA700, 503),
        (errors.TooLarge, 0xA700, 413),
    ],
)
def test_statuses(error: type[errors.LightboxError], dimse: int, http: int) -> None:
    assert errors.ERROR_TABLE[error] == (dimse, http)
    exc = error("a reason")
    assert (exc.dimse_status, exc.http_status, exc.reason) == (dimse, http, "a reason")
