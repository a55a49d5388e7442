"""The server's request dependencies: who is asking, as the API, the web UI and the admin routes require it.

`api_user` (an API key or a session: 401 `invalid_api_key` otherwise), `ui_user` (401 `login_required`) and
`admin_user` (403 `admin_required` for a non-admin) are FastAPI dependencies over `auth.resolve_user`.

Notable choices:
- One definition each, below every router (it imports only `auth` and `errors`), so the API, the UI,
  moderation and the tokenizer routes all use the same checks without importing one another.
- The 401s differ on purpose: an API client is told how to send a key, a browser is told to log in.
"""
from __future__ import annotations

from fastapi import Depends, Request

from .auth import CurrentUser, resolve_user
from .errors import APIError


def api_user(request: Request) -> CurrentUser:
    user = resolve_user(request)
    if user is None:
        raise APIError(401, "Missing or invalid API key. Send `Authorization: Bearer <key>`; create a key with "
                            "`alignchat users key NAME`.", code="invalid_api_key")
    return user


def ui_user(request: Request) -> CurrentUser:
    user = resolve_user(request)
    if user is None:
        raise APIError(401, "Please log in.", code="login_required")
    return user


def admin_user(user: CurrentUser = Depends(ui_user)) -> CurrentUser:
    if not user.is_admin:
        raise APIError(403, "Only an admin can do this (labelling and export).", code="admin_required")
    return user
