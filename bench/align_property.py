"""End-to-end alignment run at small scale with a preference that can be measured (issue 4's "done means").

The "SFT model" is a tiny random Llama-style model with a BPE tokenizer trained here, so the run needs
nothing but CPU minutes. The preference: responses containing a marker string (default "!") are better.
The SFT model rarely produces it. Steps, all through the real CLI verbs:
  1. `compare sample`  K responses per reward-model prompt from the SFT model (shared engine)
  2. `compare synth-marker`  pairs (a response with the marker) > (another response without it)
  3. `rm`   reward model; held-out pairwise accuracy
  4. `ppo`  on a separate prompt set; held-out mean reward, KL and the marker rate before/after
  5. `dpo`  on the same comparisons; marker rate after
The anchor is the SFT model: the marker rate of PPO and DPO is printed as a ratio to it. Everything lands in
bench/results/align_property/ (summary.json, metrics, before/after samples).

    OMP_NUM_THREADS=1 .venv/bin/python bench/align_property.py   # 10-15 minutes on one busy CPU core
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CORPUS = [
    "Hello! How can I help you today? Thank you for asking.",
    "The capital of France is Paris. The sea is wide and the sky is blue.",
    "A reward model learns which of two answers people prefer.",
    "Please tell me more about your journey. I like music and cats.",
    "你好！今天天气很好。北京是中国的首都。我们去公园散步吧。",
    "月亮很美。好朋友一起学习，一起唱歌。",
    "def f(x):\n    return x * 2\n",
    "One, two, three, four. Numbers are fun to learn!",
] * 6
TOPICS = ["the weather", "a fox", "Paris", "reward models", "a poem", "your day", "numbers", "the sea",
          "learning", "music", "好朋友", "北京", "月亮", "a journey", "cats", "the sky", "学习", "a garden",
          "coffee", "rivers", "trains", "天气", "mountains", "books"]
VERBS = ["Tell me about", "Say something about", "Describe", "Write one line about", "What do you think of",
         "请谈谈", "Explain", "Give me a fact about"]


def cli(*argv: str) -> None:
    from alignchat.cli import main
    t0 = time.perf_counter()
    rc = main([str(a) for a in argv])
    print(f"[{argv[0]} {argv[1] if len(argv) > 1 and not argv[1].startswith('-') else ''}] rc={rc} "
          f"{time.perf_counter() - t0:.0f}s", flush=True)
    if rc:
        raise SystemExit(f"alignchat {' '.join(map(str, argv))} failed with {rc}")


def write_prompts(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]}, ensure_ascii=False) + "\n"
                            for p in prompts), encoding="utf-8")


def marker_rate(model: str, prompts: list[str], regex: str, samples: int, max_tokens: int, seed: int) -> dict:
    from alignchat.train.compare import sample_responses
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    outs = sample_responses(model, msgs, samples, max_tokens, 1.0, 1.0, seed, progress=False)
    flat = [r for rs in outs for r in rs]
    hits = sum(bool(re.search(regex, r)) for r in flat)
    return {"rate": hits / len(flat), "n": len(flat), "examples": flat[:6]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench/results/align_property"))
    ap.add_argument("--work", default="/tmp/alignchat-align-property")
    ap.add_argument("--marker", default="!")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--rm-steps", type=int, default=40)
    ap.add_argument("--ppo-iterations", type=int, default=40)
    ap.add_argument("--dpo-steps", type=int, default=30)
    ap.add_argument("--kl-target", type=float, default=6.0)
    ap.add_argument("--init-beta", type=float, default=0.2)
    ap.add_argument("--kl-horizon", type=int, default=128)
    ap.add_argument("--ppo-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3, help="actor learning rate")
    ap.add_argument("--target-update-kl", type=float, default=0.02,
                    help="PPO trust region: stop an iteration's epochs once per-token KL(pi_old||pi) > 1.5x this")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--reuse", action="store_true",
                    help="keep --work and skip the SFT model, sampling and reward model if they are there")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from alignchat.checkpoint import save_checkpoint
    from alignchat.config import preset
    from alignchat.model import Transformer
    from alignchat.tokenizer import train_bpe

    work, out = Path(args.work), Path(args.out)
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    reuse = args.reuse and (work / "rm/final/meta.json").exists()
    if not reuse:
        tok = train_bpe(CORPUS, vocab_size=400, min_frequency=1)
        torch.manual_seed(0)
        model = Transformer(preset("tiny", vocab_size=tok.vocab_size)).init_weights(seed=0, std=0.05)
        save_checkpoint(work / "sft", model, tok, meta={"stage": "sft", "note": "tiny random model for the demo"})

    prompts = [f"{v} {t}." for v in VERBS for t in TOPICS]
    random.Random(0).shuffle(prompts)
    rm_prompts, ppo_prompts, eval_prompts = prompts[:64], prompts[64:144], prompts[144:]
    write_prompts(work / "rm_prompts.jsonl", rm_prompts)
    write_prompts(work / "ppo_prompts.jsonl", ppo_prompts)
    write_prompts(work / "eval_prompts.jsonl", eval_prompts)
    (work / "ptx.txt").write_text("\n\n".join(CORPUS[:8]), encoding="utf-8")
    regex = re.escape(args.marker)

    if not reuse:
        cli("compare", "sample", "--model", work / "sft", "--prompts", work / "rm_prompts.jsonl",
            "--out", work / "sampled.jsonl", "-k", args.k, "--max-tokens", args.max_tokens, "--quiet")
        cli("compare", "synth-marker", "--input", work / "sampled.jsonl", "--out", work / "pairs.jsonl",
            "--marker", args.marker)
        cli("rm", "--model", work / "sft", "--data", work / "pairs.jsonl", "--out", work / "rm", "--max-steps",
            args.rm_steps, "--lr", "1e-3", "--held-out", "0.2", "--hhh", "no", "--rankings-per-batch", "16",
            "eval_every=20", "save_every=20", "warmup_steps=5", "progress=false")
    shutil.rmtree(work / "ppo", ignore_errors=True)
    shutil.rmtree(work / "dpo", ignore_errors=True)
    rm_meta = json.loads((work / "rm/final/meta.json").read_text())

    cli("ppo", "--policy", work / "sft", "--reward-model", work / "rm/final", "--prompts", work / "ppo_prompts.jsonl",
        "--eval-prompts", work / "eval_prompts.jsonl", "--out", work / "ppo",
        "--iterations", args.ppo_iterations, "--batch-prompts", "32", "--max-new-tokens", args.max_tokens,
        "--minibatch", "8", "--ppo-epochs", "4", "--lr", args.lr,
        "--target-update-kl", args.target_update_kl, "--critic-lr", "1e-3",
        "--init-beta", args.init_beta, "--kl-target", args.kl_target, "--kl-horizon", args.kl_horizon,
        "--ptx-data", work / "ptx.txt", "--ptx-coef", "0.05",
        "--property-regex", regex, "--seed", args.ppo_seed, "--save-every", "10", "--no-progress")
    cli("dpo", "--model", work / "sft", "--data", work / "pairs.jsonl", "--out", work / "dpo", "--max-steps", args.dpo_steps,
        "--lr", "1e-3", "--beta", "0.1", "--rankings-per-batch", "16",
        "eval_every=10", "save_every=10", "warmup_steps=3", "progress=false")

    rates = {name: marker_rate(str(path), eval_prompts, regex, args.eval_samples, args.max_tokens, seed=123)
             for name, path in (("sft", work / "sft"), ("ppo", work / "ppo/final"), ("dpo", work / "dpo/final"))}
    ppo_lines = [json.loads(l) for l in (work / "ppo/metrics.jsonl").read_text().splitlines()]
    before = next(l for l in ppo_lines if "before_reward" in l)
    after = next(l for l in ppo_lines if "after_reward" in l)
    iters = [l for l in ppo_lines if "kl" in l and "final" not in l]
    summary = {
        "marker": args.marker, "device": (torch.cuda.get_device_name() if torch.cuda.is_available()  # the verbs' "auto"
                                          else f"cpu ({args.threads} thread{'s' if args.threads > 1 else ''})"),
        "comparisons": sum(1 for _ in open(work / "pairs.jsonl")),
        "rm_held_out_pair_accuracy": rm_meta["eval"]["held_out"]["pair_accuracy"],
        "rm_held_out_pairs": rm_meta["eval"]["held_out"]["pairs"],
        "ppo_heldout_reward_before": before["before_reward"], "ppo_heldout_reward_after": after["after_reward"],
        "ppo_heldout_kl_after": after["after_kl"], "kl_target": args.kl_target,
        "ppo_max_iteration_kl": max(l["kl"] for l in iters), "ppo_final_beta": iters[-1]["beta_next"],
        "ppo_init_beta": args.init_beta, "ppo_kl_horizon": args.kl_horizon, "ppo_lr": args.lr, "ppo_seed": args.ppo_seed,
        "ppo_target_update_kl": args.target_update_kl,
        "ppo_iterations_kl_over_2x_target": sum(l["kl"] > 2 * args.kl_target for l in iters),
        "ppo_iterations_early_stopped": sum(bool(l.get("early_stop")) for l in iters),
        "ppo_kl_by_iteration": [round(l["kl"], 2) for l in iters],
        "ppo_heldout_response_len_before": before.get("before_response_len"),
        "ppo_heldout_response_len_after": after.get("after_response_len"),
        "marker_rate": {k: v["rate"] for k, v in rates.items()}, "marker_rate_samples": rates["sft"]["n"],
        "ratio_to_sft": {k: (v["rate"] / rates["sft"]["rate"] if rates["sft"]["rate"] else float("inf"))
                         for k, v in rates.items() if k != "sft"},
        "examples": {k: v["examples"] for k, v in rates.items()},
        "wall_s": round(time.perf_counter() - t_start),
    }
    for f in ("ppo/metrics.jsonl", "ppo/samples_before.jsonl", "ppo/samples_after.jsonl", "rm/metrics.jsonl",
              "dpo/metrics.jsonl"):
        shutil.copy(work / f, out / f.replace("/", "_"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in summary.items() if k != "examples"}, indent=2, ensure_ascii=False))
    print(f"marker rate vs SFT anchor: PPO x{summary['ratio_to_sft']['ppo']:.2f}, DPO x{summary['ratio_to_sft']['dpo']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
