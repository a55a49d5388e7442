"""HTTP API of the literature assistant: a FastAPI `APIRouter` that `alignchat serve` mounts.

Routes (JSON; errors have the server's OpenAI-shaped bodies):
    POST   /v1/library/documents?filename=NAME   body = the file's bytes -> {"results": [...]}
    GET    /v1/library/documents          -> {"data": [document, ...], "indexing": [upload in progress, ...]}
    GET    /v1/library/documents/{id}     -> {"document", "references": [parsed entry, ...], "citations":
                                           {"cites": [doc id, ...], "cited_by": [...]}}
    DELETE /v1/library/documents/{id}
    GET    /v1/library/passages/{id}      -> passage + its document's reference
    POST   /v1/library/ask                {"question", "mode": strict|creative, "strategy": auto|model|extractive,
                                           "k"} -> {answer, citations: [{n, passage_id, doc_id, title, page, text,
                                           reference}], references, verification, not_found, ...}
    POST   /v1/library/review             {"doc_ids"?, "topic"?} -> {text, groups, table, table_markdown, table_csv,
                                           gaps, citations, ...}
    POST   /v1/library/extract            {"doc_ids"?}
    POST   /v1/library/boolean            {"question"}

Notable choices:
- Each user of the server has their own library, keyed by the account's id (`store.server_user_key`), never
  by its name: an account created again under a deleted account's name starts empty, and deleting an
  account deletes its library (`store.forget_server_user`, called through `serve/hooks.py`). Nobody sees
  another user's documents or passages. When the library is first opened, documents keyed by account name
  (older versions) move to the account's id (`Library.adopt_server_users`).
- The library's tables live in the server's own SQLite database when it has one (sqlite:///PATH), and the
  embeddings file beside it; otherwise in $ALIGNCHAT_HOME/library.
- Uploads: the body is the file's bytes, with any Content-Type but the three an HTML form can send to
  another site without a CORS preflight (`FORM_TYPES`: refused with 415), so a page elsewhere cannot post
  into a logged-in user's library. At most `MAX_UPLOAD_BYTES`, and the readers' limits on characters,
  pages and passages (413, naming the limit). Ingestion runs on a small pool of its own
  (`INGEST_WORKERS`), one upload per user at a time, and locks only that user's part of the library, so
  a large upload delays neither other users nor any other request; its progress is listed under
  `indexing` in `GET /documents`.
- Answers come from the server's loaded model through its scheduler (continuous batching, the one engine),
  so asking the library never competes with chat for a second copy of the model. All blocking work
  (opening the library, SQLite, retrieval, verification, embedding) runs in worker threads, off the event
  loop.
- The router imports nothing of the server's app: it asks for the server's database and each request's
  account through two dependencies, `server_store` and `server_user`, which `alignchat serve` provides
  (`app.dependency_overrides`); left as they are, the router serves one library of one local user.
- Client text fields are `serve.validation.Text`: a lone surrogate is a 400 naming the field.
- Each route documents its reply and its errors in the server's /openapi.json (`error_responses`); the
  upload documents its raw body as `application/octet-stream`.
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from ..errors import UserError
from ..serve.errors import APIError, error_responses
from ..serve.validation import Text
from .ingest import UploadTooLarge
from .store import DEFAULT_USER, Library, server_library_paths, server_user_key


def server_store():
    """Dependency: the database (`alignchat.serve.store.Store`) of the server this router is mounted in, or
    None when there is none (then one library, `$ALIGNCHAT_HOME/library`, of one local user). `alignchat
    serve` provides its own (`app.dependency_overrides`)."""
    return None


def server_user():
    """Dependency: the server account this request acts as (with its `id`), or None for nobody (then the
    route answers 401). `alignchat serve` provides `serve.auth.resolve_user`; without a store it is unused."""
    return None


def _server(request: Request, store=Depends(server_store), account=Depends(server_user)) -> None:
    """Every route's dependency: records the server's database and this request's account for `user_of`
    and `library_for`. It refuses nothing itself, so each route checks its caller where it always did."""
    request.state.library_server = (store, account)


def _recorded(request: Request) -> tuple:
    """(server store, account) as `_server` recorded them; (None, None) outside a route of this router."""
    return getattr(request.state, "library_server", (None, None))


router = APIRouter(prefix="/v1/library", tags=["library"], dependencies=[Depends(_server)])
MAX_UPLOAD_BYTES = 64 * 1024 * 1024
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
UPLOAD_TYPES = ("application/octet-stream", "application/pdf", "application/x-bibtex",
                "application/x-research-info-systems", "text/markdown")  # examples named in the 415
INGEST_WORKERS = 2

_libraries: dict[str, Library] = {}
_lock = threading.Lock()
_ingest_pool = ThreadPoolExecutor(INGEST_WORKERS, thread_name_prefix="library-ingest")
_upload_ids = itertools.count(1)


def _server_users(store) -> list[tuple[int, str, str]]:
    from sqlalchemy import select

    from ..serve.store import User
    with store.session() as s:
        return [(u.id, u.username, (u.created.strftime("%Y-%m-%dT%H:%M:%SZ") if u.created else ""))
                for u in s.scalars(select(User))]


def _location(request: Request):
    store = _recorded(request)[0]
    root, db_path = server_library_paths(store.url) if store is not None else (None, None)
    return store, root, db_path, str(db_path or root or "default")


def library_for(request: Request) -> Library:
    """The Library that belongs to this server (one per database); opening it may take a while."""
    store, root, db_path, key = _location(request)
    with _lock:
        lib = _libraries.get(key)
        if lib is None:
            lib = Library(root, db_path=db_path)
            if store is not None:
                # the server's own database may purge what deleted accounts left; a library shared with
                # the CLI ($ALIGNCHAT_HOME/library) is only adopted from
                lib.adopt_server_users(_server_users(store), purge_replaced=db_path is not None)
            _libraries[key] = lib
        return lib


async def _library(request: Request) -> Library:
    lib = _libraries.get(_location(request)[3])
    return lib if lib is not None else await asyncio.to_thread(library_for, request)


def user_of(request: Request) -> str:
    """The library owner of this request: the server account's id key (or "local" outside the server)."""
    store, user = _recorded(request)
    if store is None:  # mounted outside `alignchat serve`: one local user
        return DEFAULT_USER
    if user is None:
        raise HTTPException(401, "You must log in or pass an API key to use the library.")
    return server_user_key(user.id)


class SchedulerBackend:
    """The server's own model (local, or the `--upstream` engine) through its host and scheduler, with the
    library's one set of sampling settings (`backends.LIBRARY_SAMPLING`); `complete` is called from a worker
    thread."""

    def __init__(self, host, loop: asyncio.AbstractEventLoop):
        self.host = host
        self.loop = loop
        self.name = f"server model {host.model_id}"
        self.max_context = host.context_length  # None: the upstream's, not known here

    def prompt_tokens(self, messages: list[dict]) -> int | None:
        return self.host.prompt_tokens(self.host.render_chat(messages))

    def complete(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0) -> str:
        from .backends import LIBRARY_SAMPLING
        prompt = self.host.render_chat(messages)
        n = self.host.prompt_tokens(prompt)
        if n is not None and self.max_context is not None:
            room = self.max_context - n - 1
            if room < 1:
                raise UserError("the prompt does not fit the model's context")
            max_tokens = min(max_tokens, room)
        params = LIBRARY_SAMPLING.but(max_tokens=max(1, max_tokens), temperature=temperature).engine_params(0)

        async def run() -> str:
            handle = self.host.scheduler.submit(prompt, params)
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


def _user_error(e: UserError) -> Exception:
    if isinstance(e, UploadTooLarge):
        return APIError(413, str(e), code="upload_too_large")
    return HTTPException(400, str(e))


DocId = Annotated[Text, Field(min_length=1, max_length=100)]
DocIds = Annotated[list[DocId] | None, Field(max_length=10_000)]


class AskRequest(BaseModel):
    question: Text = Field(min_length=1, max_length=4000)
    mode: Text = Field("strict", pattern="^(strict|creative)$")
    strategy: Text = Field("auto", pattern="^(auto|model|extractive)$")
    k: int = Field(5, ge=1, le=20)
    doc_ids: DocIds = None


class ReviewRequest(BaseModel):
    doc_ids: DocIds = None
    topic: Text | None = Field(None, max_length=4000)


class ExtractRequest(BaseModel):
    doc_ids: DocIds = None


class BooleanRequest(BaseModel):
    question: Text = Field(min_length=1, max_length=2000)


class UploadResult(BaseModel):
    path: str
    status: str  # added | duplicate | merged
    doc_id: str
    title: str
    n_passages: int
    note: str


class Uploaded(BaseModel):
    results: list[UploadResult]


class Indexing(BaseModel):
    filename: str
    stage: str
    done: int
    total: int


class DocumentList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]  # store.Document.to_dict()
    indexing: list[Indexing]


class Deleted(BaseModel):
    id: str
    deleted: Literal[True]


class PassageOut(BaseModel):  # store.Passage.to_dict() and its document
    id: str
    doc_id: str
    text: str
    title: str
    reference: str
    document: dict[str, Any]


class AnswerOut(BaseModel):
    question: str
    answer: str
    not_found: bool
    citations: list[dict[str, Any]]
    references: list[str]
    verification: dict[str, Any]
    strategy: str
    backend: str | None


class ReviewOut(BaseModel):
    text: str
    citations: list[dict[str, Any]]
    references: list[str]
    verification: dict[str, Any]
    papers: list[dict[str, Any]]
    groups: list[dict[str, Any]]  # tasks.Group: facet, label, doc_ids, paragraph
    table: list[dict[str, Any]]  # the comparison table: document, doc_id, problem, method, data, result
    table_markdown: str
    table_csv: str
    gaps: str
    language: str


class DocumentOut(BaseModel):  # store.Document.to_dict(), its parsed references and its citation links
    document: dict[str, Any]
    references: list[dict[str, Any]]
    citations: dict[str, list[str]]  # {"cites": [doc ids in the library], "cited_by": [...]}


class Extracted(BaseModel):
    data: list[dict[str, Any]]  # tasks.PaperUnits.to_dict(): doc_id, title, reference, units


class BooleanOut(BaseModel):
    question: str
    language: str
    concepts: list[list[str]]
    groups: list[dict[str, Any]]  # boolean.Concept.to_dict(): concept, vocabulary_id, terms [{term, source, proposed}]
    strings: dict[str, str]
    checked: bool
    generic: str
    pubmed: str
    scopus: str
    wos: str
    cnki: str | None
    cnki_tka: str | None


UPLOAD_BODY = {"requestBody": {"required": True, "description": "The file's bytes (any Content-Type but a form's)",
                               "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                   "format": "binary"}}}}}


def _check_upload_type(request: Request) -> None:
    """Refuse the bodies an HTML form on another site could send here without a CORS preflight."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype in FORM_TYPES:
        raise APIError(415, f"Content-Type {ctype} is not accepted for uploads. Send the file's bytes as the "
                            f"request body with Content-Type {UPLOAD_TYPES[0]} (or the file's own type, such as "
                            f"{', '.join(UPLOAD_TYPES[1:])}). {', '.join(FORM_TYPES)} are refused because a page "
                            f"on another site can send those.", param="Content-Type", code="unsupported_media_type")


async def _read_upload(request: Request) -> bytes:
    """The request body, refused with 413 as soon as it is over MAX_UPLOAD_BYTES."""
    too_large = APIError(413, f"File larger than {MAX_UPLOAD_BYTES // 2 ** 20} MiB ({MAX_UPLOAD_BYTES} bytes), "
                              f"the most one upload may be.", code="upload_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
        raise too_large
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_UPLOAD_BYTES:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def _app_state(app, name: str, factory):
    value = getattr(app.state, name, None)
    if value is None:
        value = factory()
        setattr(app.state, name, value)
    return value


@router.post("/documents", openapi_extra=UPLOAD_BODY,
             responses={200: {"model": Uploaded}, **error_responses(400, 401, 413, 415)})
async def upload(request: Request, filename: Annotated[Text, Query(min_length=1, max_length=255)]):
    """The request body is the file's bytes; `?filename=` names it (its extension picks the reader)."""
    _check_upload_type(request)
    user = user_of(request)
    lib = await _library(request)
    data = await _read_upload(request)
    if not data:
        raise HTTPException(400, "Empty upload: send the file's bytes as the request body.")
    name = re.sub(r"[\x00-\x1f\x7f]", "", Path(filename.replace("\\", "/")).name) or "upload.txt"
    slots: dict[str, asyncio.Lock] = _app_state(request.app, "library_upload_slots", dict)
    indexing: dict[str, dict[int, dict]] = _app_state(request.app, "library_indexing", dict)
    async with slots.setdefault(user, asyncio.Lock()):  # one upload per user at a time
        entry = {"filename": name, "stage": "reading", "done": 0, "total": 0}
        token = next(_upload_ids)
        indexing.setdefault(user, {})[token] = entry

        def progress(stage: str, done: int, total: int) -> None:
            entry.update(stage=stage, done=done, total=total)

        try:
            added = await asyncio.get_running_loop().run_in_executor(
                _ingest_pool, functools.partial(lib.add_file, name, user, data, name, progress=progress,
                                                limited=True))
        except UserError as e:
            raise _user_error(e) from e
        finally:
            mine = indexing.get(user, {})
            mine.pop(token, None)
            if not mine:
                indexing.pop(user, None)
    return {"results": [r.__dict__ for r in added]}


@router.get("/documents", responses={200: {"model": DocumentList}, **error_responses(401)})
async def list_documents(request: Request):
    user = user_of(request)
    lib = await _library(request)
    docs = await asyncio.to_thread(lib.documents, user)
    busy = getattr(request.app.state, "library_indexing", None) or {}
    return {"object": "list", "data": [d.to_dict() for d in docs],
            "indexing": [dict(e) for e in list(busy.get(user, {}).values())]}


@router.get("/documents/{doc_id}", responses={200: {"model": DocumentOut}, **error_responses(401, 404)})
async def get_document(doc_id: str, request: Request):
    user = user_of(request)
    lib = await _library(request)

    def find():
        d = lib.document(doc_id, user)
        return None if d is None else {"document": d.to_dict(), "references": lib.references(doc_id, user),
                                       "citations": lib.citation_graph(doc_id, user)}

    out = await asyncio.to_thread(find)
    if out is None:
        raise HTTPException(404, f"No document {doc_id!r} in your library.")
    return out


@router.delete("/documents/{doc_id}", responses={200: {"model": Deleted}, **error_responses(401, 404)})
async def delete_document(doc_id: str, request: Request):
    user = user_of(request)
    lib = await _library(request)
    if not await asyncio.to_thread(lib.remove, doc_id, user):
        raise HTTPException(404, f"No document {doc_id!r} in your library.")
    return {"id": doc_id, "deleted": True}


@router.get("/passages/{passage_id}", responses={200: {"model": PassageOut}, **error_responses(401, 404)})
async def get_passage(passage_id: str, request: Request):
    user = user_of(request)
    lib = await _library(request)

    def find():
        p = lib.passage(passage_id, user)
        return (p, lib.document(p.doc_id, user)) if p is not None else (None, None)

    p, d = await asyncio.to_thread(find)
    if p is None or d is None:
        raise HTTPException(404, f"No passage {passage_id!r} in your library.")
    return {**p.to_dict(), "title": d.title, "reference": d.reference(), "document": d.to_dict()}


@router.post("/ask", responses={200: {"model": AnswerOut}, **error_responses(400, 401, 502, 503)})
async def ask(body: AskRequest, request: Request):
    from .answer import Answerer
    user = user_of(request)
    lib = await _library(request)
    backend = await _backend(request, body.strategy)
    try:
        ans = await asyncio.to_thread(lambda: Answerer(lib, user, backend=backend, k=body.k).ask(
            body.question, mode=body.mode, strategy=body.strategy, doc_ids=body.doc_ids))
    except UserError as e:
        raise _user_error(e) from e
    return ans.to_dict()


@router.post("/review", responses={200: {"model": ReviewOut}, **error_responses(400, 401)})
async def review(body: ReviewRequest, request: Request):
    from .tasks import review as do_review
    user = user_of(request)
    lib = await _library(request)
    try:
        rv = await asyncio.to_thread(do_review, lib, user, body.doc_ids, body.topic, None)
    except UserError as e:
        raise _user_error(e) from e
    return rv.to_dict()


@router.post("/extract", responses={200: {"model": Extracted}, **error_responses(400, 401)})
async def extract(body: ExtractRequest, request: Request):
    from .tasks import extract_units
    user = user_of(request)
    lib = await _library(request)

    def run():
        ids = body.doc_ids or [d.id for d in lib.documents(user)]
        return [extract_units(lib, i, user).to_dict() for i in ids]

    try:
        units = await asyncio.to_thread(run)
    except UserError as e:
        raise _user_error(e) from e
    return {"data": units}


@router.post("/boolean", responses={200: {"model": BooleanOut}, **error_responses(400, 401)})
async def boolean(body: BooleanRequest, request: Request):
    from .tasks import boolean_query
    user = user_of(request)
    lib = await _library(request)
    try:
        bq = await asyncio.to_thread(boolean_query, body.question, lib, user)
    except UserError as e:
        raise _user_error(e) from e
    return bq.to_dict()
