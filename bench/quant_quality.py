"""Quantisation quality: does int8 (or int4) say what bfloat16 says? Greedy answers to 50 fixed chat prompts,
compared token by token over the first 32 generated tokens.

The check behind the CPU precision default: a precision passes when its greedy text is identical to
bfloat16's on at least 90 % of the prompts. float32 is compared too (bfloat16's own loss against float32).
Every variant decodes the same prompts with the same engine settings (greedy, batch --batch), so a difference
is the weights' precision and nothing else. Per variant it reports identical sequences, identical tokens up
to the first divergence, and decode speed in the same run.

    python bench/quant_quality.py [--model smollm2-135m-instruct] [--variants float32,int8,int4] [--tokens 32]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.engine import Engine, SamplingParams  # noqa: E402
from alignchat.hub import load_model  # noqa: E402

PROMPTS = [
    "What is the capital of France?", "Explain photosynthesis in one sentence.", "Write a haiku about autumn.",
    "What is 12 times 13?", "Name three primary colors.", "How do I boil an egg?",
    "What is the largest planet in our solar system?", "Translate 'good morning' into Spanish.",
    "Give me a tip for better sleep.", "What does a CPU do?", "Who wrote Romeo and Juliet?",
    "Summarise the water cycle.", "What is machine learning?", "List two benefits of exercise.",
    "Why is the sky blue?", "What is the boiling point of water in Celsius?", "Suggest a name for a pet cat.",
    "How many days are in a leap year?", "What is an API?", "Describe a rainbow to a child.",
    "What is the square root of 81?", "Write one sentence about the ocean.", "What language is spoken in Brazil?",
    "How do plants get water?", "What is gravity?", "Give an example of a mammal that can fly.",
    "What is the difference between weather and climate?", "How do I make a cup of tea?",
    "What is the chemical symbol for gold?", "Recommend a book for a beginner programmer.",
    "What are the three states of matter?", "How far is the Moon from Earth?", "What is a prime number?",
    "Write a short greeting for a birthday card.", "What causes earthquakes?", "What is Python used for?",
    "Name a famous painting by Leonardo da Vinci.", "How can I save money on groceries?",
    "What is the freezing point of water in Fahrenheit?", "Explain what a noun is.",
    "中国的首都是哪里？", "请用一句话介绍长城。", "什么是人工智能？", "写一句关于春天的诗。", "一年有几个季节？",
    "What is the tallest mountain in the world?", "How does a refrigerator keep food cold?",
    "What is the main ingredient of guacamole?", "Give me a synonym for 'happy'.", "What is DNA?",
]


def run_variant(model_name, dtype, quantize, prompts_ids, tokens, batch):
    t0 = time.perf_counter()
    model, tok, meta = load_model(model_name, dtype=dtype, quantize=quantize)
    load_s = time.perf_counter() - t0
    engine = Engine(model, tok, max_batch=batch, max_seq_len=max(len(p) for p in prompts_ids) + tokens + 8,
                    prefix_cache=False)
    p = SamplingParams(max_tokens=tokens, temperature=0)
    engine.generate(prompts_ids[:batch], SamplingParams(max_tokens=2, temperature=0))  # warm-up
    t0 = time.perf_counter()
    outs = engine.generate(prompts_ids, p)
    gen_s = time.perf_counter() - t0
    q = meta.get("quantization")
    kernels = sorted({v[k] for v in q["kernels"]["shapes"].values() for k in ("small_rows", "many_rows")}) if q else None
    return [o.token_ids for o in outs], {"load_s": round(load_s, 1), "generate_s": round(gen_s, 2),
                                         "tokens": sum(len(o.token_ids) for o in outs), "kernels": kernels}, tok


def compare(ref: list[list[int]], got: list[list[int]]) -> dict:
    same = sum(a == b for a, b in zip(ref, got))
    prefix = []
    for a, b in zip(ref, got):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        prefix.append(n)
    return {"identical": same, "prompts": len(ref), "identical_fraction": same / len(ref),
            "mean_tokens_before_divergence": sum(prefix) / len(prefix), "passes": same / len(ref) >= 0.9}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--variants", default="float32,int8,int4", help="compared with bfloat16 (the reference)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", default=None, help="default: bench/results/quant_quality-MODEL-cpu.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, tok, _ = load_model(args.model)
    prompts = [tok.render_chat([{"role": "user", "content": p}], add_generation_prompt=True).ids for p in PROMPTS]
    ref, ref_info, _ = run_variant(args.model, torch.bfloat16, None, prompts, args.tokens, args.batch)
    rows = {"bfloat16": {**ref_info, "reference": True}}
    texts = {"bfloat16": [tok.decode(t) for t in ref[:5]]}
    for v in args.variants.split(","):
        dtype, quantize = (torch.float32, None) if v == "float32" else (torch.bfloat16, v)
        got, info, _ = run_variant(args.model, dtype, quantize, prompts, args.tokens, args.batch)
        rows[v] = {**info, **compare(ref, got)}
        texts[v] = [tok.decode(t) for t in got[:5]]
        print(f"{v:>9}: {rows[v]['identical']}/{len(prompts)} identical to bfloat16 over {args.tokens} tokens "
              f"({'passes' if rows[v]['passes'] else 'fails'} the 90% check), mean "
              f"{rows[v]['mean_tokens_before_divergence']:.1f} tokens before a divergence; "
              f"{info['tokens'] / info['generate_s']:.1f} tok/s vs bfloat16 {ref_info['tokens'] / ref_info['generate_s']:.1f}")
    result = {"model": args.model, "tokens": args.tokens, "prompts": len(prompts), "batch": args.batch,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "reference": "bfloat16",
              "variants": rows, "sample_texts": texts, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out or Path(__file__).parent / "results" / f"quant_quality-{args.model}-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
