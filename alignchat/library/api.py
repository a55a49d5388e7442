"""HTTP API of the literature assistant: a FastAPI `APIRouter` that `alignchat serve` mounts.

Routes (JSON; errors have the server's OpenAI-shaped bodies):
    POST   /v1/library/documents?filename=NAME   body = the file's bytes -> {"results": [...]}
    GET    /v1/library/documents          -> {"data": [document, ...]}
    DELETE /v1/library/documents/{id}
    GET    /v1/library/passages/{id}      -> passage + its document's reference
    POST   /v1/library/ask                {"question", "mode": strict|creative, "strategy": auto|model|extractive,
                                           "k"} -> {answer, citations: [{n, passage_id, doc_id, title, page, text,
                                           reference}], references, verification, not_found, ...}
    POST   /v1/library/review             {"doc_ids"?, "topic"?}
    POST   /v1/library/extract            {"doc_ids"?}
    POST   /v1/library/boolean            {"question"}

Notable choices:
- Each user of the server has their own library (`user_id` = the server's user name); nobody sees another
  user's documents or passages.
- The library's tables live in the server's own SQLite database when it has one (sqlite:///PATH), and the
  embeddings file beside it; otherwise in $ALIGNCHAT_HOME/library.
- Answers come from the server's loaded model through its scheduler (continuous batching, the one engine),
  so asking the library never competes with chat for a second copy of the model. Blocking work (retrieval,
  verification, embedding) runs in a worker thread, off the event loop.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from ..errors import UserError
from .store import Library

router = APIRouter(prefix="/v1/library", tags=["library"])
MAX_UPLOAD_BYTES = 64 * 1024 * 1024

_libraries: dict[str, Library] = {}
_lock = threading.Lock()


def library_for(request: Request) -> Library:
    """The Library that belongs to this server (one per database)."""
    ctx = getattr(request.app.state, "ctx", None)
    db_url = getattr(getattr(ctx, "cfg", None), "db", None)
    root = db_path = None
    if db_url is None and ctx is not None:
        from ..fetch import alignchat_home
        db_path = alignchat_home() / "serve" / "alignchat.db"
    elif isinstance(db_url, str) and db_url.startswith("sqlite:///") and db_url != "sqlite:///:memory:":
        db_path = Path(db_url[len("sqlite:///"):])
    if db_path is not None:
        root = db_path.parent / "library"
    key = str(db_path or "default")
    with _lock:
        if key not in _libraries:
            _libraries[key] = Library(root, db_path=db_path)
        return _libraries[key]


def user_of(request: Request) -> str:
    if getattr(request.app.state, "ctx", None) is None:  # mounted outside `alignchat serve`: one local user
        return "local"
    from ..serve.app import resolve_user
    user = resolve_user(request)
    if user is None:
        raise HTTPException(401, "You must log in or pass an API key to use the library.")
    return user.username


class SchedulerBackend:
    """Our served model via the server's scheduler; `complete` is called from a worker thread."""

    def __init__(self, host, loop: asyncio.AbstractEventLoop):
        self.host = host
        self.loop = loop
        self.name = f"server model {host.model_id}"
        self.max_context = host.context_length

    def prompt_tokens(self, messages: list[dict]) -> int:
        return len(self.host.tokenizer.render_chat(messages, add_generation_prompt=True).ids)

    def complete(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0) -> str:
        from ..engine import SamplingParams
        ids = self.host.tokenizer.render_chat(messages, add_generation_prompt=True).ids
        room = self.max_context - len(ids) - 1
        if room < 1:
            raise UserError("the prompt does not fit the model's context")
        params = SamplingParams(max_tokens=min(max_tokens, room), temperature=temperature, repetition_penalty=1.1,
                                seed=0)

        async def run() -> str:
            handle = self.host.scheduler.submit(ids, params)
            parts = []
            while True:
                ev = await handle.queue.get()
                if ev.kind == "delta":
                    parts.append(ev.text)
                elif ev.kind == "error":
                    raise UserError(f"generation failed: {ev.error}")
                else:
                    return "".join(parts)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=600)


async def _backend(request: Request, strategy: str):
    if strategy == "extractive":
        return None
    ctx = getattr(request.app.state, "ctx", None)
    host = getattr(ctx, "host", None)
    if host is None:
        return None
    try:
        await host.ready()
    except Exception:  # noqa: BLE001 - no model: the library still answers with quoted evidence
        if strategy == "model":
            raise
        return None
    return SchedulerBackend(host, asyncio.get_running_loop())


def _user_error(e: UserError) -> HTTPException:
    return HTTPException(400, str(e))


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    mode: str = Field("strict", pattern="^(strict|creative)$")
    strategy: str = Field("auto", pattern="^(auto|model|extractive)$")
    k: int = Field(5, ge=1, le=20)
    doc_ids: list[str] | None = None


class ReviewRequest(BaseModel):
    doc_ids: list[str] | None = None
    topic: str | None = None


class ExtractRequest(BaseModel):
    doc_ids: list[str] | None = None


class BooleanRequest(BaseModel):
    question: str = Field(min_length=1, max_length=2000)


@router.post("/documents")
async def upload(request: Request, filename: str):
    """The request body is the file's bytes; `?filename=` names it (its extension picks the reader)."""
    lib, user = library_for(request), user_of(request)
    data = await request.body()
    if len(data) > MAX_UPLOAD_BYTES:
        raise HTTPException(413, "File larger than 64 MiB.")
    if not data:
        raise HTTPException(400, "Empty upload: send the file's bytes as the request body.")
    name = Path(filename).name or "upload.txt"
    try:
        added = await asyncio.to_thread(lib.add_file, name, user, data, name)
    except UserError as e:
        raise _user_error(e) from e
    return {"results": [r.__dict__ for r in added]}


@router.get("/documents")
async def list_documents(request: Request):
    lib, user = library_for(request), user_of(request)
    return {"object": "list", "data": [d.to_dict() for d in lib.documents(user)]}


@router.delete("/documents/{doc_id}")
async def delete_document(doc_id: str, request: Request):
    lib, user = library_for(request), user_of(request)
    if not lib.remove(doc_id, user):
        raise HTTPException(404, f"No document {doc_id!r} in your library.")
    return {"id": doc_id, "deleted": True}


@router.get("/passages/{passage_id}")
async def get_passage(passage_id: str, request: Request):
    lib, user = library_for(request), user_of(request)
    p = lib.passage(passage_id, user)
    if p is None:
        raise HTTPException(404, f"No passage {passage_id!r} in your library.")
    d = lib.document(p.doc_id, user)
    return {**p.to_dict(), "title": d.title, "reference": d.reference(), "document": d.to_dict()}


@router.post("/ask")
async def ask(body: AskRequest, request: Request):
    from .answer import Answerer
    lib, user = library_for(request), user_of(request)
    backend = await _backend(request, body.strategy)
    try:
        ans = await asyncio.to_thread(Answerer(lib, user, backend=backend, k=body.k).ask, body.question,
                                      mode=body.mode, strategy=body.strategy, doc_ids=body.doc_ids)
    except UserError as e:
        raise _user_error(e) from e
    return ans.to_dict()


@router.post("/review")
async def review(body: ReviewRequest, request: Request):
    from .tasks import review as do_review
    lib, user = library_for(request), user_of(request)
    try:
        rv = await asyncio.to_thread(do_review, lib, user, body.doc_ids, body.topic, None)
    except UserError as e:
        raise _user_error(e) from e
    return rv.to_dict()


@router.post("/extract")
async def extract(body: ExtractRequest, request: Request):
    from .tasks import extract_units
    lib, user = library_for(request), user_of(request)
    ids = body.doc_ids or [d.id for d in lib.documents(user)]
    try:
        units = await asyncio.to_thread(lambda: [extract_units(lib, i, user).to_dict() for i in ids])
    except UserError as e:
        raise _user_error(e) from e
    return {"data": units}


@router.post("/boolean")
async def boolean(body: BooleanRequest, request: Request):
    from .tasks import boolean_query
    lib, user = library_for(request), user_of(request)
    try:
        bq = await asyncio.to_thread(boolean_query, body.question, lib, user)
    except UserError as e:
        raise _user_error(e) from e
    return bq.to_dict()
