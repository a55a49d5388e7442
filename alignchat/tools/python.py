"""The `python` tool: runs the model's code in the sandbox (`alignchat.sandbox.run_python`) and returns what it
printed.

Notable choices:
- Limits come from `ToolContext` (5 s, 256 MB, 64 KiB of output per stream by default); the sandbox gives
  no network, no view of the host's files and a fresh process tree that dies at the deadline.
- Every outcome other than a clean exit is a `ToolError` with one clear line, which the model reads and
  the user sees: `timed out after 5 s`, `printed more than 64 KiB`, `exited with status 1: <last stderr
  line>`, or `the sandbox is unavailable: ...`. Only the last `MAX_ERROR_CHARS` of stderr are kept.
- The code is capped at `MAX_CODE_CHARS` characters before anything runs.
"""
from __future__ import annotations

from .errors import ToolError

NAME = "python"
DESCRIPTION = ("Run a short Python 3 program (standard library only, no network, no files kept) and return "
               "what it prints. Use print() to show results.")
PARAMETERS = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "the Python program", "maxLength": 20000}},
    "required": ["code"],
    "additionalProperties": False,
}
MAX_CODE_CHARS = 20_000
MAX_ERROR_CHARS = 2000


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} bytes"


def run(arguments: dict, context) -> str:
    from ..sandbox import SandboxUnavailable, run_python
    code = arguments.get("code")
    if not isinstance(code, str) or not code.strip():
        raise ToolError('python needs {"code": "<a Python program>"}')
    if len(code) > MAX_CODE_CHARS:
        raise ToolError(f"the program is longer than {MAX_CODE_CHARS} characters")
    timeout = context.python_timeout
    try:
        res = run_python(code, timeout=timeout, memory_mb=context.python_memory_mb,
                         output_limit=context.python_output_limit, max_processes=16)
    except SandboxUnavailable as e:
        raise ToolError(f"the sandbox is unavailable: {str(e)[:200]}") from None
    if res.status == "timeout":
        raise ToolError(f"timed out after {timeout:g} s")
    if res.status == "output_limit":
        raise ToolError(f"printed more than {_size(context.python_output_limit)}; stopped")
    if res.status == "error":
        raise ToolError(f"could not run the program: {res.detail[:300]}")
    if res.status == "failed":
        tail = res.stderr.strip()[-MAX_ERROR_CHARS:]
        raise ToolError(f"exited with status {res.returncode}" + (f":\n{tail}" if tail else ""))
    out = res.stdout
    return out if out.strip() else "(the program printed nothing)"
