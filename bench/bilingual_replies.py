"""Greedy replies of the bilingual model and of SmolLM2-135M-Instruct to three Chinese and two English prompts,
verbatim, as JSON (bench/results/bilingual/bilingual-replies.json), for docs/bilingual.md.

    python bench/bilingual_replies.py runs/bilingual/sft/final smollm2-135m-instruct
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["床前明月光，下一句是什么？", "如何在 Linux 上杀死一个卡住的进程？", "ChatGPT 是什么？",
           "What is the capital of France?",
           "Give me three tips for staying focused while studying."]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "bilingual" / "bilingual-replies.json"))
    args = ap.parse_args()

    from alignchat.engine import Engine, SamplingParams
    from alignchat.hub import load_model

    results = {}
    for name in args.models:
        model, tok, _ = load_model(name)
        eng = Engine(model.eval(), tok, max_batch=1, max_seq_len=512)
        results[name] = []
        for p in PROMPTS:
            g = eng.chat([{"role": "user", "content": p}], SamplingParams(max_tokens=args.max_tokens, temperature=0.0))
            results[name].append({"prompt": p, "reply": g.text, "finish_reason": g.finish_reason})
            print(json.dumps({"model": name, **results[name][-1]}, ensure_ascii=False), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"max_tokens": args.max_tokens, "replies": results}, indent=2,
                                         ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
