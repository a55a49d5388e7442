"""Serving benchmark: requests/s, tokens/s and time to first token at 1, 4 and 16 concurrent streaming clients.

Runs the real server (`alignchat serve` in a subprocess on 127.0.0.1) and drives it with concurrent streamed
chat completions (`ignore_eos`, fixed max_tokens, so every request produces the same number of tokens).
Prints a table and the 16-stream : 1-stream tokens/s ratio (the anchor is the single stream), and saves
the results as JSON and Markdown under bench/results/.

    python bench/serve.py                          # the default model (SmolLM2-135M-Instruct)
    python bench/serve.py --model runs/x/final --max-tokens 64 --requests-per-client 2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_support import ServerProcess  # noqa: E402

PROMPTS = ["Write a short story about a lighthouse keeper.", "Explain how a reward model is trained.",
           "用三句话介绍一下长城。", "List five uses of a paperclip.", "What is reinforcement learning?",
           "写一首关于秋天的短诗。", "Describe the water cycle.", "How do transformers process text?"]


async def one_request(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
    return {"latency": time.perf_counter() - t0, "ttft": ttft if ttft is not None else float("nan"), "tokens": tokens}


async def run_level(url: str, model: str, concurrency: int, per_client: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:
        async def worker(w: int):
            return [await one_request(client, model, PROMPTS[(w + i) % len(PROMPTS)], max_tokens)
                    for i in range(per_client)]
        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(w) for w in range(concurrency))) for r in rs]
        wall = time.perf_counter() - t0
    ttfts = sorted(r["ttft"] for r in results)
    q = lambda p: ttfts[min(len(ttfts) - 1, int(round(p * (len(ttfts) - 1))))]  # noqa: E731
    total_tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "wall_s": wall,
            "requests_per_s": len(results) / wall, "tokens_per_s": total_tokens / wall,
            "per_stream_tokens_per_s": statistics.mean(r["tokens"] / r["latency"] for r in results),
            "ttft_p50_s": q(0.5), "ttft_p95_s": q(0.95), "completion_tokens": total_tokens}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients to measure (default 1,4,16)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--context", type=int, default=512, help="tokens per engine slot (sizes the KV cache)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    srv = ServerProcess(args.model, out_dir / ".bench-serve.db", "--max-batch", str(max(levels)), "--context",
                        str(args.context), "--device", args.device, "--no-embeddings")
    try:
        srv.wait_ready(timeout=900)
        model = httpx.get(srv.url + "/v1/models").json()["data"][0]["id"]
        asyncio.run(run_level(srv.url, model, 1, 1, 4))  # warm-up
        rows = []
        for c in levels:
            row = asyncio.run(run_level(srv.url, model, c, args.requests_per_client, args.max_tokens))
            rows.append(row)
            print(json.dumps(row), flush=True)
        stats = srv.health()["scheduler"]
    finally:
        srv.stop()
        for p in out_dir.glob(".bench-serve.*"):
            p.unlink(missing_ok=True)
    base = rows[0]["tokens_per_s"]
    lines = [f"model {model}, device {args.device} ({platform.processor() or platform.machine()}), "
             f"max_tokens {args.max_tokens}, {args.requests_per_client} request(s) per client",
             "", "| clients | requests/s | tokens/s | vs 1 stream | per-stream tok/s | TTFT p50 (s) | TTFT p95 (s) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['tokens_per_s'] / base:.2f}x | {r['per_stream_tokens_per_s']:.1f} | "
                     f"{r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} |")
    lines.append(f"\nlargest batch stepped by the engine: {stats['max_batch_stepped']}")
    table = "\n".join(lines)
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"serve-{Path(str(model)).name}-{args.device}"
    (out_dir / f"{name}.json").write_text(json.dumps({"created": stamp, "model": model, "device": args.device,
                                                       "max_tokens": args.max_tokens, "rows": rows,
                                                       "scheduler": stats}, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
