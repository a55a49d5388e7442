"""Built-in tools the server (or any caller) runs for a model: `calculator`, `python` and `library_search`.

    from alignchat.tools.calculator import evaluate
    evaluate("37×43")                                                     # "1591"
    from alignchat.tools.loop import run_tool_loop
    run_tool_loop(client, [{"role": "user", "content": "What is 37×43?"}], ["calculator"]).final_text

Modules: `registry` (`Tool`, `ToolContext`, `ToolError`, `BUILTIN`, `run_tool`), one module per tool
(`calculator`, `python`, `library_search`), and `loop` (the tool loop over a model client or the server's
engine).

Notable choices:
- The tools are offered to the model in OpenAI's `tools` shape through the one text format of
  `alignchat.tools_format`, so a model fine-tuned on tool calls in training reads them the same way.
"""
from __future__ import annotations

from .registry import BUILTIN, NAMES, Tool, ToolContext, ToolError, ToolResult, parse_names, run_tool, tool_specs

__all__ = ["BUILTIN", "NAMES", "Tool", "ToolContext", "ToolError", "ToolResult", "parse_names", "run_tool",
           "tool_specs"]
