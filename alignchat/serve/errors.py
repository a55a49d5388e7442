"""HTTP errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the right status.

Every error the server returns goes through here (API and UI routes alike), including FastAPI's own
validation errors and malformed JSON, which OpenAI answers with 400 rather than FastAPI's default 422.
"""
from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
