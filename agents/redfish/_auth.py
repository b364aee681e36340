"""Accounts, roles, sessions and credential checks (Basic and X-Auth-Token)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from agents.redfish._errors import RedfishError

# Privileges of the three predefined roles, as DSP0266 assigns them and DMTF's mockups list them.
ROLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    "Administrator": ("Login", "ConfigureManager", "ConfigureUsers", "ConfigureSelf",
                      "ConfigureComponents"),
    "Operator": ("Login", "ConfigureSelf", "ConfigureComponents"),
    "ReadOnly": ("Login", "ConfigureSelf"),
}
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 64
_PBKDF2_ITERATIONS = 10_000


@dataclass
class Account:
    """A manager account; the password is kept only as a salted PBKDF2-SHA256 hash."""

    account_id: str
    user_name: str
    role_id: str
    salt: bytes
    password_hash: bytes
    enabled: bool = True
    locked: bool = False

    def check_password(self, password: str) -> bool:
        return hmac.compare_digest(_hash_password(password, self.salt), self.password_hash)

    def set_password(self, password: str) -> None:
        self.salt = secrets.token_bytes(16)
        self.password_hash = _hash_password(password, self.salt)


@dataclass(frozen=True)
class Session:
    """A login session; the token is sent back in X-Auth-Token."""

    session_id: str
    token: str
    user_name: str
    created_s: float


@dataclass(frozen=True)
class Principal:
    """The caller of a request, once authenticated."""

    user_name: str
    role_id: str
    session_id: str | None

    def has(self, privilege: str) -> bool:
        return privilege in ROLE_PRIVILEGES[self.role_id]


def _hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ITERATIONS)


def check_password_rules(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise RedfishError(
            400, "Base.PropertyValueFormatError", "<redacted>", "Password",
            detail=f"A password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters.",
        )


@dataclass
class AuthStore:
    """Accounts and sessions of one Redfish service."""

    accounts: dict[str, Account] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    session_timeout_s: int = 1800
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def from_credentials(cls, credentials: dict[str, tuple[str, str]]) -> AuthStore:
        """Create accounts from {user name: (password, role id)}."""
        store = cls()
        for user_name, (password, role_id) in credentials.items():
            store.create_account(user_name, password, role_id)
        return store

    def create_account(self, user_name: str, password: str, role_id: str,
                       enabled: bool = True) -> Account:
        if role_id not in ROLE_PRIVILEGES:
            raise RedfishError(400, "Base.PropertyValueNotInList", role_id, "RoleId")
        if self.find_account(user_name) is not None:
            raise RedfishError(409, "Base.ResourceAlreadyExists", "ManagerAccount", "UserName",
                               user_name)
        check_password_rules(password)
        account = Account(str(next(self._ids)), user_name, role_id, b"", b"", enabled)
        account.set_password(password)
        self.accounts[account.account_id] = account
        return account

    def find_account(self, user_name: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.user_name == user_name), None)

    def login(self, user_name: str, password: str) -> Account | None:
        account = self.find_account(user_name)
        if account is None or not account.enabled or account.locked:
            return None
        return account if account.check_password(password) else None

    def open_session(self, account: Account) -> Session:
        session = Session(secrets.token_hex(8), secrets.token_urlsafe(32), account.user_name,
                          time.monotonic())
        self.sessions[session.session_id] = session
        return session

    def _session_for_token(self, token: str) -> Session | None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if now - session.created_s > self.session_timeout_s:
                del self.sessions[session.session_id]
            elif hmac.compare_digest(session.token, token):
                return session
        return None

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """Return the caller named by X-Auth-Token or Basic credentials, or raise 401."""
        token = headers.get("X-Auth-Token")
        if token:
            session = self._session_for_token(token)
            account = self.find_account(session.user_name) if session else None
            if session is None or account is None or not account.enabled:
                raise _unauthorized("the X-Auth-Token is invalid or expired")
            return Principal(account.user_name, account.role_id, session.session_id)
        authorization = headers.get("Authorization", "")
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise _unauthorized("send X-Auth-Token or Basic credentials")
        try:
            user_name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise _unauthorized("the Basic credentials are not valid base64") from None
        account = self.login(user_name, password)
        if account is None:
            raise _unauthorized("invalid user name or password")
        return Principal(account.user_name, account.role_id, None)


def _unauthorized(detail: str) -> RedfishError:
    return RedfishError(401, "Base.NoValidSession", detail=f"Reason: {detail}.",
                        headers={"WWW-Authenticate": 'Basic realm="Redfish"'})


def etag_of(resource: dict) -> str:
    """Return a strong ETag computed from a resource's JSON representation."""
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":")).encode()
    return '"' + hashlib.sha256(canonical).hexdigest()[:24] + '"'
