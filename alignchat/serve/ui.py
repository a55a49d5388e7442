"""The web UI's routes (/api/...): login, conversations, streamed chat, feedback, compare and labelling.

Notable choices:
- Every conversation and message query is filtered by the requesting user's id; another user's ids answer
  404 exactly like ids that do not exist, so a user cannot even learn that they exist.
- Chat replies stream as Server-Sent Events over a POST (`event: user|delta|done|pair|error`). The user's
  message is committed before its `user` event is sent: once the UI shows it as acknowledged, a killed
  server cannot lose it. Each answer is committed before its `done` event.
- Stop = the browser aborts the request: the server sees the disconnect, frees the engine slot and keeps
  the partial answer (finish_reason "abort").
- Regenerate and edit-and-resend hide the replaced messages rather than deleting them.
- Feedback rows snapshot the prompt and responses (see store.py). Labelling mode (sample K answers,
  demonstrations, K-way rankings) and the export download are for admins only.
- Built-in tools (serve/builtin_tools.py): a conversation's `tools` are its toggles, checked against the
  deployment and the account when set (400/403/501) and again at each turn (a tool the admin disabled since
  is no longer offered). With tools on, a turn runs the tool loop (`alignchat.tools.loop.steps`) on the
  engine: the text streams as `delta` events, each executed round comes as a `tool` event (the stored
  assistant call message and its `tool` result messages) and the final answer as `done`; every round is
  committed before its event, so a reload shows it. Compare mode answers without tools.
- Client text is `validation.Text` (a lone surrogate is a 400 naming the field); a prompt holds at most the
  API's message limit. Each route documents its reply and its errors in /openapi.json (errors.error_responses). The chat template is rendered in a worker thread (with the conversation's database
  work), never on the event loop, and message content is text: only the template makes control tokens.
"""
from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from ..client.sampling import SAMPLING_DEFAULTS
from .auth import SESSION_COOKIE, SESSION_DAYS, CurrentUser, resolve_user
from .deps import admin_user, ui_user
from .errors import APIError, error_responses
from . import moderation
from .openai_api import SEED_MAX, SEED_MIN, check_message_count, event_stream, render_prompt
from .runtime import ServerContext
from .store import Conversation, Demonstration, Feedback, Message, Ranking, iso, utcnow
from .validation import Text, check_text

router = APIRouter(prefix="/api")
ROW_ID_MAX = 2**63 - 1  # database row ids are int64: a larger id names nothing (400, not an overflow)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


def _bounded(max_length: int):
    """Optional `Text` of at most max_length characters (the length is checked first, so an over-long
    value is told its length in characters)."""
    return Annotated[str, Field(max_length=max_length), AfterValidator(check_text)] | None


class LoginBody(_Body):
    username: Text = Field(min_length=1, max_length=64)
    password: Text = Field(min_length=1, max_length=1024)


class Settings(_Body):
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    repetition_penalty: float | None = Field(None, gt=0, le=10)


class ConversationBody(_Body):
    title: _bounded(200) = None
    system_prompt: _bounded(100_000) = None
    settings: Settings | None = None
    tools: list[Text] | None = Field(None, max_length=16)  # built-in tools switched on in this chat


class ChatBody(_Body):
    content: _bounded(1_000_000) = None
    edit_of: Text | None = None  # id of a user message: hide it and what follows, send `content` instead
    regenerate: bool = False  # hide the last answer and answer again
    compare: bool = False  # two answers side by side; the user picks one
    settings: Settings | None = None
    system_prompt: _bounded(100_000) = None


class ThumbBody(_Body):
    rating: Literal[1, -1, 0]


class EditBody(_Body):
    content: Text = Field(max_length=1_000_000)


class ChooseBody(_Body):
    chosen: Literal[0, 1]


class ChatMsg(_Body):
    role: Literal["system", "user", "assistant"]
    content: Text


class SampleBody(_Body):
    prompt: list[ChatMsg] = Field(min_length=1)
    k: int = Field(4, ge=2, le=9)
    settings: Settings | None = None


class DemonstrationBody(_Body):
    prompt: list[ChatMsg] = Field(min_length=1)
    response: Text = Field(min_length=1, max_length=1_000_000)


class RankingBody(_Body):
    prompt: list[ChatMsg] = Field(min_length=1)
    responses: list[Text] = Field(min_length=2, max_length=9)
    ranking: list[int] = Field(min_length=2, max_length=9)
    criteria: list[Text] = Field(default_factory=lambda: ["helpful", "honest", "harmless"], max_length=10)


# ---- response bodies (documentation: /openapi.json) ---------------------------------------------------------

class Ok(BaseModel):
    ok: Literal[True]


class UserInfo(BaseModel):
    username: str
    is_admin: bool


class Me(BaseModel):
    user: UserInfo
    require_login: bool
    model: str
    model_status: str
    context_length: int | None
    tools: list[str] = []  # the built-in tools this user may switch on


class MessageOut(BaseModel):
    id: str
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    finish_reason: str | None
    model: str | None
    created: str
    rating: int
    edited: bool
    tool_calls: list[dict[str, Any]] | None = None  # an assistant message that called tools
    tool: dict[str, Any] | None = None  # a tool message: {tool_call_id, name, arguments, error}


class ToolRights(_Body):
    tools: list[Text] | None = Field(max_length=16)  # None: every tool the server enables


class ToolRightsOut(BaseModel):
    username: str
    tools: list[str] | None


class ConversationOut(BaseModel):
    id: str
    title: str
    system_prompt: str
    settings: dict[str, Any]
    tools: list[str] = []
    created: str
    updated: str
    messages: list[MessageOut] | None = None  # in GET /conversations/{cid} and POST /conversations


class ConversationList(BaseModel):
    data: list[ConversationOut]


class Chosen(BaseModel):
    ok: Literal[True]
    message: MessageOut | None


class Rated(BaseModel):
    ok: Literal[True]
    rating: Literal[1, -1, 0]


class Samples(BaseModel):
    responses: list[str]
    model: str


class Created(BaseModel):
    ok: Literal[True]
    id: int


class NDJSONResponse(PlainTextResponse):
    """Newline-delimited JSON: one record per line."""
    media_type = "application/x-ndjson"


# ---- dependencies -------------------------------------------------------------------------------------------

def ctx_of(request: Request) -> ServerContext:
    return request.app.state.ctx


def _own_conversation(s, user: CurrentUser, cid: str) -> Conversation:
    conv = s.get(Conversation, cid)
    if conv is None or conv.user_id != user.id:
        raise APIError(404, f"No conversation {cid}.", code="not_found")
    return conv


def _own_message(s, user: CurrentUser, mid: str) -> tuple[Message, Conversation]:
    msg = s.get(Message, mid)
    conv = s.get(Conversation, msg.conversation_id) if msg is not None else None
    if msg is None or conv is None or conv.user_id != user.id:
        raise APIError(404, f"No message {mid}.", code="not_found")
    return msg, conv


def _msg_json(m: Message, thumbs: dict[str, int] | None = None) -> dict:
    meta = m.meta or {}
    out = {"id": m.id, "role": m.role, "content": m.content, "finish_reason": m.finish_reason,
           "model": m.model, "created": iso(m.created), "rating": (thumbs or {}).get(m.id, 0),
           "edited": bool(meta.get("original") is not None)}
    if meta.get("tool_calls"):
        out["tool_calls"] = meta["tool_calls"]
    if m.role == "tool":
        out["tool"] = {k: meta.get(k) for k in ("tool_call_id", "name", "arguments", "error")}
    return out


def _prompt_message(m: Message) -> dict:
    """A stored message as the model reads it: tool calls and tool results included."""
    meta = m.meta or {}
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": meta.get("tool_call_id", ""), "content": m.content}
    if meta.get("tool_calls"):
        return {"role": m.role, "content": m.content or None, "tool_calls": meta["tool_calls"]}
    return {"role": m.role, "content": m.content}


def _conv_json(conv: Conversation, messages: bool = False, thumbs: dict[str, int] | None = None) -> dict:
    out = {"id": conv.id, "title": conv.title, "system_prompt": conv.system_prompt, "settings": conv.settings or {},
           "tools": list(conv.tools or []), "created": iso(conv.created), "updated": iso(conv.updated)}
    if messages:
        out["messages"] = [_msg_json(m, thumbs) for m in conv.messages if not m.hidden]
    return out


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _settings_params(ctx: ServerContext, prompt_ids: list[int], st: Settings | None, n: int) -> list:
    from ..engine import SamplingParams
    st = st or Settings()
    # the UI clamps the answer length to what is left of the context (an API client gets a 400 instead);
    # an upstream keeps its context to itself (room None): the answer's length is then the one asked or its default
    room = ctx.fit_context(prompt_ids, None)
    budget = min(st.max_tokens, room) if st.max_tokens and room is not None else (st.max_tokens or room)
    return [SamplingParams(max_tokens=budget, temperature=SAMPLING_DEFAULTS.temperature if st.temperature is None else st.temperature,
                           top_p=SAMPLING_DEFAULTS.top_p if st.top_p is None else st.top_p, top_k=st.top_k or 0,
                           repetition_penalty=st.repetition_penalty or 1.0,
                           seed=None if st.seed is None else st.seed + i) for i in range(n)]


# ---- accounts -----------------------------------------------------------------------------------------------

@router.get("/me", responses={200: {"model": Me}, **error_responses(401)})
async def me(request: Request):
    ctx = ctx_of(request)
    user = resolve_user(request)
    info = {"require_login": ctx.require_login, "model": ctx.host.model_id, "model_status": ctx.host.status(),
            "context_length": ctx.host.context_length if ctx.host.model is not None else None}
    if user is None:
        raise APIError(401, "Please log in.", code="login_required")
    from .builtin_tools import available_tools
    return {"user": {"username": user.username, "is_admin": user.is_admin}, **info,
            "tools": available_tools(ctx, user)}


@router.post("/login", responses={200: {"model": Ok}, **error_responses(400, 401, 429)})
async def login(body: LoginBody, request: Request, response: Response):
    import asyncio

    from .auth import LoginThrottled
    from .errors import error_response
    ctx = ctx_of(request)
    client = request.client.host if request.client else None
    try:
        token = await asyncio.to_thread(ctx.accounts.login, body.username, body.password, client)
    except LoginThrottled as e:
        return error_response(429, str(e), code="too_many_attempts", headers={"Retry-After": str(e.retry_after)})
    if token is None:
        raise APIError(401, "Wrong user name or password.", code="bad_credentials")
    # Strict: no cross-site request, not even a top-level navigation, carries the session
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_DAYS * 86400, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
    return {"ok": True}


@router.post("/logout", responses={200: {"model": Ok}})
async def logout(request: Request, response: Response):
    if token := request.cookies.get(SESSION_COOKIE):
        ctx_of(request).accounts.logout(token)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return {"ok": True}


# ---- conversations ------------------------------------------------------------------------------------------

@router.get("/conversations", responses={200: {"model": ConversationList}, **error_responses(401)})
def list_conversations(request: Request, user: CurrentUser = Depends(ui_user)):
    ctx = ctx_of(request)
    with ctx.store.session() as s:
        convs = s.scalars(select(Conversation).where(Conversation.user_id == user.id)
                          .order_by(Conversation.updated.desc()).limit(500))
        return {"data": [_conv_json(c) for c in convs]}


@router.post("/conversations", responses={200: {"model": ConversationOut}, **error_responses(400, 401)})
def create_conversation(body: ConversationBody, request: Request, user: CurrentUser = Depends(ui_user)):
    from .builtin_tools import check_requested
    ctx = ctx_of(request)
    tools = check_requested(ctx, user, body.tools, "tools") if body.tools else []
    with ctx.store.session() as s, s.begin():
        conv = Conversation(user_id=user.id, title=body.title or "", system_prompt=body.system_prompt or "",
                            settings=body.settings.model_dump(exclude_none=True) if body.settings else {},
                            tools=tools)
        s.add(conv)
        s.flush()
        return _conv_json(conv, messages=True)


def _thumbs(s, user: CurrentUser, conv: Conversation) -> dict[str, int]:
    rows = s.execute(select(Feedback.message_id, Feedback.rating).where(
        Feedback.user_id == user.id, Feedback.kind == "thumb", Feedback.conversation_id == conv.id))
    return {mid: r for mid, r in rows}


@router.get("/conversations/{cid}", responses={200: {"model": ConversationOut}, **error_responses(401, 404)})
def get_conversation(cid: str, request: Request, user: CurrentUser = Depends(ui_user)):
    ctx = ctx_of(request)
    with ctx.store.session() as s:
        conv = _own_conversation(s, user, cid)
        return _conv_json(conv, messages=True, thumbs=_thumbs(s, user, conv))


@router.patch("/conversations/{cid}", responses={200: {"model": ConversationOut},
                                                  **error_responses(400, 401, 404)})
def update_conversation(cid: str, body: ConversationBody, request: Request, user: CurrentUser = Depends(ui_user)):
    from .builtin_tools import check_requested
    ctx = ctx_of(request)
    tools = check_requested(ctx, user, body.tools, "tools") if body.tools is not None else None
    with ctx.store.session() as s, s.begin():
        conv = _own_conversation(s, user, cid)
        if tools is not None:
            conv.tools = tools
        if body.title is not None:
            conv.title = body.title
        if body.system_prompt is not None:
            conv.system_prompt = body.system_prompt
        if body.settings is not None:
            conv.settings = body.settings.model_dump(exclude_none=True)
        conv.updated = utcnow()
        return _conv_json(conv)


@router.delete("/conversations/{cid}", responses={200: {"model": Ok}, **error_responses(401, 404)})
def delete_conversation(cid: str, request: Request, user: CurrentUser = Depends(ui_user)):
    ctx = ctx_of(request)
    with ctx.store.session() as s, s.begin():
        s.delete(_own_conversation(s, user, cid))
    return {"ok": True}


# ---- chat ---------------------------------------------------------------------------------------------------

def _prepare_turn(ctx: ServerContext, user: CurrentUser, cid: str, body: ChatBody) -> tuple[list[dict], dict | None, list]:
    """Apply the user's action to the stored conversation (committed); return the prompt, the new user message
    and the conversation's tool toggles."""
    with ctx.store.session() as s, s.begin():
        conv = _own_conversation(s, user, cid)
        if body.system_prompt is not None:
            conv.system_prompt = body.system_prompt
        if body.settings is not None:
            conv.settings = body.settings.model_dump(exclude_none=True)
        visible = [m for m in conv.messages if not m.hidden]
        next_seq = max((m.seq for m in conv.messages), default=-1) + 1
        user_msg = None
        if body.regenerate:
            if not visible:
                raise APIError(400, "Nothing to regenerate: the conversation is empty.", param="regenerate")
            while visible and visible[-1].role in ("assistant", "tool"):  # the answer and its tool rounds
                visible[-1].hidden = True
                visible = visible[:-1]
            if not visible or visible[-1].role != "user":
                raise APIError(400, "Nothing to regenerate: the last message is not from the user.",
                               param="regenerate")
        else:
            if body.content is None or not body.content.strip():
                raise APIError(400, "content: write a message first.", param="content")
            if body.edit_of is not None:
                idx = next((i for i, m in enumerate(visible) if m.id == body.edit_of), None)
                if idx is None or visible[idx].role != "user":
                    raise APIError(404, f"No user message {body.edit_of} in this conversation.", param="edit_of")
                for m in visible[idx:]:
                    m.hidden = True
                visible = visible[:idx]
            m = Message(conversation_id=conv.id, seq=next_seq, role="user", content=body.content)
            s.add(m)
            s.flush()
            visible.append(m)
            user_msg = _msg_json(m)
            if not conv.title:
                conv.title = " ".join(body.content.split())[:60]
        conv.updated = utcnow()
        prompt = ([{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else []) + \
                 [_prompt_message(m) for m in visible]
        check_message_count(ctx, len(prompt))  # raised inside the transaction: nothing is committed
        return prompt, user_msg, list(conv.tools or [])


def _save_answer(ctx: ServerContext, cid: str, text: str, finish_reason: str, meta: dict | None = None) -> dict:
    with ctx.store.session() as s, s.begin():
        conv = s.get(Conversation, cid)
        seq = (s.scalar(select(func.max(Message.seq)).where(Message.conversation_id == cid)) or 0) + 1
        m = Message(conversation_id=cid, seq=seq, role="assistant", content=text, model=ctx.host.model_id,
                    finish_reason=finish_reason, meta=meta or {})
        s.add(m)
        if conv is not None:
            conv.updated = utcnow()
        s.flush()
        return _msg_json(m)


def _save_tool_round(ctx: ServerContext, cid: str, content: str | None, tool_calls: list[dict],
                     records: list) -> tuple[dict, list[dict]]:
    """One executed tool round: the assistant's call message and one `tool` message per result (committed)."""
    with ctx.store.session() as s, s.begin():
        conv = s.get(Conversation, cid)
        seq = (s.scalar(select(func.max(Message.seq)).where(Message.conversation_id == cid)) or 0) + 1
        call = Message(conversation_id=cid, seq=seq, role="assistant", content=content or "",
                       model=ctx.host.model_id, finish_reason="tool_calls", meta={"tool_calls": tool_calls})
        results = [Message(conversation_id=cid, seq=seq + 1 + i, role="tool", content=r.result,
                           meta={"tool_call_id": r.id, "name": r.name, "arguments": r.arguments, "error": r.error})
                   for i, r in enumerate(records)]
        s.add_all([call, *results])
        if conv is not None:
            conv.updated = utcnow()
        s.flush()
        return _msg_json(call), [_msg_json(r) for r in results]


@router.post("/conversations/{cid}/chat", responses={
    200: {"description": "The reply as events: user (the message, committed), delta, done, pair (compare), error",
          "content": event_stream(["user", "delta", "done", "pair", "error"])},
    **error_responses(400, 401, 404, 429, 502, 503)})
async def chat(cid: str, body: ChatBody, request: Request, user: CurrentUser = Depends(ui_user)):
    ctx = ctx_of(request)
    await ctx.host.ready()
    host = ctx.host

    def prepare():  # database work and the chat template: in a worker thread, not on the event loop
        prompt, user_msg, toggles = _prepare_turn(ctx, user, cid, body)
        return prompt, user_msg, toggles, host.render_chat(prompt)

    prompt, user_msg, toggles, prompt_ids = await asyncio.to_thread(prepare)
    n = 2 if body.compare else 1
    if toggles and n == 1:
        from .builtin_tools import available_tools
        if not host.local:
            ctx.require_local_model("built-in tools", "tools")
        tools = [t for t in toggles if t in available_tools(ctx, user)]
        if tools:
            return StreamingResponse(_tool_turn(ctx, user, request, cid, body, prompt, user_msg, tools),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    params = _settings_params(ctx, prompt_ids, body.settings, n)
    group = await moderation.generate(ctx, prompt, prompt_ids, params, route="ui", user=user, stream=True)

    async def stream():
        texts, finish = [""] * n, [None] * n
        saved = False
        try:
            if user_msg is not None:
                yield _sse("user", {"message": user_msg})  # committed above: acknowledged
            async for ev in group:
                if ev.kind == "delta":
                    texts[ev.index] += ev.text
                    if ev.text:
                        yield _sse("delta", {"index": ev.index, "text": ev.text})
                elif ev.kind == "done":
                    finish[ev.index] = ev.finish_reason
                    if n == 1:
                        msg = _save_answer(ctx, cid, texts[0], ev.finish_reason or "stop")
                        saved = True
                        yield _sse("done", {"index": 0, "message": msg})
            if n == 2:
                with ctx.store.session() as s, s.begin():
                    fb = Feedback(user_id=user.id, kind="pair", conversation_id=cid, prompt=prompt,
                                  responses=texts, model=ctx.host.model_id)
                    s.add(fb)
                    s.flush()
                    pair_id = fb.id
                yield _sse("pair", {"pair_id": pair_id, "responses": texts})
        except APIError as e:
            yield _sse("error", {"error": {"message": e.message, "code": e.code}})
        finally:
            group.cancel()
            if n == 1 and not saved and texts[0]:
                _save_answer(ctx, cid, texts[0], "abort")  # stopped or disconnected: keep the partial answer

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _tool_turn(ctx: ServerContext, user: CurrentUser, request: Request, cid: str, body: ChatBody,
                     prompt: list[dict], user_msg: dict | None, tools: list[str]):
    """A turn with built-in tools: the tool loop on the engine, streamed as `delta`, `tool` and `done` events."""
    from ..tools.loop import execute_calls, steps
    from .builtin_tools import generate_round, tool_context
    context = tool_context(ctx, user, request)
    loop = steps(prompt, tools, ctx.cfg.max_tool_rounds, False)
    text, saved, answer, reply = "", False, None, None
    try:
        if user_msg is not None:
            yield _sse("user", {"message": user_msg})
        while True:
            try:
                step = loop.send(answer)
            except StopIteration:  # the loop's decision: the last reply is the answer
                msg = await asyncio.to_thread(_save_answer, ctx, cid, reply.content or "",
                                              reply.finish_reason or "stop")
                saved = True
                yield _sse("done", {"index": 0, "message": msg})
                break
            if step[0] == "generate":
                text = ""
                async for kind, value in generate_round(ctx, step[1], step[2], step[3],
                                                        lambda ids: _settings_params(ctx, ids, body.settings, 1),
                                                        route="ui", user=user, stream=True):
                    if kind == "content":
                        text += value
                        yield _sse("delta", {"index": 0, "text": value})
                    else:
                        answer = reply = value
            else:
                records = await asyncio.to_thread(execute_calls, step[1], tools, context)
                call, results = await asyncio.to_thread(_save_tool_round, ctx, cid, reply.content, step[1], records)
                text = ""
                yield _sse("tool", {"call": call, "results": results})
                answer = records
    except APIError as e:
        yield _sse("error", {"error": {"message": e.message, "code": e.code}})
    finally:
        if not saved and text:
            _save_answer(ctx, cid, text, "abort")  # stopped or disconnected: keep the partial answer


@router.post("/pairs/{pair_id}/choose", responses={200: {"model": Chosen}, **error_responses(400, 401, 404, 409)})
def choose(pair_id: Annotated[int, Path(ge=1, le=ROW_ID_MAX)], body: ChooseBody, request: Request,
           user: CurrentUser = Depends(ui_user)):
    ctx = ctx_of(request)
    with ctx.store.session() as s, s.begin():
        fb = s.get(Feedback, pair_id)
        if fb is None or fb.user_id != user.id or fb.kind != "pair":
            raise APIError(404, f"No comparison {pair_id}.", code="not_found")
        if fb.chosen is not None:
            raise APIError(409, "This comparison was already decided.", code="already_chosen")
        fb.chosen = body.chosen
        fb.updated = utcnow()
        cid, text = fb.conversation_id, fb.responses[body.chosen]
    msg = _save_answer(ctx, cid, text, "stop", meta={"pair_id": pair_id, "chosen": body.chosen}) if cid else None
    return {"ok": True, "message": msg}


@router.post("/messages/{mid}/feedback", responses={200: {"model": Rated}, **error_responses(400, 401, 404)})
def thumb(mid: str, body: ThumbBody, request: Request, user: CurrentUser = Depends(ui_user)):
    ctx = ctx_of(request)
    with ctx.store.session() as s, s.begin():
        msg, conv = _own_message(s, user, mid)
        if msg.role != "assistant":
            raise APIError(400, "Only answers can get a thumb.", param="rating")
        fb = s.scalar(select(Feedback).where(Feedback.user_id == user.id, Feedback.kind == "thumb",
                                             Feedback.message_id == mid))
        if body.rating == 0:
            if fb is not None:
                s.delete(fb)
            return {"ok": True, "rating": 0}
        prompt = _prompt_before(conv, msg)
        if fb is None:
            fb = Feedback(user_id=user.id, kind="thumb", message_id=mid, conversation_id=conv.id, prompt=prompt,
                          responses=[msg.content], model=msg.model)
            s.add(fb)
        fb.rating, fb.responses, fb.updated = body.rating, [msg.content], utcnow()
        return {"ok": True, "rating": body.rating}


def _prompt_before(conv: Conversation, msg: Message) -> list[dict]:
    out = [{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else []
    for m in conv.messages:
        if m.id == msg.id:
            break
        if not m.hidden:
            out.append(_prompt_message(m))
    return out


@router.put("/messages/{mid}", responses={200: {"model": MessageOut}, **error_responses(400, 401, 404)})
def edit_answer(mid: str, body: EditBody, request: Request, user: CurrentUser = Depends(ui_user)):
    """Correct an answer in place; the (original, edited) pair is kept as feedback."""
    ctx = ctx_of(request)
    with ctx.store.session() as s, s.begin():
        msg, conv = _own_message(s, user, mid)
        if msg.role != "assistant":
            raise APIError(400, "Only answers are edited here; to change your message use edit-and-resend.")
        original = (msg.meta or {}).get("original", msg.content)
        fb = s.scalar(select(Feedback).where(Feedback.user_id == user.id, Feedback.kind == "edit",
                                             Feedback.message_id == mid))
        if fb is None:
            fb = Feedback(user_id=user.id, kind="edit", message_id=mid, conversation_id=conv.id,
                          prompt=_prompt_before(conv, msg), responses=[original, body.content], model=msg.model)
            s.add(fb)
        fb.responses, fb.updated = [original, body.content], utcnow()
        msg.content = body.content
        msg.meta = {**(msg.meta or {}), "original": original}
        return _msg_json(msg)


# ---- labelling (admin) --------------------------------------------------------------------------------------

def _prompt_list(prompt: list[ChatMsg]) -> list[dict]:
    msgs = [m.model_dump() for m in prompt]
    if msgs[-1]["role"] != "user":
        raise APIError(400, "prompt: the last message must be from the user.", param="prompt")
    return msgs


@router.post("/label/sample", responses={200: {"model": Samples}, **error_responses(400, 401, 403, 429, 502, 503)})
async def label_sample(body: SampleBody, request: Request, _admin: CurrentUser = Depends(admin_user)):
    ctx = ctx_of(request)
    await ctx.host.ready()
    prompt = _prompt_list(body.prompt)
    check_message_count(ctx, len(prompt), "prompt")
    ids = await render_prompt(ctx, prompt)
    st = body.settings or Settings(temperature=1.0)
    texts = [""] * body.k
    async for ev in await ctx.generate(ids, _settings_params(ctx, ids, st, body.k), request=request):
        if ev.kind == "delta":
            texts[ev.index] += ev.text
    return {"responses": texts, "model": ctx.host.model_id}


@router.post("/label/demonstrations", responses={200: {"model": Created}, **error_responses(400, 401, 403)})
def label_demonstration(body: DemonstrationBody, request: Request, admin: CurrentUser = Depends(admin_user)):
    ctx = ctx_of(request)
    check_message_count(ctx, len(body.prompt), "prompt")
    with ctx.store.session() as s, s.begin():
        d = Demonstration(user_id=admin.id, prompt=_prompt_list(body.prompt), response=body.response)
        s.add(d)
        s.flush()
        return {"ok": True, "id": d.id}


@router.post("/label/rankings", responses={200: {"model": Created}, **error_responses(400, 401, 403)})
def label_ranking(body: RankingBody, request: Request, admin: CurrentUser = Depends(admin_user)):
    ctx = ctx_of(request)
    check_message_count(ctx, len(body.prompt), "prompt")
    k = len(body.responses)
    if sorted(body.ranking) != list(range(k)):
        raise APIError(400, f"ranking: must order all {k} responses, each index 0..{k - 1} exactly once.",
                       param="ranking")
    with ctx.store.session() as s, s.begin():
        r = Ranking(user_id=admin.id, prompt=_prompt_list(body.prompt), responses=body.responses,
                    ranking=body.ranking, criteria=body.criteria, model=ctx.host.model_id)
        s.add(r)
        s.flush()
        return {"ok": True, "id": r.id}


@router.get("/label/stats", responses={200: {"model": dict[str, int]}, **error_responses(401, 403)})
def label_stats(request: Request, _admin: CurrentUser = Depends(admin_user)):
    from .export import feedback_counts
    return feedback_counts(ctx_of(request).store)


@router.put("/admin/users/{username}/tools", responses={200: {"model": ToolRightsOut},
                                                       **error_responses(400, 401, 403, 404)})
def set_tool_rights(username: str, body: ToolRights, request: Request, _admin: CurrentUser = Depends(admin_user)):
    """Set the built-in tools an account may use (`tools: null`: every tool the server enables)."""
    from ..errors import UserError
    ctx = ctx_of(request)
    try:
        names = ctx.accounts.set_tools(username, body.tools)
    except UserError as e:
        if "no user named" in str(e):
            raise APIError(404, f"No user {username[:64]!r}.", code="not_found") from None
        raise APIError(400, str(e), param="tools", code="invalid_value") from None
    return {"username": username, "tools": names}


@router.get("/admin/export/{kind}", response_class=NDJSONResponse, response_description="One JSON record per line",
            responses=error_responses(400, 401, 403))
def export_download(kind: Literal["sft", "comparisons"], request: Request, _admin: CurrentUser = Depends(admin_user)):
    from .export import comparison_records, sft_records
    store = ctx_of(request).store
    records = sft_records(store) if kind == "sft" else comparison_records(store)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return NDJSONResponse(text, headers={"Content-Disposition": f'attachment; filename="{kind}.jsonl"'})
