"""Built-in tools in the server: who may use which, one generation round on the engine, and the API's tool loop.

The tools themselves and the loop are `alignchat.tools` (transport-agnostic); this module connects them to
the server's engine path (`ServerContext.generate`), its accounts and its library.

Opt-in at three levels, all required: the deployment (`alignchat serve --tools calculator,python,...`,
default none), the account and API key (`CurrentUser.tools`, set with `alignchat users tools` or by an admin
through `PUT /api/admin/users/{name}/tools`), and the conversation (the UI's toggles, `Conversation.tools`)
or the request (the API's `builtin_tools`).

Notable choices:
- API shape: a chat completion request names built-in tools in the extension field `builtin_tools` (a list
  of names; with the OpenAI SDK, `extra_body={"builtin_tools": ["calculator"]}`). The server then runs the
  loop and answers with the final text; the calls it made are listed in the reply's `builtin_tool_calls`
  (`{id, name, arguments, result, error}`). A request's own `tools` (client-run functions, standard
  function calling) cannot be combined with it, nor `stream` or `n` > 1 (400s naming the field);
  `tool_choice: "required"` forces the first round's call. `max_tool_rounds` (at most the server's
  `--max-tool-rounds`, default 4) bounds the rounds.
- A tool the deployment does not enable is a 400 (`tool_not_enabled`); one the account or key may not
  use is a 403 (`tool_not_allowed`); with `--upstream` built-in tools are 501 (`needs_local_model`): they
  need the local tokenizer's tool format and grammar.
- Every generation of the loop goes through the moderation hook (`serve/moderation.py`), as a chat
  reply without tools does.
- Tools run in a worker thread (`arun_tool_loop`, `asyncio.to_thread`), never on the event loop; so does
  every prompt rendering and grammar compilation. The library is opened and searched in that thread too,
  scoped to the requesting account's own library (`library.store.server_user_key`).
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from ..errors import UserError
from ..tools import NAMES, ToolContext, parse_names
from ..tools.loop import Reply
from .errors import APIError


def deployment_tools(ctx) -> list[str]:
    """The tools this server enables (`--tools`), in registry order; none with an upstream."""
    return [t for t in NAMES if t in ctx.cfg.tools] if ctx.host.local else []


def available_tools(ctx, user) -> list[str]:
    """The tools `user` (with the key it came with) may use on this server."""
    return user.may_use(deployment_tools(ctx))


def check_requested(ctx, user, names, param: str) -> list[str]:
    """The requested tool names, each enabled by the deployment and allowed for `user`; else a 400/403/501
    naming `param`."""
    try:
        wanted = parse_names(names, param)
    except UserError as e:
        raise APIError(400, str(e), param=param, code="invalid_value") from None
    if wanted:
        ctx.require_local_model("built-in tools", param)
    for name in wanted:
        if name not in ctx.cfg.tools:
            on = ", ".join(deployment_tools(ctx)) or "none"
            raise APIError(400, f"{param}: the tool {name!r} is not enabled on this server (enabled: {on}; "
                                f"`alignchat serve --tools ...` enables tools).", param=param,
                           code="tool_not_enabled")
        if name not in available_tools(ctx, user):
            raise APIError(403, f"{param}: this account or API key may not use the tool {name!r}; an admin "
                                f"grants it (`alignchat users tools`).", param=param, code="tool_not_allowed")
    return wanted


def tool_context(ctx, user, request) -> ToolContext:
    """What the tools need for this request: the account's own library, the sandbox's limits."""
    from ..tools.library_search import searcher

    def search(query: str, k: int) -> list[dict]:  # runs in the tool's worker thread
        from ..library.api import library_for
        from ..library.store import server_user_key
        request.state.library_server = (ctx.store, user)
        return searcher(library_for(request), server_user_key(user.id))(query, k)

    return ToolContext(library_search=search, python_timeout=ctx.cfg.tool_timeout)


def max_rounds(ctx, asked: int | None, param: str = "max_tool_rounds") -> int:
    limit = ctx.cfg.max_tool_rounds
    if asked is None:
        return limit
    if not 0 <= asked <= limit:
        raise APIError(400, f"{param}: at most {limit} tool rounds on this server (0 to {limit}).", param=param,
                       code="invalid_value")
    return asked


async def generate_round(ctx, messages: list[dict], tools: list[dict] | None, choice: str,
                         make_params: Callable[[list[int]], list], *, route: str, user,
                         stream: bool) -> AsyncIterator[tuple[str, object]]:
    """One generation of the loop on the server's engine, through the moderation hook like every chat
    reply: yields ("content", text) as the reply's text streams (tool-call blocks held back and read, never
    shown as text), then ("reply", Reply). `tools` None: nothing offered, no call read.
    `make_params(prompt_ids)` gives the one SamplingParams."""
    from . import moderation, tool_calling
    reader = None
    if tools is None:
        ids = await asyncio.to_thread(ctx.host.render_chat, messages)
        procs: list = []
    else:
        plan, ids, procs = await asyncio.to_thread(tool_calling.prepare, ctx.host.tokenizer, messages, tools,
                                                   choice, None)
        reader = plan.reader()
    params = make_params(ids)
    params[0].logits_processors = list(params[0].logits_processors) + procs
    group = await moderation.generate(ctx, messages, ids, params, route=route, user=user, stream=stream)
    text, reason, tokens = "", None, 0
    try:
        async for ev in group:
            if ev.kind == "delta" and ev.text:
                if reader is None:
                    text += ev.text
                    yield "content", ev.text
                else:
                    for d in reader.push(ev.text):
                        if d.get("content"):
                            yield "content", d["content"]
            elif ev.kind == "done":
                reason, tokens = ev.finish_reason, ev.completion_tokens
    finally:
        group.cancel()
    counts = {"prompt_tokens": group.prompt_tokens, "completion_tokens": tokens}
    if reader is None:
        yield "reply", Reply(text, [], reason or "stop", **counts)
        return
    deltas, reason = reader.finish(reason)
    for d in deltas:
        if d.get("content"):
            yield "content", d["content"]
    msg = reader.message()
    yield "reply", Reply(msg["content"], msg.get("tool_calls", []), reason, **counts)


async def api_tool_loop(ctx, body, messages: list[dict], user, request,
                        sampling_params: Callable[[object, int, int], list]) -> dict:
    """A /v1/chat/completions request with `builtin_tools`: the loop on the engine, the final reply.
    `sampling_params(body, max_tokens, n)` is the API's own mapping of a request onto `SamplingParams`
    (`openai_api.sampling_params`, passed in: the API imports this module, never the reverse)."""
    import time
    import uuid

    from ..tools.loop import arun_tool_loop
    names = check_requested(ctx, user, body.builtin_tools, "builtin_tools")
    if body.tools:
        raise APIError(400, "builtin_tools: cannot be combined with tools (functions the client runs); send one "
                            "or the other.", param="builtin_tools")
    if body.stream:
        raise APIError(400, "stream: not supported with builtin_tools; the reply comes whole.", param="stream")
    if body.n != 1:
        raise APIError(400, "n: builtin_tools give one choice.", param="n")
    if body.tool_choice not in (None, "auto", "required"):
        raise APIError(400, "tool_choice: with builtin_tools it is 'auto' or 'required' (force the first call).",
                       param="tool_choice")
    rounds = max_rounds(ctx, getattr(body, "max_tool_rounds", None))
    await ctx.host.ready()
    asked = body.max_completion_tokens or body.max_tokens
    usage = {"prompt_tokens": 0, "completion_tokens": 0}  # summed over the rounds

    async def generate(msgs, tools, choice):
        def make_params(ids):
            return sampling_params(body, ctx.fit_context(ids, asked), 1)
        reply = None
        async for kind, value in generate_round(ctx, msgs, tools, choice, make_params, route="api", user=user,
                                                stream=False):
            if kind == "reply":
                reply = value
        usage["prompt_tokens"] += reply.prompt_tokens
        usage["completion_tokens"] += reply.completion_tokens
        return reply

    res = await arun_tool_loop(generate, messages, names, rounds, tool_context(ctx, user, request),
                               force_first=body.tool_choice == "required")
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": ctx.host.model_id, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.final_text},
                         "logprobs": None, "finish_reason": "length" if res.finish_reason == "length" else "stop"}],
            "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
            "builtin_tool_calls": [c.to_dict() for c in res.calls]}
