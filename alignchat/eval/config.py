"""Settings of one evaluation run (`EvalConfig`) and the defaults of the model it runs on.

Notable choices:
- `limit` caps items per task with a deterministic sample, the same for every model, so two runs compare.
- Each perturbation or swap is a full extra scoring pass, so the default robustness and fairness sections
  use one task each; the full suite adds PIQA and BoolQ (`suites.FULL_SECTION_TASKS`).
- A local model gets 16 engine slots and a 1,024-token context: the generation cache is
  max_batch x max_seq_len positions, which keeps it under 1 GB for SmolLM2-135M, and every eval prompt
  fits (longer ones keep their rightmost tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import metrics as M

LOCAL_OPTIONS = {"max_batch": 16, "max_seq_len": 1024, "threads": 0}  # a local model's `LocalClient` options


@dataclass
class EvalConfig:
    """One evaluation run. `limit` caps items per task (a deterministic sample, same for every model)."""

    suite: str = "lite"
    tasks: list[str] = field(default_factory=list)    # overrides the suite's task list when given
    limit: int | None = 20
    k_shot: int = 0
    seed: int = 0
    perturbations: list[str] = field(default_factory=lambda: ["typo", "case", "whitespace", "synonym"])
    robustness_tasks: list[str] = field(default_factory=lambda: ["openbookqa"])  # short contexts: cheap
    fairness_tasks: list[str] = field(default_factory=lambda: ["bbq"])
    cot_task: str = "mmlu"
    cot_limit: int = 5
    toxicity_k: int = 2
    code_limit: int = 5
    detect_texts: int = 16
    redteam_limit: int | None = None    # base prompts and look-alikes per language in @redteam (None: `limit`)
    energy: M.EnergyAssumptions = field(default_factory=M.EnergyAssumptions)
