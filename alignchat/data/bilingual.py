"""The bilingual SFT recipe's data step: a balanced English + Chinese selection from the instruction
builder's output (`alignchat data instructions`), sized for a short run on a CPU.

    python -m alignchat.data.bilingual --instructions runs/bilingual/instr --out runs/bilingual/data \
        --zh 700 --en 400 --max-chars 600

reads `INSTR/train.jsonl` and `INSTR/heldout.jsonl` (the builder's split) and writes `OUT/train.jsonl`,
`OUT/heldout.jsonl` and `OUT/manifest.json` (counts per task and language, the held-out tasks of each
language, what was dropped and why). The recipe is in docs/bilingual.md.

Notable choices:
- The split is the builder's: whole tasks are held out (`instructions.DEFAULT_HELDOUT_TASKS`, each with
  its Chinese-template twin). This step only selects from `train.jsonl`, so no held-out task's items can
  reach training; it checks that no task appears on both sides and refuses the input if one does.
- A Chinese record is kept only when every assistant reply contains Han characters: the builder's
  Chinese-template twins of English tasks that ask for English output or an option letter are dropped,
  so the model learns to answer Chinese prompts in Chinese.
- Records whose text (all turns) is longer than `max_chars` are dropped: on a CPU a step's cost is the
  forward pass over every token, prompt included, while the loss is on the replies only; few-shot prompts
  of several thousand characters would buy little.
- Per language, records are taken round-robin over the tasks (each task's records in a seeded order), so
  a small budget still covers every task; records with tool calls are left to the tool-use recipe.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from ..errors import UserError

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
DEFAULT_ZH, DEFAULT_EN, DEFAULT_MAX_CHARS = 700, 400, 600


def _read(path: Path) -> list[dict]:
    if not path.exists():
        raise UserError(f"{path}: not found (run `alignchat data instructions --out {path.parent}` first)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _lang(rec: dict) -> str:
    return (rec.get("meta") or {}).get("lang", "en")


def _replies(rec: dict) -> list[str]:
    return [m.get("content") or "" for m in rec["messages"] if m["role"] == "assistant"]


def drop_reason(rec: dict, max_chars: int) -> str | None:
    """Why a training record is left out of the recipe, or None to keep it."""
    if rec.get("tools") or any(m.get("tool_calls") for m in rec["messages"]):
        return "tool_use"
    if sum(len(m.get("content") or "") for m in rec["messages"]) > max_chars:
        return "too_long"
    if _lang(rec) == "zh" and not all(_HAN.search(r) for r in _replies(rec)):
        return "zh_reply_not_chinese"
    return None


def round_robin(records: list[dict], budget: int, seed: int, lang: str) -> list[dict]:
    """Up to `budget` records, one task at a time in turn; each task's records in a seeded order."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    queues = []
    for task in sorted(by_task):
        recs = by_task[task][:]
        random.Random(f"bilingual:{seed}:{lang}:{task}").shuffle(recs)
        queues.append(recs)
    out: list[dict] = []
    while len(out) < budget and any(queues):
        for q in queues:
            if q and len(out) < budget:
                out.append(q.pop())
    return out


def select(train: list[dict], heldout: list[dict], zh: int = DEFAULT_ZH, en: int = DEFAULT_EN,
           max_chars: int = DEFAULT_MAX_CHARS, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    """The recipe's training records (`zh` Chinese and `en` English at most), the held-out records in a
    seeded order (tasks mixed) and a manifest."""
    overlap = {r["task"] for r in train} & {r["task"] for r in heldout}
    if overlap:
        raise UserError(f"tasks on both sides of the split: {', '.join(sorted(overlap))}")
    dropped: Counter = Counter()
    kept: dict[str, list[dict]] = {"zh": [], "en": []}
    for r in train:
        reason = drop_reason(r, max_chars)
        if reason:
            dropped[reason] += 1
        elif _lang(r) in kept:
            kept[_lang(r)].append(r)
    chosen = round_robin(kept["zh"], zh, seed, "zh") + round_robin(kept["en"], en, seed, "en")
    random.Random(f"bilingual:{seed}:order").shuffle(chosen)
    heldout = heldout[:]
    random.Random(f"bilingual:{seed}:heldout").shuffle(heldout)  # tasks mixed: any first N cover them all
    held_by_lang: dict[str, set] = defaultdict(set)
    for r in heldout:
        held_by_lang[_lang(r)].add(r["task"])
    manifest = {"settings": {"zh": zh, "en": en, "max_chars": max_chars, "seed": seed},
                "train": len(chosen), "heldout": len(heldout),
                "lang": dict(sorted(Counter(_lang(r) for r in chosen).items())),
                "task": dict(sorted(Counter(r["task"] for r in chosen).items())),
                "heldout_tasks": {lang: sorted(v) for lang, v in sorted(held_by_lang.items())},
                "dropped": dict(sorted(dropped.items()))}
    return chosen, heldout, manifest


def write(instructions: str | Path, out: str | Path, **kw) -> dict:
    """Select from the builder's `instructions` directory into `out` (train, heldout, manifest)."""
    from ..fetch import atomic_write_text

    src, out = Path(instructions), Path(out)
    chosen, heldout, manifest = select(_read(src / "train.jsonl"), _read(src / "heldout.jsonl"), **kw)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = lambda recs: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)  # noqa: E731
    atomic_write_text(out / "train.jsonl", jsonl(chosen))
    atomic_write_text(out / "heldout.jsonl", jsonl(heldout))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def echo_pairs(records: list[dict], where: str = "") -> list:
    """Comparisons against the echo: for every record with one user turn (after an optional system
    prompt) and one reply, the reply ranked above the user turn repeated word for word, which is what the
    base model writes in the chat template and what short questions still get after SFT. Records whose
    reply already repeats the request (`eval.metrics.echoes`) are skipped; each request is used once."""
    from ..eval.metrics import echoes
    from .comparisons import Comparison

    out, seen = [], set()
    for rec in records:
        msgs = rec.get("messages") or []
        turns = [m for m in msgs if m.get("role") != "system"]
        if len(turns) != 2 or turns[0].get("role") != "user" or turns[1].get("role") != "assistant":
            continue
        request, reply = (turns[0].get("content") or "").strip(), (turns[1].get("content") or "").strip()
        if not request or not reply or request in seen or echoes(reply, request):
            continue
        seen.add(request)
        origin = rec.get("task") or rec.get("source") or where
        out.append(Comparison(prompt=msgs[:-1], responses=[reply, request], ranking=[0, 1],
                              labeller="ai:echo-rule", source=f"echo-pairs:{origin}",
                              meta={"lang": "zh" if _HAN.search(request) else "en", "from": rec.get("id", "")}))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m alignchat.data.bilingual", description=__doc__.split("\n\n")[0])
    p.add_argument("--instructions", help="the builder's output directory (train/heldout.jsonl)")
    p.add_argument("--out", required=True, help="output directory (train.jsonl, heldout.jsonl, manifest.json), "
                                                "or with --echo-pairs the comparison JSONL file")
    p.add_argument("--echo-pairs", metavar="SFT.jsonl,...",
                   help="instead: write comparisons (for `alignchat dpo`) that rank each single-turn record's "
                        "reply above the request repeated (echo_pairs)")
    p.add_argument("--zh", type=int, default=DEFAULT_ZH, help="Chinese training records (default %(default)s)")
    p.add_argument("--en", type=int, default=DEFAULT_EN, help="English training records (default %(default)s)")
    p.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                   help="drop records longer than this, all turns together (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.echo_pairs:
        from .comparisons import read_sft, write_comparisons
        pairs = []
        try:
            for path in [x for x in args.echo_pairs.split(",") if x]:
                pairs += echo_pairs(read_sft(path), where=path)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        write_comparisons(args.out, pairs)
        print(json.dumps({"out": args.out, "pairs": len(pairs)}))
        return 0
    if not args.instructions:
        p.error("--instructions is required (or --echo-pairs)")
    try:
        m = write(args.instructions, args.out, zh=args.zh, en=args.en, max_chars=args.max_chars, seed=args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: m[k] for k in ("train", "heldout", "lang", "heldout_tasks", "dropped")}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
