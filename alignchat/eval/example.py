"""The shapes of evaluation data: `Example`, one item in the internal format every task shares, and
`TaskSpec`, one task (its kind, category, language, loader and the name of its scorer).

Notable choices:
- A leaf module (standard library only): the task registry (`tasks.TASKS`) imports the families that load
  tasks (`chinese.py`, `tool_tasks.py`) and the scorers import the registry, so the families and the
  scorers take these types from here, never from `tasks`; `tasks` re-exports them.
- `Example.kind` says what the item is (mc = multiple choice, gen = generation, pair = which sentence the
  model prefers, continuation = toxicity, code = HumanEval, text = held-out text for perplexity, tool = a
  question answered through the tool loop).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable


@dataclass
class Example:
    """One evaluation item in the internal format shared by every task."""

    id: str
    task: str
    kind: str                       # mc | gen | pair | continuation | code | text | tool
    prompt: str                     # question (mc), user message (gen), prompt prefix (continuation/code)
    choices: list[str] = field(default_factory=list)   # mc answers / pair sentences
    gold: int | None = None         # index into choices
    answers: list[str] = field(default_factory=list)   # references for generative scoring
    messages: list[dict] | None = None                  # chat-format input, when the source has one
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskSpec:
    name: str
    kind: str
    category: str                   # HELM metric family the report files it under
    language: str
    loader: Callable[[], list[Example]]
    scoring: str = "accuracy"       # the registered scorer (`scorers.SCORERS`): accuracy | bbq | em_f1 | ...
    description: str = ""
    heavy: bool = False             # needs a large download; only in the full suite
