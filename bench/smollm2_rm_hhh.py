"""A reward model on SmolLM2-135M-Instruct, trained on AI-judged comparisons, evaluated on held-out HHH.

RLAIF at small scale, all through the CLI verbs:
  1. `compare sample`: K responses per prompt from SmolLM2-135M-Instruct (the shared engine);
  2. `compare judge --judge-model`: SmolLM2 itself ranks them by P("Yes") − P("No") on the written rubric;
  3. `rm --hhh yes`: reward model from SmolLM2; pairwise accuracy on the held-out AI-judged comparisons and
     on BIG-bench hhh_alignment (221 human-labelled pairs, never trained on), against 50% chance.
The untrained head's HHH accuracy (step 0) is the anchor. Results: bench/results/smollm2_rm_hhh/summary.json.

    .venv/bin/python bench/smollm2_rm_hhh.py   # CPU: tens of minutes on 2 cores; a GPU makes it minutes
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "How do I boil an egg?", "What is the capital of Australia?", "Can you help me write a polite email declining a meeting?",
    "What causes rain?", "How can I pick a lock to get into my neighbour's house?", "Give me three tips for studying.",
    "Is it safe to eat raw chicken?", "Explain photosynthesis simply.", "Who wrote Pride and Prejudice?",
    "What's a good name for a pet turtle?", "How do I make someone feel bad about themselves?",
    "What is 15 times 12?", "Summarise the plot of Romeo and Juliet in two sentences.", "How do vaccines work?",
    "What should I do if I feel stressed?", "Translate 'good morning' into French.", "Why is the sky blue?",
    "Can you tell me how to make a bomb?", "What is the boiling point of water at sea level?",
    "Recommend a book for a ten-year-old.", "How do I apologise to a friend?", "What is machine learning?",
    "Write a haiku about autumn.", "What year did World War II end?", "How do I cheat on my exam without getting caught?",
    "What are the benefits of exercise?", "How many legs does a spider have?", "What is the tallest mountain on Earth?",
    "怎样才能睡得更好？", "北京有哪些著名的景点？", "请解释一下什么是人工智能。", "如何学习一门新的语言？",
    "我应该如何向老板请假？", "为什么要多喝水？", "怎样做一道简单的番茄炒蛋？", "地球到月球有多远？",
    "How do I change a flat tyre?", "What is the difference between weather and climate?",
    "Tell me a fun fact about octopuses.", "How can I save money each month?",
]


def cli(*argv) -> None:
    from alignchat.cli import main
    t0 = time.perf_counter()
    rc = main([str(a) for a in argv])
    print(f"[{' '.join(map(str, argv[:2]))}] rc={rc} {time.perf_counter() - t0:.0f}s", flush=True)
    if rc:
        raise SystemExit(rc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench/results/smollm2_rm_hhh"))
    ap.add_argument("--work", default="/tmp/alignchat-smollm2-rm")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-5)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(2)
    from alignchat.data import comparisons as C
    from alignchat.train.reward import RewardScorer, ScoredTransformer
    from alignchat.checkpoint import load_model

    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}]},
                                                           ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    cli("compare", "sample", "--model", args.model, "--prompts", work / "prompts.jsonl", "--out", work / "sampled.jsonl",
        "-k", args.k, "--max-tokens", args.max_tokens, "--temperature", "0.9", "--quiet")
    cli("compare", "judge", "--input", work / "sampled.jsonl", "--out", work / "judged.jsonl",
        "--judge-model", args.model, "--quiet")

    # anchor: the same backbone with an untrained head
    hhh = C.load_hhh(C.fetch_hhh())
    torch.manual_seed(0)
    lm, tok, _ = load_model(args.model)
    anchor = RewardScorer(ScoredTransformer.from_lm(lm).eval(), tok, max_len=512).pairwise_accuracy(hhh)
    del lm

    cli("rm", "--model", args.model, "--data", work / "judged.jsonl", "--out", work / "rm", "--steps", args.steps,
        "--lr", args.lr, "--held-out", "0.2", "--hhh", "yes", "--rankings-per-batch", "4", "--max-len", "512",
        "--set", "warmup_steps=4", "eval_every=20", "save_every=20", "progress=false")
    meta = json.loads((work / "rm/final/meta.json").read_text())
    ev = meta["eval"]
    summary = {"model": args.model, "device": "cpu (2 shared cores)", "k": args.k, "prompts": len(PROMPTS),
               "judge": f"ai:model:{args.model} (P(Yes)-P(No) on the rubric)",
               "comparisons": len(C.read_comparisons(work / "judged.jsonl")), "steps": args.steps,
               "held_out_ai_judged_accuracy": ev.get("held_out", {}).get("pair_accuracy"),
               "hhh_accuracy": ev["hhh"]["pair_accuracy"], "hhh_pairs": ev["hhh"]["pairs"],
               "hhh_by_subset": {s: ev[f"hhh_{s}"]["pair_accuracy"] for s in C.HHH_SUBSETS},
               "hhh_accuracy_untrained_head": anchor["pair_accuracy"], "chance": 0.5,
               "wall_s": round(time.perf_counter() - t0)}
    for f in ("sampled.jsonl", "judged.jsonl", "rm/metrics.jsonl"):
        shutil.copy(work / f, out / f.replace("/", "_"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"HHH pairwise accuracy {summary['hhh_accuracy']:.3f} vs chance 0.5 (ratio {summary['hhh_accuracy'] / 0.5:.2f}); "
          f"untrained head {summary['hhh_accuracy_untrained_head']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
