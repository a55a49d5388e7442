"""The OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/models, /v1/embeddings.

Notable choices:
- Request bodies are strict pydantic models: a string where a number belongs, a negative max_tokens or an
  unknown role is a 400 with OpenAI's error body naming the parameter, never a 500 or FastAPI's 422.
- Unknown extra fields are ignored (clients send `user`, `store`, `metadata`, ...), but features we do not
  implement (the legacy functions/function_call, logit_bias, top_logprobs, suffix, best_of) are refused
  with a 400 that says so, rather than silently ignored.
- Function calling: `tools`, `tool_choice` (none, auto, required, a named function), `parallel_tool_calls`,
  assistant `tool_calls` and `tool` messages, whole and streamed as OpenAI streams them
  (serve/tool_calling.py; the text format: alignchat/tools_format.py). A forced call's arguments are
  generated under a grammar built from the tool's JSON Schema.
- Built-in tools (an extension): `builtin_tools: ["calculator", ...]` makes the server run the tool loop
  and answer with the final text, listing its calls in `builtin_tool_calls` (serve/builtin_tools.py says
  who may use which and what combines with it).
- Structured output: `response_format` `{type: "json_object"}` or `{type: "json_schema", json_schema: {name,
  schema, strict}}` (chat, and on /v1/completions as an extension) is enforced by grammar-constrained
  decoding (engine/grammar.py), whatever `strict` says: the reply is JSON valid for the schema unless
  `max_tokens` or a stop string cuts it short. The schema is compiled in a worker thread; one the library
  cannot compile is a 400 naming `response_format` and the problem. It needs the local model's tokenizer:
  with `--upstream` it is 501 `needs_local_model`.
- Sampling maps onto the shared engine's `SamplingParams`: temperature (0 = greedy), top_p, top_k,
  presence/frequency/repetition penalties, stop strings, seed (choice i of n uses seed + i, so n > 1 with a
  seed gives n different but reproducible answers) and max_tokens (default: the rest of the context).
- /v1/completions returns legacy `logprobs` (tokens, token_logprobs, top_logprobs up to 5, text_offset),
  with `echo` over the prompt too, and accepts max_tokens=0 with echo: so evaluation harnesses can score
  multiple choice over HTTP. They are computed by one scoring pass of the model after generation.
- Moderation: a chat request's latest user message and its reply, and each legacy completion's prompt and
  text, pass through serve/moderation.py (the deployment's policy); a blocked one ends with finish_reason
  "content_filter".
- Streaming is Server-Sent Events ending in `data: [DONE]`; `stream_options.include_usage` adds the usage
  chunk. An error after the stream began is sent as one `data: {"error": ...}` event.
- Embeddings use the MiniLM encoder (`alignchat.embeddings`), imported on first use; both `float` and the
  `base64` encoding (the official client's default) are supported.
- Client text is `validation.Text` (a lone surrogate is a 400 naming the field) and `seed` is an int64; a
  chat request carries at most `ServeConfig.max_messages` messages (`--max-messages`).
- Rendering the chat template and tokenising run in a worker thread, never on the event loop, so one large
  request cannot stall the others. Message content is text: control tokens come only from the template
  (`Tokenizer.render_chat`). A /v1/completions prompt is raw model input, not a chat message: its text is
  encoded as is, so the control tokens it spells out are control tokens, as in OpenAI's legacy API.
- Prompts come from the host (`render_chat`, `encode_text`), so with `--upstream` the same routes forward to
  the upstream (serve/upstream.py): the upstream counts the tokens and checks its context, and `logprobs` and
  `echo`, which need a local model's scores and tokenizer, are 501 `needs_local_model`.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Annotated, Any, Literal, Union

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from .auth import CurrentUser
from ..client.sampling import SAMPLING_DEFAULTS
from .deps import api_user
from .errors import APIError, error_body, error_responses
from .runtime import EMBEDDING_MODEL_ID, ServerContext
from . import moderation, tool_calling
from .validation import Text
from ..tools_format import NAME_PATTERN

router = APIRouter()

SEED_MIN, SEED_MAX = -2**63, 2**63 - 1  # seeds are int64, as in OpenAI's API


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    type: Text
    text: Text | None = None


class FunctionCallIn(_Strict):
    name: Text
    arguments: Text  # JSON text, as OpenAI sends it


class ToolCallIn(_Strict):
    """An assistant message's earlier call (alignchat.tools_format checks it)."""
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[ContentPart], None] = None
    name: Text | None = None
    tool_calls: list[ToolCallIn] | None = None  # assistant messages
    tool_call_id: Text | None = None  # tool messages: the call they answer


class FunctionDef(_Strict):
    name: Text = Field(pattern=NAME_PATTERN)
    description: Text | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema with an object root")
    strict: bool | None = None  # accepted; a forced call always follows the schema


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: Text


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


TOOL_CHOICES = ("none", "auto", "required")


def _tool_choice_mode(value: str) -> str:
    if value not in TOOL_CHOICES:
        raise ValueError(f"must be one of {', '.join(TOOL_CHOICES)} or {{\"type\": \"function\", \"function\": "
                         f"{{\"name\": ...}}}}, got {value[:40]!r}")
    return value


# a str checked by a function (not a Literal), so that an error names `tool_choice` itself
ToolChoiceMode = Annotated[str, AfterValidator(_tool_choice_mode),
                           WithJsonSchema({"type": "string", "enum": list(TOOL_CHOICES)})]


class StreamOptions(_Strict):
    include_usage: bool = False


class JSONSchemaFormat(_Strict):
    """`response_format.json_schema`: the schema the reply must follow (always enforced, strict or not)."""
    name: Text = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Text | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    """`text` (the default), `json_object` (any JSON object) or `json_schema` (JSON valid for a schema)."""
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None  # required with type json_schema


class _Sampling(_Strict):
    model: Text = Field(min_length=1)
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # extension (vLLM, llama.cpp)
    max_tokens: int | None = Field(None, ge=1)
    stop: Union[Text, list[Text], None] = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10)  # extension
    ignore_eos: bool = False  # extension (vLLM): generate max_tokens even past end-of-turn, for benchmarks
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ToolDef] | None = None
    tool_choice: Union[ToolChoiceMode, NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    functions: list[dict] | None = None
    function_call: Union[str, dict, None] = None
    response_format: ResponseFormat | None = None
    builtin_tools: list[Text] | None = Field(None, max_length=16)  # extension: serve/builtin_tools.py
    max_tool_rounds: int | None = Field(None, ge=0)  # extension: at most the server's --max-tool-rounds


class CompletionRequest(_Sampling):
    prompt: Union[Text, list[Text], list[int], list[list[int]]]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's default; 0 only with echo (score the prompt)
    echo: bool = False
    suffix: Text | None = None
    best_of: int | None = Field(None, ge=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    response_format: ResponseFormat | None = None  # extension (vLLM), as in chat


class EmbeddingRequest(_Strict):
    model: Text = Field(min_length=1)
    input: Union[Text, list[Text], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: Text | None = None


# ---- response bodies (documentation: /openapi.json) ---------------------------------------------------------

class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int | None = None  # the chat model's; absent for the embedding model
    status: str | None = None


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens the engine reused from its prefix cache instead of computing them


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None  # chat completions on a local model


class TokenLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int]
    top_logprobs: list[dict[str, Any]]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCallOut(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None  # null when the reply is only tool calls
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter"]


class BuiltinToolCall(BaseModel):
    id: str
    name: str
    arguments: str
    result: str
    error: bool


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatChoice]
    usage: Usage
    builtin_tool_calls: list[BuiltinToolCall] | None = None  # extension: with builtin_tools


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: LegacyLogprobs | None
    finish_reason: Literal["stop", "length"]


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[CompletionChoice]
    usage: Usage


class EmbeddingItem(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # str: little-endian float32s in base64 (encoding_format "base64")


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage


def event_stream(events: list[str] | None = None) -> dict:
    """The OpenAPI `content` entry of a Server-Sent Events reply: each event's `data` is a string (JSON,
    or `[DONE]` at the end of an API stream); `events` names the `event:` types a stream may send."""
    item = {"type": "object", "required": ["data"],
            "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}
    if events:
        item["properties"]["event"] = {"type": "string", "enum": events}
    return {"text/event-stream": {"itemSchema": item}}


def json_or_stream(model: type[BaseModel], description: str) -> dict:
    """FastAPI `responses` entry for 200: `model` as JSON, or its chunks as an event stream (`stream: true`)."""
    return {"model": model, "description": description, "content": event_stream()}


# ---- helpers ------------------------------------------------------------------------------------------------

def ctx_of(request: Request) -> ServerContext:
    return request.app.state.ctx


def _unsupported(param: str, what: str) -> APIError:
    return APIError(400, f"{param}: {what} is not supported by this server.", param=param, code="unsupported_parameter")


def _stop_list(stop) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise APIError(400, "stop: at most 4 stop sequences are allowed.", param="stop")
    if any(s == "" for s in stops):
        raise APIError(400, "stop: stop sequences must not be empty.", param="stop")
    return stops


def check_message_count(ctx: ServerContext, n: int, param: str = "messages") -> None:
    """Refuse (400) a conversation longer than the server's limit."""
    limit = ctx.cfg.max_messages
    if n > limit:
        raise APIError(400, f"{param}: at most {limit} messages per request; this one has {n}.", param=param,
                       code="too_many_messages")


async def render_prompt(ctx: ServerContext, messages: list[dict]):
    """The host's prompt for a conversation (a local model: the chat template's token ids, with the generation
    prompt; an upstream: the conversation), rendered in a worker thread."""
    return await asyncio.to_thread(ctx.host.render_chat, messages)


def _check_common(req: _Sampling, ctx: ServerContext) -> None:
    if req.n > ctx.cfg.max_n:
        raise APIError(400, f"n: at most {ctx.cfg.max_n} choices per request.", param="n")
    if req.logit_bias:
        raise _unsupported("logit_bias", "logit_bias")


async def response_constraint(ctx: ServerContext, fmt: ResponseFormat | None) -> list:
    """The logits processors that enforce `response_format` (none for text): one grammar constraint, which
    the engine copies for each choice. Compiled in a worker thread; a schema that cannot be compiled is a 400."""
    if fmt is None or fmt.type == "text":
        return []
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise APIError(400, "response_format.json_schema: required when type is 'json_schema'.",
                       param="response_format.json_schema")
    ctx.require_local_model("response_format", "response_format")
    await ctx.host.ready()
    from ..engine.grammar import json_constraint
    from ..errors import UserError
    schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else None
    try:
        return [await asyncio.to_thread(json_constraint, ctx.host.tokenizer, schema)]
    except UserError as e:
        raise APIError(400, f"response_format: {e}", param="response_format", code="invalid_json_schema") from None


def sampling_params(req: _Sampling, max_tokens: int, n: int, want_logprobs: bool = False,
                    logits_processors: list | None = None) -> list:
    """One engine `SamplingParams` per choice; `logits_processors` (e.g. `response_constraint`'s) go to each."""
    from ..engine import SamplingParams
    stops = _stop_list(req.stop)
    out = []
    for i in range(n):
        out.append(SamplingParams(
            max_tokens=max_tokens,
            temperature=SAMPLING_DEFAULTS.temperature if req.temperature is None else req.temperature,
            top_p=SAMPLING_DEFAULTS.top_p if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            repetition_penalty=req.repetition_penalty or 1.0,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            stop=stops,
            seed=None if req.seed is None else req.seed + i,
            ignore_eos=req.ignore_eos,
            logprobs=want_logprobs,
            logits_processors=list(logits_processors or []),
        ))
    return out


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int, group=None) -> dict:
    """OpenAI's usage object; with the group of a local model's chat reply, `prompt_tokens_details.cached_tokens`
    too: how many prompt tokens of its first choice the engine's prefix cache held."""
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    group = getattr(group, "inner", group)  # a moderated reply wraps the engine's group (moderation.GuardedGroup)
    handles = getattr(group, "handles", None)
    cached = getattr(getattr(handles[0], "engine_request", None), "cached_tokens", None) if handles else None
    if isinstance(cached, int):
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _finish(reason: str | None) -> str:
    return reason if reason in ("length", "content_filter") else "stop"


def _chat_messages(req: ChatCompletionRequest) -> list[dict]:
    out = []
    for i, m in enumerate(req.messages):
        if isinstance(m.content, list):
            parts = []
            for j, p in enumerate(m.content):
                if p.type != "text" or p.text is None:
                    raise APIError(400, f"messages.{i}.content.{j}: only text content parts are supported "
                                        f"(got type {p.type!r}).", param=f"messages.{i}.content")
                parts.append(p.text)
            content = "".join(parts)
        elif m.content is None:
            if m.role != "assistant":
                raise APIError(400, f"messages.{i}.content: a {m.role} message needs content.",
                               param=f"messages.{i}.content")
            content = ""
        else:
            content = m.content
        msg = {"role": "system" if m.role == "developer" else m.role, "content": content}
        if m.tool_calls:  # checked with the conversation by Tokenizer.validate_messages (tools_format)
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


# ---- routes -------------------------------------------------------------------------------------------------

@router.get("/v1/models", responses={200: {"model": ModelList}, **error_responses(401)})
async def list_models(request: Request, _user: CurrentUser = Depends(api_user)):
    ctx = ctx_of(request)
    created = int(ctx.host.loaded_at or ctx.started)
    data = []
    if ctx.host.model_id is not None:  # None: an upstream that has not answered yet, without --upstream-model
        data.append({"id": ctx.host.model_id, "object": "model", "created": created, "owned_by": "alignchat",
                     "context_length": ctx.host.context_length if ctx.host.model is not None else None,
                     "status": ctx.host.status()})
    if ctx.cfg.enable_embeddings:
        data.append({"id": EMBEDDING_MODEL_ID, "object": "model", "created": int(ctx.started),
                     "owned_by": "alignchat"})
    return {"object": "list", "data": data}


@router.get("/v1/models/{model_id:path}", responses={200: {"model": ModelCard}, **error_responses(401, 404)})
async def get_model(model_id: str, request: Request, _user: CurrentUser = Depends(api_user)):
    listing = await list_models(request, _user)
    for m in listing["data"]:
        if m["id"] == model_id:
            return m
    raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")


@router.post("/v1/chat/completions", responses={
    200: json_or_stream(ChatCompletion, "The completion; with `stream`, chat.completion.chunk events"),
    **error_responses(400, 401, 404, 429, 501, 502, 503)})
async def chat_completions(body: ChatCompletionRequest, request: Request, _user: CurrentUser = Depends(api_user)):
    ctx = ctx_of(request)
    ctx.check_model(body.model)
    _check_common(body, ctx)
    if body.functions or body.function_call:
        raise _unsupported("functions", "the legacy functions and function_call (send tools and tool_choice)")
    if body.top_logprobs:
        raise _unsupported("top_logprobs", "top_logprobs")
    forced = body.tool_choice not in (None, "none", "auto")  # required or a named function
    if forced and body.response_format is not None and body.response_format.type != "text":
        raise APIError(400, "response_format: cannot be combined with a forced tool call (tool_choice "
                            "'required' or a named function), whose arguments follow the tool's schema.",
                       param="response_format")
    check_message_count(ctx, len(body.messages))
    messages = _chat_messages(body)
    if body.builtin_tools is not None:  # the server runs the tool loop (serve/builtin_tools.py)
        from .builtin_tools import api_tool_loop
        return await api_tool_loop(ctx, body, messages, _user, request, sampling_params)
    uses_tools = bool(body.tools) or forced or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if uses_tools:
        ctx.require_local_model("tools", "tools")
    await ctx.host.ready()
    constraint = await response_constraint(ctx, body.response_format)
    plan = None  # a tool_calling.ToolPlan when the reply may hold tool calls
    if uses_tools:
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        choice = body.tool_choice.model_dump() if isinstance(body.tool_choice, NamedToolChoice) else body.tool_choice
        plan, prompt_ids, forced_constraint = await asyncio.to_thread(
            tool_calling.prepare, ctx.host.tokenizer, messages, tools, choice, body.parallel_tool_calls)
        constraint = constraint + forced_constraint
        plan = plan if plan.choice != "none" else None
        if plan is not None and body.logprobs and body.stream:
            raise _unsupported("logprobs", "logprobs with tools in a stream")
    else:
        prompt_ids = await render_prompt(ctx, messages)
    readers = [plan.reader() for _ in range(body.n)] if plan is not None else None
    max_tokens = ctx.fit_context(prompt_ids, body.max_completion_tokens or body.max_tokens)
    params = sampling_params(body, max_tokens, body.n, want_logprobs=bool(body.logprobs),
                             logits_processors=constraint)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    base = {"id": cid, "created": created, "model": ctx.host.model_id, "system_fingerprint": None}

    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        group = await moderation.generate(ctx, messages, prompt_ids, params, route="api", user=_user, stream=True)
        first = await group.next_event()  # errors before the first token are ordinary HTTP errors

        async def stream():
            completion_tokens = 0
            ev = first
            try:
                for i in range(body.n):
                    yield _sse({**base, "object": "chat.completion.chunk", "choices": [
                        {"index": i, "delta": {"role": "assistant", "content": None if forced else ""},
                         "logprobs": None, "finish_reason": None}]})
                while ev is not None:
                    if readers is not None and ev.kind in ("delta", "done"):  # a reply that may call tools
                        if ev.kind == "delta":
                            deltas, reason = readers[ev.index].push(ev.text), None
                        else:
                            completion_tokens += ev.completion_tokens
                            deltas, reason = readers[ev.index].finish(ev.finish_reason)
                        for d in deltas:
                            yield _sse({**base, "object": "chat.completion.chunk", "choices": [
                                {"index": ev.index, "delta": d, "logprobs": None, "finish_reason": None}]})
                        if reason is not None:
                            yield _sse({**base, "object": "chat.completion.chunk", "choices": [
                                {"index": ev.index, "delta": {}, "logprobs": None, "finish_reason": reason}]})
                    elif ev.kind == "delta":
                        lp = ({"content": [{"token": ev.text, "logprob": ev.logprob,
                                            "bytes": list(ev.text.encode("utf-8")), "top_logprobs": []}]}
                              if body.logprobs else None)
                        if ev.text or lp:
                            yield _sse({**base, "object": "chat.completion.chunk", "choices": [
                                {"index": ev.index, "delta": {"content": ev.text}, "logprobs": lp,
                                 "finish_reason": None}]})
                    elif ev.kind == "done":
                        completion_tokens += ev.completion_tokens
                        yield _sse({**base, "object": "chat.completion.chunk", "choices": [
                            {"index": ev.index, "delta": {}, "logprobs": None,
                             "finish_reason": _finish(ev.finish_reason)}]})
                    ev = await group.next_event()
                if include_usage:
                    yield _sse({**base, "object": "chat.completion.chunk", "choices": [],
                                "usage": _usage(group.prompt_tokens, completion_tokens, group)})
            except APIError as e:
                yield _sse(error_body(e.status, e.message, e.param, e.code, e.type))
            finally:
                group.cancel()  # runs when the client disconnects, too: frees the slots at once
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    texts = [""] * body.n
    finish = ["stop"] * body.n
    lps: list[list] = [[] for _ in range(body.n)]
    messages_out: list[dict | None] = [None] * body.n
    completion_tokens = 0
    group = await moderation.generate(ctx, messages, prompt_ids, params, route="api", user=_user, stream=False,
                                      request=request)
    async for ev in group:
        if ev.kind == "delta":
            texts[ev.index] += ev.text
            if body.logprobs and ev.logprob is not None:
                lps[ev.index].append({"token": ev.text, "logprob": ev.logprob,
                                      "bytes": list(ev.text.encode("utf-8")), "top_logprobs": []})
        elif ev.kind == "done":
            finish[ev.index] = _finish(ev.finish_reason)
            completion_tokens += ev.completion_tokens
            if readers is not None:  # the same reader as a stream's, over the whole text
                reader = readers[ev.index]
                reader.push(texts[ev.index])
                finish[ev.index] = reader.finish(ev.finish_reason)[1]
                messages_out[ev.index] = reader.message()
    return {**base, "object": "chat.completion",
            "choices": [{"index": i, "message": messages_out[i] or {"role": "assistant", "content": texts[i]},
                         "logprobs": {"content": lps[i]} if body.logprobs else None,
                         "finish_reason": finish[i]} for i in range(body.n)],
            "usage": _usage(group.prompt_tokens, completion_tokens, group)}


@router.post("/v1/completions", responses={
    200: json_or_stream(Completion, "The completion; with `stream`, text_completion chunk events"),
    **error_responses(400, 401, 404, 429, 501, 502, 503)})
async def completions(body: CompletionRequest, request: Request, _user: CurrentUser = Depends(api_user)):
    """A legacy completion of a raw prompt. The prompt is model input, not a chat message: its text is encoded
    as is (special tokens it spells out are special tokens), or it is given as token ids."""
    ctx = ctx_of(request)
    ctx.check_model(body.model)
    _check_common(body, ctx)
    if body.suffix:
        raise _unsupported("suffix", "suffix (fill-in-the-middle)")
    if body.best_of is not None and body.best_of != body.n:
        raise _unsupported("best_of", "best_of different from n")
    want_lp = body.logprobs is not None
    if want_lp and body.stream:
        raise _unsupported("logprobs", "logprobs with stream on /v1/completions")
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens: must be at least 1 (0 is allowed only with echo, to score the prompt).",
                       param="max_tokens")
    if body.max_tokens == 0 and body.stream:
        raise APIError(400, "max_tokens: 0 is not allowed with stream.", param="max_tokens")
    await ctx.host.ready()
    constraint = await response_constraint(ctx, body.response_format)
    if body.echo:
        ctx.require_local_model("echo", "echo")
    if want_lp:
        ctx.require_local_model("logprobs", "logprobs")
    host = ctx.host
    p = body.prompt

    def encode_prompts() -> list:  # CPU work on client input: runs in a worker thread
        if isinstance(p, str):
            out = [host.encode_text(p)]
        elif p and all(isinstance(x, int) for x in p):
            out = [list(p)]
        elif p and all(isinstance(x, str) for x in p):
            out = [host.encode_text(x) for x in p]
        elif p and all(isinstance(x, list) for x in p):
            out = [list(x) for x in p]
        else:
            raise APIError(400, "prompt: must be a non-empty string, list of strings or list of token ids.",
                           param="prompt")
        vocab = host.vocab_size  # None: an upstream checks its own token ids
        for ids in out:
            if not ids:
                raise APIError(400, "prompt: a prompt is empty.", param="prompt")
            if isinstance(ids, list) and any(t < 0 or (vocab is not None and t >= vocab) for t in ids):
                raise APIError(400, f"prompt: token ids must be in [0, {vocab})." if vocab is not None else
                               "prompt: token ids must not be negative.", param="prompt")
        return out

    prompts = await asyncio.to_thread(encode_prompts)
    # the moderation hook reads each prompt as the user's words: the text as sent, or its token ids decoded
    # (an upstream keeps its tokenizer, so its token-id prompts are checked on output only)
    prompt_texts = ([p] if isinstance(p, str) else list(p) if isinstance(p[0], str) else
                    await asyncio.to_thread(lambda: [host.tokenizer.decode(ids) for ids in prompts])
                    if moderation.service(ctx).enabled and host.local else [""] * len(prompts))
    if len(prompts) * body.n > ctx.cfg.max_n * 4:
        raise APIError(400, f"prompt: at most {ctx.cfg.max_n * 4} prompts x choices per request.", param="prompt")
    budgets = [ctx.fit_context(ids, body.max_tokens, param="prompt") if body.max_tokens != 0 else 0 for ids in prompts]
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    base = {"id": cid, "object": "text_completion", "created": created, "model": ctx.host.model_id,
            "system_fingerprint": None}
    prompt_counts = [0] * len(prompts)  # each prompt's tokens, once its generation knows them

    # one generate() per prompt, merged; choice index = prompt_index * n + j as in OpenAI's API
    async def run_prompt(pi: int, ids: list[int], out_q: asyncio.Queue, req):
        try:
            if budgets[pi] == 0:  # echo-only scoring: nothing to generate
                prompt_counts[pi] = host.prompt_tokens(ids)
                for j in range(body.n):
                    from .scheduler import Event
                    await out_q.put(Event("done", pi * body.n + j, finish_reason="length"))
                return
            group = await moderation.generate(
                ctx, [{"role": "user", "content": prompt_texts[pi]}], ids,
                sampling_params(body, budgets[pi], body.n, want_logprobs=want_lp, logits_processors=constraint),
                route="api", user=_user, stream=body.stream, request=req)
            async for ev in group:
                ev.index = pi * body.n + ev.index
                await out_q.put(ev)
            prompt_counts[pi] = group.prompt_tokens
        except APIError as e:
            await out_q.put(e)
        finally:
            await out_q.put(None)

    async def merged(req):
        q: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(run_prompt(i, ids, q, req)) for i, ids in enumerate(prompts)]
        left = len(tasks)
        try:
            while left:
                item = await q.get()
                if item is None:
                    left -= 1
                elif isinstance(item, APIError):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()

    total = len(prompts) * body.n
    echo = (await asyncio.to_thread(lambda: [host.tokenizer.decode(ids) for ids in prompts]) if body.echo
            else [""] * len(prompts))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def stream():
            completion_tokens = 0
            try:
                if body.echo:
                    for k in range(total):
                        yield _sse({**base, "choices": [{"index": k, "text": echo[k // body.n], "logprobs": None,
                                                         "finish_reason": None}]})
                async for ev in merged(None):
                    if ev.kind == "delta":
                        if ev.text:
                            yield _sse({**base, "choices": [{"index": ev.index, "text": ev.text, "logprobs": None,
                                                             "finish_reason": None}]})
                    elif ev.kind == "done":
                        completion_tokens += ev.completion_tokens
                        yield _sse({**base, "choices": [{"index": ev.index, "text": "", "logprobs": None,
                                                         "finish_reason": _finish(ev.finish_reason)}]})
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(sum(prompt_counts), completion_tokens)})
            except APIError as e:
                yield _sse(error_body(e.status, e.message, e.param, e.code, e.type))
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    texts = [echo[k // body.n] for k in range(total)]
    finish = ["stop"] * total
    generated: list[list[int]] = [[] for _ in range(total)]
    completion_tokens = 0
    async for ev in merged(request):
        if ev.kind == "delta":
            texts[ev.index] += ev.text
            if ev.logprob is not None and ev.token_id is not None:  # a real token (stop tokens carry none)
                generated[ev.index].append(ev.token_id)
        elif ev.kind == "done":
            finish[ev.index] = _finish(ev.finish_reason)
            completion_tokens += ev.completion_tokens
    logprobs: list[dict | None] = [None] * total
    if want_lp:
        for k in range(total):
            logprobs[k] = await asyncio.to_thread(_legacy_logprobs, host.engine, host.tokenizer, prompts[k // body.n],
                                                  generated[k], body.echo, body.logprobs)
    return {**base, "choices": [{"index": k, "text": texts[k], "logprobs": logprobs[k], "finish_reason": finish[k]}
                                for k in range(total)],
            "usage": _usage(sum(prompt_counts), completion_tokens)}


def _legacy_logprobs(engine, tok, prompt_ids: list[int], generated: list[int], echo: bool, top: int) -> dict:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs and text_offset, over
    the echoed prompt (when echo) and the generated tokens. Values are the model's own distribution (before
    temperature, top-p or penalties), computed by one scoring pass over prompt + completion; the first
    prompt token has no context, so its logprob is null, as in OpenAI's API."""
    ids = list(prompt_ids) + list(generated)
    values, tops = engine.token_logprobs(ids, top=top)
    first = 0 if echo else len(prompt_ids)
    # offsets into the returned text by prefix decodes; a token that starts inside a multi-token character
    # gets that character's offset (the prefix's incomplete bytes decode to U+FFFD and are not counted)
    base = 0 if echo else len(tok.decode(prompt_ids))
    prefix_len = [len(tok.decode(ids[:i]).rstrip("\ufffd")) - base for i in range(first, len(ids))]
    out_tokens = [tok.decode([t]) for t in ids[first:]]
    out_top: list[dict | None] = []
    for alts in tops[first:]:
        if alts is None:
            out_top.append(None)
            continue
        d: dict[str, float] = {}
        for t, v in alts:
            d.setdefault(tok.decode([t]), v)  # distinct ids may decode alike; keep the likelier
        out_top.append(d)
    return {"tokens": out_tokens, "token_logprobs": values[first:], "top_logprobs": out_top,
            "text_offset": [max(o, 0) for o in prefix_len]}


@router.post("/v1/embeddings", responses={200: {"model": EmbeddingList}, **error_responses(400, 401, 404, 501)})
async def embeddings(body: EmbeddingRequest, request: Request, _user: CurrentUser = Depends(api_user)):
    ctx = ctx_of(request)
    if body.model != EMBEDDING_MODEL_ID or not ctx.cfg.enable_embeddings:
        raise APIError(404, f"The embedding model '{body.model}' does not exist. This server embeds with "
                            f"'{EMBEDDING_MODEL_ID}'.", param="model", code="model_not_found")
    if body.dimensions is not None:
        raise _unsupported("dimensions", "dimensions (MiniLM embeddings have 384)")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise APIError(400, "input: must not be empty.", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise _unsupported("input", "token-id input for embeddings (send strings)")
    if len(texts) > 2048:
        raise APIError(400, "input: at most 2048 strings per request.", param="input")
    try:
        from ..embeddings import get_embedder
    except ImportError as e:
        raise APIError(501, f"Embeddings are not available in this installation: {e}", code="not_implemented")

    def work():
        emb = get_embedder()
        return emb.embed(list(texts)), emb.count_tokens(list(texts))

    vectors, n_tokens = await asyncio.to_thread(work)
    data = []
    for i, v in enumerate(vectors):
        if body.encoding_format == "base64":
            import numpy as np
            value: Any = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
        else:
            value = [float(x) for x in v]
        data.append({"object": "embedding", "index": i, "embedding": value})
    return JSONResponse({"object": "list", "data": data, "model": EMBEDDING_MODEL_ID,
                         "usage": {"prompt_tokens": int(n_tokens), "total_tokens": int(n_tokens)}})
