"""SFT of SmolLM2-135M-Instruct on builder data: data selection, held-out exact match, paired comparison.

Subcommands, used for the "SmolLM2 SFT result" in docs/training.md (both splits; the BoolQ-held-out
commands are in bench/results/sft-smollm2-boolq/commands.sh):

  prepare  builder output (train.jsonl, heldout.jsonl) -> a CPU-sized training file and an exact-match file.
           Training: every task conversation of the training tasks and a share of the chatterbot dialogues
           (English and Chinese), each at most --max-tokens long in the model's chat template. Exact match:
           the zero-shot items of the held-out tasks (tasks the training file never contains).
  eval     greedy exact match of one model on an SFT JSONL file, through the same function `alignchat sft`
           uses (`alignchat.train.sft.exact_match`), with one JSON line per item.
  chat     greedy answers of one or more models to a few general chat prompts (is chat intact after SFT,
           does each answer end its turn?), as JSON.
  compare  two per-item files of the same items (before/after) -> accuracy with binomial standard errors,
           per-task counts, items fixed and broken, and an exact McNemar (sign) test; JSON + Markdown.

Notable: selection is deterministic (sorted by id, then a seeded shuffle), so the same builder output
gives the same files; the comparison refuses files whose item ids differ.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def _write(path: Path, records: list[dict]) -> None:
    from alignchat.fetch import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def prepare(args) -> None:
    from alignchat.hub import load_model

    _, tok, _ = load_model(args.model)
    instr = Path(args.instr)
    train_all = sorted(_read(instr / "train.jsonl"), key=lambda r: r["id"])
    held_all = sorted(_read(instr / "heldout.jsonl"), key=lambda r: r["id"])
    rng = random.Random(args.seed)

    def n_tokens(rec):
        return len(tok.render_chat(rec["messages"]).ids)

    tasks = [r for r in train_all if r["format"] != "dialogue" and n_tokens(r) <= args.max_tokens]
    dialogues = []
    for task in sorted({r["task"] for r in train_all if r["format"] == "dialogue"}):
        pool = [r for r in train_all if r["task"] == task and n_tokens(r) <= args.max_tokens]
        rng.shuffle(pool)
        dialogues += pool[: args.dialogues_per_task]
    train = tasks + dialogues
    rng.shuffle(train)
    evalset = [r for r in held_all if r["format"] in args.eval_formats.split(",")]
    out = Path(args.out)
    _write(out / "train.jsonl", train)
    _write(out / "eval.jsonl", evalset)
    counts = {"train": dict(Counter(f"{r['task']}/{r['format']}" for r in train)),
              "eval": dict(Counter(f"{r['task']}/{r['format']}" for r in evalset)),
              "train_conversations": len(train), "eval_items": len(evalset),
              "train_tokens": sum(n_tokens(r) for r in train),
              "train_tasks": sorted({r["task"] for r in train}), "eval_tasks": sorted({r["task"] for r in evalset})}
    overlap = set(counts["train_tasks"]) & set(counts["eval_tasks"])
    assert not overlap, f"held-out tasks leaked into training: {overlap}"
    (out / "selection.json").write_text(json.dumps(counts, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(counts, indent=2, ensure_ascii=False))


def evaluate(args) -> None:
    import time

    from alignchat.hub import load_model
    from alignchat.data.sft_data import read_sft_jsonl
    from alignchat.train.sft import exact_match, write_eval_items

    model, tok, _ = load_model(args.model)
    model.eval()
    records = read_sft_jsonl(args.data)[: args.limit or None]
    t0 = time.time()
    res = exact_match(model, tok, records, args.max_tokens, batch=args.batch)
    write_eval_items(Path(args.out), res)
    print(json.dumps({"model": args.model, "exact_match": res["exact_match"], "n": res["n"],
                      "ended_turn": res["ended_turn"], "skipped_too_long": res["skipped_too_long"],
                      "seconds": round(time.time() - t0, 1)}))


CHAT_PROMPTS = ["What is the capital of France?", "Hello, how are you?", "用一句话介绍你自己。",
                "Give me three tips for staying healthy.", "中国的首都是哪里？"]


def chat(args) -> None:
    from alignchat.hub import load_model
    from alignchat.engine import Engine, SamplingParams

    results = {}
    for name in args.models:
        model, tok, _ = load_model(name)
        model.eval()
        eng = Engine(model, tok, max_batch=1, max_seq_len=512)
        results[name] = [{"prompt": p, **(lambda g: {"answer": g.text, "finish_reason": g.finish_reason})(
            eng.chat([{"role": "user", "content": p}], SamplingParams(max_tokens=args.max_tokens, temperature=0.0)))}
            for p in CHAT_PROMPTS]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(results, indent=2, ensure_ascii=False))


def _acc(items: list[dict]) -> dict:
    n = len(items)
    k = sum(it["correct"] for it in items)
    p = k / n if n else float("nan")
    return {"correct": k, "n": n, "accuracy": round(p, 4),
            "se": round(math.sqrt(p * (1 - p) / n), 4) if n else None,
            "ended_turn": round(sum(it["ended_turn"] for it in items) / n, 4) if n else None}


def mcnemar_exact_p(fixed: int, broken: int) -> float:
    """Two-sided exact sign test on the discordant pairs (McNemar's exact test)."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(args) -> None:
    before = {it["id"]: it for it in _read(Path(args.before))}
    after = {it["id"]: it for it in _read(Path(args.after))}
    if set(before) != set(after):
        raise SystemExit(f"the two files score different items ({len(set(before) ^ set(after))} differ)")
    ids = sorted(before)
    fixed = [i for i in ids if after[i]["correct"] and not before[i]["correct"]]
    broken = [i for i in ids if before[i]["correct"] and not after[i]["correct"]]
    by_task = defaultdict(list)
    for i in ids:
        by_task[before[i]["task"]].append(i)
    result = {
        "before": _acc([before[i] for i in ids]), "after": _acc([after[i] for i in ids]),
        "fixed": len(fixed), "broken": len(broken), "mcnemar_exact_p": float(f"{mcnemar_exact_p(len(fixed), len(broken)):.3g}"),
        "per_task": {t: {"n": len(v), "before": sum(before[i]["correct"] for i in v),
                         "after": sum(after[i]["correct"] for i in v),
                         "fixed": sum(i in fixed for i in v), "broken": sum(i in broken for i in v)}
                     for t, v in sorted(by_task.items())},
        "samples": [{"id": i, "gold": before[i]["gold"], "before": before[i]["answer"], "after": after[i]["answer"]}
                    for i in (fixed[:4] + broken[:2])],
    }
    b, a = result["before"], result["after"]
    lines = [f"# {args.title}", "",
             "| | correct | accuracy ± binomial SE | ended turn |", "|---|---|---|---|",
             f"| before | {b['correct']}/{b['n']} | {b['accuracy']:.3f} ± {b['se']:.3f} | {b['ended_turn']:.2f} |",
             f"| after | {a['correct']}/{a['n']} | {a['accuracy']:.3f} ± {a['se']:.3f} | {a['ended_turn']:.2f} |", "",
             f"Paired: {len(fixed)} items fixed, {len(broken)} broken; exact McNemar p = {result['mcnemar_exact_p']:.2g}.", "",
             "| task | n | before | after | fixed | broken |", "|---|---|---|---|---|---|"]
    lines += [f"| {t} | {v['n']} | {v['before']} | {v['after']} | {v['fixed']} | {v['broken']} |"
              for t, v in result["per_task"].items()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="select the training file and the exact-match file")
    p.add_argument("--instr", required=True, help="directory written by `alignchat data instructions`")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model whose chat template measures length")
    p.add_argument("--max-tokens", type=int, default=200, help="longest training conversation, in tokens")
    p.add_argument("--dialogues-per-task", type=int, default=150, help="chatterbot_en / chatterbot_zh / ... each")
    p.add_argument("--eval-formats", default="zero-shot", help="formats of held-out items to score")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("eval", help="exact match of a model, one JSON line per item")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="per-item JSONL")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--limit", type=int, default=0)
    p = sub.add_parser("chat", help="greedy answers to a few general chat prompts")
    p.add_argument("models", nargs="+")
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--max-tokens", type=int, default=64)
    p = sub.add_parser("compare", help="paired before/after comparison")
    p.add_argument("--before", required=True)
    p.add_argument("--after", required=True)
    p.add_argument("--out", required=True, help="directory for comparison.json / comparison.md")
    p.add_argument("--title", default="Held-out exact match before and after SFT")
    args = ap.parse_args()
    {"prepare": prepare, "eval": evaluate, "chat": chat, "compare": compare}[args.cmd](args)


if __name__ == "__main__":
    main()
