"""Accounts: password hashing, login sessions (cookies), API keys, and who a request belongs to.

Notable choices:
- Passwords are hashed with scrypt (stdlib `hashlib.scrypt`, n=2^14, r=8, p=1, 16-byte salt) and checked in
  constant time. The hash string carries its parameters so they can be raised later.
- Session tokens and API keys are 256-bit random strings; only their SHA-256 is stored, so a copy of the
  database does not let anyone log in. (High-entropy secrets need no slow hash.)
- Bound to a loopback address without `--require-login`, a request with no credentials is the single local
  user `local` (an admin). Credentials, when given, still select their own user, so per-user isolation holds
  in both modes. Bound to any other address (the empty host and 0.0.0.0 included), every request must log
  in or present an API key; only `--insecure-no-login` turns that off (`login_required`).
- The local user is looked up on every request that acts as it and created again when it is missing, so
  `alignchat users delete local` on a running server costs that user's data, not the server.
- Logins are throttled per user name and per client address (`LoginThrottle`): past the limit, the key is
  locked out for a time that doubles with each further failure, and the answer is 429 with Retry-After.
  A success clears the user name's failures, not the address's, so logging into one's own account does not
  reset a password spray. Attempts in flight count against the limit, so parallel guesses gain nothing.
- Built-in tool rights: an account's `tools` (None: every tool the deployment enables) and an API key's
  (None: the account's) are intersected into `CurrentUser.tools`, so a key can only narrow what its account
  may use; the deployment's `--tools` narrows it again where the tool runs (`alignchat.tools`).
- Every login attempt costs one scrypt call: an unknown user name, or a user without a password, is checked
  against a dummy hash made once per process, so the answer's timing does not tell which names exist.
"""
from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import ipaddress
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request

from ..errors import UserError
from .hooks import user_deleted
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


@functools.cache
def _dummy_hash() -> str:
    """A hash no password matches, made once: unknown user names pay for the same one scrypt call."""
    return hash_password(secrets.token_urlsafe(24))


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only. The empty host binds every interface, like 0.0.0.0."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def login_required(cfg) -> bool:
    """Whether a server with ServeConfig `cfg` makes every request log in.

    Beyond loopback always, unless `cfg.insecure_no_login`; on loopback only with `cfg.require_login`."""
    if cfg.require_login:
        return True
    return not is_loopback(cfg.host) and not cfg.insecure_no_login


class LoginThrottled(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"Too many failed logins. Try again in {retry_after} s.")
        self.retry_after = retry_after


@dataclass
class _Failures:
    failures: int = 0
    in_flight: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Counts failed logins per user name and per client address; past the limit, refuses that key for a while.

    `max_failures` failures of a user name (`address_factor` times as many from one address) lock it out for
    `lockout` seconds, doubled by each further failure (at most `max_lockout`). After a lockout one attempt
    at a time is let through. A key's failures are forgotten after `window` quiet seconds (counted from the
    end of its lockout) or, for a user name, by a successful login. At most `max_entries` keys are kept.
    """

    def __init__(self, max_failures: int = 5, window: float = 900.0, lockout: float = 30.0,
                 max_lockout: float = 3600.0, address_factor: int = 4, max_entries: int = 10_000,
                 clock=time.monotonic):
        self.max_failures, self.window, self.lockout, self.max_lockout = max_failures, window, lockout, max_lockout
        self.address_factor, self.max_entries, self.clock = address_factor, max_entries, clock
        self._keys: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def begin(self, username: str, client: str | None) -> list[tuple[tuple[str, str], int]]:
        """Admit one attempt (raise LoginThrottled if refused); pass the result to `end` afterwards."""
        keys = [(("user", username), self.max_failures)]
        if client:
            keys.append((("address", client), self.max_failures * self.address_factor))
        now = self.clock()
        with self._lock:
            wait = 0.0
            for key, limit in keys:
                f = self._keys.get(key)
                if f is not None and not f.in_flight and now - max(f.last, f.locked_until) >= self.window:
                    del self._keys[key]
                    continue
                if f is None:
                    continue
                if now < f.locked_until:
                    wait = max(wait, f.locked_until - now)
                elif f.in_flight and f.failures + f.in_flight >= limit:
                    wait = max(wait, 1.0)  # the attempts in flight could reach the limit: wait for them
            if wait > 0:
                raise LoginThrottled(max(1, math.ceil(wait)))
            for key, _ in keys:
                self._keys.setdefault(key, _Failures()).in_flight += 1
                self._keys.move_to_end(key)
            self._prune()
        return keys

    def end(self, keys: list[tuple[tuple[str, str], int]], success: bool | None) -> None:
        """Record the attempt's outcome: True (logged in), False (wrong name or password), None (an error)."""
        now = self.clock()
        with self._lock:
            for key, limit in keys:
                f = self._keys.get(key)
                if f is None:
                    continue
                f.in_flight = max(0, f.in_flight - 1)
                if success is False:
                    f.failures += 1
                    f.last = now
                    if f.failures >= limit:
                        f.locked_until = now + min(self.max_lockout,
                                                   self.lockout * 2 ** min(f.failures - limit, 40))
                elif success and key[0] == "user":
                    f.failures, f.locked_until = 0, 0.0
                if not f.failures and not f.in_flight:
                    del self._keys[key]

    def _prune(self) -> None:
        for _ in range(len(self._keys) - self.max_entries):
            key, f = self._keys.popitem(last=False)  # the least recently tried key
            if f.in_flight:
                self._keys[key] = f


@dataclass
class CurrentUser:
    """The user a request acts as (a detached snapshot, safe to use outside the DB session)."""
    id: int
    username: str
    is_admin: bool
    tools: frozenset[str] | None = None  # built-in tools it may use; None: every tool the deployment enables

    def may_use(self, enabled) -> list[str]:
        """The deployment's `enabled` tools (in their order) that this user, with this key, may use."""
        return [t for t in enabled if self.tools is None or t in self.tools]


def _snapshot(u: User, key: ApiKey | None = None) -> CurrentUser:
    tools = None if u.tools is None else frozenset(u.tools)
    if key is not None and key.tools is not None:
        tools = frozenset(key.tools) if tools is None else tools & frozenset(key.tools)
    return CurrentUser(id=u.id, username=u.username, is_admin=bool(u.is_admin), tools=tools)


def _tool_names(tools) -> list[str] | None:
    """A tool-rights setting checked against the built-in tools (None: no restriction)."""
    if tools is None:
        return None
    from ..tools import parse_names
    return parse_names(tools)


class Accounts:
    """User management on top of the store; used by the server and by `alignchat users`."""

    def __init__(self, store: Store, throttle: LoginThrottle | None = None):
        self.store = store
        self.throttle = throttle or LoginThrottle()

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

    def set_tools(self, username: str, tools) -> list[str] | None:
        """Set the built-in tools `username` may use (names, or None for every tool the server enables)."""
        names = _tool_names(tools)
        with self.store.session() as s, s.begin():
            self._require(s, username).tools = names
        return names

    def set_key_tools(self, prefix: str, tools) -> int:
        """Set the built-in tools the active keys with this prefix may use (None: their account's)."""
        names = _tool_names(tools)
        with self.store.session() as s, s.begin():
            keys = list(s.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked.is_(False))))
            for k in keys:
                k.tools = names
            return len(keys)

    def delete_user(self, username: str) -> None:
        with self.store.session() as s, s.begin():
            u = self._require(s, username)
            user_id = u.id
            s.delete(u)
        user_deleted(self.store, user_id)  # what other parts keep for the user (hooks.py)

    def list_users(self) -> list[dict]:
        with self.store.session() as s:
            return [{"username": u.username, "admin": bool(u.is_admin), "created": u.created.isoformat(),
                     "can_login": u.password_hash is not None, "tools": u.tools}
                    for u in s.scalars(select(User).order_by(User.id))]

    def _require(self, s: Session, username: str) -> User:
        u = self.store.get_user(s, username)
        if u is None:
            raise UserError(f"no user named {username!r}")
        return u

    def local_user(self) -> CurrentUser:
        """The local admin `local`, created (again) when missing."""
        return _snapshot(self.store.ensure_user(LOCAL_USERNAME, is_admin=True))

    # ---- API keys -----------------------------------------------------------------------------------------
    def create_api_key(self, username: str, name: str = "", tools=None) -> str:
        """Make a key for `username` and return it; it is shown this once and only its hash is kept.
        `tools`: the built-in tools it may use (None: its account's)."""
        names = _tool_names(tools)
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        if username == LOCAL_USERNAME:
            self.local_user()
        with self.store.session() as s, s.begin():
            u = self._require(s, username)
            s.add(ApiKey(user_id=u.id, key_hash=token_hash(key), prefix=key[:10], name=name, tools=names))
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
                     "revoked": k.revoked, "tools": k.tools} for k, u in s.execute(q)]

    def user_for_api_key(self, key: str) -> CurrentUser | None:
        with self.store.session() as s:
            row = s.execute(select(User, ApiKey).join(ApiKey, ApiKey.user_id == User.id)
                            .where(ApiKey.key_hash == token_hash(key), ApiKey.revoked.is_(False))).first()
            return _snapshot(row[0], row[1]) if row else None

    # ---- login sessions -----------------------------------------------------------------------------------
    def login(self, username: str, password: str, client: str | None = None) -> str | None:
        """Check the password; on success return a new session token (for the cookie).

        `client` (the caller's address) is throttled along with the user name; raises LoginThrottled."""
        dummy = _dummy_hash()
        attempt = self.throttle.begin(username, client)
        outcome = None
        try:
            with self.store.session() as s, s.begin():
                u = self.store.get_user(s, username)
                stored = u.password_hash if u is not None else None
                matches = verify_password(password, stored or dummy)  # one scrypt call, whoever asks
                if not (stored and matches):
                    outcome = False
                    return None
                token = secrets.token_urlsafe(32)
                s.add(LoginSession(token_hash=token_hash(token), user_id=u.id,
                                   expires=utcnow() + dt.timedelta(days=SESSION_DAYS)))
            outcome = True  # committed
            return token
        finally:
            self.throttle.end(attempt, outcome)

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


def resolve_user(request: Request) -> CurrentUser | None:
    """The user this request acts as, or None (then the route answers 401): its API key (`Authorization:
    Bearer ...`), else its session cookie, else the local user when the server runs without login. Reads
    the server's `ServerContext` (runtime.py) from `request.app.state.ctx`; cached on the request."""
    cached = getattr(request.state, "user", False)
    if cached is not False:
        return cached
    ctx = request.app.state.ctx
    user = None
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if key:
        user = ctx.accounts.user_for_api_key(key)
    if user is None and (token := request.cookies.get(SESSION_COOKIE)):
        user = ctx.accounts.user_for_session(token)
    if user is None and not ctx.require_login:
        # Loopback without login: one local user. An unknown key is accepted here too (as vLLM does when no
        # key is configured), because OpenAI clients insist on sending some key.
        user = ctx.accounts.local_user()
    request.state.user = user
    return user
