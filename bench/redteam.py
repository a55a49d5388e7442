"""Harmlessness before and after: the `@redteam` section and MMLU of two `alignchat eval run` directories
(a model and its harmlessness-DPO checkpoint), paired item by item, the refusal judge's agreement with the
hand labels, and the DPO run's data and settings.

    python bench/redteam.py runs/eval/smollm2-redteam-full runs/eval/harmless3-redteam \
        --after-mmlu runs/eval/harmless3-mmlu --dpo-run runs/harmless3/dpo --pairs runs/harmless3/pairs.jsonl \
        --paired-out runs/eval/harmless3-paired --out bench/results/redteam

    python bench/redteam.py run --model runs/harmless3/dpo/final --items-from runs/eval/smollm2-redteam-full \
        --out runs/eval/harmless3-redteam

The eval runs are written by `alignchat eval run --suite redteam` (docs/safety.md has the whole recipe);
`run` writes a second model's `tasks/redteam.json` for exactly the first run's items. This script reads
the stored replies. Only items both runs hold (same id and text) are compared.

Notable choices:
- The model-alone verdicts are the judge's on the stored replies (`redteam.judge`, as in the eval run).
  "Behind the layer" is recomputed here from the stored replies with the classifier shipped now
  (`redteam.score_items`), so both runs use the same heads file; its SHA-256 is in the results.
- Rates carry 95% Wilson intervals; before vs after is an exact McNemar test on the paired items
  (`mcnemar_exact_p` of bench/sft_smollm2.py): ASR alone and behind the layer, over-refusal, MMLU.
- Jailbreak ASR is split into template families the DPO data may use and those it never uses
  (`redteam.template_splits`).

Results: bench/results/redteam.json and .md (or --out).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from sft_smollm2 import mcnemar_exact_p  # noqa: E402

from alignchat.eval.chinese import wilson_interval  # noqa: E402
from alignchat.safety.redteam import (REWORDINGS, RedTeamItem, judge_agreement, score_items,  # noqa: E402
                                      template_splits)

HEADS = ROOT / "alignchat" / "safety" / "data" / "heads.npz"


def cell(rate: dict | None) -> str:
    if not rate or not rate.get("n"):
        return "–"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] ({rate['k']}/{rate['n']})"


def rate(k: int, n: int) -> dict:
    return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci95": list(wilson_interval(k, n))}


def paired(before: list[bool], after: list[bool]) -> dict:
    """Success flags of the same items: both rates and McNemar's exact p on the discordant items."""
    gained = sum(a and not b for b, a in zip(before, after))
    lost = sum(b and not a for b, a in zip(before, after))
    return {"before": rate(sum(before), len(before)), "after": rate(sum(after), len(after)),
            "only_before": lost, "only_after": gained, "mcnemar_p": mcnemar_exact_p(gained, lost)}


def rescore(recs: list[dict]) -> list[dict]:
    """The stored replies judged again, behind the safety layer as it ships now."""
    fields = RedTeamItem.__dataclass_fields__
    items = [RedTeamItem(**{k: r[k] for k in fields}) for r in recs]
    return score_items(items, [r["output"] for r in recs])[0]


def compare_redteam(before: list[dict], after: list[dict]) -> dict:
    b = {r["id"]: r for r in before}
    a = {r["id"]: r for r in after if r["id"] in b and r["text"] == b[r["id"]]["text"]}
    ids = [i for i in b if i in a]
    tsplit = template_splits()
    out = {"items": len(ids), "only_in_one_run": len(b) + len(after) - 2 * len(ids)}
    for lang in ("en", "zh"):
        harm = [i for i in ids if b[i]["lang"] == lang and b[i]["kind"] == "harmful"]
        look = [i for i in ids if b[i]["lang"] == lang and b[i]["kind"] == "lookalike"]

        def comp(sel, key="verdict"):
            return paired([b[i][key] == "compliance" for i in sel], [a[i][key] == "compliance" for i in sel])

        def refused(sel, key="verdict"):
            return paired([b[i][key] == "refusal" for i in sel], [a[i][key] == "refusal" for i in sel])
        s = {"base_prompts": len({b[i]["base"] for i in harm}), "asr_alone": comp(harm),
             "asr_layer": comp(harm, "verdict_layer"), "overrefusal_alone": refused(look),
             "overrefusal_layer": refused(look, "verdict_layer"), "by_rewording": {}, "jailbreak_templates": {}}
        for w in REWORDINGS:
            sel = [i for i in harm if b[i]["rewording"] == w]
            if sel:
                s["by_rewording"][w] = {"alone": comp(sel), "layer": comp(sel, "verdict_layer")}
        for side in ("train", "eval"):
            sel = [i for i in harm if b[i]["rewording"] == "jailbreak" and tsplit.get(b[i]["detail"]) == side]
            s["jailbreak_templates"][side] = {"templates": sorted(k for k, v in tsplit.items() if v == side),
                                              "alone": comp(sel), "layer": comp(sel, "verdict_layer")}
        out[lang] = s
    both = [i for i in ids if b[i]["kind"] == "harmful"]
    out["all"] = {"asr_alone": paired([b[i]["verdict"] == "compliance" for i in both],
                                      [a[i]["verdict"] == "compliance" for i in both]),
                  "overrefusal_alone": paired(*[[x[i]["verdict"] == "refusal" for i in ids if b[i]["kind"] == "lookalike"]
                                                for x in (b, a)])}
    return out


def compare_mmlu(before: dict, after: dict) -> dict:
    b = {r["id"]: r for r in before.get("records", [])}
    a = {r["id"]: r for r in after.get("records", []) if r["id"] in b}
    ids = [i for i in b if i in a]
    return {"acc": paired([bool(b[i]["correct"]) for i in ids], [bool(a[i]["correct"]) for i in ids]),
            "acc_norm": paired([bool(b[i]["correct_norm"]) for i in ids], [bool(a[i]["correct_norm"]) for i in ids])}


def pairs_stats(path: Path) -> dict:
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    meta = [r.get("meta", {}) for r in rows]
    return {"pairs": len(rows), "by_kind_lang": dict(collections.Counter(f"{m['kind']}-{m['lang']}" for m in meta)),
            "harmful_by_rewording": dict(collections.Counter(m.get("rewording") for m in meta if m["kind"] == "harmful")),
            "harmful_bases": len({m.get("base") for m in meta if m["kind"] == "harmful"}),
            "by_source": dict(collections.Counter(m.get("from", "") for m in meta))}


def run_items(argv: list[str]) -> int:
    """`run`: a model's greedy replies to exactly the red-team items of an earlier eval run (the curated file
    may have grown since; the split is per base, so its items are still held out), written as that run's
    `tasks/redteam.json`, scored as `@redteam` scores them."""
    import time

    from alignchat.client import make_client
    from alignchat.eval.config import LOCAL_OPTIONS
    from alignchat.fetch import atomic_write_text
    from alignchat.safety.redteam import eval_items, generate

    ap = argparse.ArgumentParser(prog="bench/redteam.py run", description=run_items.__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--items-from", default="", help="an eval run directory whose @redteam items to use "
                                                     "(default: the red-team eval split as it is now)")
    ap.add_argument("--bases", type=int, default=0, help="at most this many base prompts and look-alikes per "
                                                          "language, the section's fixed sample (0 = all)")
    ap.add_argument("--split", choices=["eval", "train"], default="eval",
                    help="train: the red-team train split, less every item a DPO pair file holds (--exclude-pairs), "
                         "for choosing among a run's checkpoints without touching the held-out split")
    ap.add_argument("--exclude-pairs", default="", help="with --split train: a comparison JSONL whose prompts to skip")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.split == "train" and a.items_from:
        ap.error("--split train takes its items from the red-team set itself, not --items-from")
    items = None
    if a.items_from:
        prev = json.loads((Path(a.items_from) / "tasks" / "redteam.json").read_text(encoding="utf-8"))
        fields = RedTeamItem.__dataclass_fields__
        items = [RedTeamItem(**{k: r[k] for k in fields}) for r in prev["records"]]
    items = eval_items(a.bases or None, 0, items, split=a.split)
    if a.exclude_pairs:
        seen = {json.loads(x)["prompt"][-1]["content"] for x in Path(a.exclude_pairs).read_text(encoding="utf-8").splitlines()
                if x.strip()}
        items = [i for i in items if i.text not in seen]
    client = make_client(model=a.model, **{**LOCAL_OPTIONS, "threads": a.threads})
    t0 = time.perf_counter()
    replies = generate(client, [i.text for i in items])
    recs, summary = score_items(items, replies)
    res = {"task": "@redteam", "category": "harms", "summary": summary, "records": recs,
           "seconds": time.perf_counter() - t0,
           "fingerprint": json.dumps({"model": client.describe(), "task": "@redteam", "items_from": a.items_from,
                                      "bases": a.bases, "split": a.split}, sort_keys=True)}
    out = Path(a.out) / "tasks"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "redteam.json", json.dumps(res, ensure_ascii=False, indent=1))
    print(json.dumps({"items": len(items), "seconds": round(res["seconds"]), "out": str(out / "redteam.json")}))
    return 0


def main() -> int:
    if sys.argv[1:2] == ["run"]:
        return run_items(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--after-mmlu", default="", help="the after model's MMLU run, if not in AFTER")
    ap.add_argument("--dpo-run", default="")
    ap.add_argument("--pairs", default="")
    ap.add_argument("--paired-out", default="", help="write DIR/before and DIR/after: both runs' tasks on the "
                                                     "common items, rescored, for `alignchat eval report`")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "redteam"))
    ap.add_argument("--machine", default="machine and load not recorded",
                    help="how the runs compared were measured (the machine, its load), for the report")
    a = ap.parse_args()
    where = {"before": {"redteam": a.before, "mmlu": a.before},
             "after": {"redteam": a.after, "mmlu": a.after_mmlu or a.after}}
    tasks = {k: {t: json.loads((Path(p) / "tasks" / f"{t}.json").read_text(encoding="utf-8")) for t, p in w.items()}
             for k, w in where.items()}
    models = {k: json.loads(t["redteam"]["fingerprint"])["model"] for k, t in tasks.items()}
    recs = {k: rescore(t["redteam"]["records"]) for k, t in tasks.items()}
    if a.paired_out:
        from alignchat.fetch import atomic_write_text
        from alignchat.safety.redteam import summarise
        common = {r["id"] for r in recs["before"]} & {r["id"] for r in recs["after"]}
        for k, t in tasks.items():
            d = Path(a.paired_out) / k / "tasks"
            d.mkdir(parents=True, exist_ok=True)
            sub = [r for r in recs[k] if r["id"] in common]
            atomic_write_text(d / "redteam.json", json.dumps({**t["redteam"], "summary": summarise(sub), "records": sub},
                                                             ensure_ascii=False, indent=1))
            atomic_write_text(d / "mmlu.json", json.dumps(t["mmlu"], ensure_ascii=False, indent=1))
    agree = judge_agreement()
    res = {"runs": {"before": a.before, "after": a.after}, "models": models,
           "heads_sha256": hashlib.sha256(HEADS.read_bytes()).hexdigest(),
           "redteam": compare_redteam(recs["before"], recs["after"]),
           "mmlu": compare_mmlu(tasks["before"]["mmlu"], tasks["after"]["mmlu"]),
           "judge": {k: v for k, v in agree.items() if k != "disagreements"},
           "machine": a.machine}
    if a.pairs:
        res["pairs"] = pairs_stats(Path(a.pairs))
    if a.dpo_run:
        run = json.loads((Path(a.dpo_run) / "run.json").read_text(encoding="utf-8"))
        lines = [json.loads(x) for x in (Path(a.dpo_run) / "metrics.jsonl").read_text().splitlines() if x.strip()]
        steps = [x for x in lines if "loss" in x]
        res["dpo"] = {"settings": run.get("settings"), "train_rankings": run.get("train_rankings"),
                      "held_out_rankings": run.get("held_out_rankings"), "steps": len(steps),
                      "train_seconds": sum(x.get("step_time_s", 0) for x in steps),
                      "last": steps[-1] if steps else None, "val": [x for x in lines if "val_loss" in x][-1:] or None}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

    rt = res["redteam"]
    L = ["# Harmlessness before and after DPO (bench/redteam.py)\n",
         f"Before: `{a.before}` ({models['before']['model']}); after: `{a.after}` ({models['after']['model']}). "
         f"{rt['items']} items in both runs. Values in % with a 95% Wilson interval (k/n); ASR = attack success rate "
         "(harmful items the judge calls a compliance), over-refusal = held-out look-alikes it calls a refusal; lower "
         "is better for both. p = exact McNemar on the paired items (only before / only after = discordant items). "
         f"Behind the layer: recomputed from the stored replies with heads.npz sha256 {res['heads_sha256'][:12]}.\n",
         "| lang | metric | before | after | only before / only after | p |", "|---|---|---|---|---|---|"]

    def row(lang, name, p):
        L.append(f"| {lang} | {name} | {cell(p['before'])} | {cell(p['after'])} | {p['only_before']} / "
                 f"{p['only_after']} | {p['mcnemar_p']:.3g} |")
    for lang in ("en", "zh"):
        s = rt[lang]
        for key in ("asr_alone", "asr_layer", "overrefusal_alone", "overrefusal_layer"):
            row(lang, key, s[key])
        for w, v in s["by_rewording"].items():
            row(lang, f"ASR alone, {w}", v["alone"])
        for side, v in s["jailbreak_templates"].items():
            row(lang, f"ASR alone, jailbreak, {side} templates ({', '.join(v['templates'])})", v["alone"])
    row("both", "asr_alone", rt["all"]["asr_alone"])
    row("both", "overrefusal_alone", rt["all"]["overrefusal_alone"])
    row("–", "MMLU accuracy", res["mmlu"]["acc"])
    row("–", "MMLU acc_norm", res["mmlu"]["acc_norm"])
    L += ["", f"Base prompts: en {rt['en']['base_prompts']}, zh {rt['zh']['base_prompts']}. Judge agreement with the "
          f"hand labels: {100 * agree['agreement']:.1f}% (n = {agree['n']}).\n"]
    if "pairs" in res:
        p = res["pairs"]
        L.append(f"DPO data: {p['pairs']} pairs ({', '.join(f'{k} {v}' for k, v in sorted(p['by_kind_lang'].items()))}); "
                 f"{p['harmful_bases']} distinct harmful requests; harmful rewordings "
                 f"{', '.join(f'{k} {v}' for k, v in p['harmful_by_rewording'].items())}.\n")
    if "dpo" in res:
        d, st = res["dpo"], res["dpo"]["settings"] or {}
        L.append(f"DPO: {d['steps']} steps over {d['train_rankings']} training comparisons ({d['held_out_rankings']} "
                 f"held out), beta {st.get('beta')}, lr {st.get('train', {}).get('lr')}, trainable "
                 f"{st.get('trainable')}, {d['train_seconds'] / 60:.0f} min of steps; last step loss "
                 f"{d['last']['loss']:.3f}" + (f", held-out val_loss {d['val'][0]['val_loss']:.3f}" if d["val"] else "")
                 + ".\n")
    L.append(res["machine"] + ".\n")
    out.with_suffix(".md").write_text("\n".join(L), encoding="utf-8")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
