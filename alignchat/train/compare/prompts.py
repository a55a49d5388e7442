"""Prompt files: what `compare sample` and `ppo` read their prompts from.

A prompt is a conversation ending with a user message. A `.jsonl` file holds one per line as
`{"prompt": [messages]}`, `{"messages": [...]}` (a trailing assistant turn is dropped, so SFT records
can be used as prompts) or `{"prompt": "text"}`; any other file is plain text, one prompt a line.

Notable choices:
- Records are validated by `alignchat.data.comparisons` (the one message schema); an error names the file
  and line.
- `with_system` puts a system prompt in front of a conversation (replacing one it has); the sampler and
  the contrast judge use it, so a persona reaches the model in the same way in both.
"""
from __future__ import annotations

from pathlib import Path

from ...data import comparisons as C
from ...errors import UserError


def read_prompts(path: str) -> list[tuple[str, list[dict]]]:
    """(where, messages) for each prompt of a JSONL or text file (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file")
    out = []
    if p.suffix != ".jsonl":
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                out.append((f"{path}:{n}", [{"role": "user", "content": line.strip()}]))
        return out
    for where, obj in C.iter_jsonl(p):
        msgs = obj.get("prompt", obj.get("messages")) if isinstance(obj, dict) else None
        if isinstance(msgs, str):
            msgs = [{"role": "user", "content": msgs}]
        msgs = C.validate_messages(msgs, where)
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise UserError(f"{where}: the prompt must end with a user message")
        out.append((where, msgs))
    return out


def with_system(prompt: list[dict], system: str | None) -> list[dict]:
    """The prompt with `system` as its system message (replacing one it has); None or "" leaves it as it is."""
    if not system:
        return prompt
    return [{"role": "system", "content": system}] + [m for m in prompt if m["role"] != "system"]
