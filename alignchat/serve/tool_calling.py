"""Function calling in /v1/chat/completions: what a request's `tools` and `tool_choice` mean for the prompt, the
sampling constraint and the reply, in OpenAI's shape.

The text format (how tools, calls and results are written, and how calls are read back) is
`alignchat.tools_format`; the rendering is `Tokenizer.render_chat(tools=...)`, the same as in training.

Notable choices:
- `tool_choice`: `none` (the default without tools) offers no tools and reads no calls: the reply is text.
  `auto` (the default with tools) offers them and reads the `<tool_call>` blocks the model writes
  (`ToolCallStream`); a malformed one stays text. `required` and `{"type": "function", "function": {"name"}}`
  force one call: the prompt ends with the block's opening (and for a named function, its name), and the
  rest is generated under a grammar (engine/grammar.py) built from the function's JSON Schema, or for
  `required` a grammar of the whole call (`{"name": <a tool's name>, "arguments": <its schema>}`, each
  schema compiled as a root of its own, so its `$ref`s resolve), so the arguments always validate. A forced
  reply is one call.
- Calls are read, and forced, in the `<tool_call>` JSON syntax: this project's format, and the one the
  templates of Hermes and Qwen 2.5 write. A model whose own template writes calls another way is given
  its own format in the prompt, but its calls are not parsed.
- `parallel_tool_calls: false` keeps the first call of an `auto` reply and drops what follows it.
- A reply with calls has `tool_calls` (ids `call_<random>`, arguments as JSON text), content null unless the
  model wrote text beside its calls, and `finish_reason: "tool_calls"` (`length` when cut short).
- Streaming sends calls the way OpenAI does, so the SDK's stream helpers assemble them: for each call a first
  delta with `index`, `id`, `type`, `function.name` and empty `arguments`, then argument fragments. A forced
  call's arguments stream as they are generated; an `auto` call is sent once its block has closed (until
  then it might turn out to be text).
- The same reader (`ChoiceReader`) builds the whole reply and the stream, so they always agree.
- Tool definitions and calls are checked before anything is generated, with a 400 naming the field
  (`tools.0.function.parameters`, `tool_choice`, `messages.3.tool_call_id`). Validating, rendering and
  compiling the grammar run in one worker thread, off the event loop.
- Tools need the local model's tokenizer and template: with `--upstream` they are 501 `needs_local_model`.
  A forced call cannot be combined with a `response_format` grammar (400): there would be two.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UserError
from ..tools_format import (ForcedCallStream, ParsedCall, ToolCallStream, ToolFormatError, forced_prefix,
                            function_schema, required_grammar, validate_tools)
from .errors import APIError


def field_error(e: ToolFormatError) -> APIError:
    return APIError(400, str(e), param=e.param, code="invalid_value")


@dataclass
class ToolPlan:
    """What a request's tools mean: `choice` is none | auto | required | named (then `name`)."""

    tools: list[dict] | None = None
    choice: str = "none"
    name: str | None = None
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "named")

    @property
    def offered(self) -> list[dict] | None:
        """The tools written into the prompt (none with tool_choice none)."""
        return self.tools if self.choice != "none" else None

    def prefix(self) -> str:
        return forced_prefix(self.name) if self.forced else ""

    def schema_param(self) -> str:
        """The field a grammar that cannot be compiled comes from."""
        if self.choice == "named":
            j = next(j for j, t in enumerate(self.tools) if t["function"]["name"] == self.name)
            return f"tools.{j}.function.parameters"
        return "tools"

    def reader(self) -> "ChoiceReader":
        return ChoiceReader(self)


def plan_tools(tools: list[dict] | None, tool_choice, parallel_tool_calls: bool | None) -> ToolPlan:
    """Check `tools` and `tool_choice` together (CPU work: schemas are checked); 400 naming the field."""
    try:
        checked = validate_tools(tools)
    except ToolFormatError as e:
        raise field_error(e) from None
    parallel = True if parallel_tool_calls is None else parallel_tool_calls
    if tool_choice is None:
        return ToolPlan(checked, "auto" if checked else "none", parallel=parallel)
    if isinstance(tool_choice, str):
        if tool_choice == "none":
            return ToolPlan(checked, "none", parallel=parallel)
        if not checked:
            raise APIError(400, f"tool_choice: {tool_choice!r} needs tools; this request has none.",
                           param="tool_choice", code="invalid_value")
        return ToolPlan(checked, tool_choice, parallel=parallel)
    name = tool_choice["function"]["name"]
    names = [t["function"]["name"] for t in checked or ()]
    if name not in names:
        raise APIError(400, f"tool_choice: the function {name!r} is not among the request's tools"
                            f"{' (' + ', '.join(names) + ')' if names else ' (it has none)'}.",
                       param="tool_choice", code="invalid_value")
    return ToolPlan(checked, "named", name=name, parallel=parallel)


def render_tool_prompt(tokenizer, messages: list[dict], plan: ToolPlan) -> list[int]:
    """The prompt's token ids: the conversation with the offered tools, the generation prompt, and for a
    forced call the block's opening (CPU work: call it in a worker thread)."""
    try:
        ids = tokenizer.render_chat(messages, add_generation_prompt=True, tools=plan.offered).ids
    except ToolFormatError as e:
        raise field_error(e) from None
    prefix = plan.prefix()
    if not prefix:
        return ids
    # the block's opening as the rendered conversation has it: template text in the template's own format,
    # else assistant content (tags that are control tokens for this tokenizer are text there)
    return ids + (tokenizer.encode(prefix, add_bos=False) if tokenizer.has_tool_format
                  else tokenizer.encode_content(prefix))


def forced_constraint(tokenizer, plan: ToolPlan) -> list:
    """The logits processors of a forced call (CPU work: compiles the grammar): a named function's
    arguments under its JSON Schema; with `required`, the whole call under `required_grammar`."""
    if not plan.forced:
        return []
    from ..engine.grammar import JSON_LAYOUT, json_constraint, lark_constraint
    try:
        if plan.choice == "named":
            tool = next(t for t in plan.tools if t["function"]["name"] == plan.name)
            return [json_constraint(tokenizer, function_schema(tool))]
        return [lark_constraint(tokenizer, required_grammar(plan.tools, JSON_LAYOUT))]
    except UserError as e:
        param = plan.schema_param()
        raise APIError(400, f"{param}: {e}", param=param, code="invalid_json_schema") from None


@dataclass
class ChoiceReader:
    """One choice's reply read from its generated text: the deltas to stream and the whole message."""

    plan: ToolPlan
    content: list[str] = field(default_factory=list)
    calls: list[ParsedCall] = field(default_factory=list)

    def __post_init__(self):
        if self.plan.forced:
            self.stream = ForcedCallStream(self.plan.name)
        else:
            self.stream = ToolCallStream([t["function"]["name"] for t in self.plan.tools], self.plan.parallel)

    def _deltas(self, events: list) -> list[dict]:
        out = []
        for kind, value in events:
            if kind == "content":
                self.content.append(value)
                out.append({"content": value})
            elif kind == "call":
                index = len(self.calls)
                self.calls.append(value)
                out.append({"tool_calls": [{"index": index, "id": value.id, "type": "function",
                                            "function": {"name": value.name, "arguments": ""}}]})
                if value.arguments:  # an `auto` call, whole: its arguments follow in one fragment
                    out.append({"tool_calls": [{"index": index, "function": {"arguments": value.arguments}}]})
            elif kind == "arguments":  # a forced call's next fragment
                self.calls[-1].arguments += value
                out.append({"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": value}}]})
        return out

    def push(self, text: str) -> list[dict]:
        return self._deltas(self.stream.push(text)) if text else []

    def finish(self, engine_reason: str | None) -> tuple[list[dict], str]:
        """The last deltas and the finish reason, once the engine has finished this choice."""
        truncated = engine_reason == "length"
        events = self.stream.finish(truncated) if self.plan.forced else self.stream.finish()
        deltas = self._deltas(events)
        reason = "length" if truncated else "tool_calls" if self.calls else "stop"
        return deltas, reason

    def message(self) -> dict:
        msg = {"role": "assistant", "content": "".join(self.content) or None}
        if self.calls:
            msg["tool_calls"] = [c.to_openai() for c in self.calls]
        return msg


def prepare(tokenizer, messages: list[dict], tools: list[dict] | None, tool_choice,
            parallel_tool_calls: bool | None) -> tuple[ToolPlan, list[int], list]:
    """The plan, the prompt's ids and the logits processors of a chat request that uses tools (its own or
    earlier calls): all the CPU work, for one worker thread."""
    plan = plan_tools(tools, tool_choice, parallel_tool_calls)
    ids = render_tool_prompt(tokenizer, messages, plan)
    return plan, ids, forced_constraint(tokenizer, plan)
