"""The bilingual recipe's SFT step on a GPU: `alignchat sft` at Gemma 3 270M's shape, on the recipe's data.

A lent GPU machine receives at most 64 MiB per call and reaches no registry, so the 1 GB checkpoint of
gemma-3-270m cannot get there; the speed of a training step depends on the shape, the data and the
settings, not on the weights' values. This script therefore saves a checkpoint with gemma-3-270m's
config and real tokenizer (the 262,144-token SentencePiece vocabulary, so the packed rows are the
recipe's own) and *randomly initialised* weights, then runs the real `alignchat sft` on it twice:

- `cpu-recipe`: the settings of docs/bilingual.md's CPU run (the last 4 blocks, the chat rows at 5x,
  2 rows of 512 tokens, 75 steps), so the two machines are compared on the same work;
- `all-blocks`: what the docs suggest on a GPU (every block and the whole embedding trained, 8 rows of
  512 tokens) for `--passes` passes over the packed data.

Each run's metrics.jsonl gives step times, tokens/s and MFU (the training loop's own, against the GPU's
peak); this script writes their medians and each command's wall time to one JSON. The losses are those of
random weights and mean nothing.

    python bench/bilingual_sft_gpu.py --shape DIR --data a.jsonl,b.jsonl --val-data heldout.jsonl --out DIR

DIR for --shape holds gemma-3-270m's config.json, tokenizer.json and tokenizer_config.json, copied from the
pulled checkpoint (`gemma-3-270m/checkpoint/` in the models directory that `alignchat models list` prints).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "cpu-recipe": ["--trainable", "last:4", "--train-rows", "template,roles", "--rows-lr", "5",
                   "max_steps=75", "batch_size=2", "lr=2e-4", "warmup_steps=3", "min_lr_ratio=0.1"],
    "all-blocks": ["--trainable", "all", "batch_size=8", "lr=5e-5", "warmup_steps=5"],
}


def random_checkpoint(shape: Path, out: Path, seed: int = 0) -> Path:
    from alignchat.checkpoint import save_checkpoint
    from alignchat.config import ModelConfig
    from alignchat.model import Transformer
    from alignchat.tokenizer import Tokenizer

    cfg = json.loads((shape / "config.json").read_text())
    model = Transformer(ModelConfig.from_dict(cfg)).init_weights(seed=seed)
    return save_checkpoint(out, model, Tokenizer.load(shape),
                           meta={"note": "random weights at gemma-3-270m's shape, for timing only"})


def summarise(run_dir: Path, wall_s: float) -> dict:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r for r in rows if "step_time_s" in r]
    timed = steps[1:] or steps  # the first logged step includes the warm-up
    median = lambda key, digits: (round(statistics.median(r[key] for r in timed), digits)  # noqa: E731
                                  if timed and all(key in r for r in timed) else None)
    return {
        "logged_steps": len(steps), "last_step": rows[-1].get("step") if rows else None,
        "median_step_s": median("step_time_s", 4), "median_tokens_per_s": median("tokens_per_s", 1),
        "median_mfu": median("mfu", 4), "tokens_seen": steps[-1].get("tokens_seen") if steps else None,
        "val_losses": [round(r["val_loss"], 3) for r in rows if "val_loss" in r],
        "wall_s_whole_command": round(wall_s, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", required=True, help="folder with gemma-3-270m's config.json and tokenizer files")
    ap.add_argument("--data", required=True, help="the recipe's training files, comma-separated")
    ap.add_argument("--val-data", required=True)
    ap.add_argument("--out", required=True, help="folder for the checkpoint, the runs and sft-gpu.json")
    ap.add_argument("--passes", type=float, default=3.0, help="passes over the packed rows for all-blocks")
    ap.add_argument("--runs", default="cpu-recipe,all-blocks")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--max-steps", type=int, default=0, help="cap every run at this many steps (a smoke test)")
    args = ap.parse_args()

    names = [x for x in args.runs.split(",") if x]
    if not names or set(names) - set(RUNS):
        ap.error(f"--runs takes names from {', '.join(RUNS)}")

    import torch

    from alignchat.tokenizer import Tokenizer
    from alignchat.train.loop import TrainConfig, init_distributed
    from alignchat.train.sft import sft_batches

    out = Path(args.out)
    ckpt = random_checkpoint(Path(args.shape), out / "gemma-3-270m-random")
    data = [x for x in args.data.split(",") if x]
    tok = Tokenizer.load(Path(args.shape))
    b = sft_batches(data, tok, TrainConfig(batch_size=1, seq_len=512, device="cpu"), init_distributed("cpu"),
                    val_fraction=0.0)
    result = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "conversations": len(b.train_convs), "packed_rows": len(b.rows),
              "train_tokens": sum(len(c.input_ids) for c in b.train_convs), "runs": {}}
    for name in names:
        extra = list(RUNS[name])
        if name == "all-blocks":
            extra.append(f"max_steps={max(1, round(args.passes * len(b.rows) / 8))}")
        if args.max_steps:
            extra.append(f"max_steps={args.max_steps}")
        run_dir = out / name
        cmd = [sys.executable, "-m", "alignchat.cli", "sft", "--model", str(ckpt), "--data", ",".join(data),
               "--val-data", args.val_data, "--out", str(run_dir), "--device", args.device, *extra,
               "seq_len=512", "eval_every=30", "eval_batches=4", "save_every=0", "log_every=5", "sample_every=0",
               "--no-progress"]
        print(" ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT)
        wall = time.perf_counter() - t0
        result["runs"][name] = {"settings": extra, "returncode": proc.returncode,
                                **(summarise(run_dir, wall) if proc.returncode == 0 else {})}
        if torch.cuda.is_available():
            result["runs"][name]["note"] = "step times from the run's metrics.jsonl; MFU against the GPU's bf16 peak"
        print(json.dumps({name: result["runs"][name]}), flush=True)
    (out / "sft-gpu.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0 if all(r["returncode"] == 0 for r in result["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
