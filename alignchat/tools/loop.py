"""The tool loop: generate, run the tools the model calls, give it their results, and repeat, until the model
answers in text or the rounds run out.

    from alignchat.client import make_client, GREEDY
    from alignchat.tools.loop import run_tool_loop
    res = run_tool_loop(make_client(model="runs/sft/final"), [{"role": "user", "content": "What is 37×43?"}],
                        ["calculator"], max_rounds=4, sampling=GREEDY.but(max_tokens=128))
    res.final_text, res.calls[0].result, res.messages   # "1591", "1591", the transcript with tool messages

Notable choices:
- One loop, written once without any I/O (`steps`, a generator that asks its driver to generate or to run
  tools), and two drivers: `run_tool_loop` (synchronous, over a model client) and `arun_tool_loop`
  (asynchronous, over any `generate` coroutine: the server's API path); the web UI's chat drives `steps`
  itself, to stream the text and the tool results as they come. Tools run in the caller's thread in the first and in a worker thread, off the event
  loop, in the second. `run_tool_loops` runs many conversations (evaluation): on a local model they advance
  together, each round one batched engine call, the prompts rendered as `local_generate` renders them.
- Rounds: at most `max_rounds` generations offer the tools (the first may force a call, `force_first`,
  through the grammar-constrained `tool_choice` path of function calling). When the model has called a
  tool in each of them, one last generation is made with the tools not offered (`tool_choice` none, no
  call is read), so the loop always ends with text. `max_rounds=0` is a plain reply. A reply cut short by
  `max_tokens` ends the loop there (finish reason `length`): a call it began is incomplete, and is not run.
- A call to a tool that is not enabled, or with bad arguments, gets a tool error text as its result (the
  model reads it; nothing raises). Calls name only the enabled tools' names when they are read from the
  text (`alignchat.tools_format`); a client that reads calls itself (an endpoint) may return any name.
- The transcript (`ToolLoopResult.messages`) is OpenAI's: assistant messages with `tool_calls` (arguments
  as JSON text) and `tool` messages answering them by id, then the final assistant text.
- Clients: a `LocalClient` renders the tools with its tokenizer (`Tokenizer.render_chat(tools=...)`) and
  generates on its engine, forced calls under the function-calling grammar; an `EndpointClient` sends
  OpenAI's `tools`/`tool_choice` and reads `tool_calls`; any other client gets the tools written into the
  conversation in `tools_format`'s text and its reply parsed the same way.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from ..client.sampling import GREEDY, Sampling
from .registry import ToolContext, run_tool, tool_specs

DEFAULT_MAX_ROUNDS = 4


@dataclass
class ToolCallRecord:
    """One executed call: what the model asked for and what it got."""

    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    result: str
    error: bool

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "arguments": self.arguments, "result": self.result,
                "error": self.error}


@dataclass
class Reply:
    """One generation: its text (None when it is only calls), its calls (OpenAI `tool_calls` entries) and
    its finish reason."""

    content: str | None
    tool_calls: list[dict] = field(default_factory=list)
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ToolLoopResult:
    messages: list[dict]  # the whole transcript, the input's messages first
    final_text: str
    calls: list[ToolCallRecord]
    rounds: int  # generations made
    finish_reason: str

    @property
    def new_messages(self) -> list[dict]:
        """The messages the loop added (assistant calls, tool results, the final answer)."""
        return self.messages[self._start:]

    _start: int = 0


# A generate function: (messages, offered tools or None, tool_choice) -> Reply. tool_choice is "auto",
# "required" or "none" (then `tools` is None: nothing offered, no call read).
Generate = Callable[[list[dict], list[dict] | None, str], Reply]


def steps(messages: Sequence[dict], tools: Sequence[str], max_rounds: int, force_first: bool):
    """The loop without I/O. Yields ("generate", messages, tools, tool_choice) -> Reply and
    ("run", [tool_call, ...]) -> [ToolCallRecord]; returns the ToolLoopResult."""
    transcript = [dict(m) for m in messages]
    start = len(transcript)
    specs = tool_specs(tools) or None
    calls: list[ToolCallRecord] = []
    rounds = 0
    while True:
        offer = specs is not None and rounds < max_rounds
        choice = ("required" if force_first and rounds == 0 else "auto") if offer else "none"
        reply: Reply = yield ("generate", transcript, specs if offer else None, choice)
        rounds += 1
        # a reply cut short by max_tokens may hold a call whose arguments never closed: nothing to run
        if not offer or not reply.tool_calls or reply.finish_reason == "length":
            text = reply.content or ""
            transcript.append({"role": "assistant", "content": text})
            return ToolLoopResult(transcript, text, calls, rounds, reply.finish_reason, start)
        transcript.append({"role": "assistant", "content": reply.content, "tool_calls": reply.tool_calls})
        records: list[ToolCallRecord] = yield ("run", reply.tool_calls)
        calls += records
        transcript += [{"role": "tool", "tool_call_id": r.id, "content": r.result} for r in records]


def execute_calls(tool_calls: Sequence[dict], enabled: Sequence[str], context: ToolContext | None) -> list[ToolCallRecord]:
    """Run each call (an OpenAI `tool_calls` entry) with `run_tool`; a tool not in `enabled` gets an error."""
    out = []
    for c in tool_calls:
        fn = c.get("function") or {}
        name, args = str(fn.get("name", "")), fn.get("arguments", "{}")
        args_text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        res = run_tool(name, args_text, context, enabled=set(enabled))
        out.append(ToolCallRecord(str(c.get("id", "")), name, args_text, res.text, res.error))
    return out


def _send(loop, answer) -> tuple:
    """Advance a `steps` loop with `answer`: its next step, or ("done", ToolLoopResult) once it returned."""
    try:
        return loop.send(answer)
    except StopIteration as done:
        return ("done", done.value)


def drive(generate: Generate, messages: Sequence[dict], tools: Sequence[str], max_rounds: int = DEFAULT_MAX_ROUNDS,
          context: ToolContext | None = None, force_first: bool = False) -> ToolLoopResult:
    """The loop over a synchronous generate function."""
    loop = steps(messages, tools, max(0, int(max_rounds)), force_first)
    step = _send(loop, None)
    while step[0] != "done":
        answer = (generate(list(step[1]), step[2], step[3]) if step[0] == "generate"
                  else execute_calls(step[1], tools, context))
        step = _send(loop, answer)
    return step[1]


async def arun_tool_loop(generate: Callable[[list[dict], list[dict] | None, str], Awaitable[Reply]],
                         messages: Sequence[dict], tools: Sequence[str], max_rounds: int = DEFAULT_MAX_ROUNDS,
                         context: ToolContext | None = None, force_first: bool = False,
                         on_calls: Callable[[list[ToolCallRecord]], Awaitable[None]] | None = None
                         ) -> ToolLoopResult:
    """The loop over an asynchronous generate function; tools run in a worker thread. `on_calls` is
    awaited with each round's executed calls (the server streams them to the UI)."""
    loop = steps(messages, tools, max(0, int(max_rounds)), force_first)
    step = _send(loop, None)
    while step[0] != "done":
        if step[0] == "generate":
            answer = await generate(list(step[1]), step[2], step[3])
        else:
            answer = await asyncio.to_thread(execute_calls, step[1], tools, context)
            if on_calls is not None:
                await on_calls(answer)
        step = _send(loop, answer)
    return step[1]


# --- generate functions for the model clients ------------------------------------------------------------

def _read_reply(text: str, finish_reason: str, tools: list[dict] | None, choice: str) -> Reply:
    """A generated text read with function calling's reader (`serve.tool_calling.ChoiceReader`)."""
    if tools is None:
        return Reply(text, [], finish_reason)
    from ..serve.tool_calling import ToolPlan
    reader = ToolPlan(tools, choice).reader()
    reader.push(text)
    _, reason = reader.finish(finish_reason)
    msg = reader.message()
    return Reply(msg["content"], msg.get("tool_calls", []), reason)


def _local_prompt(tok, messages: list[dict], tools: list[dict] | None, choice: str) -> tuple[list[int], list]:
    """A generation's prompt on a local model and its logits processors: the tools rendered by the tokenizer,
    a forced call under the function-calling grammar; with nothing offered, the plain chat prompt."""
    if tools is None:
        return tok.render_chat(messages, add_generation_prompt=True).ids, []
    from ..serve.tool_calling import prepare
    _, ids, procs = prepare(tok, messages, tools, choice, None)
    return ids, procs


def _local_replies(client, sampling: Sampling, requests: Sequence[tuple], keep: int | None = None) -> list[Reply]:
    """One batched call to a `LocalClient`'s engine for `requests` ((messages, tools, choice) each), its
    usage counted; with `keep`, a prompt keeps at most its last `keep` tokens."""
    import dataclasses

    import torch

    prompts, params = [], []
    for messages, tools, choice in requests:
        ids, procs = _local_prompt(client.tokenizer, messages, tools, choice)
        prompts.append(ids if keep is None else ids[-keep:])
        params.append(dataclasses.replace(sampling.engine_params(0), logits_processors=procs))
    with torch.inference_mode():
        outs = client.engine.generate(prompts, params)
    replies = []
    for ids, out, (_, tools, choice) in zip(prompts, outs, requests):
        client.usage.prompt_tokens += len(ids)
        client.usage.completion_tokens += len(out.token_ids)
        replies.append(_read_reply(out.text, out.finish_reason, tools, choice))
    return replies


def local_generate(client, sampling: Sampling) -> Generate:
    """Generate on a `LocalClient`'s engine: the tools rendered by its tokenizer, a forced call under the
    function-calling grammar."""
    def generate(messages, tools, choice):
        return _local_replies(client, sampling, [(messages, tools, choice)])[0]
    return generate


def endpoint_generate(client, sampling: Sampling) -> Generate:
    """Generate on an OpenAI-compatible endpoint with its own function calling (`tools`, `tool_choice`)."""
    def generate(messages, tools, choice):
        body: dict[str, Any] = {**sampling.openai_fields(0), "messages": messages}
        if tools is not None:
            body |= {"tools": tools, "tool_choice": choice}
        data = client._post("/chat/completions", body)
        try:
            choice0 = data["choices"][0]
            msg = choice0["message"]
        except (KeyError, IndexError, TypeError):
            from ..client.endpoint import EndpointError
            raise EndpointError(f"{client.base_url}/chat/completions: unexpected answer (no choices[0])") from None
        calls = (msg.get("tool_calls") or []) if tools is not None else []
        return Reply(msg.get("content"), list(calls), choice0.get("finish_reason") or "stop")
    return generate


def text_generate(client, sampling: Sampling) -> Generate:
    """Any other client: the tools written into the conversation as text, the reply parsed from text."""
    def generate(messages, tools, choice):
        from ..tools_format import to_plain_messages
        plain = to_plain_messages(messages, tools)
        c = client.chat(plain, sampling)
        return _read_reply(c.text, c.finish_reason, tools, "auto")
    return generate


def client_generate(client, sampling: Sampling) -> Generate:
    from ..client.endpoint import EndpointClient
    from ..client.local import LocalClient
    if isinstance(client, LocalClient):
        return local_generate(client, sampling)
    if isinstance(client, EndpointClient):
        return endpoint_generate(client, sampling)
    return text_generate(client, sampling)


def run_tool_loop(client, messages: Sequence[dict], tools: Sequence[str], max_rounds: int = DEFAULT_MAX_ROUNDS,
                  sampling: Sampling = GREEDY.but(max_tokens=256), context: ToolContext | None = None,
                  force_first: bool = False) -> ToolLoopResult:
    """Run the tool loop on a model client (`LocalClient`, `EndpointClient`, or any `ModelClient`) with the
    built-in `tools` enabled; see the module notes. `context` gives the tools what they need (a library
    searcher, the sandbox limits)."""
    from .registry import parse_names
    names = parse_names(list(tools))
    return drive(client_generate(client, sampling), messages, names, max_rounds, context, force_first)


def run_tool_loops(client, conversations: Sequence[Sequence[dict]], tools: Sequence[str],
                   max_rounds: int = DEFAULT_MAX_ROUNDS, sampling: Sampling = GREEDY.but(max_tokens=256),
                   context: ToolContext | None = None) -> list[ToolLoopResult]:
    """`run_tool_loop` for each conversation (the results in order). On a `LocalClient` the conversations
    advance together, each round of all of them one batched engine call, and a prompt longer than the
    context less `sampling.max_tokens` keeps its rightmost tokens; any other client runs them one by one."""
    from ..client.local import LocalClient
    from .registry import parse_names
    names = parse_names(list(tools))
    if not isinstance(client, LocalClient):
        return [run_tool_loop(client, conv, names, max_rounds, sampling, context) for conv in conversations]
    keep = max(client.engine.max_seq_len - sampling.max_tokens, 1)
    loops = [steps(conv, names, max(0, int(max_rounds)), False) for conv in conversations]
    results: list = [None] * len(loops)
    pending = {i: _send(loop, None) for i, loop in enumerate(loops)}
    while pending:
        gen = [i for i, step in pending.items() if step[0] == "generate"]
        answers = dict(zip(gen, _local_replies(client, sampling, [pending[i][1:] for i in gen], keep))) if gen else {}
        answers |= {i: execute_calls(step[1], names, context) for i, step in pending.items() if step[0] == "run"}
        pending = {}
        for i, answer in answers.items():
            step = _send(loops[i], answer)
            if step[0] == "done":
                results[i] = step[1]
            else:
                pending[i] = step
    return results
