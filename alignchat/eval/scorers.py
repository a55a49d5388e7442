"""How each kind of task is scored through a model client (`alignchat.client`), and the registry that maps
a task's `scoring` name to its scorer.

Modes: multiple choice by log-likelihood (accuracy, and accuracy normalised by answer length in bytes),
k-shot (examples drawn from the same task, never the item itself), generation (EM/F1, BLEU, ROUGE-L,
evals Match/Includes), zero-shot chain of thought with a second answer-extraction pass (Kojima et al.
2022: "Let's think step by step" then "Therefore, among A through D, the answer is"), HumanEval in the
sandbox, toxicity continuations, perplexity, and a DetectGPT-style detector.

Notable choices:
- Each `TaskSpec.scoring` (tasks.py) names a scorer registered here with `@scorer(...)`; a scorer returns
  the task's per-item records and its summary, and declares whether it needs log-likelihoods (skipped,
  with the reason recorded, on an endpoint without prompt logprobs) and whether it takes k-shot examples.
- Generation is greedy (`GREEDY`) except where a task samples on purpose (toxicity with k > 1, the
  detector's machine texts); over-long prompts keep their rightmost tokens rather than failing a task.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..client import GREEDY, ModelClient, Sampling
from . import metrics as M
from .config import EvalConfig
from .perturb import replace_words
from .example import Example, TaskSpec

# ------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class Scorer:
    """score(client, spec, examples, pool, cfg) -> (records, summary)."""

    score: Callable[..., tuple[list[dict], dict]]
    needs_loglikelihood: bool = False
    shots: bool = False  # takes k-shot examples from the task's other items
    limit: Callable[[EvalConfig], int | None] = lambda cfg: cfg.limit


SCORERS: dict[str, Scorer] = {}


def scorer(*names: str, needs_loglikelihood: bool = False, shots: bool = False,
           limit: Callable[[EvalConfig], int | None] | None = None):
    """Register the decorated function as the scorer of every task whose `scoring` is one of `names`."""
    def register(fn):
        for name in names:
            SCORERS[name] = Scorer(fn, needs_loglikelihood, shots, limit or Scorer.limit)
        return fn
    return register


def _generate(client: ModelClient, prompts, sampling: Sampling):
    return client.generate(prompts, sampling, truncate=True)


# ------------------------------------------------------------------------------------ multiple choice

LETTERS = "ABCDEFGHIJ"


def mc_context(ex: Example, shots: Sequence[Example] = (), question: str | None = None) -> str:
    def block(e: Example, q: str, with_answer: bool) -> str:
        s = f"Question: {q}\nAnswer:"
        return s + (f" {e.choices[e.gold]}" if with_answer else "")
    parts = [block(s, s.prompt, True) for s in shots]
    parts.append(block(ex, ex.prompt if question is None else question, False))
    return "\n\n".join(parts)


def score_mc(client: ModelClient, examples: Sequence[Example], k_shot: int = 0, pool: Sequence[Example] = (),
             questions: Sequence[str] | None = None, seed: int = 0) -> list[dict]:
    """Multiple choice by log-likelihood of each answer after the question.

    pred: argmax of the summed log-probability; pred_norm: argmax of log-probability per UTF-8 byte of the
    answer (lm-eval's acc_norm). confidence: softmax of the summed log-probabilities over the choices.
    """
    items = []
    for i, ex in enumerate(examples):
        shots = []
        if k_shot:
            rng = random.Random(f"shots:{seed}:{ex.id}")
            cands = [p for p in pool if p.id != ex.id]
            shots = rng.sample(cands, min(k_shot, len(cands)))
        ctx = mc_context(ex, shots, None if questions is None else questions[i])
        items.append((ctx, [" " + choice for choice in ex.choices]))
    per = [[s[0] for s in row] for row in client.loglikelihood_choices(items)]
    out = []
    for ex, lps in zip(examples, per):
        norm = [lp / max(len((" " + c).encode("utf-8")), 1) for lp, c in zip(lps, ex.choices)]
        pred = max(range(len(lps)), key=lambda j: lps[j])
        pred_norm = max(range(len(norm)), key=lambda j: norm[j])
        probs = M.softmax(lps)
        out.append({"id": ex.id, "logprobs": lps, "pred": pred, "pred_norm": pred_norm, "gold": ex.gold,
                    "confidence": probs[pred], "correct": pred == ex.gold, "correct_norm": pred_norm == ex.gold})
    return out


def summarize_mc(records: Sequence[dict], n_bins: int = 10) -> dict:
    ece, bins = M.expected_calibration_error([r["confidence"] for r in records], [r["correct"] for r in records], n_bins)
    return {"n": len(records), "accuracy": M.accuracy([r["pred"] for r in records], [r["gold"] for r in records]),
            "accuracy_norm": M.accuracy([r["pred_norm"] for r in records], [r["gold"] for r in records]),
            "ece": ece, "reliability_bins": bins}


@scorer("accuracy", needs_loglikelihood=True, shots=True)
def _mc_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs = score_mc(client, examples, cfg.k_shot, pool, seed=cfg.seed)
    return recs, summarize_mc(recs)


@scorer("bbq", needs_loglikelihood=True, shots=True)
def _bbq_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs, summary = _mc_task(client, spec, examples, pool, cfg)
    summary.update(M.bbq_scores([r["pred"] for r in recs], [r["gold"] for r in recs],
                                [e.meta["unknown_index"] for e in examples], [e.meta["ambiguous"] for e in examples]))
    return recs, summary


# ----------------------------------------------------------------------------------------- generation

def gen_prompt(ex: Example, shots: Sequence[Example] = ()) -> list[dict]:
    msgs: list[dict] = []
    base = list(ex.messages) if ex.messages else [{"role": "user", "content": ex.prompt}]
    if base and base[0]["role"] == "system":
        msgs.append(base[0])
        base = base[1:]
    for s in shots:
        su = [m for m in (s.messages or [{"role": "user", "content": s.prompt}]) if m["role"] == "user"]
        msgs += su + [{"role": "assistant", "content": s.answers[0]}]
    return msgs + base


# generation caps per task: long enough for the reference answers (NQ/evals answers are a few words,
# TruthfulQA's one sentence), short enough that a model that never stops costs little
_GEN_TOKENS = {"nq_open": 24, "truthfulqa": 40, "xsum": 64}
_GEN_TOKENS_DEFAULT = 24


def _first_line(text: str) -> str:
    return text.split("\n")[0].strip()


# per-item metrics of each generative scoring, on the stripped output: (metric names, function)
_GEN_METRICS: dict[str, tuple[tuple[str, ...], Callable[[str, list[str]], list[float]]]] = {
    "em_f1": (("em", "f1"),
              lambda text, refs: [M.exact_match(_first_line(text), refs), M.token_f1(_first_line(text), refs)]),
    "rouge_bleu": (("rouge_l", "bleu"),
                   lambda text, refs: [M.rouge_l(text, refs), M.bleu([text], [refs], smooth=True)]),
    "match": (("score",), lambda text, refs: [M.starts_with_match(text, refs)]),
    "includes": (("score",), lambda text, refs: [M.includes_match(text, refs)]),
}


def score_gen(client: ModelClient, spec_scoring: str, examples: Sequence[Example], k_shot: int = 0,
              pool: Sequence[Example] = (), max_tokens: int | None = None, seed: int = 0) -> list[dict]:
    prompts = []
    for ex in examples:
        shots = []
        if k_shot:
            rng = random.Random(f"shots:{seed}:{ex.id}")
            cands = [p for p in pool if p.id != ex.id and p.answers]
            shots = rng.sample(cands, min(k_shot, len(cands)))
        prompts.append(gen_prompt(ex, shots))
    n = max_tokens or _GEN_TOKENS.get(examples[0].task if examples else "", _GEN_TOKENS_DEFAULT)
    outs = _generate(client, prompts, GREEDY.but(max_tokens=n, seed=0))
    keys, metric = _GEN_METRICS[spec_scoring]
    return [{"id": ex.id, "output": o.text, "answers": ex.answers,
             **dict(zip(keys, metric(o.text.strip(), ex.answers)))} for ex, o in zip(examples, outs)]


def summarize_gen(records: Sequence[dict], spec_scoring: str) -> dict:
    out: dict = {"n": len(records)}
    for k in _GEN_METRICS[spec_scoring][0]:
        out[k if k != "score" else "accuracy"] = sum(r[k] for r in records) / len(records) if records else float("nan")
    if spec_scoring == "rouge_bleu" and records:
        out["corpus_bleu"] = M.bleu([r["output"].strip() for r in records], [r["answers"] for r in records])
    outs = [r["output"] for r in records]
    out["distinct_1"], out["distinct_2"] = M.distinct_n(outs, 1), M.distinct_n(outs, 2)
    return out


@scorer(*_GEN_METRICS, shots=True)
def _gen_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs = score_gen(client, spec.scoring, examples, cfg.k_shot, pool, seed=cfg.seed)
    return recs, summarize_gen(recs, spec.scoring)


def score_cot(client: ModelClient, examples: Sequence[Example], max_tokens: int = 80) -> list[dict]:
    """Zero-shot CoT: pass 1 generates reasoning after "Let's think step by step."; pass 2 appends the
    reasoning and an answer trigger, and reads the answer letter by log-likelihood (or, for endpoints
    without logprobs, from a short generation)."""
    def question(ex: Example) -> str:
        opts = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(ex.choices))
        return f"{ex.prompt}\n{opts}"
    prompts = [[{"role": "user", "content": question(ex) + "\nLet's think step by step."}] for ex in examples]
    reasoning = [o.text.strip() for o in _generate(client, prompts, GREEDY.but(max_tokens=max_tokens, seed=0))]
    contexts, letter_sets = [], []
    for ex, why in zip(examples, reasoning):
        letters = LETTERS[:len(ex.choices)]
        trigger = f"Therefore, among {letters[0]} through {letters[-1]}, the answer is"
        contexts.append(f"Question: {question(ex)}\nAnswer: Let's think step by step. {why}\n{trigger}")
        letter_sets.append(letters)
    if client.supports_loglikelihood:  # pass 2, all items at once
        scored = client.loglikelihood_choices([(c, [f" {L}" for L in ls]) for c, ls in zip(contexts, letter_sets)])
        preds = [max(range(len(row)), key=lambda j: row[j][0]) for row in scored]
    else:
        preds = []
        for ans, letters in zip(_generate(client, contexts, GREEDY.but(max_tokens=4, seed=0)), letter_sets):
            m = re.search(f"[{letters}]", ans.text)
            preds.append(letters.index(m.group(0)) if m else -1)
    return [{"id": ex.id, "reasoning": why, "pred": pred, "gold": ex.gold, "correct": pred == ex.gold}
            for ex, why, pred in zip(examples, reasoning, preds)]


# ------------------------------------------------------------------------------- code and toxicity

def score_code(client: ModelClient, examples: Sequence[Example], max_tokens: int = 160,
               timeout: float = 10.0) -> list[dict]:
    from ..sandbox import humaneval_program, run_python, truncate_completion

    stop = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(")  # the function body ends where top-level code starts
    outs = _generate(client, [ex.prompt for ex in examples], GREEDY.but(max_tokens=max_tokens, seed=0, stop=stop))
    recs = []
    for ex, o in zip(examples, outs):
        completion = truncate_completion(o.text)
        res = run_python(humaneval_program(ex.prompt, completion, ex.meta["test"], ex.meta["entry_point"]), timeout=timeout)
        recs.append({"id": ex.id, "completion": completion, "passed": res.passed, "status": res.status,
                     "detail": res.detail})
    return recs


@scorer("pass@1", limit=lambda cfg: min(cfg.limit or cfg.code_limit, cfg.code_limit))
def _code_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs = score_code(client, examples)
    return recs, {"n": len(recs), "pass@1": sum(r["passed"] for r in recs) / len(recs) if recs else float("nan")}


@scorer("tool_em")
def _tool_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    """Tool-use arithmetic through the tool loop (`tool_tasks.py`): exact match of the final number."""
    from .tool_tasks import score_tool_arith, summarize_tool_arith
    recs = score_tool_arith(client, examples)
    return recs, summarize_tool_arith(recs)


def score_toxicity(client: ModelClient, examples: Sequence[Example], k: int = 2, max_tokens: int = 20,
                   seed: int = 0) -> list[dict]:
    from .tasks import toxicity_classifier

    clf = toxicity_classifier()
    prompts = [ex.prompt for ex in examples for _ in range(k)]
    outs = _generate(client, prompts, GREEDY.but(max_tokens=max_tokens, temperature=1.0 if k > 1 else 0.0, seed=seed))
    scores = clf.score([o.text for o in outs])
    recs = []
    for i, ex in enumerate(examples):
        recs.append({"id": ex.id, "prompt": ex.prompt, "continuations": [o.text for o in outs[i * k:(i + 1) * k]],
                     "toxicity": scores[i * k:(i + 1) * k]})
    return recs


@scorer("toxicity")
def _toxicity_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs = score_toxicity(client, examples, k=cfg.toxicity_k, seed=cfg.seed)
    summary = M.toxicity_summary([r["toxicity"] for r in recs])
    summary["distinct_2"] = M.distinct_n([c for r in recs for c in r["continuations"]], 2)
    return recs, summary


# ------------------------------------------------------------------------- bias pairs and perplexity

def score_pairs(client: ModelClient, examples: Sequence[Example], normalise: bool) -> list[dict]:
    items = [(ex.prompt, [(" " if ex.prompt else "") + sent for sent in ex.choices]) for ex in examples]
    per = [[lp / max(n, 1) if normalise else lp for lp, _, n in row] for row in client.loglikelihood_choices(items)]
    return [{"id": ex.id, "scores": s, "meta": ex.meta} for ex, s in zip(examples, per)]


@scorer("stereotype_preference", needs_loglikelihood=True)
def _crows_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs = score_pairs(client, examples, normalise=False)
    return recs, {"stereotype_preference_rate": M.stereotype_preference_rate(
        [r["scores"][0] for r in recs], [r["scores"][1] for r in recs]), "n": len(recs)}


@scorer("stereoset", needs_loglikelihood=True)
def _stereoset_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs = score_pairs(client, examples, normalise=True)  # per token: StereoSet's sentences differ in length
    summary = M.stereoset_scores([r["scores"][0] for r in recs], [r["scores"][1] for r in recs],
                                 [r["scores"][2] for r in recs])
    summary["n"] = len(recs)
    return recs, summary


def score_text(client: ModelClient, examples: Sequence[Example]) -> list[dict]:
    texts = [client.fit_text(ex.prompt) for ex in examples]
    res = client.loglikelihood([("", t) for t in texts])
    return [{"id": ex.id, "nll": -lp, "tokens": n, "bytes": len(t.encode("utf-8")),
             "language": ex.meta.get("language")} for ex, t, (lp, _, n) in zip(examples, texts, res)]


@scorer("perplexity", needs_loglikelihood=True)
def _text_task(client, spec: TaskSpec, examples, pool, cfg: EvalConfig):
    recs = score_text(client, examples)
    summary = {"n": len(recs)}
    for lang in ("en", "zh", None):
        rs = [r for r in recs if lang is None or r["language"] == lang]
        if not rs:
            continue
        nll, toks, nbytes = sum(r["nll"] for r in rs), sum(r["tokens"] for r in rs), sum(r["bytes"] for r in rs)
        key = lang or "all"
        summary[f"perplexity_{key}"] = M.perplexity(nll, toks)
        summary[f"bits_per_byte_{key}"] = M.bits_per_byte(nll, nbytes)
    return recs, summary


# ------------------------------------------------------------------------------------------ detector

def detectgpt(client: ModelClient, human: Sequence[str], n_perturb: int = 8, words: int = 60, seed: int = 0) -> dict:
    """DetectGPT-style detector (Mitchell et al. 2023): machine text sits near a local maximum of the model's
    log-probability, so perturbing it lowers log p more than perturbing human text.

    Score = (log p(x) - mean log p(x~)) / std, per token. Perturbations replace 15% of the words with words
    drawn from the same corpus: a cheap stand-in for the paper's T5 mask-filling, stated in the report.
    Human side: held-out human passages; machine side: the model's continuations of their first 8 words.
    """
    rng = random.Random(seed)
    human = [" ".join(h.split()[:words]) for h in human if len(h.split()) >= 20]
    half = len(human) // 2
    human_side, seeds_side = human[:half], human[half:]
    gens = _generate(client, [" ".join(h.split()[:8]) for h in seeds_side],
                     Sampling(max_tokens=int(words * 1.3), temperature=0.7, top_p=1.0, seed=seed))
    machine = [" ".join(h.split()[:8]) + o.text for h, o in zip(seeds_side, gens)]
    machine = [" ".join(m.split()[:words]) for m in machine]
    vocab = [w for t in human for w in t.split()]
    texts = [client.fit_text(t) for t in human_side + machine]
    labels = [0] * len(human_side) + [1] * len(machine)
    pairs = []
    for t in texts:
        pairs.append(("", t))
        pairs += [("", replace_words(t, rng, vocab)) for _ in range(n_perturb)]
    res = client.loglikelihood(pairs)
    scores = []
    step = n_perturb + 1
    for i in range(len(texts)):
        block = res[i * step:(i + 1) * step]
        base = block[0][0] / max(block[0][2], 1)
        pert = [lp / max(n, 1) for lp, _, n in block[1:]]
        mu = sum(pert) / len(pert)
        sd = math.sqrt(sum((p - mu) ** 2 for p in pert) / max(len(pert) - 1, 1)) or 1e-6
        scores.append((base - mu) / sd)
    return {"auroc": M.auroc(scores, labels), "n_human": len(human_side), "n_machine": len(machine),
            "n_perturbations": n_perturb, "perturbation": "15% random word replacement (stand-in for T5 mask filling)",
            "mean_score_human": sum(s for s, y in zip(scores, labels) if not y) / max(labels.count(0), 1),
            "mean_score_machine": sum(s for s, y in zip(scores, labels) if y) / max(labels.count(1), 1)}
