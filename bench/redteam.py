"""Harmlessness before and after: the `@redteam` section and MMLU of two `alignchat eval run` directories
(a model and its harmlessness-DPO checkpoint), the refusal judge's agreement with the hand labels, and the
DPO run's settings and time.

    python bench/redteam.py runs/eval/smollm2-redteam runs/eval/dpo-redteam --dpo-run runs/harmless/dpo

The eval runs are written by `alignchat eval run --suite redteam` (docs/safety.md has the whole recipe);
this script only reads them, so its numbers are exactly the report card's (docs/report/safety/). A
difference between the two runs is real only where the 95% Wilson intervals (or, for MMLU, the normal
interval of a proportion) do not overlap much; the sample sizes are small because the CPU was shared.

Results: bench/results/redteam.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignchat.safety.redteam import judge_agreement  # noqa: E402


def cell(rate: dict | None) -> str:
    if not rate or not rate.get("n"):
        return "–"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] ({rate['k']}/{rate['n']})"


def mmlu(run: dict) -> dict:
    s = (run["tasks"].get("mmlu") or {}).get("summary") or {}
    n, acc = s.get("n"), s.get("accuracy")
    if not n or acc is None:
        return {}
    half = 1.96 * math.sqrt(acc * (1 - acc) / n)
    return {"accuracy": acc, "accuracy_norm": s.get("accuracy_norm"), "n": n, "ci95": [acc - half, acc + half]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--dpo-run", default="")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "redteam"))
    a = ap.parse_args()
    runs = {name: json.loads((Path(p) / "results.json").read_text(encoding="utf-8"))
            for name, p in (("before", a.before), ("after", a.after))}
    agree = judge_agreement()
    res = {"runs": {k: str(p) for k, p in (("before", a.before), ("after", a.after))},
           "models": {k: r["model"] for k, r in runs.items()},
           "redteam": {k: r["tasks"]["@redteam"]["summary"] for k, r in runs.items()},
           "mmlu": {k: mmlu(r) for k, r in runs.items()},
           "judge": {k: v for k, v in agree.items() if k != "disagreements"},
           "machine": "2 CPU cores shared with four other engineers' jobs (times are not comparable)"}
    if a.dpo_run:
        run = json.loads((Path(a.dpo_run) / "run.json").read_text(encoding="utf-8"))
        lines = [json.loads(x) for x in (Path(a.dpo_run) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps = [x for x in lines if "loss" in x]
        res["dpo"] = {"settings": run.get("settings"), "train_rankings": run.get("train_rankings"),
                      "held_out_rankings": run.get("held_out_rankings"), "steps": len(steps),
                      "train_seconds": sum(x.get("step_time_s", 0) for x in steps),
                      "last": steps[-1] if steps else None,
                      "val": [x for x in lines if "val_loss" in x][-1:] or None}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    L = ["# Harmlessness before and after DPO (bench/redteam.py)\n",
         f"Before: `{a.before}`; after: `{a.after}`. Values in % with a 95% Wilson interval (k/n); ASR = attack "
         "success rate (harmful items the judge calls a compliance), over-refusal = look-alikes it calls a refusal. "
         "Lower is better for both.\n",
         "| lang | metric | before | after |", "|---|---|---|---|"]
    rt = res["redteam"]
    for lang in ("en", "zh"):
        for key in ("asr_alone", "asr_layer", "overrefusal_alone", "overrefusal_layer"):
            L.append(f"| {lang} | {key} | {cell(rt['before'][lang][key])} | {cell(rt['after'][lang][key])} |")
        for w in rt["before"][lang]["by_rewording"]:
            b, f = rt["before"][lang]["by_rewording"][w], rt["after"][lang]["by_rewording"].get(w, {})
            L.append(f"| {lang} | ASR {w} (alone / layer) | {cell(b['alone'])} / {cell(b['layer'])} | "
                     f"{cell(f.get('alone'))} / {cell(f.get('layer'))} |")
    m = res["mmlu"]
    fmt = (lambda x: f"{100 * x['accuracy']:.1f} ± {100 * (x['ci95'][1] - x['accuracy']):.1f} (n = {x['n']}), "
           f"acc_norm {100 * x['accuracy_norm']:.1f}" if x else "–")
    L += [f"| – | MMLU accuracy | {fmt(m['before'])} | {fmt(m['after'])} |", "",
          f"Judge agreement with the hand labels: {100 * agree['agreement']:.1f}% (n = {agree['n']}; "
          + ", ".join(f"{k} {100 * v['agreement']:.0f}% of {v['n']}" for k, v in agree["by_label"].items()) + ").\n"]
    if "dpo" in res:
        d = res["dpo"]
        L.append(f"DPO: {d['steps']} steps over {d['train_rankings']} training comparisons ({d['held_out_rankings']} "
                 f"held out), {d['train_seconds'] / 60:.0f} min of steps; last step loss "
                 f"{d['last']['loss']:.3f}, reward accuracy {d['last'].get('reward_acc')}.\n")
    L.append(res["machine"] + ".\n")
    out.with_suffix(".md").write_text("\n".join(L), encoding="utf-8")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
