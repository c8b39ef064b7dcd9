"""Password hashing with argon2id (argon2-cffi), and the password policy."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# argon2-cffi's defaults follow RFC 9106's second recommendation (64 MiB, t=3).
_HASHER = PasswordHasher()

#: NIST SP 800-63B 5.1.1.2: at least 8 characters; we ask 10, and cap the
#: length so that a megabyte "password" cannot tie up the hasher.
MIN_LENGTH = 10
MAX_LENGTH = 256


class WeakPassword(ValueError):
    """The password does not meet the policy; the message says why."""


def check_policy(password: str, username: str = "") -> None:
    """Raise :class:`WeakPassword` unless ``password`` meets the policy."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password has at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")
    if username and password.lower() == username.lower():
        raise WeakPassword("a password must differ from the user name")
    if len(set(password)) < 4:
        raise WeakPassword("a password needs at least 4 different characters")


def hash_password(password: str) -> str:
    """The argon2id PHC string of ``password``."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``stored_hash`` (False for no hash or a bad one)."""
    if not stored_hash or len(password) > MAX_LENGTH:
        # Spend the same time as a real check: no user-enumeration by timing.
        _HASHER.hash("timing-equaliser")
        return False
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """Whether the hash was made with older parameters than today's."""
    return _HASHER.check_needs_rehash(stored_hash)


def one_time_password() -> str:
    """A random password for a first login (about 120 bits, URL-safe)."""
    return secrets.token_urlsafe(15)
