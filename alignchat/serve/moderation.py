"""Moderation in serving: POST /v1/moderations, the input check before generation, the output check while
a reply streams, moderation events, and the admin's view of them.

Notable choices:
- `generate(ctx, messages, prompt_ids, params, ...)` is the one hook the chat routes (API and UI) call
  instead of `ctx.generate`. It classifies the conversation's latest user message; when the policy
  (`alignchat.safety.policy`) blocks one of its categories, it returns a `RefusalGroup`, which yields a
  short refusal in the user's language (Chinese for a Chinese message, else English) with
  finish_reason "content_filter", and the model is never called. Otherwise it returns the model's
  events through a `GuardedGroup`.
- `GuardedGroup` holds a choice's text back until the classifier has passed it: a streaming reply is
  checked each time `OUTPUT_STEP` more characters arrive and at the end, each check reading the last
  `WINDOW` characters (a sentence or two, so one harmful sentence is not diluted by harmless ones), and
  a character is released only once a check has read `LOOKAHEAD` characters after it (so the start of
  a harmful sentence waits for its end). A non-streamed reply is read whole, in overlapping windows.
  When the output direction blocks, the held text is dropped, the choice is cancelled (its engine slot
  freed), and the client gets a notice and a clean end with finish_reason "content_filter"; what it
  already saw had passed.
- The classifier runs in a worker thread (`asyncio.to_thread`), never on the event loop; it and the
  MiniLM encoder load on first use.
- Every decision (allow, flag, block; input and output) is a `ModerationEvent` row: direction, action,
  flagged categories, their scores, route, language, user id, and for a flagged text a short excerpt
  with personal data replaced by the cleaning stage's placeholders (`alignchat.safety.pii`). Messages
  that flag nothing leave no text behind. The admin lists and exports them (GET /api/admin/moderation/events,
  `alignchat moderation events`).
- POST /v1/moderations takes OpenAI's request (`input`: a string, an array of strings, or an array of
  `{"type": "text", "text": ...}` parts; optional `model`) and answers OpenAI's shape, with the
  classifier's own thresholds (the policy's, where it sets them). It only classifies: it records no
  event and blocks nothing. At most `MAX_INPUTS` inputs of `MAX_INPUT_CHARS` characters each.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import re
import uuid
from collections import deque
from typing import Annotated, Literal, Union

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from ..safety.data import CATEGORIES, detect_lang
from ..safety.pii import redact
from ..safety.policy import Policy, load_policy
from .auth import CurrentUser
from .deps import admin_user, api_user
from .errors import error_responses
from .scheduler import Event
from .store import ModerationEvent, iso
from .streams import EventStream
from .validation import Text

log = logging.getLogger("alignchat.serve.moderation")
router = APIRouter()

MODEL_ID = "alignchat-moderation-minilm"
OUTPUT_STEP = 40  # characters of new output between two checks of a streaming reply
LOOKAHEAD = 40  # a streamed character is released only once a check has read this much text after it
WINDOW = 240  # characters of a reply one check reads: a sentence or two, so a harmful one is not diluted
MAX_INPUTS = 64
MAX_INPUT_CHARS = 32_768
EXCERPT_CHARS = 160

REFUSAL = {
    "en": "Sorry, I can't help with that request.",
    "zh": "抱歉，我无法协助这个请求。",
}
SELF_HARM_REFUSAL = {
    "en": "I can't help with that. If you are thinking about hurting yourself, please reach out to someone "
          "you trust or to a local crisis line; you do not have to face this alone.",
    "zh": "我无法协助这个请求。如果你有伤害自己的念头，请联系你信任的人或当地的心理援助热线，你并不孤单。",
}
NOTICE = {
    "en": "[This reply was stopped by the content filter.]",
    "zh": "【此回复已被内容过滤器中止。】",
}


def refusal_text(lang: str, categories: list[str]) -> str:
    table = SELF_HARM_REFUSAL if any(c.startswith("self-harm") for c in categories) else REFUSAL
    return table.get(lang, table["en"])


class ModerationService:
    """The policy, the classifier (loaded on first use) and the event log of one server."""

    def __init__(self, policy: Policy, store):
        self.policy = policy
        self.store = store
        self._clf = None

    @classmethod
    def from_config(cls, cfg, store) -> "ModerationService":
        return cls(load_policy(getattr(cfg, "moderation_policy", None)), store)

    @property
    def enabled(self) -> bool:
        return self.policy.enabled

    def _classifier(self):
        if self._clf is None:
            from ..safety.classifier import get_classifier
            self._clf = get_classifier()
        return self._clf

    def classify_sync(self, texts: list[str]):
        return self._classifier().moderate(texts, thresholds=self.policy.thresholds)

    async def classify(self, texts: list[str]):
        return await asyncio.to_thread(self.classify_sync, texts)

    def record_sync(self, direction: str, action: str, mod, text: str, route: str, user: CurrentUser | None,
                    model: str | None = None) -> None:
        flagged = mod.top()
        scores = {c: mod.scores[c] for c in flagged} if flagged else \
            dict(sorted(mod.scores.items(), key=lambda kv: -kv[1])[:1])
        excerpt = redact(" ".join(text.split())[:EXCERPT_CHARS]) if flagged else None
        with self.store.session() as s, s.begin():
            s.add(ModerationEvent(direction=direction, action=action, categories=flagged, scores=scores,
                                  route=route, lang=detect_lang(text), user_id=user.id if user else None,
                                  model=model, excerpt=excerpt))
        if action != "allow":
            log.info("moderation: %s %s (%s) on %s: %r", action, direction, ", ".join(flagged), route, excerpt)

    async def record(self, *args, **kwargs) -> None:
        await asyncio.to_thread(self.record_sync, *args, **kwargs)


def service(ctx) -> ModerationService:
    svc = getattr(ctx, "moderation", None)
    if svc is None:  # a context built without one (tests constructing ServerContext directly)
        svc = ctx.moderation = ModerationService.from_config(ctx.cfg, ctx.store)
    return svc


def last_user_text(messages: list[dict]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else None
    return None


# ---- the chat hooks ---------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;\n])\s*")
MAX_SENTENCES = 64  # sentence spans read by one check, the latest first


def _sentences(span: str) -> list[str]:
    """The sentences of a span with some substance (a harmful sentence is not diluted by its neighbours)."""
    return [t for t in _SENTENCE_END.split(span) if len(t.strip()) >= 8]


def windows(text: str, whole: bool) -> list[str]:
    """The spans of a reply the output check reads: the reply itself when short; else its last `WINDOW`
    characters (a streaming check: the text before was read by the earlier checks), or (`whole`) every
    window, overlapping by half, from the start to the end. Each sentence in them is read on its own too,
    and the check takes each category's highest score (`merge`)."""
    if len(text) <= WINDOW:
        spans = [text]
    elif not whole:
        spans = [text[-WINDOW:]]
    else:
        starts = list(range(0, len(text) - WINDOW, WINDOW // 2)) + [len(text) - WINDOW]
        spans = [text[i:i + WINDOW] for i in starts]
    sentences = _sentences(text if whole else spans[-1])
    extra = [t for t in sentences[-MAX_SENTENCES:] if t not in spans]
    return spans + extra


def merge(mods: list):
    """One result for several spans: each category's highest score, flagged where any span is."""
    if len(mods) == 1:
        return mods[0]
    from ..safety.classifier import Moderation
    cats = {c: any(m.categories[c] for m in mods) for c in CATEGORIES}
    return Moderation(any(cats.values()), cats, {c: max(m.scores[c] for m in mods) for c in CATEGORIES})


class RefusalGroup(EventStream):
    """Stands in for a `GenerationGroup` when the input is blocked: n refusals, no model call."""

    def __init__(self, text: str, n: int):
        self._events = deque()
        for i in range(n):
            self._events.append(Event("delta", i, text=text))
            self._events.append(Event("done", i, finish_reason="content_filter"))
        self.prompt_tokens = 0

    async def next_event(self):
        return self._events.popleft() if self._events else None

    def cancel(self) -> None:
        self._events.clear()


class GuardedGroup(EventStream):
    """A `GenerationGroup` whose text reaches the client only after the output check passed it."""

    def __init__(self, svc: ModerationService, inner, n: int, stream: bool, route: str,
                 user: CurrentUser | None, model: str | None, lang: str):
        self.svc, self.inner, self.stream, self.route, self.user, self.model = svc, inner, stream, route, user, model
        self.lang = lang
        self.text = [""] * n
        self.held: list[list[Event]] = [[] for _ in range(n)]
        self.checked = [0] * n  # length of text at the last check
        self.sent = [0] * n  # characters of held text released to the client
        self.blocked: set[int] = set()
        self.released = [False] * n  # some of the choice's text has reached the client
        self.out: deque = deque()

    @property
    def prompt_tokens(self) -> int:
        return self.inner.prompt_tokens

    def cancel(self) -> None:
        self.inner.cancel()

    async def next_event(self):
        while not self.out:
            ev = await self.inner.next_event()
            if ev is None:
                return None
            await self._take(ev)
        return self.out.popleft()

    async def _take(self, ev: Event) -> None:
        i = ev.index
        if i in self.blocked:
            return  # a blocked choice's late events (its slot is already cancelled)
        if ev.kind == "delta":
            self.held[i].append(ev)
            self.text[i] += ev.text
            due = len(self.text[i]) - self.checked[i] >= OUTPUT_STEP
            if self.stream and due and self.text[i].strip():
                await self._check(i, final=False)
        elif ev.kind == "done":
            if await self._check(i, final=True):
                self.out.append(ev)
        else:
            self.out.append(ev)

    def _release(self, i: int, upto: int) -> None:
        """Send the held events of choice i whose text ends at or before character `upto`."""
        held = self.held[i]
        while held and self.sent[i] + len(held[0].text) <= upto:
            ev = held.pop(0)
            self.sent[i] += len(ev.text)
            self.released[i] = self.released[i] or bool(ev.text)
            self.out.append(ev)

    async def _check(self, i: int, final: bool) -> bool:
        text = self.text[i]
        self.checked[i] = len(text)
        if not text.strip():
            self._release(i, len(text))
            return True
        mod = merge(await self.svc.classify(windows(text, whole=not self.stream)))
        action = self.svc.policy.decide("output", mod.top(), mod.scores)
        if action == "block":
            self.blocked.add(i)
            self.held[i].clear()
            handles = getattr(self.inner, "handles", None)
            if handles is not None and i < len(handles):
                handles[i].cancel()
            else:
                self.inner.cancel()
            lang = self.lang if self.lang in NOTICE else "en"
            self.out.append(Event("delta", i, text=("\n\n" if self.released[i] else "") + NOTICE[lang]))
            self.out.append(Event("done", i, finish_reason="content_filter"))
            await self.svc.record("output", "block", mod, text, self.route, self.user, self.model)
            return False
        self._release(i, len(text) if final else len(text) - LOOKAHEAD)
        if final:
            await self.svc.record("output", action, mod, text, self.route, self.user, self.model)
        return True


async def generate(ctx, messages: list[dict], prompt_ids, params: list, *, route: str,
                   user: CurrentUser | None, stream: bool, request=None):
    """`ctx.generate` with the deployment's moderation policy around it (see the module docstring)."""
    svc = service(ctx)
    if not svc.enabled:
        return await ctx.generate(prompt_ids, params, request=request)
    text = last_user_text(messages)
    lang = detect_lang(text) if text else "en"
    if text and text.strip():
        mod = (await svc.classify([text]))[0]
        action = svc.policy.decide("input", mod.top(), mod.scores)
        await svc.record("input", action, mod, text, route, user, ctx.host.model_id)
        if action == "block":
            return RefusalGroup(refusal_text(lang, svc.policy.blocking("input", mod.top(), mod.scores)), len(params))
    group = await ctx.generate(prompt_ids, params, request=request)
    return GuardedGroup(svc, group, len(params), stream, route, user, ctx.host.model_id, lang)


# ---- POST /v1/moderations ---------------------------------------------------------------------------------

class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Annotated[Text, Field(max_length=MAX_INPUT_CHARS)]


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: Union[Annotated[Text, Field(max_length=MAX_INPUT_CHARS)],
                 Annotated[list[Annotated[Text, Field(max_length=MAX_INPUT_CHARS)]], Field(min_length=1, max_length=MAX_INPUTS)],
                 Annotated[list[TextPart], Field(min_length=1, max_length=MAX_INPUTS)]]
    model: Annotated[Text, Field(max_length=200)] | None = None


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


@router.post("/v1/moderations", responses={200: {"model": ModerationResponse}, **error_responses(400, 401, 403, 413)})
async def moderations(body: ModerationRequest, request: Request, _user: CurrentUser = Depends(api_user)):
    inp = body.input
    texts = [inp] if isinstance(inp, str) else [p.text if isinstance(p, TextPart) else p for p in inp]
    svc = service(request.app.state.ctx)
    results = await svc.classify(texts)
    return {"id": f"modr-{uuid.uuid4().hex}", "model": MODEL_ID, "results": [
        {"flagged": r.flagged, "categories": r.categories, "category_scores": r.scores,
         "category_applied_input_types": {c: ["text"] for c in CATEGORIES}} for r in results]}


# ---- the admin's view ------------------------------------------------------------------------------------

def event_json(e: ModerationEvent) -> dict:
    return {"id": e.id, "created": iso(e.created), "direction": e.direction, "action": e.action,
            "categories": list(e.categories or []), "scores": dict(e.scores or {}), "route": e.route,
            "lang": e.lang, "user_id": e.user_id, "model": e.model, "excerpt": e.excerpt}


def list_events(store, limit: int = 100, action: str | None = None, direction: str | None = None,
                since: dt.datetime | None = None) -> list[dict]:
    with store.session() as s:
        q = select(ModerationEvent).order_by(ModerationEvent.id.desc()).limit(limit)
        if action:
            q = q.where(ModerationEvent.action == action)
        if direction:
            q = q.where(ModerationEvent.direction == direction)
        if since:
            q = q.where(ModerationEvent.created >= since)
        return [event_json(e) for e in s.scalars(q)]


class ModerationEventOut(BaseModel):
    id: int
    created: str | None
    direction: str
    action: str
    categories: list[str]
    scores: dict[str, float]
    route: str
    lang: str
    user_id: int | None
    model: str | None
    excerpt: str | None


class ModerationEventList(BaseModel):
    object: Literal["list"]
    data: list[ModerationEventOut]


@router.get("/api/admin/moderation/events", responses={
    200: {"model": ModerationEventList, "description": "The events, newest first; `format=jsonl`: one per line",
          "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
    **error_responses(400, 401, 403, 413)})
async def admin_events(request: Request, _admin_user: CurrentUser = Depends(admin_user),
                       limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
                       action: Literal["block", "flag", "allow"] | None = None,
                       direction: Literal["input", "output"] | None = None,
                       format: Literal["json", "jsonl"] = "json"):
    store = request.app.state.ctx.store
    events = await asyncio.to_thread(list_events, store, limit, action, direction)
    if format == "jsonl":
        body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="moderation-events.jsonl"'})
    return {"object": "list", "data": events}
