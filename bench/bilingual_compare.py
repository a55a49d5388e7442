"""Two `alignchat eval run` directories on the same items, task by task: each score with n and its 95% Wilson
interval, the difference, and an exact McNemar (sign) test on the items one model gets right and the other
wrong. Only tasks both runs finished are compared. Writes JSON and Markdown (bench/results/bilingual/).

    python bench/bilingual_compare.py runs/eval/bilingual/smollm2 runs/eval/bilingual/gemma-sft

Per-item success: multiple choice = `correct_norm` (acc_norm, per-byte normalised log-likelihood) and
`correct` (acc) both reported; exact-match tasks = `em`; evals Includes = `score`; `@zh_fluency` = `fluent`.

Per language, the items of every compared task are also pooled, each task by its first metric in `KEYS`
order (acc_norm for multiple choice): both models' pooled share with Wilson intervals, the paired
difference with its 95% Wald interval for paired proportions, and McNemar on the pooled discordant items.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from sft_smollm2 import mcnemar_exact_p  # noqa: E402

from alignchat.eval.chinese import wilson_interval  # noqa: E402

KEYS = [("acc_norm", "correct_norm"), ("acc", "correct"), ("em", "em"), ("includes", "score"), ("fluent", "fluent")]


def per_item(task: dict) -> dict[str, dict[str, float]]:
    """{metric: {item id: 0/1}} for the metrics this task's records carry."""
    out: dict[str, dict[str, float]] = {}
    for name, key in KEYS:
        recs = [r for r in task.get("records", []) if key in r]
        if recs:
            out[name] = {r["id"]: float(r[key]) for r in recs}
    return out


def load(run: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((run / "tasks").glob("*.json"))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="run directory (the baseline)")
    ap.add_argument("b", help="run directory (the model compared with it)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bilingual" / "compare"))
    args = ap.parse_args()
    a, b = Path(args.a), Path(args.b)
    runs_a, runs_b = load(a), load(b)
    rows = []
    for task in sorted(set(runs_a) & set(runs_b)):
        ia, ib = per_item(runs_a[task]), per_item(runs_b[task])
        for metric in [m for m, _ in KEYS if m in ia and m in ib]:
            ids = sorted(set(ia[metric]) & set(ib[metric]))
            if not ids:
                continue
            ka, kb = sum(ia[metric][i] for i in ids), sum(ib[metric][i] for i in ids)
            n = len(ids)
            only_b = sum(1 for i in ids if ib[metric][i] > ia[metric][i])
            only_a = sum(1 for i in ids if ia[metric][i] > ib[metric][i])
            lang = runs_a[task].get("language")
            rows.append({"task": task, "language": lang, "metric": metric, "n": n,
                         "a": round(ka / n, 4), "a_ci95": [round(x, 4) for x in wilson_interval(ka, n)],
                         "b": round(kb / n, 4), "b_ci95": [round(x, 4) for x in wilson_interval(kb, n)],
                         "diff": round((kb - ka) / n, 4), "b_only": only_b, "a_only": only_a,
                         "mcnemar_p": float(f"{mcnemar_exact_p(only_b, only_a):.3g}")})
    pooled = []
    for lang in sorted({r["language"] for r in rows if r["language"]}):
        firsts = {}
        for r in rows:  # rows are in KEYS order within a task: the first one is the task's primary metric
            if r["language"] == lang:
                firsts.setdefault(r["task"], r)
        n = sum(r["n"] for r in firsts.values())
        ka = sum(round(r["a"] * r["n"]) for r in firsts.values())
        kb = sum(round(r["b"] * r["n"]) for r in firsts.values())
        only_b, only_a = sum(r["b_only"] for r in firsts.values()), sum(r["a_only"] for r in firsts.values())
        d = (only_b - only_a) / n
        half = 1.96 * math.sqrt(max(0.0, (only_b + only_a) / n - d * d) / n)
        pooled.append({"language": lang, "tasks": {t: r["metric"] for t, r in firsts.items()}, "n": n,
                       "a": round(ka / n, 4), "a_ci95": [round(x, 4) for x in wilson_interval(ka, n)],
                       "b": round(kb / n, 4), "b_ci95": [round(x, 4) for x in wilson_interval(kb, n)],
                       "diff": round(d, 4), "diff_ci95": [round(d - half, 4), round(d + half, 4)],
                       "b_only": only_b, "a_only": only_a, "mcnemar_p": float(f"{mcnemar_exact_p(only_b, only_a):.3g}")})
    result = {"a": str(a), "b": str(b), "rows": rows, "pooled": pooled,
              "only_in_a": sorted(set(runs_a) - set(runs_b)), "only_in_b": sorted(set(runs_b) - set(runs_a))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    pct = lambda p, ci: f"{100 * p:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"  # noqa: E731
    lines = [f"A = `{a}`, B = `{b}`; 95% Wilson intervals; McNemar: exact two-sided sign test on the items only "
             "one model gets right.", "",
             "| task | lang | metric | n | A % | B % | B − A (points) | only B / only A | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['language']} | {r['metric']} | {r['n']} | {pct(r['a'], r['a_ci95'])} | "
                     f"{pct(r['b'], r['b_ci95'])} | {100 * r['diff']:+.1f} | {r['b_only']} / {r['a_only']} | "
                     f"{r['mcnemar_p']:.3g} |")
    lines += ["", "Pooled per language (each task by its first metric: "
              "acc_norm for multiple choice; paired 95% Wald interval on B − A):", "",
              "| lang | tasks | n | A % | B % | B − A (points) [95%] | only B / only A | McNemar p |",
              "|---|---|---|---|---|---|---|---|"]
    for r in pooled:
        lo, hi = r["diff_ci95"]
        lines.append(f"| {r['language']} | {len(r['tasks'])} | {r['n']} | {pct(r['a'], r['a_ci95'])} | "
                     f"{pct(r['b'], r['b_ci95'])} | {100 * r['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                     f"{r['b_only']} / {r['a_only']} | {r['mcnemar_p']:.3g} |")
    if result["only_in_a"] or result["only_in_b"]:
        lines += ["", f"Not compared (finished by one run only): A {result['only_in_a']}, B {result['only_in_b']}."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
