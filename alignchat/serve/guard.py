"""Request guards in front of every route: the Host allow-list, the cross-site request check and the body cap.

Notable choices:
- Plain ASGI middleware (nothing buffered, only headers read up front), installed by `install(app, cfg)`.
  Every refusal has OpenAI's error body (errors.error_response).
- Host (DNS rebinding: a page on attacker.example re-resolves its own name to 127.0.0.1 and then talks to
  this server with `Host: attacker.example`). Accepted, with any port: the `--allowed-host` names (`*`
  accepts any), the bound name, localhost / 127.0.0.1 / [::1] when bound to loopback or to every interface,
  and any IP address literal when bound beyond loopback (a rebinding page can only name a domain).
  A request without a Host header (HTTP/1.0) did not come from a browser and passes.
- Cross-site requests (CSRF): a state-changing request (any method but GET/HEAD/OPTIONS/TRACE) that carries no
  `Authorization: Bearer` is refused when `Sec-Fetch-Site` says anything but same-origin/none, or when
  `Origin` is present and names another server than `Host` (a different port is a different origin, and
  the same site). Session cookies and the credential-less local user are both ambient credentials a foreign
  page's form would ride on, so both are covered. A bearer key cannot be attached by a form, and a foreign
  script needs a CORS preflight to send one, which this server never grants: keyed API clients pass.
  Requests with neither header come from non-browser clients and pass.
- Body size: a `Content-Length` over the cap is refused before the body is read; a chunked body is counted
  as it streams and cut off once past the cap. The library upload route (`POST /v1/library/documents`)
  has the library's own limit, `alignchat.library.api.MAX_UPLOAD_BYTES`, read on every request.
  (Starlette's RequestBodyLimitMiddleware answers in plain text, without the limit, with one limit for all.)
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
LIBRARY_UPLOAD = ("POST", "/v1/library/documents")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def install(app, cfg) -> None:
    """Add the guards to `app` (outermost first: Host, cross-site, body size) for ServeConfig `cfg`."""
    app.add_middleware(BodySizeLimit, max_body=cfg.max_body)
    app.add_middleware(CrossSiteGuard)
    app.add_middleware(HostGuard, bind=cfg.host, allowed=cfg.allowed_hosts)


def split_host(value: str) -> tuple[str, int | None] | None:
    """(lower-case name without brackets or final dot, port or None) of a `host[:port]`; None if malformed."""
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    if (not parts.hostname or parts.username is not None or parts.password is not None or parts.path
            or parts.query or parts.fragment):
        return None
    return parts.hostname.rstrip("."), port


class HostGuard:
    def __init__(self, app: ASGIApp, bind: str, allowed=()):
        from .auth import is_loopback
        self.app = app
        self.any = "*" in allowed
        names = {h[0] for h in (split_host(a.strip()) for a in allowed if a.strip() not in ("", "*")) if h}
        bound = bind.strip().strip("[]").lower()
        wildcard = bound in WILDCARD_BINDS
        if not wildcard:
            names.add(bound)
        if wildcard or is_loopback(bind):
            names |= LOOPBACK_NAMES
        self.names = frozenset(names)
        self.address_literals = not is_loopback(bind)

    def allows(self, name: str) -> bool:
        if self.any or name in self.names:
            return True
        if self.address_literals:
            try:
                ipaddress.ip_address(name)
                return True
            except ValueError:
                return False
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host")
            parsed = split_host(host) if host is not None else None
            if host is not None and (parsed is None or not self.allows(parsed[0])):
                shown = host if len(host) <= 100 else host[:100] + "..."
                return await error_response(
                    400, f"This server does not answer to the host name {shown!r}. To reach it by that name, "
                         f"start it with --allowed-host NAME.", code="host_not_allowed")(scope, receive, send)
        await self.app(scope, receive, send)


def cross_site_reason(headers: Headers) -> str | None:
    """Why a state-changing request from a browser must be refused as cross-site, or None."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.strip().lower() not in ("same-origin", "none"):
        return f"it comes from another site (Sec-Fetch-Site: {site[:40]})"
    origin = headers.get("origin")
    if origin is None:
        return None
    shown = origin[:100]
    try:
        o = urlsplit(origin.strip())
    except ValueError:
        return f"its Origin {shown!r} is malformed"
    own = split_host(headers.get("host", ""))
    theirs = split_host(o.netloc) if o.scheme else None
    if theirs is None or own is None:
        return f"its Origin {shown!r} is not this server"
    default = _DEFAULT_PORTS.get(o.scheme.lower())
    if theirs[0] != own[0] or (theirs[1] or default) != (own[1] or default):
        return f"its Origin {shown!r} is not this server"
    return None


class CrossSiteGuard:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            auth = headers.get("authorization", "")
            keyed = auth[:7].lower() == "bearer " and auth[7:].strip() != ""
            if not keyed and (reason := cross_site_reason(headers)):
                return await error_response(
                    403, f"Refused: {reason}. Requests that change something must come from this server's own "
                         f"pages, or carry an API key (Authorization: Bearer ...).",
                    code="cross_site_request")(scope, receive, send)
        await self.app(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int, what: str):
    size = f"{limit / 2 ** 20:g} MiB" if limit >= 2 ** 20 else f"{limit} bytes"
    return error_response(413, f"The request body is larger than this server's limit {what}: {limit} bytes "
                               f"({size}).", code="request_too_large", headers={"Connection": "close"})


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_body: int):
        self.app = app
        self.max_body = max_body
        try:
            from ..library import api as library_api
        except Exception:  # noqa: BLE001 - no library: no upload route either
            library_api = None
        self.library_api = library_api

    def limit_for(self, scope: Scope) -> tuple[int, str]:
        if self.library_api is not None and (scope["method"], scope["path"]) == LIBRARY_UPLOAD:
            return int(self.library_api.MAX_UPLOAD_BYTES), "for library uploads"
        return self.max_body, "(--max-body)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, what = self.limit_for(scope)
        length = Headers(scope=scope).get("content-length", "").strip()
        if length.isdigit() and int(length) > limit:
            return await _too_large(limit, what)(scope, receive, send)
        received, cut_off, started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, cut_off
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    cut_off = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if cut_off and not started:
                return  # whatever the app answers to a cut-off body, the client gets the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not cut_off or started:
                raise
        if cut_off and not started:
            await _too_large(limit, what)(scope, receive, send)
