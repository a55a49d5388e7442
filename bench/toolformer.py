"""Does SFT on tool-use data teach SmolLM2 to use the calculator? Held-out arithmetic accuracy of three runs:

  a  base   the untuned model, no tools offered (a plain answer)
  b  base   the untuned model with the calculator offered through the tool loop
  c  sft    the tool-use SFT model (docs/training.md, "Teaching tool use") with the calculator offered

    python bench/toolformer.py --sft runs/toolformer/sft/final --n 100
    python bench/toolformer.py --runs a,b --n 100      # one part at a time; parts are merged into the results

Items: `tool_arith`'s held-out items (BIG-bench 3-digit + - × ÷, English and Chinese; tasks never in the
training file), the same deterministic sample `alignchat eval --tasks tool_arith --limit N` takes. Each run
is scored by `alignchat.eval.tool_tasks` (exact match of the final number, 95% Wilson interval, the share
of items with a tool call), greedy, at most 2 rounds of 64 new tokens.

Writes bench/results/toolformer.json (the three summaries and the settings) and toolformer.md (the table),
and the per-item records to --items-dir (default runs/toolformer/bench/, not committed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {"a": ("base, no tools", "base", ()), "b": ("base + calculator", "base", ("calculator",)),
        "c": ("tool-use SFT + calculator", "sft", ("calculator",))}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = ["# Tool use: held-out arithmetic accuracy (bench/toolformer.py)", "",
             f"Items: `tool_arith`, n = {s['n']} held-out items (BIG-bench 3-digit + - × ÷, en and zh), greedy, "
             f"at most {s['max_rounds']} rounds of {s['max_tokens']} tokens. Accuracy = exact match of the final "
             f"number; 95% Wilson interval. Machine: {s['machine']}.", "",
             "| run | model | tools | accuracy | 95% interval | called a tool | calculator gave the gold |",
             "|---|---|---|---|---|---|---|"]
    for key in ("a", "b", "c"):
        r = results["runs"].get(key)
        if r is None:
            continue
        m = r["summary"]
        lo, hi = m["accuracy_ci95"]
        lines.append(f"| ({key}) {r['label']} | {r['model']} | {', '.join(r['tools']) or 'none'} | "
                     f"{m['correct']}/{m['n']} = {_pct(m['accuracy'])} | {_pct(lo)}–{_pct(hi)} | "
                     f"{_pct(m['tool_call_rate'])} | {_pct(m['calculator_right_rate'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="smollm2-135m-instruct", help="the untuned model (default %(default)s)")
    ap.add_argument("--sft", default="runs/toolformer/sft/final", help="the tool-use SFT checkpoint")
    ap.add_argument("--runs", default="a,b,c", help="which runs (a, b, c; default %(default)s)")
    ap.add_argument("--n", type=int, default=100, help="held-out items (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--machine", default="2-core CPU shared with other jobs",
                    help="what the runs ran on, for the table")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "toolformer"),
                    help="OUT.json and OUT.md (default %(default)s)")
    ap.add_argument("--items-dir", default=str(ROOT / "runs" / "toolformer" / "bench"))
    args = ap.parse_args(argv)

    from alignchat.client import make_client
    from alignchat.eval.config import LOCAL_OPTIONS
    from alignchat.eval.tasks import load_task
    from alignchat.eval.tool_tasks import MAX_ROUNDS, MAX_TOKENS, score_tool_arith, summarize_tool_arith
    from alignchat.fetch import atomic_write_text

    examples = load_task("tool_arith", args.n, args.seed)
    out = Path(args.out)
    path = out.with_suffix(".json")
    results = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"runs": {}}
    settings = {"n": len(examples), "seed": args.seed, "max_rounds": MAX_ROUNDS, "max_tokens": MAX_TOKENS,
                "machine": args.machine, "items": sorted(e.id for e in examples)}
    if results.get("settings", {}).get("items") not in (None, settings["items"]):
        results = {"runs": {}}  # a different sample: the earlier parts no longer compare
    results["settings"] = settings
    items_dir = Path(args.items_dir)
    items_dir.mkdir(parents=True, exist_ok=True)
    for key in [k.strip() for k in args.runs.split(",") if k.strip()]:
        if key not in RUNS:
            ap.error(f"unknown run {key!r}; choose from a, b, c")
        label, which, tools = RUNS[key]
        model = args.base if which == "base" else args.sft
        client = make_client(model=model, **LOCAL_OPTIONS)
        t0 = time.perf_counter()
        recs = score_tool_arith(client, examples, tools)
        seconds = time.perf_counter() - t0
        summary = summarize_tool_arith(recs)
        atomic_write_text(items_dir / f"{key}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
        results["runs"][key] = {"label": label, "model": str(model), "tools": list(tools), "summary": summary,
                                "seconds": round(seconds, 1)}
        print(f"({key}) {label}: {summary['correct']}/{summary['n']} = {summary['accuracy']:.3f} "
              f"[{summary['accuracy_ci95'][0]:.3f}, {summary['accuracy_ci95'][1]:.3f}], "
              f"tool calls {summary['tool_call_rate']:.2f} ({seconds:.0f} s)", flush=True)
        client.close()
        atomic_write_text(path, json.dumps(results, ensure_ascii=False, indent=1) + "\n")
        atomic_write_text(out.with_suffix(".md"), markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
