"""Quantisation quality on benchmark tasks: MMLU and PIQA accuracy of int8 and int4 weights against bfloat16.

The goal is int8 within one point of bfloat16 on each task (n >= 500), int4 reported the same way. Each
variant is one `alignchat eval run` of the same items (the eval's fixed random sample, --limit per task,
seed 0), bfloat16 activations throughout, so a difference is the weights' quantisation and nothing else.
Beside each accuracy: its difference from bfloat16 in points with a paired 95 % interval (the same items
scored by both), and how many items changed their answer. Runs that already finished are reused (the eval
skips finished tasks of its --out directory).

    OMP_NUM_THREADS=1 python bench/quant_quality_tasks.py [--model smollm2-135m-instruct] [--limit 500]
        [--variants bfloat16,int8,int4] [--runs-dir runs/quant_quality_tasks]

Writes bench/results/quant_quality_tasks.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import cpu_model  # noqa: E402  (bench/generate.py: the one machine line of the benches)

TASKS = ("mmlu", "piqa")


def run_eval(model: str, variant: str, limit: int, out: Path) -> None:
    cmd = [sys.executable, "-m", "alignchat.cli", "eval", "run", "--model", model, "--tasks", ",".join(TASKS),
           "--limit", str(limit), "--threads", "1", "--dtype", "bfloat16", "--out", str(out)]
    if variant != "bfloat16":
        cmd += ["--quantize", variant]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])


def records(run: Path, task: str) -> dict[str, bool]:
    data = json.loads((run / "tasks" / f"{task}.json").read_text())
    return {r["id"]: bool(r["correct"]) for r in data["records"]}


def paired(base: dict[str, bool], other: dict[str, bool]) -> dict:
    """The accuracy difference (other - base) in points, its paired 95 % interval, and items that changed."""
    ids = sorted(base.keys() & other.keys())
    d = [int(other[i]) - int(base[i]) for i in ids]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"n": n, "diff_points": 100 * mean, "ci95_points": [100 * (mean - half), 100 * (mean + half)],
            "changed": sum(1 for x in d if x), "within_one_point": abs(100 * mean) <= 1.0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--variants", default="bfloat16,int8,int4")
    ap.add_argument("--runs-dir", default="runs/quant_quality_tasks", help="one eval run directory per variant")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quant_quality_tasks"))
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    runs = {v: Path(args.runs_dir) / v for v in variants}
    for v in variants:
        run_eval(args.model, v, args.limit, runs[v])
    rows = []
    for task in TASKS:
        base = records(runs[variants[0]], task)
        for v in variants:
            recs = records(runs[v], task)
            row = {"task": task, "variant": v, "n": len(recs), "accuracy": sum(recs.values()) / len(recs)}
            if v != variants[0]:
                row.update(paired(base, recs))
            rows.append(row)
    result = {"model": args.model, "limit": args.limit, "variants": variants, "reference": variants[0],
              "machine": cpu_model(), "threads": 1, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(res: dict) -> str:
    lines = [f"# Quantisation quality on MMLU and PIQA ({res['model']})", "",
             f"`alignchat eval run --tasks mmlu,piqa --limit {res['limit']} --dtype bfloat16 [--quantize V]`, "
             f"the same items for every variant; {res['machine']}, 1 thread; {res['time']}. Difference against "
             f"{res['reference']} in points, with a paired 95 % interval.", "",
             "| task | weights | n | accuracy | vs bfloat16 (points) | paired 95 % interval | items changed "
             "| within 1 point |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "diff_points" in r:
            lo, hi = r["ci95_points"]
            extra = (f"{r['diff_points']:+.1f} | [{lo:+.1f}, {hi:+.1f}] | {r['changed']} | "
                     f"{'yes' if r['within_one_point'] else 'no'}")
        else:
            extra = "(reference) | | | "
        lines.append(f"| {r['task']} | {r['variant']} | {r['n']} | {100 * r['accuracy']:.1f} | {extra} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
