"""Accounts: password hashing, login sessions (cookies), API keys, and who a request belongs to.

Notable choices:
- Passwords are hashed with scrypt (stdlib `hashlib.scrypt`, n=2^14, r=8, p=1, 16-byte salt) and checked in
  constant time. The hash string carries its parameters so they can be raised later.
- Session tokens and API keys are 256-bit random strings; only their SHA-256 is stored, so a copy of the
  database does not let anyone log in. (High-entropy secrets need no slow hash.)
- Bound to a loopback address without `--require-login`, a request with no credentials is the single local
  user `local` (an admin). Credentials, when given, still select their own user, so per-user isolation holds
  in both modes. Bound to any other address, every request must log in or present an API key.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import UserError
from .store import ApiKey, LoginSession, Store, User, utcnow

LOCAL_USERNAME = "local"
SESSION_COOKIE = "alignchat_session"
SESSION_DAYS = 30
API_KEY_PREFIX = "ac-"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2 ** 14, 8, 1


def hash_password(password: str) -> str:
    if len(password) < 8:
        raise UserError("a password needs at least 8 characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32)
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        algo, n, r, p, salt, digest = stored.split("$")
        if algo != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class CurrentUser:
    """The user a request acts as (a detached snapshot, safe to use outside the DB session)."""
    id: int
    username: str
    is_admin: bool


def _snapshot(u: User) -> CurrentUser:
    return CurrentUser(id=u.id, username=u.username, is_admin=bool(u.is_admin))


class Accounts:
    """User management on top of the store; used by the server and by `alignchat users`."""

    def __init__(self, store: Store):
        self.store = store

    def create_user(self, username: str, password: str | None, is_admin: bool = False) -> CurrentUser:
        username = username.strip()
        if not username or len(username) > 64 or any(c.isspace() for c in username):
            raise UserError(f"invalid user name {username!r}: 1-64 characters, no spaces")
        with self.store.session() as s, s.begin():
            if self.store.get_user(s, username) is not None:
                raise UserError(f"user {username!r} already exists")
            u = User(username=username, is_admin=is_admin,
                     password_hash=hash_password(password) if password is not None else None)
            s.add(u)
            s.flush()
            return _snapshot(u)

    def set_password(self, username: str, password: str) -> None:
        with self.store.session() as s, s.begin():
            u = self._require(s, username)
            u.password_hash = hash_password(password)
            # a new password ends every existing login
            for ls in s.scalars(select(LoginSession).where(LoginSession.user_id == u.id)):
                s.delete(ls)

    def set_admin(self, username: str, is_admin: bool) -> None:
        with self.store.session() as s, s.begin():
            self._require(s, username).is_admin = is_admin

    def delete_user(self, username: str) -> None:
        with self.store.session() as s, s.begin():
            s.delete(self._require(s, username))

    def list_users(self) -> list[dict]:
        with self.store.session() as s:
            return [{"username": u.username, "admin": bool(u.is_admin), "created": u.created.isoformat(),
                     "can_login": u.password_hash is not None}
                    for u in s.scalars(select(User).order_by(User.id))]

    def _require(self, s: Session, username: str) -> User:
        u = self.store.get_user(s, username)
        if u is None:
            raise UserError(f"no user named {username!r}")
        return u

    def local_user(self) -> CurrentUser:
        return _snapshot(self.store.ensure_user(LOCAL_USERNAME, is_admin=True))

    # ---- API keys -----------------------------------------------------------------------------------------
    def create_api_key(self, username: str, name: str = "") -> str:
        """Make a key for `username` and return it; it is shown this once and only its hash is kept."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        with self.store.session() as s, s.begin():
            u = self.store.get_user(s, username)
            if u is None:
                u = User(username=username) if username == LOCAL_USERNAME else None
                if u is None:
                    raise UserError(f"no user named {username!r}")
                s.add(u)
                s.flush()
            s.add(ApiKey(user_id=u.id, key_hash=token_hash(key), prefix=key[:10], name=name))
        return key

    def revoke_api_key(self, prefix: str) -> int:
        with self.store.session() as s, s.begin():
            keys = list(s.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked.is_(False))))
            for k in keys:
                k.revoked = True
            return len(keys)

    def list_api_keys(self, username: str | None = None) -> list[dict]:
        with self.store.session() as s:
            q = select(ApiKey, User).join(User, ApiKey.user_id == User.id).order_by(ApiKey.id)
            if username:
                q = q.where(User.username == username)
            return [{"prefix": k.prefix, "user": u.username, "name": k.name, "created": k.created.isoformat(),
                     "revoked": k.revoked} for k, u in s.execute(q)]

    def user_for_api_key(self, key: str) -> CurrentUser | None:
        with self.store.session() as s:
            row = s.execute(select(User).join(ApiKey, ApiKey.user_id == User.id)
                            .where(ApiKey.key_hash == token_hash(key), ApiKey.revoked.is_(False))).scalar()
            return _snapshot(row) if row else None

    # ---- login sessions -----------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> str | None:
        """Check the password; on success return a new session token (for the cookie)."""
        with self.store.session() as s, s.begin():
            u = self.store.get_user(s, username)
            if u is None:
                verify_password(password, hash_password("timing-equaliser"))  # same cost as a wrong password
                return None
            if not verify_password(password, u.password_hash):
                return None
            token = secrets.token_urlsafe(32)
            s.add(LoginSession(token_hash=token_hash(token), user_id=u.id,
                               expires=utcnow() + dt.timedelta(days=SESSION_DAYS)))
            return token

    def logout(self, token: str) -> None:
        with self.store.session() as s, s.begin():
            ls = s.get(LoginSession, token_hash(token))
            if ls is not None:
                s.delete(ls)

    def user_for_session(self, token: str) -> CurrentUser | None:
        with self.store.session() as s:
            ls = s.get(LoginSession, token_hash(token))
            if ls is None or ls.expires < utcnow():
                return None
            u = s.get(User, ls.user_id)
            return _snapshot(u) if u else None
