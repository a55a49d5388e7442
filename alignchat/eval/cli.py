"""`alignchat eval`: run evaluation suites, build report cards, compare checkpoints.

    alignchat eval run --model smollm2-135m-instruct --suite lite --limit 20 --out runs/eval/smollm2
    alignchat eval run --endpoint http://127.0.0.1:8000/v1 --tasks nq_open,zh_homonym   # key: $OPENAI_API_KEY
    alignchat eval run --model runs/sft/final --config eval.toml limit=50
    alignchat eval report runs/eval/smollm2 runs/eval/sft --out docs/report
    alignchat eval winrate runs/eval/sft runs/eval/smollm2 --judge-reward runs/rm/final
    alignchat eval elo data/compare.jsonl
    alignchat eval tasks                     # list tasks and suites

`run` is resumable: rerunning with the same --out skips the tasks already finished.

Notable choices:
- Every subcommand takes the stage contract (`alignchat.settings`): its settings are one dataclass below,
  each field a flag and a `KEY=VALUE`, `--config FILE` holds the same keys, the precedence is defaults,
  then the file, then the command line, `--out` is what it writes, and `--help` ends with what it reads
  and writes. Positional arguments that are not `KEY=VALUE` are the inputs (run directories, files).
- The model flags are the shared set (`alignchat.client.cli`), given on the command line: `--model` |
  `--endpoint URL [--endpoint-model NAME] [--api-key-env VAR]`, `--device auto` (CUDA when present) and
  `--dtype`; a judge's are prefixed (`--judge-model`, `--judge-endpoint`, `--judge-endpoint-model`).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..client.cli import add_client_args
from ..errors import UserError
from ..settings import Subcommand, add_settings_arguments, setting, settings_from_args
from .config import LOCAL_OPTIONS

MODEL_FLAGS_NOTE = ("model flags: {flags}, --api-key-env VAR, --device, --dtype are the shared model flags (the same "
                    "in every verb), given on the command line")


@dataclass
class RunConfig:
    """`alignchat eval run`'s settings (the model: the shared model flags)."""

    suite: str = setting("lite", "lite, full, chinese, redteam or tiny (see `alignchat eval tasks`)")
    tasks: list[str] = setting(help="task names instead of a suite (see `alignchat eval tasks`)", factory=list)
    limit: int = setting(20, "items per task, a fixed random sample, the same for every model (0 = all)")
    k_shot: int = setting(0, "in-context examples per item")
    redteam_limit: int = setting(0, "base prompts and look-alikes per language in @redteam (0 = --limit)")
    seed: int = setting(0, "seed of the item sample and of generation")
    max_batch: int = setting(LOCAL_OPTIONS["max_batch"], "sequences a local model generates at once")
    max_seq_len: int = setting(LOCAL_OPTIONS["max_seq_len"], "context window of a local model (longer prompts "
                                                             "keep their rightmost tokens)")
    threads: int = setting(LOCAL_OPTIONS["threads"], "CPU threads (0 = the cores not already busy, by the load "
                                                     "average)")
    cpu_watts: float | None = setting(None, "assumed CPU power draw for the energy estimate")
    gpu_watts: float | None = setting(None, "assumed per-GPU power draw for the energy estimate (none: 700 W, an "
                                            "H100 SXM board, when a local model runs on CUDA)")
    out: str = setting("", "run directory (default: runs/eval/<model name>); a rerun skips its finished tasks")


@dataclass
class ReportConfig:
    """`alignchat eval report`'s settings."""

    runs: list[str] = setting(help="run directories written by `eval run`, in pipeline order", factory=list)
    out: str = setting("docs/report", "output directory")
    winrate: list[str] = setting(help="winrate JSON files (from `eval winrate`) to include", factory=list)
    validation: str = setting("", "a SmolLM2 run (e.g. --tasks mmlu,piqa,... --limit 200) whose scores are compared "
                                  "with the published figures (default: the SmolLM2 run among the runs)")


@dataclass
class WinrateConfig:
    """`alignchat eval winrate`'s settings (an AI judge: the shared model flags, prefixed judge-)."""

    runs: list[str] = setting(help="RUN_A RUN_B: two run directories written by `eval run`", factory=list)
    judge_reward: str = setting("", "reward-model checkpoint (from `alignchat rm`) as the judge")
    limit: int = setting(0, "judge at most this many shared items (0 = all)")
    out: str = setting("", "the result JSON (default: RUN_A/winrate_vs_<RUN_B name>.json)")


@dataclass
class EloConfig:
    """`alignchat eval elo`'s settings."""

    input: list[str] = setting(help="FILE: comparison JSONL whose meta.models names the model behind each "
                                    "response (the web UI's compare mode)", factory=list)
    out: str = setting("", "also write the ratings JSON here (default: print only)")


@dataclass
class TasksConfig:
    """`alignchat eval tasks`'s settings."""

    out: str = setting("", "also write the listing here (default: print only)")


def _print(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=1, default=str))


def _write(path: str, text: str) -> None:
    from ..fetch import atomic_write_text
    atomic_write_text(path, text)


def cmd_run(cfg: RunConfig, args) -> int:
    from ..client.cli import client_from_args
    from . import metrics as M
    from .config import EvalConfig
    from .report import write_report
    from .runner import run_suite
    from .suites import SECTIONS, suite_tasks
    from .tasks import TASKS

    eval_cfg = EvalConfig(suite=cfg.suite, tasks=list(cfg.tasks), limit=cfg.limit or None, k_shot=cfg.k_shot,
                          seed=cfg.seed, redteam_limit=cfg.redteam_limit or None)
    unknown = [t for t in suite_tasks(eval_cfg) if t not in TASKS and t not in SECTIONS]
    if unknown:  # before loading a model: a typo should fail in a second, not after the load
        raise UserError(f"unknown task {unknown[0]!r}; see `alignchat eval tasks`")
    client = client_from_args(args, max_batch=cfg.max_batch, max_seq_len=cfg.max_seq_len, threads=cfg.threads)
    if client is None:
        raise UserError("give --model (a checkpoint, registry name or .gguf) or --endpoint URL")
    energy = M.EnergyAssumptions()
    if cfg.cpu_watts is not None:
        energy.cpu_watts = cfg.cpu_watts
    if cfg.gpu_watts is not None:
        energy.gpu_watts, energy.n_gpus = cfg.gpu_watts, 1
    elif client.kind == "local" and client.device.startswith("cuda"):
        energy.gpu_watts, energy.n_gpus = 700.0, 1  # H100 SXM board power; override with --gpu-watts
    eval_cfg.energy = energy
    out = Path(cfg.out or Path("runs/eval") / Path(str(args.model or args.endpoint_model or "endpoint")).name)
    summary = run_suite(client, eval_cfg, out)
    write_report([out], out)
    print(f"wrote {out}/results.json, {out}/report.md and plots ({summary['wall_seconds']:.0f}s)", file=sys.stderr)
    return 0


def cmd_report(cfg: ReportConfig, args) -> int:
    from .report import write_report
    if not cfg.runs:
        raise UserError("give one or more run directories: alignchat eval report RUN... --out DIR")
    path = write_report([Path(r) for r in cfg.runs], Path(cfg.out), winrate_files=[Path(w) for w in cfg.winrate],
                        validation_run=Path(cfg.validation) if cfg.validation else None)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_winrate(cfg: WinrateConfig, args) -> int:
    from ..client.cli import client_from_args, wants_model
    from .judges import AIJudge, RewardJudge, pairwise_win_rate
    if len(cfg.runs) != 2:
        raise UserError(f"give two run directories, RUN_A RUN_B (got {len(cfg.runs)})")
    if bool(cfg.judge_reward) + wants_model(args, "judge-") != 1:
        raise UserError("choose one judge: --judge-reward CKPT, --judge-model MODEL or --judge-endpoint URL")
    if cfg.judge_reward:
        judge = RewardJudge(cfg.judge_reward, device=args.device)
    else:
        judge = AIJudge(client_from_args(args, "judge-", **LOCAL_OPTIONS))
    run_a, run_b = cfg.runs
    res = pairwise_win_rate(run_a, run_b, judge, cfg.limit or None)
    out = Path(cfg.out or Path(run_a) / f"winrate_vs_{Path(run_b).name}.json")
    _write(str(out), json.dumps(res, ensure_ascii=False, indent=1))
    _print({k: v for k, v in res.items() if k != "records"})
    return 0


def cmd_elo(cfg: EloConfig, args) -> int:
    from .judges import elo_from_comparisons
    if len(cfg.input) != 1:
        raise UserError(f"give one comparison file: alignchat eval elo FILE (got {len(cfg.input)})")
    res = elo_from_comparisons(cfg.input[0])
    _print(res)
    if cfg.out:
        _write(cfg.out, json.dumps(res, ensure_ascii=False, indent=1) + "\n")
    return 0


def cmd_tasks(cfg: TasksConfig, args) -> int:
    from .suites import SUITES
    from .tasks import TASKS
    lines = [f"{name:24s} {spec.kind:12s} {spec.category:18s} {spec.language:6s} {spec.description}"
             for name, spec in TASKS.items()]
    lines += [f"suite {name}: {', '.join(tasks)}" for name, tasks in SUITES.items()]
    print("\n".join(lines))
    if cfg.out:
        _write(cfg.out, "\n".join(lines) + "\n")
    return 0


# --- the command line ----------------------------------------------------------------------------------

SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand(
        "evaluate one model on a suite; writes results.json, report.md and plots", RunConfig,
        reads="the model (--model: registry name, checkpoint directory or .gguf; or --endpoint URL), the task "
              "data (fetched once into the artifact store, SHA-256 pinned); --out if it exists (finished tasks "
              "are skipped)",
        writes="--out DIR: results.json, metrics.jsonl, tasks/<task>.json (per-item records), report.md and "
               "PNG plots",
        func=cmd_run, model=""),
    "report": Subcommand(
        "one markdown report card with plots from several run directories", ReportConfig,
        reads="RUN...: run directories from `eval run` (results.json); --winrate JSON files",
        writes="--out DIR: report.md, report.json and PNG plots (accuracy, calibration, robustness, bias, "
               "toxicity, efficiency)",
        func=cmd_report, inputs="runs"),
    "winrate": Subcommand(
        "win rate of run A over run B, each pair judged in both orders", WinrateConfig,
        reads="RUN_A RUN_B: run directories from `eval run` (their generations), the judge (--judge-reward, "
              "--judge-model or --judge-endpoint)",
        writes="--out FILE (default RUN_A/winrate_vs_<RUN_B>.json): win rate, position consistency and "
               "per-item outcomes; prints the summary",
        func=cmd_winrate, inputs="runs", model="judge-"),
    "elo": Subcommand(
        "Bradley-Terry/Elo ratings from compare-mode comparison JSONL", EloConfig,
        reads="FILE: comparison JSONL with meta.models",
        writes="--out FILE if given: the ratings JSON (also printed)",
        func=cmd_elo, inputs="input"),
    "tasks": Subcommand(
        "list tasks and suites", TasksConfig,
        reads="nothing (the task and suite tables)",
        writes="--out FILE if given: the listing (also printed)",
        func=cmd_tasks),
}


def add_arguments(parser) -> None:
    parser.description = ("Evaluate models (HELM-style metrics), compare checkpoints, write a report card "
                          "(docs/evaluation.md).")
    sub = parser.add_subparsers(dest="eval_cmd", metavar="COMMAND")
    for name, sc in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=sc.help, description=sc.help)
        notes = ""
        if sc.model is not None:
            flags = ("--model | --endpoint URL --endpoint-model NAME" if not sc.model else
                     "--judge-model | --judge-endpoint URL --judge-endpoint-model NAME")
            notes = MODEL_FLAGS_NOTE.format(flags=flags)
        add_settings_arguments(p, sc.defaults(), reads=sc.reads, writes=sc.writes, inputs=sc.inputs, notes=notes)
        if sc.model == "":
            add_client_args(p, model_help="the model to evaluate: registry name (e.g. smollm2-135m-instruct), "
                                          "checkpoint directory or .gguf file")
        elif sc.model:
            add_client_args(p, prefix=sc.model, model_help="a model used as an AI judge")
        p.set_defaults(func=sc.func)


def run(args) -> int:
    if getattr(args, "eval_cmd", None) is None:
        raise UserError("choose a command: run, report, winrate, elo or tasks (see `alignchat eval --help`)")
    return args.func(settings_from_args(args), args)
