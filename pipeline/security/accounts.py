"""Accounts and credentials: users, web sessions, OAuth2 bearer tokens, API keys.

A credential handed out is ``<prefix><token_id>.<secret>``: ``lbs_`` for a web
session (cookie), ``lbt_`` for a bearer token (OAuth2 password grant, RFC 6749
4.3), ``lbk_`` for an API key (devices, scripts). The database keeps the
token id and the SHA-256 of the secret, never the secret: a stolen database
backup holds no usable credential. Passwords are argon2id
(:mod:`pipeline.security.passwords`).

Resolving a credential costs one indexed SELECT; a resolved credential is
trusted for ``credential_cache_seconds`` without asking again, so that a
viewer fetching hundreds of tiles does not pay a query each. A revocation
therefore takes effect within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, update

from pipeline.errors import AlreadyExists, InvalidRequest, NotAuthenticated, NotFound
from pipeline.index.schema import auth_tokens, users
from pipeline.security.passwords import (
    WeakPassword,
    check_policy,
    hash_password,
    needs_rehash,
    one_time_password,
    verify_password,
)
from pipeline.security.roles import Role

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.index.sql import SqlIndex

#: Credential kinds and their prefixes.
SESSION, BEARER, API_KEY = "session", "bearer", "apikey"
_PREFIX = {SESSION: "lbs_", BEARER: "lbt_", API_KEY: "lbk_"}
_KIND_OF_PREFIX = {v: k for k, v in _PREFIX.items()}

_USERNAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_CREDENTIAL = re.compile(r"(lb[stk]_)([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")

#: The account ``ensure_first_administrator`` creates.
FIRST_ADMINISTRATOR = "admin"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class User:
    """An account, without its password hash."""

    pk: int
    username: str
    display_name: str
    role: Role
    active: bool
    must_change_password: bool
    referring_physician_name: str
    has_password: bool
    locked_until: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: the account and the credential it came with."""

    user_pk: int
    username: str
    role: Role
    referring_physician_name: str
    must_change_password: bool
    kind: str  # SESSION, BEARER or API_KEY
    token_id: str


@dataclass(frozen=True)
class IssuedCredential:
    """A credential just made: ``secret`` is shown once and never stored."""

    token_id: str
    secret: str
    kind: str
    expires_at: datetime | None


@dataclass(frozen=True)
class ApiKey:
    token_id: str
    name: str
    created_at: datetime
    revoked: bool


def normalise_username(username: str) -> str:
    """The stored form of a user name; raises InvalidRequest for a malformed one."""
    name = username.strip().lower()
    if not _USERNAME.fullmatch(name):
        raise InvalidRequest(
            "a user name is 1 to 64 characters: letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return name


class AccountService:
    """Users and credentials in the index's database.

    Parameters
    ----------
    index
        The index whose database holds ``users`` and ``auth_tokens``.
    settings
        For lifetimes (``session_minutes``, ``token_minutes``), the lockout
        (``login_max_failures``, ``login_lockout_seconds``) and the cache.
    """

    def __init__(self, index: SqlIndex, settings: Settings) -> None:
        self.index = index
        self.engine = index.engine
        self.settings = settings
        self._cache: OrderedDict[str, tuple[Principal, float, datetime | None]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = 10_000

    # -- users ----------------------------------------------------------------

    def _user(self, row: Any) -> User:
        return User(
            pk=row.pk,
            username=row.username,
            display_name=row.display_name,
            role=Role(row.role),
            active=bool(row.active),
            must_change_password=bool(row.must_change_password),
            referring_physician_name=row.referring_physician_name,
            has_password=row.password_hash is not None,
            locked_until=_utc(row.locked_until),
            created_at=_utc(row.created_at),  # type: ignore[arg-type]
        )

    def create_user(
        self,
        username: str,
        role: Role | str,
        *,
        password: str | None = None,
        display_name: str = "",
        referring_physician_name: str = "",
        must_change_password: bool = False,
    ) -> User:
        """Create an account. ``password`` None makes an account that signs in
        with API keys only (a device, a script)."""
        name = normalise_username(username)
        try:
            role = Role(role)
        except ValueError:
            raise InvalidRequest(f"no such role; roles: {', '.join(r.value for r in Role)}") from None
        password_hash = None
        if password is not None:
            try:
                check_policy(password, name)
            except WeakPassword as exc:
                raise InvalidRequest(str(exc)) from None
            password_hash = hash_password(password)
        now = _now()
        with self.index.write_transaction() as conn:
            if conn.execute(select(users.c.pk).where(users.c.username == name)).first():
                raise AlreadyExists("a user of that name exists")
            conn.execute(
                insert(users).values(
                    username=name,
                    display_name=display_name,
                    role=role.value,
                    password_hash=password_hash,
                    active=True,
                    must_change_password=must_change_password,
                    referring_physician_name=referring_physician_name,
                    failed_logins=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        return self.get_user(name)

    def get_user(self, username: str) -> User:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(users).where(users.c.username == normalise_username(username))
            ).first()
        if row is None:
            raise NotFound("no such user")
        return self._user(row)

    def list_users(self) -> list[User]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.username)).all()
        return [self._user(r) for r in rows]

    def count_users(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(users)).scalar_one())

    def update_user(
        self,
        username: str,
        *,
        role: Role | str | None = None,
        active: bool | None = None,
        display_name: str | None = None,
        referring_physician_name: str | None = None,
    ) -> User:
        """Change an account's attributes; disabling it revokes its credentials."""
        values: dict[str, Any] = {}
        if role is not None:
            try:
                values["role"] = Role(role).value
            except ValueError:
                raise InvalidRequest("no such role") from None
        if active is not None:
            values["active"] = active
            if active:
                values["failed_logins"] = 0
                values["locked_until"] = None
        if display_name is not None:
            values["display_name"] = display_name
        if referring_physician_name is not None:
            values["referring_physician_name"] = referring_physician_name
        user = self.get_user(username)
        if values:
            values["updated_at"] = _now()
            with self.index.write_transaction() as conn:
                stays_admin = values.get("active", user.active) and values.get(
                    "role", user.role.value
                ) == Role.ADMINISTRATOR.value
                if user.role is Role.ADMINISTRATOR and user.active and not stays_admin:
                    others = conn.execute(
                        select(func.count())
                        .select_from(users)
                        .where(
                            (users.c.role == Role.ADMINISTRATOR.value)
                            & users.c.active
                            & (users.c.pk != user.pk)
                        )
                    ).scalar_one()
                    if not others:
                        # Nobody could manage accounts any more (the first-start
                        # administrator is only made on an empty database).
                        raise InvalidRequest(
                            "the last active administrator cannot be disabled or given another role"
                        )
                conn.execute(update(users).where(users.c.pk == user.pk).values(**values))
                if active is False or role is not None:
                    # A changed role must not live on in credentials issued before.
                    self._revoke_where(conn, auth_tokens.c.user_pk == user.pk)
            self._forget_user(user.pk)
        return self.get_user(username)

    def set_password(
        self, username: str, password: str, *, must_change_password: bool = False
    ) -> None:
        """Set a password (policy checked); ends the account's sessions and tokens."""
        user = self.get_user(username)
        try:
            check_policy(password, user.username)
        except WeakPassword as exc:
            raise InvalidRequest(str(exc)) from None
        with self.index.write_transaction() as conn:
            conn.execute(
                update(users)
                .where(users.c.pk == user.pk)
                .values(
                    password_hash=hash_password(password),
                    must_change_password=must_change_password,
                    failed_logins=0,
                    locked_until=None,
                    updated_at=_now(),
                )
            )
            self._revoke_where(
                conn,
                (auth_tokens.c.user_pk == user.pk) & (auth_tokens.c.kind != API_KEY),
            )
        self._forget_user(user.pk)

    def ensure_first_administrator(self) -> tuple[str, str] | None:
        """On a database without accounts, create ``admin`` with a one-time password.

        Returns (user name, password) when it created the account, else None.
        The password must be changed at the first login: no default password
        exists anywhere.
        """
        password = one_time_password()
        now = _now()
        with self.index.write_transaction() as conn:
            if conn.execute(select(func.count()).select_from(users)).scalar_one():
                return None
            conn.execute(
                insert(users).values(
                    username=FIRST_ADMINISTRATOR,
                    display_name="Administrator",
                    role=Role.ADMINISTRATOR.value,
                    password_hash=hash_password(password),
                    active=True,
                    must_change_password=True,
                    referring_physician_name="",
                    failed_logins=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        return FIRST_ADMINISTRATOR, password

    # -- authentication ------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> User:
        """Check a user name and password; count failures and lock after too many.

        Raises
        ------
        NotAuthenticated
            With the same reason for every failure (unknown user, wrong
            password, disabled or locked account): the answer must not tell
            which accounts exist. The audit trail records the real cause.
        """
        try:
            name = normalise_username(username)
        except InvalidRequest:
            verify_password(None, password)
            raise NotAuthenticated("wrong user name or password") from None
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.username == name)).first()
        now = _now()
        if row is None:
            verify_password(None, password)  # same time as a real check
            raise NotAuthenticated("wrong user name or password")
        locked_until = _utc(row.locked_until)
        if not row.active or (locked_until is not None and locked_until > now):
            verify_password(None, password)
            raise NotAuthenticated("wrong user name or password")
        if not verify_password(row.password_hash, password):
            failures = row.failed_logins + 1
            values: dict[str, Any] = {"failed_logins": failures}
            if failures >= self.settings.login_max_failures:
                values["failed_logins"] = 0
                values["locked_until"] = now + timedelta(seconds=self.settings.login_lockout_seconds)
            with self.index.write_transaction() as conn:
                conn.execute(update(users).where(users.c.pk == row.pk).values(**values))
            raise NotAuthenticated("wrong user name or password")
        values = {}
        if row.failed_logins or row.locked_until is not None:
            values.update(failed_logins=0, locked_until=None)
        if needs_rehash(row.password_hash):
            values["password_hash"] = hash_password(password)
        if values:
            with self.index.write_transaction() as conn:
                conn.execute(update(users).where(users.c.pk == row.pk).values(**values))
        return self.get_user(name)

    def is_locked(self, username: str) -> bool:
        """Whether the account is locked now (for the audit trail's reason)."""
        try:
            user = self.get_user(username)
        except (NotFound, InvalidRequest):
            return False
        return user.locked_until is not None and user.locked_until > _now()

    # -- credentials ----------------------------------------------------------------

    def issue(self, user: User, kind: str, *, name: str = "") -> IssuedCredential:
        """Make a session, bearer token or API key for ``user``."""
        if kind not in _PREFIX:
            raise ValueError(f"unknown credential kind {kind!r}")
        lifetime = {
            SESSION: timedelta(minutes=self.settings.session_minutes),
            BEARER: timedelta(minutes=self.settings.token_minutes),
        }.get(kind)
        now = _now()
        expires = now + lifetime if lifetime else None
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        with self.index.write_transaction() as conn:
            conn.execute(
                insert(auth_tokens).values(
                    token_id=token_id,
                    secret_sha256=_sha256(secret),
                    user_pk=user.pk,
                    kind=kind,
                    name=name,
                    created_at=now,
                    expires_at=expires,
                )
            )
        return IssuedCredential(token_id, f"{_PREFIX[kind]}{token_id}.{secret}", kind, expires)

    def resolve(self, credential: str, kinds: frozenset[str]) -> Principal:
        """The principal of a presented credential of one of ``kinds``.

        Raises
        ------
        NotAuthenticated
            Malformed, unknown, expired, revoked, of another kind, or of a
            disabled account.
        """
        match = _CREDENTIAL.fullmatch(credential)
        if match is None:
            raise NotAuthenticated("malformed credential")
        prefix, token_id, secret = match.groups()
        kind = _KIND_OF_PREFIX[prefix]
        if kind not in kinds:
            raise NotAuthenticated("this kind of credential is not accepted here")
        digest = _sha256(secret)
        now_mono = time.monotonic()
        cached = self._cached(digest, now_mono)
        if cached is not None:
            return cached
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    auth_tokens.c.secret_sha256,
                    auth_tokens.c.kind,
                    auth_tokens.c.expires_at,
                    auth_tokens.c.revoked_at,
                    users.c.pk,
                    users.c.username,
                    users.c.role,
                    users.c.active,
                    users.c.must_change_password,
                    users.c.referring_physician_name,
                )
                .join(users, users.c.pk == auth_tokens.c.user_pk)
                .where(auth_tokens.c.token_id == token_id)
            ).first()
        if row is None or not hmac.compare_digest(row.secret_sha256, digest):
            raise NotAuthenticated("unknown credential")
        expires = _utc(row.expires_at)
        if row.kind != kind or row.revoked_at is not None or not row.active:
            raise NotAuthenticated("revoked credential")
        if expires is not None and expires <= _now():
            raise NotAuthenticated("expired credential")
        principal = Principal(
            user_pk=row.pk,
            username=row.username,
            role=Role(row.role),
            referring_physician_name=row.referring_physician_name,
            must_change_password=bool(row.must_change_password),
            kind=kind,
            token_id=token_id,
        )
        ttl = self.settings.credential_cache_seconds
        if ttl > 0:
            with self._cache_lock:
                self._cache[digest] = (principal, now_mono + ttl, expires)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return principal

    def resolve_cached(self, credential: str, kinds: frozenset[str]) -> Principal | None:
        """The principal of ``credential`` if the cache holds it (no database
        access: cheap enough for an event loop), else None."""
        match = _CREDENTIAL.fullmatch(credential)
        if match is None or _KIND_OF_PREFIX[match.group(1)] not in kinds:
            return None
        return self._cached(_sha256(match.group(3)), time.monotonic())

    def _cached(self, digest: str, now_mono: float) -> Principal | None:
        with self._cache_lock:
            cached = self._cache.get(digest)
            if cached is None:
                return None
            principal, until, expires = cached
            if now_mono < until and (expires is None or expires > _now()):
                self._cache.move_to_end(digest)
                return principal
            del self._cache[digest]
            return None

    def revoke(self, token_id: str, *, user_pk: int | None = None) -> bool:
        """Revoke one credential (of ``user_pk`` only, when given); False if none."""
        condition = auth_tokens.c.token_id == token_id
        if user_pk is not None:
            condition = condition & (auth_tokens.c.user_pk == user_pk)
        with self.index.write_transaction() as conn:
            count = self._revoke_where(conn, condition)
        self._forget_token(token_id)
        return count > 0

    def api_keys(self, username: str) -> list[ApiKey]:
        user = self.get_user(username)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(auth_tokens)
                .where((auth_tokens.c.user_pk == user.pk) & (auth_tokens.c.kind == API_KEY))
                .order_by(auth_tokens.c.created_at)
            ).all()
        return [
            ApiKey(r.token_id, r.name, _utc(r.created_at), r.revoked_at is not None)  # type: ignore[arg-type]
            for r in rows
        ]

    @staticmethod
    def _revoke_where(conn: Any, condition: Any) -> int:
        result = conn.execute(
            update(auth_tokens)
            .where(condition & auth_tokens.c.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
        return int(result.rowcount or 0)

    def _forget_user(self, user_pk: int) -> None:
        with self._cache_lock:
            for digest in [d for d, (p, _, _) in self._cache.items() if p.user_pk == user_pk]:
                del self._cache[digest]

    def _forget_token(self, token_id: str) -> None:
        with self._cache_lock:
            for digest in [d for d, (p, _, _) in self._cache.items() if p.token_id == token_id]:
                del self._cache[digest]
