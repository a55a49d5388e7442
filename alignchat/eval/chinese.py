"""The Chinese evaluation family: Chinese tasks from the registries, a fluency check, and the interval the
report card prints beside each score.

Tasks (loaders here, specs in `tasks.TASKS`; the `chinese` suite runs them all):
- `zh_multiemo`: BIG-bench multiemo `all_text_zh` (8,215 reviews; positive, negative, neutral or
  ambivalent), multiple choice by log-likelihood;
- `zh_parable_moral`: evals parable-to-moral-match-zh (the evaluation half, about 960 stories), the moral
  of a story out of five, multiple choice by log-likelihood;
- `zh_numerals`: evals convert-bwt-num-and-chinese-num, Chinese numerals (小写 and 大写) to Arabic (320
  items, the source's own few-shot turns), exact match;
- `zh_split_characters`: evals split_chinese_characters (the evaluation half, about 480), exact match;
- `zh_culture`: the evals Chinese knowledge tasks pooled (poem and ci authors, novels, dynasties, 诗经 and
  楚辞 titles, modern poems, riddles; 319 items), evals `Includes`;
- `@zh_fluency` (a section): greedy replies to 50 held-out everyday Chinese prompts
  (`data/zh_fluency_prompts.txt`, read by `chinese_sources.fluency_prompts`, which the SFT builder also
  uses to keep the poems they quote out of training); a reply is fluent when it is mostly Han script and
  not degenerate repetition (`fluency`).

Notable choices:
- Which evals items are evaluated and which the SFT builder may train on is decided in one place,
  `alignchat.data.chinese_sources.evals_split`; the loaders here keep only the "eval" side.
- Scores use the suite's existing scorers (`accuracy` = multiple choice by log-likelihood, `em_f1` = the
  one exact match of `metrics.exact_match`, `includes` = evals Includes); the multiple-choice answers are
  written in Chinese (multiemo's labels become 正面 / 负面 / 中性 / 褒贬不一).
- Chinese_character_riddles asks for reasoning before a bracketed answer; here the riddle is asked for
  the bracketed answer directly, so a reply fits the scorer's short generation budget.
- Fluency: a reply passes with a Han share of at least `MIN_HAN_SHARE` among its letters and digits, at
  least `MIN_HAN` Han characters, and character-bigram Distinct-2 (`metrics.distinct_n` over single
  characters, punctuation and emoji included) of at least `MIN_DISTINCT_2`, after any echo of the prompt
  is cut off; a reply that restates the prompt (at least `MAX_ECHO_SHARE` of its character bigrams occur
  in the prompt: "为什么天空是蓝色的？" to "为什么天空是蓝色的？请简单解释。") is an echo; prose passes, English,
  "美丽的美丽的美丽的…", "；；；；", an echoed prompt and empty replies fail.
- Intervals are Wilson score intervals (95%), which stay inside [0, 1] when a model scores near zero.
"""
from __future__ import annotations

import json
import math
import random
import re

from ..data.chinese_sources import (CULTURE, NUMERALS_TO_ARABIC, PARABLE, SPLIT_CHARACTERS, evals_split,
                                    fluency_prompts, parse_parable, read_evals)
from ..errors import UserError
from ..fetch import fetch, pinned
from . import metrics as M
from .example import Example

MULTIEMO = "bigbench-1.0.0/bigbench/benchmark_tasks/multiemo/all_text_zh/task.json"
MULTIEMO_LABELS = {"positive": "正面", "negative": "负面", "neutral": "中性", "ambivalent": "褒贬不一"}
FLUENCY_TOKENS = 96
MIN_HAN, MIN_HAN_SHARE, MIN_DISTINCT_2, MAX_ECHO_SHARE = 8, 0.6, 0.6, M.ECHO_SHARE

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_RIDDLE_INSTRUCTION = "猜字谜：根据描述猜出一个字，直接给出用英文方括号[]括起来的答案。"


# ------------------------------------------------------------------------------------------ loaders

def load_multiemo() -> list[Example]:
    path = fetch(pinned("bigbench==1.0.0", MULTIEMO), quiet=False)[MULTIEMO]
    out = []
    for i, ex in enumerate(json.loads(path.read_text(encoding="utf-8"))["examples"]):
        scores = ex["target_scores"]
        if set(scores) != set(MULTIEMO_LABELS) or sorted(scores.values()) != [0, 0, 0, 1]:
            raise UserError(f"{path}: example {i}: expected one of {sorted(MULTIEMO_LABELS)} marked 1")
        labels = list(MULTIEMO_LABELS)
        out.append(Example(f"zh_multiemo-{i}", "zh_multiemo", "mc",
                           f"{ex['input'].strip()}\n这段评论的情感是正面、负面、中性还是褒贬不一？",
                           [MULTIEMO_LABELS[k] for k in labels], labels.index(max(scores, key=scores.get))))
    return out


def load_parable() -> list[Example]:
    out = []
    for i, row in enumerate(read_evals(PARABLE)):
        if evals_split(PARABLE, row) != "eval":
            continue
        story, options, gold = parse_parable(row, f"{PARABLE}:{i + 1}")
        out.append(Example(f"zh_parable_moral-{i}", "zh_parable_moral", "mc", f"{story}\n这个故事想表达的寓意是什么？",
                           options, gold))
    return out


def _gen_examples(task: str, member: str, rows: list[dict]) -> list[Example]:
    out = []
    for i, row in rows:
        ideal = row["ideal"] if isinstance(row["ideal"], list) else [row["ideal"]]
        msgs = row["input"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise UserError(f"{member}:{i + 1}: 'input' must be a list of chat messages")
        out.append(Example(f"{task}-{member.removesuffix('.jsonl').replace('/', '-')}-{i}", task, "gen", msgs[-1]["content"],
                           answers=[str(x) for x in ideal], messages=msgs, meta={"source": member}))
    return out


def load_numerals() -> list[Example]:
    return [e for m in NUMERALS_TO_ARABIC for e in _gen_examples(
        "zh_numerals", m, [(i, r) for i, r in enumerate(read_evals(m)) if evals_split(m, r) == "eval"])]


def load_split_characters() -> list[Example]:
    rows = [(i, r) for i, r in enumerate(read_evals(SPLIT_CHARACTERS)) if evals_split(SPLIT_CHARACTERS, r) == "eval"]
    return _gen_examples("zh_split_characters", SPLIT_CHARACTERS, rows)


def load_culture() -> list[Example]:
    out = []
    for m in CULTURE:
        rows = [(i, r) for i, r in enumerate(read_evals(m)) if evals_split(m, r) == "eval"]
        if m.startswith("Chinese_character_riddles/"):
            rows = [(i, {**r, "input": [{"role": "system", "content": _RIDDLE_INSTRUCTION}] +
                         [x for x in r["input"] if x["role"] != "system"]}) for i, r in rows]
        out += _gen_examples("zh_culture", m, rows)
    return out


# the family's loaders by task name; their `TaskSpec`s are registered in `tasks.TASKS`
LOADERS = {"zh_multiemo": load_multiemo, "zh_parable_moral": load_parable, "zh_numerals": load_numerals,
           "zh_split_characters": load_split_characters, "zh_culture": load_culture}
CHINESE_SUITE = [*LOADERS, "heldout_text", "@zh_fluency"]


# ------------------------------------------------------------------------------------------ fluency

def fluency(reply: str, prompt: str = "") -> dict:
    """Whether one reply is fluent Chinese, with the numbers that decide it. A reply that opens by echoing
    `prompt` is judged on what follows the echo."""
    text, echo = reply.strip(), prompt.strip()
    if echo and text.startswith(echo):
        text = text[len(echo):].strip()
    han = len(_HAN.findall(text))
    letters = sum(ch.isalnum() for ch in text)
    share = han / letters if letters else 0.0
    distinct = M.char_distinct_2(text)
    echoed = M.echo_share(text, echo)
    reason = ("empty" if not text else "echo" if echoed >= MAX_ECHO_SHARE else "not_chinese" if share < MIN_HAN_SHARE
              else "too_short" if han < MIN_HAN else "repetitive" if distinct < MIN_DISTINCT_2 else None)
    return {"fluent": reason is None, "reason": reason, "han_chars": han, "han_share": share, "distinct_2": distinct,
            "echo_share": echoed}


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% with z = 1.96); (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fluency_section(client, cfg) -> dict:
    """Greedy replies to the held-out Chinese prompts (a seeded sample of `cfg.limit` of them) and the share
    that is fluent Chinese."""
    from ..client import GREEDY

    prompts = fluency_prompts()
    if cfg.limit is not None and cfg.limit < len(prompts):
        prompts = random.Random(f"zh_fluency:{cfg.seed}").sample(prompts, cfg.limit)
    outs = client.generate([[{"role": "user", "content": p}] for p in prompts],
                           GREEDY.but(max_tokens=FLUENCY_TOKENS, seed=0), truncate=True)
    recs = [{"id": f"zh_fluency-{i}", "prompt": p, "output": o.text, **fluency(o.text, p)}
            for i, (p, o) in enumerate(zip(prompts, outs))]
    n, k = len(recs), sum(r["fluent"] for r in recs)
    reasons = {}
    for r in recs:
        if r["reason"]:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    summary = {"n": n, "fluency_rate": k / n if n else float("nan"), "fluency_ci95": list(wilson_interval(k, n)),
               "han_share_mean": sum(r["han_share"] for r in recs) / n if n else float("nan"),
               "distinct_2_mean": sum(r["distinct_2"] for r in recs) / n if n else float("nan"),
               "failures": reasons, "max_tokens": FLUENCY_TOKENS}
    return {"task": "@zh_fluency", "category": "accuracy", "language": "zh", "summary": summary, "records": recs}
