"""Speed of the bilingual recipe's SFT step on a CPU: tokens per wall second and per CPU second.

Loads the model, freezes it as the recipe does (`trainable=last:N`: the tied 262k-row embedding, hence the
LM head, stays frozen), packs the recipe's training file into rows as `alignchat sft` does and times a few
optimizer steps of the same loss (`lm_loss`: logits only where the assistant mask is on). On a shared
machine the wall rate says little; the CPU-time rate (this process's user + system time) is what a quiet
core would deliver, so the script extrapolates from it. Results: bench/results/bilingual/bilingual-sft-speed.json.

    python bench/bilingual_sft_speed.py --data runs/bilingual/data/train.jsonl --steps 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--data", default=str(ROOT / "runs" / "bilingual" / "data" / "train.jsonl"))
    ap.add_argument("--trainable", default="last:4")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bilingual" / "bilingual-sft-speed.json"))
    args = ap.parse_args()

    import torch

    from alignchat.hub import load_model
    from alignchat.train.loop import TrainConfig, init_distributed, lm_loss
    from alignchat.train.sft import apply_trainable, sft_batches

    model, tok, _ = load_model(args.model)
    apply_trainable(model, args.trainable)
    model.train()
    cfg = TrainConfig(batch_size=args.batch_size, seq_len=args.seq_len, device="cpu")
    b = sft_batches([args.data], tok, cfg, init_distributed("cpu"), val_fraction=0.0)
    all_tokens = sum(len(c.input_ids) for c in b.train_convs)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    it = iter(b.data)
    load_start = os.getloadavg()[0]
    rows, tokens, targets = [], 0, 0
    for step in range(args.steps + 1):  # step 0 warms up and is not counted
        batch = next(it)
        w0, c0 = time.perf_counter(), time.process_time()
        out = lm_loss(model, batch)
        out.loss_sum.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        w, c = time.perf_counter() - w0, time.process_time() - c0
        if step:
            rows.append({"wall_s": round(w, 3), "cpu_s": round(c, 3), "tokens": out.tokens, "targets": out.weight})
            tokens += out.tokens
            targets += out.weight
        print(json.dumps({"step": step, "wall_s": round(w, 2), "cpu_s": round(c, 2), "tokens": out.tokens}), flush=True)
    wall, cpu = sum(r["wall_s"] for r in rows), sum(r["cpu_s"] for r in rows)
    per_cpu = tokens / cpu
    result = {
        "model": args.model, "trainable": args.trainable, "torch_threads": torch.get_num_threads(),
        "batch": f"{args.batch_size} x {args.seq_len}", "steps": rows,
        "tokens_per_wall_s": round(tokens / wall, 1), "tokens_per_cpu_s": round(per_cpu, 1),
        "load_average_start": load_start, "load_average_end": os.getloadavg()[0], "cpus": os.cpu_count(),
        "recipe_tokens": all_tokens,
        "recipe_minutes_on_one_quiet_core": round(all_tokens / per_cpu / 60, 1),
        "tokens_per_hour_on_one_quiet_core": round(per_cpu * 3600),
        "note": "shared machine: the wall rate depends on the other jobs; the CPU-time rate is this process's "
                "own work, so one quiet core runs at about tokens_per_cpu_s (two threads on two quiet cores "
                "at most twice that)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
