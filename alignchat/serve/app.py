"""The FastAPI application: `create_app(...)` wires the store, accounts, model host, API, UI and static files.

Notable choices:
- One process serves the OpenAI-compatible API (/v1), the web UI's JSON/SSE routes (/api), the static UI
  (/, /static) and /health. Every error body, on every route, has OpenAI's shape.
- Who a request is: an API key (`Authorization: Bearer ...`) or the UI's session cookie; without either,
  the local user when the server runs without login (loopback only, unless `--insecure-no-login`),
  otherwise nobody (401), decided by `auth.resolve_user`. The local user is resolved per request, so
  deleting it does not break the server.
- In front of every route (guard.py): the Host allow-list, the cross-site request check and the body cap.
- `/tokenize`, `/detokenize`, `/tokenizer_info` (tokenize_api.py) and Prometheus's `/metrics` (metrics.py,
  which also counts every request) sit at the root, where vLLM has them.
- The literature assistant's router (`alignchat.library.api.router`) is included when that module imports,
  and given the server's database and each request's account through its dependencies (`server_store`,
  `server_user`), so the library imports nothing of the server's app; the UI's Library tab mounts
  `/static/library.js` when it defines `window.AlignchatLibrary.mount`.
- The model loads in the background at start-up, so the UI and /health answer at once.
- /openapi.json documents each route's real answers: its errors (errors.error_responses, the guards'
  refusals added by errors.install_openapi, never FastAPI's 422) and its bodies' media types.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from . import guard, metrics
from .auth import Accounts, LoginThrottle, resolve_user
from .errors import install_handlers, install_openapi
from .headers import install_security_headers
from .runtime import ServeConfig, ServerContext
from .store import Store

log = logging.getLogger("alignchat.serve")
STATIC_DIR = Path(__file__).parent / "static"


class Health(BaseModel):
    status: str  # idle | loading | ok | error, or with --upstream: loading | ok | unavailable
    model: str | None  # None: an upstream that has not answered yet and no --upstream-model
    engine: dict[str, Any] | None
    error: str | None
    require_login: bool
    limits: dict[str, int]
    scheduler: dict[str, Any] | None


def create_app(model: str | None = None, db: str | None = None, host: str | None = None,
               config: ServeConfig | None = None, **overrides) -> FastAPI:
    """Build the server. `config` (or keyword overrides of `ServeConfig` fields) selects model, DB, auth."""
    import dataclasses
    cfg = config or ServeConfig()
    changes = {k: v for k, v in dict(model=model, db=db, host=host, **overrides).items() if v is not None}
    cfg = dataclasses.replace(cfg, **changes)
    store = Store(cfg.db)
    accounts = Accounts(store, LoginThrottle(max_failures=cfg.login_max_failures, window=cfg.login_window,
                                             lockout=cfg.login_lockout))
    ctx = ServerContext(cfg, store, accounts)
    if not ctx.require_login:
        accounts.local_user()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if cfg.preload:
            ctx.host.start_loading()
        yield
        ctx.host.shutdown()
        store.dispose()

    app = FastAPI(title="alignchat", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.ctx = ctx
    install_handlers(app)
    install_openapi(app)
    guard.install(app, cfg)
    install_security_headers(app)
    metrics.install(app, ctx)  # after the guards: their refusals are counted too

    from . import openai_api, tokenize_api, ui
    app.include_router(openai_api.router)
    app.include_router(tokenize_api.router)
    app.include_router(ui.router)
    from . import moderation  # POST /v1/moderations and the admin's moderation events
    app.include_router(moderation.router)
    try:
        from ..library import api as library_api  # the literature assistant, when installed
    except Exception as e:  # noqa: BLE001 - absent or broken: the chat server still runs
        log.info("library API not available: %s", e)
    else:
        # the library's router asks for the server's database and this request's account as dependencies
        app.dependency_overrides[library_api.server_store] = lambda: store
        app.dependency_overrides[library_api.server_user] = resolve_user
        app.include_router(library_api.router)

    @app.get("/health", responses={200: {"model": Health}})
    async def health():
        sched, engine = ctx.host.scheduler, ctx.host.engine
        return {"status": ctx.host.status(), "model": ctx.host.model_id,
                "engine": {"device": str(engine.device), "dtype": str(engine.cache_dtype).removeprefix("torch."),
                           "decode": engine.decode_mode, "max_batch": engine.max_batch,
                           "context": engine.max_seq_len, "prefix_cache": engine.prefix_stats(),
                           "precision": getattr(ctx.host, "precision", None),
                           "compile": getattr(ctx.host, "compile", None)} if engine is not None else None,
                "error": str(ctx.host.error) if ctx.host.error else None,
                "require_login": ctx.require_login,
                "limits": {"max_body": cfg.max_body, "max_messages": cfg.max_messages, **_library_limits()},
                "scheduler": sched.stats() if sched is not None else None}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _library_limits() -> dict:
    try:
        from ..library.api import MAX_UPLOAD_BYTES
        from ..library.ingest import MAX_UPLOAD_CHARS
    except Exception:  # noqa: BLE001 - the library is optional
        return {}
    return {"library_upload_bytes": MAX_UPLOAD_BYTES, "library_upload_chars": MAX_UPLOAD_CHARS}


def _version() -> str:
    from .. import __version__
    return __version__
