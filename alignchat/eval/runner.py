"""Run evaluation suites against a model client and write results.json, metrics.jsonl and per-task records.

The model is any `alignchat.client.ModelClient`: one of our checkpoints on the shared engine, or any
OpenAI-compatible endpoint (tasks that need log-likelihoods are skipped, with the reason recorded, when
the endpoint does not return prompt logprobs). The pieces: `scorers` (how each kind of task is scored,
registered by each task's `scoring`), `suites` (task lists and the '@' sections), `perturb` (robustness
and fairness edits), `judges` (pairwise win rate, Elo).

Notable choices:
- `evaluate_task` only dispatches: a '@' name to its section, a task to the scorer its spec names.
- A run directory is resumable: each finished task is written atomically to tasks/<name>.json with a
  fingerprint of the settings it depends on and of the model (`client.describe()`); a rerun with the same
  settings skips it (except the efficiency probe, which measures this machine now).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from ..client import ModelClient
from ..errors import UserError
from ..fetch import atomic_write_text
from . import metrics as M
from .config import EvalConfig
from .scorers import SCORERS
from .suites import SECTIONS, suite_tasks
from .tasks import TASKS, load_task


def evaluate_task(client: ModelClient, name: str, cfg: EvalConfig) -> dict:
    """Evaluate one task (or a cross-cutting '@' section) and return its summary with per-item records."""
    if name in SECTIONS:
        return SECTIONS[name](client, cfg)
    spec = TASKS.get(name)
    if spec is None:
        raise UserError(f"unknown task {name!r}")
    scorer = SCORERS.get(spec.scoring)
    if scorer is None:
        raise UserError(f"task {name}: no scorer registered for scoring {spec.scoring!r}")
    if scorer.needs_loglikelihood and not client.supports_loglikelihood:
        return {"task": name, "category": spec.category, "skipped": "backend has no log-likelihood", "summary": {},
                "records": []}
    examples = load_task(name, scorer.limit(cfg), cfg.seed)
    pool = []
    if cfg.k_shot and scorer.shots:
        ids = {e.id for e in examples}
        pool = [e for e in load_task(name, None) if e.id not in ids]
    recs, summary = scorer.score(client, spec, examples, pool, cfg)
    return {"task": name, "category": spec.category, "language": spec.language, "scoring": spec.scoring,
            "summary": summary, "records": recs}


def _jsonable(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def run_suite(client: ModelClient, cfg: EvalConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Evaluate every task of the suite into out_dir, skipping tasks already finished with the same settings."""
    from tqdm import tqdm

    out = Path(out_dir)
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in asdict(cfg).items()}
    # plain tasks depend only on these settings; the '@' sections on the whole config
    base_settings = {k: settings[k] for k in ("limit", "k_shot", "seed")}
    started = time.perf_counter()
    names = suite_tasks(cfg)
    results: dict[str, dict] = {}
    log = open(out / "metrics.jsonl", "a", encoding="utf-8")
    bar = tqdm(names, desc="eval", unit="task", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        path = out / "tasks" / f"{name.lstrip('@')}.json"
        fingerprint = json.dumps({**(settings if name.startswith("@") else base_settings), "model": client.describe(),
                                  "task": name}, sort_keys=True, default=str)
        if path.exists():
            try:
                prev = json.loads(path.read_text(encoding="utf-8"))
                if prev.get("fingerprint") == fingerprint and name != "@efficiency":
                    results[name] = prev
                    continue
            except json.JSONDecodeError:
                pass  # a damaged record is recomputed
        t0 = time.perf_counter()
        res = evaluate_task(client, name, cfg)
        res["seconds"] = time.perf_counter() - t0
        res["fingerprint"] = fingerprint
        atomic_write_text(path, json.dumps(_jsonable(res), ensure_ascii=False, indent=1))
        log.write(json.dumps(_jsonable({"task": name, "seconds": res["seconds"], **{
            k: v for k, v in res["summary"].items() if isinstance(v, (int, float))}}), ensure_ascii=False) + "\n")
        log.flush()
        results[name] = res
    log.close()
    wall = time.perf_counter() - started
    summary = {
        "model": client.describe(), "config": settings, "wall_seconds": wall,
        "energy": M.strubell_energy(wall, cfg.energy),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tasks": {n: {k: v for k, v in r.items() if k not in ("records", "fingerprint")} for n, r in results.items()},
    }
    atomic_write_text(out / "results.json", json.dumps(_jsonable(summary), ensure_ascii=False, indent=1))
    return summary
