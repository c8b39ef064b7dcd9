"""Accounts and credentials on a real index database (SQLite, and PostgreSQL in
tests/pipeline/index's contract suite style where the fixture is available)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from pipeline.config import Settings
from pipeline.errors import AlreadyExists, InvalidRequest, NotAuthenticated, NotFound
from pipeline.index.schema import auth_tokens, users
from pipeline.runtime import Runtime
from pipeline.security.accounts import API_KEY, BEARER, SESSION, AccountService
from pipeline.security.passwords import verify_password
from pipeline.security.roles import Role

PASSWORD = "correct horse battery"
ALL = frozenset({SESSION, BEARER, API_KEY})


@pytest.fixture
def accounts(runtime: Runtime) -> AccountService:
    return runtime.accounts


def test_passwords_are_argon2id_never_plain(accounts: AccountService, runtime: Runtime) -> None:
    accounts.create_user("Alice", Role.RADIOLOGIST, password=PASSWORD)
    with runtime.index.engine.connect() as conn:
        stored = conn.execute(select(users.c.username, users.c.password_hash)).one()
    assert stored.username == "alice"  # names are case-insensitive, stored lower-case
    assert stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash
    assert verify_password(stored.password_hash, PASSWORD)
    assert accounts.authenticate("ALICE", PASSWORD).role is Role.RADIOLOGIST


@pytest.mark.parametrize(
    "password", ["short", "a" * 300, "aaaaaaaaaaaa", "abcabcabcabc"]
)
def test_weak_passwords_are_refused(accounts: AccountService, password: str) -> None:
    with pytest.raises(InvalidRequest):
        accounts.create_user("alice", Role.RADIOLOGIST, password=password)
    assert accounts.count_users() == 0


def test_password_equal_to_user_name_is_refused(accounts: AccountService) -> None:
    with pytest.raises(InvalidRequest, match="differ"):
        accounts.create_user("longusername", Role.RADIOLOGIST, password="LongUserName")


@pytest.mark.parametrize("name", ["", "../etc", "a b", "x" * 65, "-lead", "ü"])
def test_malformed_user_names_are_refused(accounts: AccountService, name: str) -> None:
    with pytest.raises(InvalidRequest):
        accounts.create_user(name, Role.TECHNOLOGIST)


def test_duplicate_user_is_409(accounts: AccountService) -> None:
    accounts.create_user("bob", Role.TECHNOLOGIST)
    with pytest.raises(AlreadyExists):
        accounts.create_user("BOB", Role.RADIOLOGIST)


def test_unknown_role_is_refused(accounts: AccountService) -> None:
    with pytest.raises(InvalidRequest, match="role"):
        accounts.create_user("bob", "superuser")


def test_every_login_failure_says_the_same(accounts: AccountService) -> None:
    accounts.create_user("alice", Role.RADIOLOGIST, password=PASSWORD)
    accounts.create_user("keysonly", Role.TECHNOLOGIST)  # no password: API keys only
    accounts.create_user("gone", Role.RADIOLOGIST, password=PASSWORD)
    accounts.update_user("gone", active=False)
    reasons = set()
    for username, password in [
        ("alice", "wrong password!"),
        ("nobody", PASSWORD),
        ("keysonly", PASSWORD),
        ("gone", PASSWORD),
        ("../x", PASSWORD),
    ]:
        with pytest.raises(NotAuthenticated) as info:
            accounts.authenticate(username, password)
        reasons.add(info.value.reason)
    assert len(reasons) == 1


def test_lockout_after_repeated_failures(runtime: Runtime, settings: Settings) -> None:
    accounts = AccountService(
        runtime.index,
        settings.model_copy(update={"login_max_failures": 3, "login_lockout_seconds": 60}),
    )
    accounts.create_user("alice", Role.RADIOLOGIST, password=PASSWORD)
    for _ in range(2):
        with pytest.raises(NotAuthenticated):
            accounts.authenticate("alice", "wrong password!")
    assert accounts.authenticate("alice", PASSWORD)  # a success resets the count
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            accounts.authenticate("alice", "wrong password!")
    assert accounts.is_locked("alice")
    with pytest.raises(NotAuthenticated):
        accounts.authenticate("alice", PASSWORD)  # locked: even the right password fails
    # The lock runs out.
    with runtime.index.write_transaction() as conn:
        conn.execute(
            update(users).values(locked_until=datetime.now(timezone.utc) - timedelta(seconds=1))
        )
    assert accounts.authenticate("alice", PASSWORD).username == "alice"


def test_credentials_resolve_and_store_only_a_digest(
    accounts: AccountService, runtime: Runtime
) -> None:
    user = accounts.create_user("alice", Role.RADIOLOGIST, password=PASSWORD)
    issued = {kind: accounts.issue(user, kind) for kind in (SESSION, BEARER, API_KEY)}
    assert issued[SESSION].secret.startswith("lbs_")
    assert issued[BEARER].secret.startswith("lbt_")
    assert issued[API_KEY].secret.startswith("lbk_")
    assert issued[API_KEY].expires_at is None
    assert issued[BEARER].expires_at is not None
    with runtime.index.engine.connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(select(auth_tokens)) for v in row)
    for credential in issued.values():
        assert credential.secret.split(".", 1)[1] not in stored
        principal = accounts.resolve(credential.secret, ALL)
        assert (principal.username, principal.role, principal.kind) == (
            "alice",
            Role.RADIOLOGIST,
            credential.kind,
        )


def test_wrong_kind_and_forged_secrets_are_refused(accounts: AccountService) -> None:
    user = accounts.create_user("alice", Role.RADIOLOGIST)
    key = accounts.issue(user, API_KEY).secret
    with pytest.raises(NotAuthenticated, match="kind"):
        accounts.resolve(key, frozenset({SESSION}))
    prefix, secret = key.split(".", 1)
    forged = prefix + "." + ("A" if secret[0] != "A" else "B") + secret[1:]
    with pytest.raises(NotAuthenticated):
        accounts.resolve(forged, ALL)
    for garbage in ["", "lbk_", "Bearer x", key + "x", "lbk_../../etc.passwd"]:
        with pytest.raises(NotAuthenticated):
            accounts.resolve(garbage, ALL)


def test_expired_bearer_token_is_refused(accounts: AccountService, runtime: Runtime) -> None:
    user = accounts.create_user("alice", Role.RADIOLOGIST)
    token = accounts.issue(user, BEARER)
    with runtime.index.write_transaction() as conn:
        conn.execute(
            update(auth_tokens).values(expires_at=datetime.now(timezone.utc) - timedelta(1))
        )
    with pytest.raises(NotAuthenticated, match="expired"):
        accounts.resolve(token.secret, ALL)


def test_revocation_and_disabling_take_effect(runtime: Runtime, settings: Settings) -> None:
    accounts = AccountService(
        runtime.index, settings.model_copy(update={"credential_cache_seconds": 0.5})
    )
    other_process = AccountService(
        runtime.index, settings.model_copy(update={"credential_cache_seconds": 0.5})
    )
    user = accounts.create_user("alice", Role.RADIOLOGIST)
    key = accounts.issue(user, API_KEY)
    assert other_process.resolve(key.secret, ALL).username == "alice"
    assert accounts.revoke(key.token_id)
    with pytest.raises(NotAuthenticated):
        accounts.resolve(key.secret, ALL)  # the revoking process forgets at once
    time.sleep(0.6)  # another process trusts its cache for credential_cache_seconds
    with pytest.raises(NotAuthenticated):
        other_process.resolve(key.secret, ALL)
    second = accounts.issue(user, API_KEY)
    accounts.update_user("alice", active=False)
    with pytest.raises(NotAuthenticated):
        accounts.resolve(second.secret, ALL)


def test_role_change_ends_earlier_credentials(accounts: AccountService) -> None:
    accounts.create_user("root", Role.ADMINISTRATOR)
    user = accounts.create_user("alice", Role.ADMINISTRATOR)
    key = accounts.issue(user, API_KEY)
    accounts.update_user("alice", role=Role.REFERRING_PHYSICIAN)
    with pytest.raises(NotAuthenticated):
        accounts.resolve(key.secret, ALL)
    assert accounts.get_user("alice").role is Role.REFERRING_PHYSICIAN


def test_password_change_ends_sessions_not_api_keys(accounts: AccountService) -> None:
    user = accounts.create_user("alice", Role.RADIOLOGIST, password=PASSWORD)
    session = accounts.issue(user, SESSION)
    key = accounts.issue(user, API_KEY)
    accounts.set_password("alice", "a new password 2")
    with pytest.raises(NotAuthenticated):
        accounts.resolve(session.secret, ALL)
    assert accounts.resolve(key.secret, ALL).username == "alice"
    with pytest.raises(NotAuthenticated):
        accounts.authenticate("alice", PASSWORD)
    assert accounts.authenticate("alice", "a new password 2")


def test_first_administrator_only_on_an_empty_database(accounts: AccountService) -> None:
    created = accounts.ensure_first_administrator()
    assert created is not None
    username, password = created
    user = accounts.authenticate(username, password)
    assert user.role is Role.ADMINISTRATOR
    assert user.must_change_password
    assert accounts.ensure_first_administrator() is None
    with pytest.raises(NotFound):
        accounts.get_user("root")


def test_the_last_administrator_stays(accounts: AccountService) -> None:
    accounts.create_user("root", Role.ADMINISTRATOR)
    for change in ({"active": False}, {"role": Role.RADIOLOGIST}):
        with pytest.raises(InvalidRequest, match="last active administrator"):
            accounts.update_user("root", **change)  # type: ignore[arg-type]
    assert accounts.get_user("root").active
    accounts.create_user("second", Role.ADMINISTRATOR)
    accounts.update_user("root", active=False)  # another administrator remains
    assert not accounts.get_user("root").active
