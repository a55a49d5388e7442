"""Sampling-step cost: the engine's batched sampler against plain per-request torch sampling, in one run.

One decode step samples one token for each of B requests from logits over SmolLM2's vocabulary (49,152).
The anchor is the straightforward way: for each request, scale by the temperature, sort the vocabulary for
top-p, softmax and `torch.multinomial`. Ours is `Engine._sample_rows`: one batched pass by inverse CDF
that sorts only the top candidates when they hold every kept token. Logits are drawn from a scaled normal
(scale 3, about as peaked as a small chat model's). Prints milliseconds per step and the ratio.

    python bench/sample.py [--batches 1,16,64] [--vocab 49152] [--top-p 0.9] [--temperature 0.7]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignchat.engine import Engine, SamplingParams  # noqa: E402


def per_request(logits: torch.Tensor, reqs) -> list[int]:
    out = []
    for row, r in zip(logits, reqs):
        x = row / r.params.temperature
        vals, idx = torch.sort(x, descending=True)
        probs = vals.softmax(-1)
        vals = vals.masked_fill((probs.cumsum(-1) - probs) >= r.params.top_p, float("-inf"))
        out.append(int(idx[torch.multinomial(vals.softmax(-1), 1, generator=r.generator)]))
    return out


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p).validate()
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        logits = (torch.randn(b, args.vocab, generator=g) * 3).to(args.device)
        reqs = [SimpleNamespace(params=params, generator=torch.Generator().manual_seed(i)) for i in range(b)]
        ours = timed(lambda: Engine._sample_rows(logits, reqs).tolist(), args.repeats)
        plain = timed(lambda: per_request(logits, reqs), args.repeats)
        rows.append({"batch": b, "ours_ms": round(ours, 3), "per_request_ms": round(plain, 3),
                     "speedup": round(plain / ours, 2)})
        print(f"batch {b:>3}: ours {ours:8.2f} ms   per-request {plain:8.2f} ms   {plain / ours:5.1f}x")
    out = Path(args.out) / f"sample-{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vocab": args.vocab, "temperature": args.temperature, "top_p": args.top_p,
                               "device": args.device, "threads": torch.get_num_threads(),
                               "machine": platform.machine(), "torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
