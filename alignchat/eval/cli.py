"""`alignchat eval`: run evaluation suites, build report cards, compare checkpoints.

    alignchat eval run --model smollm2-135m-instruct --suite lite --limit 20 --out runs/eval/smollm2
    alignchat eval run --endpoint http://127.0.0.1:8000/v1 --tasks nq_open,zh_homonym   # key: $OPENAI_API_KEY
    alignchat eval report runs/eval/smollm2 runs/eval/sft --out docs/report
    alignchat eval winrate runs/eval/sft runs/eval/smollm2 --judge-reward runs/rm/final
    alignchat eval elo data/compare.jsonl
    alignchat eval tasks                     # list tasks and suites

`run` is resumable: rerunning with the same --out skips the tasks already finished.

The model flags are the shared set (`alignchat.client.cli`): `--model` | `--endpoint URL
[--endpoint-model NAME] [--api-key-env VAR]`, `--device auto` (CUDA when present) and `--dtype`; a judge's
are prefixed (`--judge-model`, `--judge-endpoint`, `--judge-endpoint-model`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..client.cli import add_client_args
from ..errors import UserError
from .config import LOCAL_OPTIONS


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="eval_cmd", metavar="COMMAND")

    r = sub.add_parser("run", help="evaluate one model on a suite; writes results.json, report.md and plots")
    add_client_args(r, model_help="the model to evaluate: registry name (e.g. smollm2-135m-instruct), checkpoint "
                                  "directory or .gguf file")
    r.add_argument("--suite", default="lite", help="lite (default), full or tiny")
    r.add_argument("--tasks", help="comma-separated task names instead of a suite (see `alignchat eval tasks`)")
    r.add_argument("--limit", type=int, default=20, help="items per task, a fixed random sample (default 20; 0 = all)")
    r.add_argument("--k-shot", type=int, default=0, help="in-context examples per item (default 0)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-batch", type=int, default=LOCAL_OPTIONS["max_batch"],
                   help=f"sequences generated at once (default {LOCAL_OPTIONS['max_batch']})")
    r.add_argument("--max-seq-len", type=int, default=LOCAL_OPTIONS["max_seq_len"],
                   help=f"context window used for eval (default {LOCAL_OPTIONS['max_seq_len']}; longer prompts keep "
                        "their rightmost tokens)")
    r.add_argument("--threads", type=int, default=LOCAL_OPTIONS["threads"],
                   help="CPU threads (default 0 = the cores not already busy, by the load average)")
    r.add_argument("--cpu-watts", type=float, help="assumed CPU power draw for the energy estimate")
    r.add_argument("--gpu-watts", type=float, help="assumed per-GPU power draw for the energy estimate")
    r.add_argument("--out", required=False, help="run directory (default runs/eval/<model name>)")

    rep = sub.add_parser("report", help="one markdown report card with plots from several run directories")
    rep.add_argument("runs", nargs="+", help="run directories written by `eval run`, in pipeline order")
    rep.add_argument("--out", default="docs/report", help="output directory (default docs/report)")
    rep.add_argument("--winrate", action="append", default=[], help="winrate JSON files to include")
    rep.add_argument("--validation", help="a SmolLM2 run (e.g. --tasks mmlu,piqa,... --limit 200) whose scores are "
                                          "compared with the published figures (default: the SmolLM2 run among RUNS)")

    w = sub.add_parser("winrate", help="win rate of run A over run B, each pair judged in both orders")
    w.add_argument("run_a")
    w.add_argument("run_b")
    w.add_argument("--judge-reward", help="reward-model checkpoint (from the reward stage) as the judge")
    add_client_args(w, prefix="judge-", model_help="a model used as an AI judge (local)")
    w.add_argument("--limit", type=int)
    w.add_argument("--out", help="write the result JSON here (default RUN_A/winrate_vs_<B>.json)")

    e = sub.add_parser("elo", help="Bradley-Terry/Elo ratings from compare-mode comparison JSONL")
    e.add_argument("file")

    sub.add_parser("tasks", help="list tasks and suites")


def _print(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=1, default=str))


def run(args) -> int:
    cmd = getattr(args, "eval_cmd", None)
    if cmd is None:
        raise UserError("choose a command: run, report, winrate, elo or tasks (see `alignchat eval --help`)")
    if cmd == "tasks":
        from .suites import SUITES
        from .tasks import TASKS
        for name, spec in TASKS.items():
            print(f"{name:24s} {spec.kind:12s} {spec.category:18s} {spec.language:6s} {spec.description}")
        for name, tasks in SUITES.items():
            print(f"suite {name}: {', '.join(tasks)}")
        return 0
    if cmd == "run":
        from ..client.cli import client_from_args
        from . import metrics as M
        from .config import EvalConfig
        from .report import write_report
        from .runner import run_suite
        from .suites import SECTIONS, suite_tasks
        from .tasks import TASKS

        cfg = EvalConfig(suite=args.suite, tasks=[t for t in (args.tasks or "").split(",") if t],
                         limit=args.limit or None, k_shot=args.k_shot, seed=args.seed)
        unknown = [t for t in suite_tasks(cfg) if t not in TASKS and t not in SECTIONS]
        if unknown:  # before loading a model: a typo should fail in a second, not after the load
            raise UserError(f"unknown task {unknown[0]!r}; see `alignchat eval tasks`")
        client = client_from_args(args, max_batch=args.max_batch, max_seq_len=args.max_seq_len, threads=args.threads)
        if client is None:
            raise UserError("give --model (a checkpoint, registry name or .gguf) or --endpoint URL")
        energy = M.EnergyAssumptions()
        if args.cpu_watts is not None:
            energy.cpu_watts = args.cpu_watts
        if args.gpu_watts is not None:
            energy.gpu_watts, energy.n_gpus = args.gpu_watts, 1
        elif client.kind == "local" and client.device.startswith("cuda"):
            energy.gpu_watts, energy.n_gpus = 700.0, 1  # H100 SXM board power; override with --gpu-watts
        cfg.energy = energy
        out = Path(args.out or Path("runs/eval") / Path(str(args.model or args.endpoint_model or "endpoint")).name)
        summary = run_suite(client, cfg, out)
        write_report([out], out)
        print(f"wrote {out}/results.json, {out}/report.md and plots ({summary['wall_seconds']:.0f}s)", file=sys.stderr)
        return 0
    if cmd == "report":
        from .report import write_report
        path = write_report([Path(r) for r in args.runs], Path(args.out), winrate_files=[Path(w) for w in args.winrate],
                            validation_run=Path(args.validation) if args.validation else None)
        print(f"wrote {path}", file=sys.stderr)
        return 0
    if cmd == "winrate":
        from ..client.cli import client_from_args, wants_model
        from ..fetch import atomic_write_text
        from .judges import AIJudge, RewardJudge, pairwise_win_rate
        if bool(args.judge_reward) + wants_model(args, "judge-") != 1:
            raise UserError("choose one judge: --judge-reward CKPT, --judge-model MODEL or --judge-endpoint URL")
        if args.judge_reward:
            judge = RewardJudge(args.judge_reward, device=args.device)
        else:
            judge = AIJudge(client_from_args(args, "judge-", **LOCAL_OPTIONS))
        res = pairwise_win_rate(args.run_a, args.run_b, judge, args.limit)
        out = Path(args.out or Path(args.run_a) / f"winrate_vs_{Path(args.run_b).name}.json")
        atomic_write_text(out, json.dumps(res, ensure_ascii=False, indent=1))
        _print({k: v for k, v in res.items() if k != "records"})
        return 0
    if cmd == "elo":
        from .judges import elo_from_comparisons
        _print(elo_from_comparisons(args.file))
        return 0
    raise UserError(f"unknown eval command {cmd!r}")
