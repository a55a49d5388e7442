"""Function calling's text format: how tools, tool calls and tool results are written into a conversation,
and how a model's tool calls are read back out of the text it generates.

A conversation with tools is OpenAI's: a list of tools `{"type": "function", "function": {"name",
"description", "parameters": <JSON Schema>}}`, assistant messages whose `tool_calls` are `{"id", "type":
"function", "function": {"name", "arguments"}}` (content may be null), and `tool` messages answering one call
each by its `tool_call_id`. Training records are the same messages, plus a record-level `tools` list.

When the model's own chat template has a tool format (it reads the `tools` variable, as Hugging Face's
templates do), `Tokenizer.render_chat` hands the tools and calls to it. Otherwise, SmolLM2 among them, it
renders this one format (Hermes / Qwen 2.5 style), in training and serving alike, as plain message content:

- the tool list, in the system turn (after its content, or as the only content of a system turn added first):

      # Tools

      You may call one or more functions to assist with the user query.

      You are provided with function signatures within <tools></tools> XML tags:
      <tools>
      {"type": "function", "function": {"name": "get_weather", ...}}
      </tools>

      For each function call, return a json object with function name and arguments within
      <tool_call></tool_call> XML tags:
      <tool_call>
      {"name": <function-name>, "arguments": <args-json-object>}
      </tool_call>

- an assistant's calls, after its content (if any), one block each, separated by newlines:

      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      </tool_call>

- a tool result, as a turn of role `tool`: `<tool_response>\\n{content}\\n</tool_response>`.

Notable choices:
- The format is message content, so the chat template's own markers stay the only control tokens, and the
  assistant mask covers the calls a model is trained to write (they are assistant content) and never the
  tool list or the results.
- Parsing (`ToolCallStream`) reads `<tool_call>` blocks out of generated text only, never out of a message
  someone sent: a `<tool_call>` typed by a user is text, in the prompt and in the answer. A block counts as
  a call when its JSON is an object with a `name` among the offered tools and object `arguments`; anything
  else (a malformed block, an unknown name) stays text. An unclosed block at the very end of the text is
  accepted when its JSON is complete. The same class parses a whole text and a stream, so streamed and
  whole answers agree: whitespace next to a call or at either end of the text is dropped.
- With `tool_choice` `required` or a named function the call is forced: `forced_prefix` is put in the prompt
  after the generation prompt, and the rest is generated under a grammar (`required_grammar`, or the
  function's own parameters as a JSON Schema), so it always parses; `ForcedCallStream` reads it while it
  streams.
- Validation errors are `ToolFormatError`s whose `param` names the field (`tools.0.function.parameters`,
  `messages.3.tool_call_id`), so the API answers a 400 naming it and data readers name the record's field.
- A tool's `parameters` must be a valid JSON Schema (Draft 2020-12, checked with `jsonschema`) whose root is
  an object schema; function names follow OpenAI's rule (`NAME_PATTERN`).
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import UserError

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOOLS = 128
MAX_SCHEMA_DEPTH = 64
MAX_SCHEMA_NODES = 20_000

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"

TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n")
TOOLS_POSTAMBLE = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call>")

_NAME_RE = re.compile(NAME_PATTERN)
# what the grammar-forced object starts with (`required`): its name, then the arguments' start
_FORCED_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*')


class ToolFormatError(UserError):
    """A tool definition, tool call or tool message is malformed; `param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


# --- validation -----------------------------------------------------------------------------------------

def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _check_json_tree(value: Any, param: str) -> None:
    """Valid Unicode everywhere, bounded depth and size (iteratively: a deep document cannot overflow)."""
    stack, nodes = [(value, 0)], 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if depth > MAX_SCHEMA_DEPTH or nodes > MAX_SCHEMA_NODES:
            raise ToolFormatError(param, f"nested deeper than {MAX_SCHEMA_DEPTH} levels or larger than "
                                         f"{MAX_SCHEMA_NODES} values")
        if isinstance(v, str):
            _check_text(v, param)
        elif isinstance(v, dict):
            for k, x in v.items():
                _check_text(str(k), param)
                stack.append((x, depth + 1))
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif not (v is None or isinstance(v, (bool, int, float))):
            raise ToolFormatError(param, f"holds a {type(v).__name__}, which is not JSON")


def _check_text(s: str, param: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ToolFormatError(param, f"contains a lone surrogate (\\u{ord(s[e.start]):04x}); text must be "
                                     f"valid Unicode") from None


def check_parameters_schema(schema: Any, param: str) -> dict:
    """A function's `parameters`: a JSON object that is a valid JSON Schema with an object root."""
    if not isinstance(schema, dict):
        raise ToolFormatError(param, "must be a JSON Schema object")
    _check_json_tree(schema, param)
    if schema.get("type", "object") != "object":
        raise ToolFormatError(param, f"the root must be an object schema (\"type\": \"object\"), got "
                                     f"{_dumps(schema.get('type'))[:60]}")
    from jsonschema import Draft202012Validator, SchemaError
    from jsonschema.validators import validator_for
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise ToolFormatError(param, f"not a valid JSON Schema{f' at {where}' if where else ''}: "
                                     f"{e.message[:300]}") from None
    except Exception as e:  # noqa: BLE001 - e.g. an unknown "$schema" dialect: the client's schema, a 400
        raise ToolFormatError(param, f"not a valid JSON Schema ({type(e).__name__}: {str(e)[:200]})") from None
    return schema


def validate_tools(tools: Any, param: str = "tools") -> list[dict] | None:
    """OpenAI's `tools` list, normalised to `{"type": "function", "function": {name, description?,
    parameters?}}`; None for no tools. Names are unique and follow NAME_PATTERN."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise ToolFormatError(param, "must be a list of tools")
    if len(tools) > MAX_TOOLS:
        raise ToolFormatError(param, f"at most {MAX_TOOLS} tools; got {len(tools)}")
    out, seen = [], set()
    for j, t in enumerate(tools):
        where = f"{param}.{j}"
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("function"), dict):
            raise ToolFormatError(where, 'a tool must be {"type": "function", "function": {...}}')
        f = t["function"]
        name = f.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ToolFormatError(f"{where}.function.name", "a function name is 1 to 64 letters, digits, "
                                                            "underscores or dashes")
        if name in seen:
            raise ToolFormatError(f"{where}.function.name", f"the name {name!r} is used by two tools")
        seen.add(name)
        fn: dict[str, Any] = {"name": name}
        desc = f.get("description")
        if desc is not None:
            if not isinstance(desc, str):
                raise ToolFormatError(f"{where}.function.description", "must be a string")
            _check_text(desc, f"{where}.function.description")
            fn["description"] = desc
        if f.get("parameters") is not None:
            fn["parameters"] = check_parameters_schema(f["parameters"], f"{where}.function.parameters")
        out.append({"type": "function", "function": fn})
    return out or None


def parse_arguments(arguments: Any, param: str) -> dict:
    """A call's arguments: a JSON object, or a string holding one (OpenAI sends a string)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError) as e:
            raise ToolFormatError(param, f"not valid JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
    if not isinstance(arguments, dict):
        raise ToolFormatError(param, "must be a JSON object (or a string holding one)")
    _check_json_tree(arguments, param)
    return arguments


def validate_tool_calls(calls: Any, param: str) -> list[dict]:
    """An assistant message's `tool_calls`, normalised to `{"id", "type": "function", "function": {"name",
    "arguments": dict}}`; ids are unique within the message."""
    if not isinstance(calls, list) or not calls:
        raise ToolFormatError(param, "must be a non-empty list of tool calls")
    out, ids = [], set()
    for k, c in enumerate(calls):
        where = f"{param}.{k}"
        if not isinstance(c, dict) or c.get("type", "function") != "function" or not isinstance(c.get("function"), dict):
            raise ToolFormatError(where, 'a tool call must be {"id", "type": "function", "function": {"name", '
                                         '"arguments"}}')
        cid = c.get("id")
        if not isinstance(cid, str) or not cid:
            raise ToolFormatError(f"{where}.id", "a tool call needs an id (a non-empty string)")
        _check_text(cid, f"{where}.id")
        if cid in ids:
            raise ToolFormatError(f"{where}.id", f"the id {cid!r} is used by two calls")
        ids.add(cid)
        name = c["function"].get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ToolFormatError(f"{where}.function.name", "a function name is 1 to 64 letters, digits, "
                                                            "underscores or dashes")
        args = parse_arguments(c["function"].get("arguments", {}), f"{where}.function.arguments")
        out.append({"id": cid, "type": "function", "function": {"name": name, "arguments": args}})
    return out


def check_tool_answers(messages: Sequence[dict]) -> None:
    """Each `tool` message answers a call of the assistant message before it (only tool messages between
    them), by that call's id, once."""
    open_ids: set[str] = set()
    answering = False  # inside the run of tool messages after an assistant message with calls
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            open_ids = {c["id"] for c in m.get("tool_calls", ())}
            answering = bool(open_ids)
        elif m["role"] == "tool":
            if not answering:
                raise ToolFormatError(f"messages.{i}", "a tool message must answer a tool call of the assistant "
                                                       "message before it")
            tid = m["tool_call_id"]
            if tid not in open_ids:
                raise ToolFormatError(f"messages.{i}.tool_call_id", f"{tid!r} matches no unanswered tool call of "
                                                                    f"the assistant message before it")
            open_ids.discard(tid)
        else:
            answering = False


# --- rendering (the format, for templates without one) ----------------------------------------------------

def tools_block(tools: Sequence[dict]) -> str:
    return TOOLS_PREAMBLE + "\n".join(_dumps(t) for t in tools) + TOOLS_POSTAMBLE


def format_call(name: str, arguments: dict) -> str:
    return f"{CALL_OPEN}\n{_dumps({'name': name, 'arguments': arguments})}\n{CALL_CLOSE}"


def to_plain_messages(messages: Sequence[dict], tools: Sequence[dict] | None) -> list[dict]:
    """The conversation in this module's format as plain `{"role", "content"}` messages (validated input)."""
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            parts = [m["content"]] if m["content"] else []
            parts += [format_call(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif m["role"] == "tool":
            out.append({"role": "tool", "content": f"{RESPONSE_OPEN}\n{m['content']}\n{RESPONSE_CLOSE}"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools:
        block = tools_block(tools)
        if out and out[0]["role"] == "system":
            system = out[0]["content"]
            out[0] = {"role": "system", "content": f"{system}\n\n{block}" if system else block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def tool_strings(messages: Sequence[dict], tools: Sequence[dict] | None):
    """(param, text) of every string in the tools and tool calls: what a template with its own tool format
    writes as its own text (used to keep control-token text out of it)."""
    found = []

    def walk(v, param):
        if isinstance(v, str):
            found.append((param, v))
        elif isinstance(v, dict):
            for k, x in v.items():
                found.append((f"{param}.{k}", str(k)))
                walk(x, f"{param}.{k}")
        elif isinstance(v, list):
            for j, x in enumerate(v):
                walk(x, f"{param}.{j}")

    for j, t in enumerate(tools or ()):
        walk(t, f"tools.{j}")
    for i, m in enumerate(messages):
        for k, c in enumerate(m.get("tool_calls", ())):
            walk(c, f"messages.{i}.tool_calls.{k}")
    return found


# --- tool choice, forced calls and their grammar ----------------------------------------------------------

def function_schema(tool: dict) -> dict:
    """The JSON Schema a call's arguments must satisfy: the function's parameters (no parameters: `{}`)."""
    params = tool["function"].get("parameters")
    if params is None:
        return {"type": "object", "properties": {}, "additionalProperties": False}
    return params if "type" in params else {"type": "object", **params}


def required_grammar(tools: Sequence[dict], json_options: dict | None = None) -> str:
    """The Lark grammar (llguidance's dialect) of one whole call, `{"name": ..., "arguments": ...}`, to any of
    `tools` (`required`): the text up to the arguments is fixed per tool, and the arguments are a `%json`
    rule with that tool's schema, which stays a root schema, so its own `$ref`s resolve. `json_options`
    (`x-guidance`) lay the JSON out."""
    lines = ["start: " + " | ".join(f"call_{j}" for j in range(len(tools)))]
    for j, t in enumerate(tools):
        head = '{"name": ' + _dumps(t["function"]["name"]) + ', "arguments": '
        schema = function_schema(t)
        if json_options:
            schema = {**schema, "x-guidance": json_options}
        lines.append(f'call_{j}: {json.dumps(head)} args_{j} "}}"')
        lines.append(f"args_{j}: %json {json.dumps(schema, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def forced_prefix(name: str | None) -> str:
    """What the prompt ends with after the generation prompt when a call is forced: the block's opening,
    and with a named function its name too, so that only the arguments are left to generate."""
    if name is None:
        return f"{CALL_OPEN}\n"
    return f'{CALL_OPEN}\n{{"name": {_dumps(name)}, "arguments": '


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _as_call(block: str, names: frozenset[str]) -> ParsedCall | None:
    try:
        obj = json.loads(block)
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or set(obj) - {"name", "arguments"}:
        return None
    name, args = obj.get("name"), obj.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, RecursionError):
            return None
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        return None
    return ParsedCall(new_call_id(), name, _dumps(args))


class ToolCallStream:
    """Reads `<tool_call>` blocks out of generated text, whole or as it streams (`tool_choice` auto).

    `push(text)` and `finish()` return events: `("content", text)` and `("call", ParsedCall)`. Text that may
    be the start of a block is held back until it is known; whitespace is held until more content follows
    (so whitespace next to calls and at the ends is dropped). `parallel=False` keeps the first call only and
    drops what follows it."""

    def __init__(self, tool_names: Sequence[str], parallel: bool = True):
        self.names = frozenset(tool_names)
        self.parallel = parallel
        self.buf = ""  # text not yet classified
        self.in_block = False
        self.scanned = 0  # inside a block: how much of `buf` is known to hold no closing tag
        self.ws = ""  # whitespace held back until content follows it
        self.strip_lead = True  # drop leading whitespace (at the start and after a call)
        self.emitted = False  # any content emitted yet
        self.calls = 0
        self.done = False  # parallel=False and the first call was read: ignore the rest

    def _content(self, text: str, out: list) -> None:
        if self.strip_lead:  # at the start, or just after a call
            text = text.lstrip()
        body = text.rstrip()
        if not body:
            self.ws += text
            return
        if self.strip_lead:
            self.ws = "\n" if self.emitted else ""  # content on both sides of a call: one line break
        out.append(("content", self.ws + body))
        self.ws, self.strip_lead, self.emitted = text[len(body):], False, True

    def _call(self, call: ParsedCall, out: list) -> None:
        self.ws, self.strip_lead = "", True
        out.append(("call", call))
        self.calls += 1
        if not self.parallel:
            self.done = True

    def push(self, text: str) -> list:
        out: list = []
        if self.done:
            return out
        self.buf += text
        while self.buf and not self.done:
            if self.in_block:
                end = self.buf.find(CALL_CLOSE, self.scanned)
                if end == -1:  # next time, search only where the closing tag could still begin
                    self.scanned = max(0, len(self.buf) - len(CALL_CLOSE) + 1)
                    break
                block, self.buf = self.buf[:end], self.buf[end + len(CALL_CLOSE):]
                self.in_block, self.scanned = False, 0
                call = _as_call(block, self.names)
                if call is None:
                    self._content(CALL_OPEN + block + CALL_CLOSE, out)
                else:
                    self._call(call, out)
            else:
                start = self.buf.find(CALL_OPEN)
                if start != -1:
                    self._content(self.buf[:start], out)
                    self.buf = self.buf[start + len(CALL_OPEN):]
                    self.in_block = True
                    continue
                keep = next((k for k in range(min(len(CALL_OPEN) - 1, len(self.buf)), 0, -1)
                             if self.buf.endswith(CALL_OPEN[:k])), 0)
                self._content(self.buf[:len(self.buf) - keep], out)
                self.buf = self.buf[len(self.buf) - keep:]
                break
        return out

    def finish(self) -> list:
        out: list = []
        if not self.done:
            if self.in_block:
                call = _as_call(self.buf, self.names)
                if call is None:
                    self._content(CALL_OPEN + self.buf, out)
                else:
                    self._call(call, out)
            else:
                self._content(self.buf, out)
        self.buf, self.in_block, self.scanned = "", False, 0
        return out


def parse_tool_calls(text: str, tool_names: Sequence[str], parallel: bool = True
                     ) -> tuple[str | None, list[ParsedCall]]:
    """(content or None, calls) of a whole generated text; see `ToolCallStream`."""
    stream = ToolCallStream(tool_names, parallel)
    events = stream.push(text) + stream.finish()
    content = "".join(v for k, v in events if k == "content")
    return content or None, [v for k, v in events if k == "call"]


class ForcedCallStream:
    """Reads a forced call as it streams (`tool_choice` required or a named function): the generated text
    after `forced_prefix`. Events: `("call", ParsedCall)` once the name is known (arguments empty), then
    `("arguments", fragment)`. With `required` the text is the whole object `{"name": ..., "arguments": ...}`
    and its closing brace is held back, so the fragments add up to the arguments alone."""

    def __init__(self, name: str | None):
        self.name = name
        self.buf = ""
        self.started = False
        self.begun = False

    def _start(self, name: str, out: list) -> None:
        self.started = True
        out.append(("call", ParsedCall(new_call_id(), name, "")))

    def push(self, text: str) -> list:
        out: list = []
        self.buf += text
        if not self.started:
            if self.name is not None:
                self._start(self.name, out)
            else:
                m = _FORCED_HEAD.match(self.buf)
                if m is None:
                    return out
                self._start(m.group(1), out)
                self.buf = self.buf[m.end():]
        if not self.begun:  # the arguments start at their first character, however the text was split
            self.buf = self.buf.lstrip()
            self.begun = bool(self.buf)
        # with `required`, a closing brace at the end may be the whole object's: held until the next text
        keep = len(re.search(r"\}?\s*$", self.buf).group(0)) if self.name is None else 0
        frag, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        if frag:
            out.append(("arguments", frag))
        return out

    def finish(self, truncated: bool = False) -> list:
        """What is left. A held closing brace is the object's own (dropped) unless generation was cut short
        (`truncated`: max_tokens), when everything generated belongs to the arguments. Text that never
        began a call (cut short before its name) comes back as `("content", text)`."""
        out: list = []
        if not self.started:
            if self.buf:
                out.append(("content", self.buf))
        elif self.buf and (truncated or not re.fullmatch(r"\}\s*", self.buf)):
            out.append(("arguments", self.buf))
        self.buf = ""
        return out
