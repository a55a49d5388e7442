"""The registry of built-in tools: each tool's name, description, JSON Schema and the function that runs it.

`BUILTIN` maps a name to a `Tool`; `tool_specs(names)` gives the OpenAI-shape `tools` list the model is
offered (rendered by `alignchat.tools_format`, like a client's own functions); `run_tool(name, arguments,
context)` runs one, turning every failure into a `ToolResult` with `error=True` and a text that says why.

Notable choices:
- A tool is a plain function `run(arguments: dict, context: ToolContext) -> str`: no HTTP, no model, so
  the same tools run in the server, in evaluation and in tests. What a tool needs of its caller (whose
  library to search, the sandbox's limits) comes in `ToolContext`.
- `ToolError` is the one failure a tool reports on purpose (bad input, a timeout); it lives in the leaf
  `alignchat.tools.errors`, so a tool imports it and never the registry that imports the tools. Its
  message becomes the tool's result text `error: ...`, which the model reads and the user sees. Any
  other exception is a bug in a tool, logged with its type only (arguments may hold personal data), and
  answered with a generic error text, so the conversation goes on.
- Results are capped at `MAX_RESULT_CHARS` characters, whatever the tool returns.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UserError
from .errors import ToolError

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 8000


@dataclass
class ToolContext:
    """What a tool may need of its caller. `library_search(query, k) -> list[dict]` searches the current
    user's library only (None: no library here); the python limits bound the sandbox."""

    library_search: Callable[[str, int], list[dict]] | None = None
    python_timeout: float = 5.0
    python_memory_mb: int = 256
    python_output_limit: int = 64 * 1024
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict
    run: Callable[[dict, ToolContext], str]

    def spec(self) -> dict:
        """The tool as OpenAI's `tools` entry."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass
class ToolResult:
    text: str
    error: bool = False


def _builtin() -> dict[str, Tool]:
    from . import calculator, library_search, python
    return {m.NAME: Tool(m.NAME, m.DESCRIPTION, m.PARAMETERS, m.run) for m in (calculator, python, library_search)}


BUILTIN: dict[str, Tool] = _builtin()
NAMES: tuple[str, ...] = tuple(BUILTIN)


def parse_names(value: Any, param: str = "tools") -> list[str]:
    """Tool names from a comma-separated string or a list, each a built-in; `UserError` naming the unknown."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        name = str(item).strip()
        if not name:
            continue
        if name not in BUILTIN:
            raise UserError(f"{param}: unknown tool {name[:64]!r}; the built-in tools are {', '.join(NAMES)}")
        if name not in out:
            out.append(name)
    return out


def tool_specs(names) -> list[dict]:
    """The OpenAI-shape `tools` list of these built-in tools, in registry order."""
    wanted = set(names)
    return [t.spec() for n, t in BUILTIN.items() if n in wanted]


def error_text(message: str) -> str:
    return f"error: {message}"


def run_tool(name: str, arguments: Any, context: ToolContext | None = None,
             enabled=None) -> ToolResult:
    """Run built-in `name` on `arguments` (a dict, or JSON text), if it is enabled (`enabled`: names, None =
    every built-in). Never raises: failures are `ToolResult(error=True)` with a text that says why."""
    import json
    context = context or ToolContext()
    tool = BUILTIN.get(name)
    if tool is None or (enabled is not None and name not in enabled):
        allowed = [n for n in NAMES if enabled is None or n in enabled]
        return ToolResult(error_text(f"the tool {name[:64]!r} is not available here (available: "
                                     f"{', '.join(allowed) or 'none'})"), True)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError):
            return ToolResult(error_text("the arguments are not valid JSON"), True)
    if not isinstance(arguments, dict):
        return ToolResult(error_text("the arguments must be a JSON object"), True)
    try:
        text = tool.run(arguments, context)
    except ToolError as e:
        return ToolResult(error_text(str(e))[:MAX_RESULT_CHARS], True)
    except Exception as e:  # noqa: BLE001 - a bug in a tool must not end the conversation
        log.warning("tool %s failed: %s", name, type(e).__name__)
        return ToolResult(error_text(f"the tool {name} failed ({type(e).__name__})"), True)
    return ToolResult(str(text)[:MAX_RESULT_CHARS])
