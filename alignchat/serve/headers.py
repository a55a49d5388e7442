"""Security headers on every HTTP response: Content-Security-Policy, X-Frame-Options, nosniff, Referrer-Policy.

Notable choices:
- The web UI's policy allows only this server's own scripts, styles, fonts and fetches: no inline script,
  no inline style, no remote image (images: this server or `data:`), no plugins, no `<base>`, forms post
  only here, and no page may frame the UI. The UI renders model output through a strict allow-list
  sanitiser (static/app.js); this policy is the second wall if something slips through it.
- FastAPI's Swagger page (`/docs` and its OAuth2 redirect) is built by FastAPI with an inline script and
  Swagger UI loaded from a CDN, so those two paths alone get a relaxed policy that adds exactly the CDN
  origins FastAPI's defaults name (read from FastAPI, so they stay true) and inline script/style. That page
  shows only the server's own OpenAPI schema, never user or model text; framing is refused there too.
- A pure ASGI wrapper, not `BaseHTTPMiddleware`: streamed replies pass through unbuffered and a client's
  disconnect still reaches the route (Stop frees the model slot). It wraps the whole middleware stack, so
  even the 500 answers Starlette's outermost error middleware writes carry the headers.
- Headers a route sets itself win (added only where absent).
"""
from __future__ import annotations

import inspect
from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BASE = {
    "default-src": "'self'", "script-src": "'self'", "style-src": "'self'", "img-src": "'self' data:",
    "font-src": "'self'", "connect-src": "'self'", "object-src": "'none'", "base-uri": "'none'",
    "form-action": "'self'", "frame-ancestors": "'none'",
}


def _policy(directives: dict[str, str]) -> str:
    return "; ".join(f"{k} {v}" for k, v in directives.items())


def _swagger_origins() -> tuple[set[str], set[str]]:
    """(script/style origins, image origins) of the assets FastAPI's default Swagger page loads."""
    from fastapi.openapi.docs import get_swagger_ui_html
    params = inspect.signature(get_swagger_ui_html).parameters

    def origin(name: str) -> set[str]:
        url = params[name].default if name in params else None
        parts = urlsplit(url) if isinstance(url, str) else None
        return {f"{parts.scheme}://{parts.netloc}"} if parts and parts.scheme in ("http", "https") else set()

    return origin("swagger_js_url") | origin("swagger_css_url"), origin("swagger_favicon_url")


UI_POLICY = _policy(_BASE)


def docs_policy() -> str:
    code, images = _swagger_origins()
    extra = " ".join(sorted(code))
    return _policy({**_BASE, "script-src": f"'self' 'unsafe-inline' {extra}".strip(),
                    "style-src": f"'self' 'unsafe-inline' {extra}".strip(),
                    "img-src": " ".join(["'self' data:", *sorted(images)])})


COMMON = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


class SecurityHeaders:
    """ASGI wrapper adding `COMMON` and a Content-Security-Policy to every HTTP response."""

    def __init__(self, app: ASGIApp, relaxed_paths: set[str] = frozenset()):
        self.app = app
        self.relaxed_paths = set(relaxed_paths)
        self.docs_policy = docs_policy() if self.relaxed_paths else UI_POLICY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = self.docs_policy if scope.get("path") in self.relaxed_paths else UI_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", policy)
                for name, value in COMMON.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_security_headers(app) -> None:
    """Wrap `app`'s whole middleware stack (built lazily by Starlette on the first request) in `SecurityHeaders`."""
    relaxed = {p for p in (app.docs_url, app.docs_url and app.swagger_ui_oauth2_redirect_url) if p}
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityHeaders(build(), relaxed_paths=relaxed)
