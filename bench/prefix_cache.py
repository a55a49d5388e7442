"""Prefix caching: time to first token (TTFT) over a 10-turn chat, with the engine's prefix cache and without.

A chat with SmolLM2-135M-Instruct (the default model) of ten realistic user turns, English and Chinese, each
answered greedily by the model, whose answer goes back into the history. At every turn the same prompt (the
whole conversation so far, rendered by the chat template) goes to two engines on the same weights: one with
the prefix cache, which has seen the earlier turns, and one with `prefix_cache=False`, which prefills the
whole history. TTFT is the time from admission (`add_request`) to the first sampled token (the first
`step()`), as a server's client sees it minus the HTTP; each engine allocates its KV cache and runs once
before the first turn, which starts with an empty prefix cache. The two engines alternate within each turn,
so both see the same machine load, and the headline is their ratio at turns 1, 5 and 10 (the median of the
conversations' ratios). The whole conversation is run --repeats times on fresh engines; each TTFT is the
median. The first run also checks that both engines give the same greedy answer at every turn.

    python bench/prefix_cache.py [--model smollm2-135m-instruct] [--device cpu] [--repeats 3] [--max-tokens 64]

Writes bench/results/prefix_cache.json and .md (with the machine line: CPU or GPU, threads, load average).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.engine import Engine, SamplingParams  # noqa: E402
from alignchat.hub import load_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import cpu_model  # noqa: E402  (bench/generate.py: the one machine line of the benches)

SYSTEM = "You are a helpful travel assistant. Answer clearly and concisely."
TURNS = [
    "Hi! I'm planning a trip to Japan next spring. What should I know before I go?",
    "How many days would you recommend for Tokyo and Kyoto?",
    "What's the best way to travel between the two cities?",
    "我不会说日语，这会是个问题吗？",
    "Can you suggest a few vegetarian dishes I should try?",
    "京都有哪些值得一去的寺庙？",
    "How much cash should I carry, or are cards widely accepted?",
    "What should I pack for the weather in April?",
    "请用中文总结一下我们到目前为止讨论的旅行计划。",
    "Thanks! One last thing: any tips for dealing with jet lag?",
]
HEADLINE_TURNS = (1, 5, 10)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def first_token(engine: Engine, prompt: list[int], params: SamplingParams, device: str):
    """(TTFT in seconds, the request) for one prompt; the request is left running."""
    sync(device)
    t0 = time.perf_counter()
    req = engine.add_request(prompt, params)
    engine.step()
    sync(device)
    return time.perf_counter() - t0, req


def finish(engine: Engine, req) -> list[int]:
    while not req.finished:
        engine.step()
    return list(req.output_ids)


def run_chat(model, tok, args, check: bool) -> list[dict]:
    seq_len = min(model.cfg.max_seq_len, 4096)
    cached = Engine(model, tok, max_batch=2, max_seq_len=seq_len)
    plain = Engine(model, tok, max_batch=2, max_seq_len=seq_len, prefix_cache=False)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    for eng in (cached, plain):  # allocate the KV cache and warm the kernels outside the measurement
        eng.generate([tok.encode("Hello there.")], SamplingParams(max_tokens=2, temperature=0))
    cached.reset_prefix_cache()  # turn 1 starts cold
    messages = [{"role": "system", "content": SYSTEM}]
    rows = []
    for turn, text in enumerate(TURNS, 1):
        messages.append({"role": "user", "content": text})
        prompt = tok.render_chat(messages, add_generation_prompt=True).ids
        order = (cached, plain) if turn % 2 else (plain, cached)  # alternate who goes first
        times, reqs = {}, {}
        for eng in order:
            times[eng], reqs[eng] = first_token(eng, prompt, params, args.device)
            if eng is plain and not check:
                plain.abort(reqs[eng])  # only its TTFT is needed
        answer = finish(cached, reqs[cached])  # the cached engine keeps the whole answer, as a server does
        same = finish(plain, reqs[plain]) == answer if check else None
        rows.append({"turn": turn, "prompt_tokens": len(prompt), "reused_tokens": reqs[cached].cached_tokens,
                     "ttft_cached_s": times[cached], "ttft_uncached_s": times[plain], "same_answer": same})
        messages.append({"role": "assistant", "content": tok.decode(answer)})
        print(f"  turn {turn:2d}: {len(prompt):5d} prompt tokens, {reqs[cached].cached_tokens:5d} reused, "
              f"TTFT {times[cached] * 1e3:7.1f} ms cached, {times[plain] * 1e3:7.1f} ms uncached"
              + ("" if same is None else f", same answer: {same}"), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="default: float32 on a CPU, bfloat16 on CUDA")
    ap.add_argument("--repeats", type=int, default=3, help="whole conversations, each on fresh engines")
    ap.add_argument("--max-tokens", type=int, default=64, help="most tokens of each answer")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prefix_cache"),
                    help="result path without suffix (.json and .md are written)")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    model, tok, _ = load_model(args.model, device=args.device, dtype=dtype)
    model.eval()
    load_before = os.getloadavg()
    runs = []
    for r in range(args.repeats):
        print(f"conversation {r + 1}/{args.repeats}", flush=True)
        runs.append(run_chat(model, tok, args, check=r == 0))
    load_after = os.getloadavg()
    turns = summarise(runs)
    if args.device.startswith("cuda"):
        machine = torch.cuda.get_device_name(args.device)
    else:
        machine = cpu_model()
    result = {"model": args.model, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
              "machine": machine, "threads": torch.get_num_threads(), "load_average_before": load_before[0],
              "load_average_after": load_after[0], "repeats": args.repeats, "max_tokens": args.max_tokens,
              "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "turns": turns, "runs": runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"saved {out.with_suffix('.json')} and .md")


def summarise(runs: list[list[dict]]) -> list[dict]:
    """Per turn: the median TTFTs, and the median of each conversation's uncached/cached ratio (the two were
    measured back to back, under the same load, so their ratio is steadier than a ratio of medians)."""
    turns = []
    for i in range(len(runs[0])):
        first = runs[0][i]
        turns.append({"turn": i + 1, "prompt_tokens": first["prompt_tokens"], "reused_tokens": first["reused_tokens"],
                      "ttft_cached_ms": statistics.median(run[i]["ttft_cached_s"] for run in runs) * 1e3,
                      "ttft_uncached_ms": statistics.median(run[i]["ttft_uncached_s"] for run in runs) * 1e3,
                      "uncached_over_cached": statistics.median(run[i]["ttft_uncached_s"] / run[i]["ttft_cached_s"]
                                                                for run in runs),
                      "same_answer": first["same_answer"]})
    return turns


def markdown(res: dict) -> str:
    lines = [f"# Prefix caching: time to first token over a 10-turn chat ({res['model']})", "",
             f"{res['device']} ({res['machine']}), {res['dtype']}, {res['threads']} threads, load average "
             f"{res['load_average_before']:.1f} before and {res['load_average_after']:.1f} after; median of "
             f"{res['repeats']} conversations, answers of at most {res['max_tokens']} tokens; torch {res['torch']}; "
             f"{res['time']}", "",
             "| turn | prompt tokens | reused | TTFT cached ms | TTFT uncached ms | uncached / cached (median of "
             "ratios) | same answer |",
             "|---|---|---|---|---|---|---|"]
    for t in res["turns"]:
        bold = "**" if t["turn"] in HEADLINE_TURNS else ""
        lines.append(f"| {bold}{t['turn']}{bold} | {t['prompt_tokens']} | {t['reused_tokens']} | "
                     f"{t['ttft_cached_ms']:.1f} | {t['ttft_uncached_ms']:.1f} | {bold}{t['uncached_over_cached']:.2f}x"
                     f"{bold} | {t['same_answer']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
