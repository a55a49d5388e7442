"""Distillation on real text: held-out loss of a half-depth SmolLM2 student distilled from SmolLM2-135M-Instruct
against the same student trained on the data alone, with the teacher and the untrained student as anchors.

The two students come from `alignchat distill white-box` runs that differ only in `alpha` (docs/training.md,
"Distillation", has the commands). This script scores every model on the same held-out windows of the shard
directory's val split (the windows the runs validate on: the first ones, in order): cross-entropy per token
(nats), and KL(teacher ‖ model) per token at temperature 1, and writes them with the runs' settings.

    python bench/distill_smollm2.py --shards runs/distill/shards --distilled runs/distill/distilled \
        --data-only runs/distill/data-only [--windows 16] [--seq-len 64]

Results: bench/results/distill.json (and a markdown table on stdout).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.data.shards import TokenBatcher, TokenShards  # noqa: E402
from alignchat.hub import load_model  # noqa: E402
from alignchat.train.distill import keep_layers, parse_layers  # noqa: E402


@torch.no_grad()
def score(model, teacher_logps: list[torch.Tensor], batches: list) -> dict:
    ce = kl = n = 0.0
    for (x, y), lt in zip(batches, teacher_logps):
        logits = model(x).float()
        ce += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum"))
        ls = logits[..., :lt.size(-1)].log_softmax(-1)
        kl += float((lt.exp() * (lt - ls)).sum())
        n += y.numel()
    return {"heldout_ce": ce / n, "heldout_kl_to_teacher": kl / n, "tokens": int(n)}


def final_metrics(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    steps = [r for r in rows if "loss" in r]
    return {"val_loss_by_step": vals, "steps": steps[-1]["step"],
            "mean_step_time_s": sum(r["step_time_s"] for r in steps) / len(steps)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", required=True)
    ap.add_argument("--distilled", required=True)
    ap.add_argument("--data-only", required=True)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = json.loads((Path(args.distilled) / "run.json").read_text())
    teacher_name = info["teacher"]
    teacher, _, _ = load_model(teacher_name)
    val = TokenShards(args.shards, "val")
    batcher = TokenBatcher(val, 2, args.seq_len, shuffle=False)
    batches = [batcher.next_batch() for _ in range(args.windows // 2)]
    with torch.no_grad():
        teacher_logps = [teacher(x).float().log_softmax(-1) for x, _ in batches]
    layers = info["student"]["layers"]
    models = {"teacher (30 blocks)": teacher,
              f"student before training ({len(layers)} blocks cut from the teacher)": keep_layers(teacher, layers)}
    models["student, data alone (alpha=0)"] = load_model(Path(args.data_only) / "final")[0]
    alpha, T = info["settings"]["alpha"], info["settings"]["temperature"]
    models[f"student, distilled (alpha={alpha}, T={T})"] = load_model(Path(args.distilled) / "final")[0]
    assert parse_layers(info["settings"]["student_layers"], teacher.cfg.n_layers) == layers
    scores = {name: score(m.eval(), teacher_logps, batches) for name, m in models.items()}
    result = {"teacher": teacher_name, "student_layers": layers, "settings": info["settings"],
              "heldout": {"split": "val", "windows": len(batches) * 2, "seq_len": args.seq_len},
              "scores": scores,
              "runs": {"distilled": final_metrics(Path(args.distilled)),
                       "data_only": final_metrics(Path(args.data_only))},
              "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                          "shared": "2 cores shared with other jobs; times are not comparable across runs"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print("| model | held-out CE (nats/token) | KL(teacher ‖ model) |\n|---|---|---|")
    for name, s in scores.items():
        print(f"| {name} | {s['heldout_ce']:.3f} | {s['heldout_kl_to_teacher']:.3f} |")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
