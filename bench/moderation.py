"""The moderation classifier on its held-out split: per-category precision and recall, English and Chinese
apart, against the `alt-profanity-check` linear model as a baseline, and latency per message.

The held-out split (alignchat/safety/data.py: a fixed hash of each text, 25%, plus the curated file's
held-out half) is never read by training (alignchat/safety/train.py). A category is scored on the
held-out examples whose label for it is known. The baseline has one score (toxic or not), so for it a
category is "flagged" whenever the text is; its per-category recall is an upper bound of what a
single-score filter gives, and its precision shows what that costs. "any" is the flagged decision
itself: harmful examples against harmless ones and the harmless look-alikes. Intervals are 95% Wilson.

Latency is per single message (batch of one, one torch thread, as the server's worker thread scores one
message), the median over the held-out inputs of each language, for the classifier (MiniLM + heads) and
for the baseline (the anchor, measured in the same run, alternating); the ratio ours / baseline is what
travels between machines. The load average before and after the timing is recorded next to it.

`--heads` scores another heads file on the same held-out split (to compare a retrained file with the
shipped one); `--out` writes the results elsewhere.

    python bench/moderation.py [--latency-n 60] [--heads PATH] [--out DIR]

Results: bench/results/moderation.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.eval.chinese import wilson_interval  # noqa: E402
from alignchat.safety.classifier import HEADS_FILE, ModerationClassifier  # noqa: E402
from alignchat.safety.data import CATEGORIES, load_all  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


def _pr(pred: np.ndarray, gold: np.ndarray) -> dict:
    tp = int(((pred == 1) & (gold == 1)).sum())
    fp = int(((pred == 1) & (gold == 0)).sum())
    fn = int(((pred == 0) & (gold == 1)).sum())
    out = {"positives": int(gold.sum()), "n": int(len(gold)), "tp": tp, "fp": fp, "fn": fn}
    out["precision"] = tp / (tp + fp) if tp + fp else None
    out["precision_ci"] = list(wilson_interval(tp, tp + fp)) if tp + fp else None
    out["recall"] = tp / (tp + fn) if tp + fn else None
    out["recall_ci"] = list(wilson_interval(tp, tp + fn)) if tp + fn else None
    return out


def evaluate(examples, ours: np.ndarray, base: np.ndarray) -> dict:
    """ours: [n, 13] flags; base: [n] flags."""
    res: dict = {}
    for lang in ("en", "zh"):
        idx = [i for i, e in enumerate(examples) if e.lang == lang]
        per: dict = {}
        for j, c in enumerate(CATEGORIES):
            rows = [i for i in idx if examples[i].label(c) is not None]
            if not rows:
                continue
            gold = np.array([examples[i].label(c) for i in rows])
            if gold.sum() == 0:
                continue
            per[c] = {"ours": _pr(ours[rows, j], gold), "baseline": _pr(base[rows], gold)}
        rows = [i for i in idx if examples[i].kind in ("harmful", "harmless", "lookalike")]
        gold = np.array([int(examples[i].kind == "harmful") for i in rows])
        per["any"] = {"ours": _pr(ours[rows].max(axis=1), gold), "baseline": _pr(base[rows], gold)}
        look = [i for i in idx if examples[i].kind == "lookalike"]
        per["lookalike_flag_rate"] = {
            "n": len(look),
            "ours": float(ours[look].max(axis=1).mean()) if look else None,
            "baseline": float(base[look].mean()) if look else None}
        res[lang] = per
    return res


def latency(clf, base, texts: list[str], n: int) -> dict:
    texts = texts[:n]
    clf.moderate(texts[:1]), base.score(texts[:1])  # warm
    ours_t, base_t = [], []
    for t in texts:  # alternate, so a change of load hits both sides alike
        t0 = time.perf_counter(); clf.moderate([t]); ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); base.score([t]); base_t.append(time.perf_counter() - t0)
    mo, mb = statistics.median(ours_t), statistics.median(base_t)
    return {"n": len(texts), "ours_median_ms": 1000 * mo, "baseline_median_ms": 1000 * mb,
            "ours_p90_ms": 1000 * sorted(ours_t)[int(0.9 * (len(ours_t) - 1))], "ratio_ours_to_baseline": mo / mb}


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def render_md(r: dict) -> str:
    lines = ["# Moderation classifier, held-out split", "",
             f"Held-out examples: {r['heldout']['n']} ({r['heldout']['by_lang']}); training never reads them. "
             f"Baseline: alt-profanity-check (one toxicity score; a category counts as flagged when the text "
             f"is). Heads: `{r['heads']}`. Machine: {r['machine']}.", ""]
    for lang in ("en", "zh"):
        lines += [f"## {lang}", "", "| category | positives / n | precision (ours) | recall (ours) | "
                  "precision (baseline) | recall (baseline) |", "|---|---|---|---|---|---|"]
        for c, v in r["results"][lang].items():
            if c == "lookalike_flag_rate":
                continue
            o, b = v["ours"], v["baseline"]
            ci = (lambda m, k: "" if m[k + "_ci"] is None else f" [{m[k + '_ci'][0]:.2f}, {m[k + '_ci'][1]:.2f}]")
            lines.append(f"| {c} | {o['positives']} / {o['n']} | {_fmt(o['precision'])}{ci(o, 'precision')} | "
                         f"{_fmt(o['recall'])}{ci(o, 'recall')} | {_fmt(b['precision'])} | {_fmt(b['recall'])} |")
        la = r["results"][lang]["lookalike_flag_rate"]
        lines += ["", f"Harmless look-alikes flagged: ours {_fmt(la['ours'])}, baseline {_fmt(la['baseline'])} "
                      f"(n = {la['n']}).", ""]
    load = r.get("load_average")
    lines += ["## Latency per message (batch of one, one thread)", "",
              f"Load average (1 min) before / after timing: {load[0]:.2f} / {load[1]:.2f} on "
              f"{os.cpu_count()} cores." if load else "", "", "| lang | n | ours median ms | ours p90 ms | "
              "baseline median ms | ratio ours / baseline |", "|---|---|---|---|---|---|"]
    for lang, v in r["latency"].items():
        lines.append(f"| {lang} | {v['n']} | {v['ours_median_ms']:.1f} | {v['ours_p90_ms']:.1f} | "
                     f"{v['baseline_median_ms']:.2f} | {v['ratio_ours_to_baseline']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--latency-n", type=int, default=60)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--heads", type=Path, default=None, help="heads file (default: the shipped one)")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from alignchat.eval.tasks import toxicity_classifier
    from alignchat.safety.train import cached_features

    held = [e for e in load_all() if e.split == "heldout"]
    heads = args.heads or HEADS_FILE
    clf = ModerationClassifier.load(heads)
    texts = [e.text for e in held]
    X = cached_features(texts, clf.featurizer)  # the same features the classifier computes, cached
    scores = clf.scores_from_features(X)
    ours = np.zeros(scores.shape, dtype=int)
    for j, c in enumerate(CATEGORIES):
        if c in clf.thresholds:
            ours[:, j] = scores[:, j] >= clf.thresholds[c]
    base = toxicity_classifier()
    base_flags = (np.array(base.score(texts)) >= 0.5).astype(int)
    lat = {}
    load_before = os.getloadavg()[0]
    for lang in ("en", "zh"):
        lt = [e.text for e in held if e.lang == lang and e.direction == "input"]
        lat[lang] = latency(clf, base, lt, args.latency_n)
    root = Path(__file__).resolve().parents[1]
    r = {"heads": str(heads.resolve().relative_to(root)) if heads.resolve().is_relative_to(root) else str(heads),
         "load_average": [load_before, os.getloadavg()[0]],
         "heldout": {"n": len(held), "by_lang": {lang: sum(e.lang == lang for e in held) for lang in ("en", "zh")}},
         "machine": f"{platform.machine()} {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}",
         "results": evaluate(held, ours, base_flags), "latency": lat}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moderation.json").write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n")
    (args.out / "moderation.md").write_text(render_md(r))
    print(render_md(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
