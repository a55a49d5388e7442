"""The tool-use evaluation task `tool_arith`: held-out arithmetic, answered with the calculator offered
through the tool loop (`alignchat.tools.loop`), scored by exact match of the final number.

    alignchat eval run --model runs/toolformer/sft/final --tasks tool_arith --limit 100 --out runs/eval-tools

Notable choices:
- The items are the instruction builder's held-out tool-use tasks (`instructions.TOOL_HELDOUT_TASKS`:
  BIG-bench 3-digit + - × ÷, with their Chinese twins), rendered by the builder itself, so a prompt is
  exactly a held-out record's system and user turns and no item's task is ever in train.jsonl.
- Scoring (`number_correct`; the task's scorer `tool_em` in scorers.py calls `score_tool_arith` and
  `summarize_tool_arith`): exact match of the final number. The last number in the model's last
  answer (thousands separators dropped) and the gold are both written the calculator's way
  (`calculator.evaluate`, the one canonical form of a number) and compared. `metrics.exact_match` is not
  used here because its SQuAD normalisation drops punctuation, so it would count "-765" as "765" and
  "2.5" as "25".
- The summary has the accuracy with its 95% Wilson interval (`chinese.wilson_interval`), the share of
  items where the model called a tool (`tool_call_rate`) and where a calculator call returned the gold
  value, and accuracy per language.
- Greedy generation, through the tool loop's batched driver (`loop.run_tool_loops`): on a local model the
  conversations advance together, each round one batched engine call; other clients run one conversation
  at a time. `tools=()` is the same items with nothing offered (a plain answer), the baseline of
  bench/toolformer.py.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from ..client import GREEDY, ModelClient
from ..errors import UserError
from ..tools.loop import run_tool_loops
from .chinese import wilson_interval
from .example import Example

TOOL_TASK = "tool_arith"
MAX_ROUNDS = 2  # a calculator question needs one call and one answer; a third round is the loop's last word
MAX_TOKENS = 64

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The last number in `text`, written as the calculator writes it ('1,249.50' -> '1249.5'), or None."""
    from ..tools.calculator import evaluate

    found = _NUMBER.findall(unicodedata.normalize("NFKC", text or ""))
    if not found:
        return None
    try:
        return evaluate(found[-1].replace(",", "").rstrip(".") or "x")
    except UserError:
        return None


def number_correct(text: str, gold: str) -> bool:
    """Whether the final number of `text` is the gold number (both in the calculator's canonical form)."""
    pred = final_number(text)
    return pred is not None and pred == final_number(gold)


def load_tool_arith() -> list[Example]:
    """The held-out tool-use arithmetic items, from the builder's own loader and renderer."""
    from ..data.instructions import BuildConfig, build_records, load_bigbench_arithmetic, task_split
    from ..data.sources import CARRIERS

    cfg = BuildConfig(sources=("tool_use",))
    tasks = [t for t in load_bigbench_arithmetic(CARRIERS["bigbench"].fetch(), cfg.zh_share, cfg.seed,
                                                 cfg.max_items_per_task)
             if task_split(t.name, cfg) == "heldout"]
    out = []
    for rec in build_records(tasks, [], cfg):
        call = rec["messages"][2]["tool_calls"][0]["function"]
        out.append(Example(rec["id"], TOOL_TASK, "tool", rec["messages"][1]["content"],
                           answers=[rec["meta"]["answer"]], messages=rec["messages"][:2],
                           meta={"source_task": rec["task"], "lang": rec["meta"]["lang"],
                                 "arguments": call["arguments"]}))
    return out


# --- scoring ---------------------------------------------------------------------------------------------

def score_tool_arith(client: ModelClient, examples: Sequence[Example], tools: Sequence[str] = ("calculator",),
                     max_rounds: int = MAX_ROUNDS, max_tokens: int = MAX_TOKENS) -> list[dict]:
    """One record per item: the final text, the number read from it, whether it is right, and the calls."""
    results = run_tool_loops(client, [list(ex.messages or [{"role": "user", "content": ex.prompt}])
                                      for ex in examples], tools, max_rounds, GREEDY.but(max_tokens=max_tokens))
    recs = []
    for ex, res in zip(examples, results):
        gold = ex.answers[0]
        calls = [c.to_dict() for c in res.calls]
        recs.append({"id": ex.id, "source_task": ex.meta.get("source_task"), "lang": ex.meta.get("lang"),
                     "output": res.final_text, "pred": final_number(res.final_text), "gold": gold,
                     "correct": number_correct(res.final_text, gold), "called": bool(calls),
                     "calculator_right": any(c["name"] == "calculator" and not c["error"]
                                             and number_correct(c["result"], gold) for c in calls),
                     "calls": calls, "rounds": res.rounds})
    return recs


def summarize_tool_arith(records: Sequence[dict]) -> dict:
    n = len(records)
    k = sum(r["correct"] for r in records)
    lo, hi = wilson_interval(k, n)
    out = {"n": n, "correct": k, "accuracy": k / n if n else float("nan"), "accuracy_ci95": [lo, hi],
           "tool_call_rate": sum(r["called"] for r in records) / n if n else float("nan"),
           "calculator_right_rate": sum(r["calculator_right"] for r in records) / n if n else float("nan")}
    for lang in ("en", "zh"):
        rs = [r for r in records if r["lang"] == lang]
        if rs:
            out[f"accuracy_{lang}"] = sum(r["correct"] for r in rs) / len(rs)
            out[f"n_{lang}"] = len(rs)
    return out

