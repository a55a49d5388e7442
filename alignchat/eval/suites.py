"""Suites (named task lists) and the cross-cutting '@' sections: robustness, fairness, chain of thought,
the detector and efficiency.

Notable choices:
- `lite` covers every metric family once at a cost that fits 15 CPU minutes for a 135M model at
  --limit 20; `full` adds every task, the detector and bigger robustness/fairness sections; `tiny` is for
  tests.
- A section is registered in `SECTIONS` by its '@' name and computed from the whole config; plain tasks
  are scored by their registered scorer (`scorers.SCORERS`).
- Robustness: HELM's meaning-preserving perturbations of the question, scored against the clean pass
  (invariance, accuracy drop). Fairness: counterfactual gender swaps on items that mention gendered
  terms (output-change rate, accuracy on original vs swapped text).
- `redteam` runs the `@redteam` section (alignchat/safety/redteam.py: attack success rate on held-out
  harmful prompts and their rewordings, model alone and behind the safety layer, and over-refusal on
  look-alikes; `--redteam-limit`, else `--limit`, caps its base prompts per language) and MMLU, to compare checkpoints before and
  after harmlessness training.
- `chinese` runs the Chinese family (`chinese.py`: Chinese tasks, held-out text and the `@zh_fluency`
  section), so the report card shows the language gap; `full` includes it.
- Efficiency: one prefill and one greedy decode of a fixed length (EOS ignored on a local model) at batch
  1, plus the run's totals. Over HTTP the times include the network and the server's queue, and memory
  cannot be observed; the section says so.
"""
from __future__ import annotations

import random
import resource
import time
from typing import Callable

from ..client import GREEDY, ModelClient
from ..errors import UserError
from . import metrics as M
from .chinese import CHINESE_SUITE, fluency_section
from .config import EvalConfig
from .perturb import counterfactual, has_demographic_terms, perturb
from .scorers import detectgpt, score_cot, score_mc
from .tasks import TASKS, load_task

SUITES = {
    "lite": ["mmlu", "boolq", "piqa", "siqa", "commonsenseqa", "openbookqa", "bbq", "crows_pairs", "stereoset",
             "toxicity", "truthfulqa", "nq_open", "zh_famous_novel", "zh_homonym",
             "humaneval", "heldout_text", "@robustness", "@fairness", "@cot", "@efficiency"],
    "full": [t for t in TASKS] + ["@robustness", "@fairness", "@cot", "@detect", "@zh_fluency", "@efficiency"],
    "chinese": CHINESE_SUITE,
    "tiny": ["mmlu", "boolq", "bbq", "crows_pairs", "stereoset", "truthfulqa", "zh_homonym", "heldout_text",
             "@robustness", "@fairness", "@efficiency"],
    "redteam": ["@redteam", "mmlu"],
}

FULL_SECTION_TASKS = {"robustness_tasks": ["openbookqa", "piqa"], "fairness_tasks": ["bbq", "boolq"]}


def section_tasks(cfg: EvalConfig, key: str) -> list[str]:
    default = getattr(EvalConfig(), key)
    mine = getattr(cfg, key)
    return FULL_SECTION_TASKS[key] if cfg.suite == "full" and mine == default and not cfg.tasks else mine


def suite_tasks(cfg: EvalConfig) -> list[str]:
    if cfg.tasks:
        return list(cfg.tasks)
    if cfg.suite not in SUITES:
        raise UserError(f"unknown suite {cfg.suite!r}; choose one of {', '.join(SUITES)}")
    return SUITES[cfg.suite]


SECTIONS: dict[str, Callable[[ModelClient, EvalConfig], dict]] = {}


def section(name: str):
    def register(fn):
        SECTIONS[name] = fn
        return fn
    return register


section("@zh_fluency")(fluency_section)  # the Chinese family (chinese.py)


@section("@redteam")
def redteam(client: ModelClient, cfg: EvalConfig) -> dict:
    """Attack success and over-refusal, model alone and behind the safety layer (alignchat/safety/redteam.py)."""
    from ..safety.redteam import redteam_section
    return redteam_section(client, cfg)


@section("@robustness")
def robustness(client: ModelClient, cfg: EvalConfig) -> dict:
    out = {}
    for name in section_tasks(cfg, "robustness_tasks"):
        exs = load_task(name, cfg.limit, cfg.seed)
        clean = score_mc(client, exs, seed=cfg.seed)
        golds = [r["gold"] for r in clean]
        clean_pred = [r["pred"] for r in clean]
        for kind in cfg.perturbations:
            pert = score_mc(client, exs, questions=[perturb(e.prompt, kind, cfg.seed) for e in exs], seed=cfg.seed)
            pp = [r["pred"] for r in pert]
            out[f"{name}/{kind}"] = {"invariance": M.invariance(clean_pred, pp),
                                     "accuracy_clean": M.accuracy(clean_pred, golds),
                                     "accuracy_perturbed": M.accuracy(pp, golds),
                                     "accuracy_drop": M.accuracy_drop(clean_pred, pp, golds), "n": len(exs)}
    return {"task": "@robustness", "category": "robustness", "summary": out, "records": []}


@section("@fairness")
def fairness(client: ModelClient, cfg: EvalConfig) -> dict:
    """Counterfactual gender swaps on items that mention gendered terms: output-change rate and the
    accuracy on original vs swapped text."""
    out = {}
    for name in section_tasks(cfg, "fairness_tasks"):
        pool = [e for e in load_task(name, None) if has_demographic_terms(e.prompt)]
        rng = random.Random(f"fair:{cfg.seed}:{name}")
        exs = rng.sample(pool, min(cfg.limit or len(pool), len(pool)))
        if not exs:
            continue
        orig = score_mc(client, exs, seed=cfg.seed)
        swapped = score_mc(client, exs, questions=[counterfactual(e.prompt) for e in exs], seed=cfg.seed)
        po, ps, golds = [r["pred"] for r in orig], [r["pred"] for r in swapped], [r["gold"] for r in orig]
        out[name] = {"output_change_rate": M.output_change_rate(po, ps), "accuracy_original": M.accuracy(po, golds),
                     "accuracy_counterfactual": M.accuracy(ps, golds), "n": len(exs)}
    return {"task": "@fairness", "category": "fairness", "summary": out, "records": []}


@section("@cot")
def chain_of_thought(client: ModelClient, cfg: EvalConfig) -> dict:
    recs = score_cot(client, load_task(cfg.cot_task, cfg.cot_limit, cfg.seed))
    return {"task": "@cot", "category": "accuracy", "summary": {
        "n": len(recs), "task": cfg.cot_task, "accuracy": M.accuracy([r["pred"] for r in recs], [r["gold"] for r in recs])},
        "records": recs}


@section("@detect")
def detection(client: ModelClient, cfg: EvalConfig) -> dict:
    texts = [e.prompt for e in load_task("heldout_text", None) if e.meta.get("language") == "en"][: cfg.detect_texts]
    return {"task": "@detect", "category": "detection", "summary": detectgpt(client, texts, seed=cfg.seed), "records": []}


def efficiency_probe(client: ModelClient, prompt_tokens: int = 128, decode_tokens: int = 32) -> dict:
    """Time one prefill (a one-token generation after a warm-up) and one greedy decode of `decode_tokens`."""
    text = "The history of the printing press begins in "
    if client.kind == "local":  # exactly `prompt_tokens` of the model's own ids
        prompt = client.tokenizer.encode(text * 64)[:prompt_tokens]
        client.generate([prompt], GREEDY.but(max_tokens=1))  # warm-up
    else:
        prompt = text * (prompt_tokens // 9)
    t0 = time.perf_counter()
    client.generate([prompt], GREEDY.but(max_tokens=1))
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = client.generate([prompt], GREEDY.but(max_tokens=decode_tokens, ignore_eos=True))[0]
    total = time.perf_counter() - t0
    n = max(out.completion_tokens, 1)
    decode = max(total - prefill, 1e-9)
    n_prompt = out.prompt_tokens
    res = {"prompt_tokens": n_prompt, "decode_tokens": n, "prefill_seconds": prefill,
           "prompt_tokens_per_second": n_prompt / prefill if prefill else float("nan"),
           "decode_tokens_per_second": (n - 1) / decode, "latency_seconds": total}
    if client.kind == "local":
        res["time_per_output_token_ms"] = 1000 * decode / max(n - 1, 1)
    else:
        res["note"] = "measured over HTTP; includes network and server queueing"
    return res


def peak_memory(client: ModelClient) -> dict:
    if client.kind != "local":
        return {"note": "not observable through an HTTP endpoint"}
    import torch
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if torch.cuda.is_available() and str(client.device).startswith("cuda"):
        out["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


@section("@efficiency")
def efficiency(client: ModelClient, cfg: EvalConfig) -> dict:
    u = client.usage  # the run's totals, read before the probe adds to them
    totals = {"run_prompt_tokens": u.prompt_tokens, "run_completion_tokens": u.completion_tokens,
              "run_generate_seconds": u.generate_seconds,
              "run_decode_tokens_per_second": M.throughput(u.completion_tokens, u.generate_seconds),
              "run_scored_tokens": u.scored_tokens, "run_score_seconds": u.score_seconds,
              "run_scoring_tokens_per_second": M.throughput(u.scored_tokens, u.score_seconds)}
    summary = {**efficiency_probe(client), **peak_memory(client), **totals}
    return {"task": "@efficiency", "category": "efficiency", "summary": summary, "records": []}
