"""HTTP errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every error the server returns goes through here (API and UI routes alike), including FastAPI's own
validation errors and malformed JSON, which OpenAI answers with 400 rather than FastAPI's default 422.

Notable choices:
- `ErrorBody` is the pydantic model of `error_body`'s shape; `error_responses(401, 404, ...)` is what a route
  passes as FastAPI's `responses=` to document the errors it gives, so /openapi.json lists the real ones.
- `install_openapi(app)` finishes the schema: it removes FastAPI's 422 (this server never answers 422)
  and adds to every operation the refusals of the guards in front of every route (guard.py): 400 for a
  Host not allowed, 413 for a body over the cap, and 403 for a cross-site request on state-changing methods.
"""
from __future__ import annotations

import copy

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextLengthError, UserError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 501: "not_implemented_error", 503: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    return {"error": {"message": message,
                      "type": type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
                      "param": param, "code": code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error's body (OpenAI's shape), as `error_body` builds it."""
    error: ErrorDetail


_WHEN = {400: "Invalid request: a malformed body or parameter (named in `param`), or a Host not allowed",
         401: "No valid API key or session", 403: "Admin only (or a cross-site request)",
         404: "No such resource (or another user's)", 409: "Conflicts with the resource's state",
         413: "Request body or upload over the server's limit", 415: "Content-Type not accepted",
         429: "Too many requests: the server is busy, or too many failed logins",
         501: "Not available here: an optional part not installed, or a feature that needs a local model",
         502: "The upstream server (--upstream) failed or is not answering", 503: "The model could not be loaded"}


_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}


def error_responses(*statuses: int) -> dict[int, dict]:
    """FastAPI `responses=` documenting that a route answers these statuses with an `ErrorBody` (always JSON,
    whatever the route's own media type; `install_openapi` adds the schema to the components)."""
    return {s: {"description": _WHEN.get(s, "Error"), "content": copy.deepcopy(_ERROR_CONTENT)} for s in statuses}


# guard.py's refusals, in front of every route (403: the cross-site check, only on methods that change something)
GUARD_STATUSES = {400: "A Host header this server does not answer to", 413: "Request body over the server's limit"}
UNSAFE_GUARD_STATUSES = {403: "A cross-site request: a change from another site's page, without an API key"}
_SAFE_METHODS = {"get", "head", "options", "trace"}


def install_openapi(app) -> None:
    """Make `app.openapi()` document the statuses the server really answers (see the module docstring)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for path in schema.get("paths", {}).values():
            for method, op in path.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                extra = GUARD_STATUSES | ({} if method in _SAFE_METHODS else UNSAFE_GUARD_STATUSES)
                for status, why in extra.items():
                    responses.setdefault(str(status), {"description": why, "content": copy.deepcopy(_ERROR_CONTENT)})
                op["responses"] = dict(sorted(responses.items()))
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in {**body.pop("$defs", {}), "ErrorBody": body}.items():
            components.setdefault(name, sub)
        for unused in ("HTTPValidationError", "ValidationError"):  # only the 422s referred to them
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code, type), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    e = errs[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    # drop pydantic's union-branch names ("str", "list[str]", "function-after[...]") from the path
    loc = [x for x in loc if not (x.startswith(("list[", "function-")) or x in ("str", "int", "float", "bool"))]
    param = ".".join(loc) or None
    if e.get("type") == "json_invalid":
        return ("We could not parse the JSON body of your request: "
                f"{e.get('ctx', {}).get('error', 'invalid JSON')}. Send a JSON object with Content-Type "
                "application/json."), None
    if e.get("type") == "missing" and not loc:
        return "The request needs a JSON body.", None
    msg = e.get("msg", "invalid value")
    more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
    return (f"{param}: {msg}" if param else msg) + more, param


def install_handlers(app) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError):
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.type)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError):
        msg, param = _validation_message(exc)
        return error_response(400, msg, param, "invalid_value" if param else "invalid_json")

    @app.exception_handler(ContextLengthError)
    async def _ctx(_req: Request, exc: ContextLengthError):
        return error_response(400, str(exc), "messages", "context_length_exceeded")

    @app.exception_handler(UserError)
    async def _user(_req: Request, exc: UserError):
        return error_response(400, str(exc), None, None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"Unknown URL {_req.method} {_req.url.path}."
        if exc.status_code == 405:
            msg = f"Method {_req.method} is not allowed for {_req.url.path}."
        return error_response(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception):
        import logging
        logging.getLogger("alignchat.serve").exception("unhandled error")
        return error_response(500, f"The server had an internal error: {type(exc).__name__}.", type="server_error")
