"""What a source hands the instruction builder: a `Task` (templates over its `TaskItem`s), and
`is_builder_item`, the one split of a labelled evaluation file between the builder and evaluation.

Notable choices:
- A leaf module (standard library only): the builder (`alignchat.data.instructions`) imports the sources
  that make tasks (`alignchat.data.chinese_sources`), and those sources import these types from here, never
  the builder; `instructions` re-exports them.
- `is_builder_item` hashes the item's text (SHA-256, even or odd), so the split is the same on every
  machine and in every run, and evaluation skips exactly the half the builder may train on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def is_builder_item(key: str) -> bool:
    """True for the half of a labelled evaluation file the builder may use (PIQA, CommonsenseQA).

    Evaluation code should skip these items; the other half is untouched by training.
    """
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 2 == 0


@dataclass
class TaskItem:
    fields: dict  # template fields: question, passage, options, input ...
    answer: str  # what the assistant says (zero-shot)
    gold: str  # the short answer for exact match
    aliases: list[str] = field(default_factory=list)
    rationale: str | None = None  # real chain of thought, when the source has one
    call: tuple[str, dict] | None = None  # tool-use items: (tool name, arguments) of the assistant's call
    result: str | None = None  # ... and the tool's real result (what the tool returned when run)


@dataclass
class Task:
    name: str
    source: str
    lang: str
    templates: list[str]  # str.format templates over item.fields
    items: list[TaskItem]
    answer_suffix: str = ""  # appended to zero-shot prompts (e.g. "Answer yes or no.")
    tools: tuple[str, ...] = ()  # tool-use tasks: the built-in tools an item may be offered with
