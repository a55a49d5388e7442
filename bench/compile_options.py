"""The measurements behind the compiled CPU decode step's settings (alignchat/engine/compiled.py, decode.py).

1. `--lengths`: what the attended cache length costs a decode step (eager, SmolLM2 by default, int8 weights),
   at batch 1 and 8, for lengths 64 to 1024: the price of rounding the length up to `COMPILE_KV_BLOCK`.
2. `--options`: Inductor's default against `freezing` (weights folded in as constants, prepacked) and
   `max_autotune` (C++ GEMM templates) on a mid-sized random model (width 256, 4 layers): the cold compile
   time of one bucket and the step time, compiled and eager, at batch 1 and 8; each variant in its own
   process with a fresh Inductor cache.

Step times are the minimum over interleaved repeats (compiled, eager, compiled, ...), so a burst of load
from elsewhere hits both alike.

    python bench/compile_options.py [--lengths] [--options] [--out bench/results/compile-options.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

OPTIONS = {"default": None, "freezing": {"freezing": True}, "max-autotune": {"max_autotune": True}}


def lengths(model_name: str, quantize: str | None, reps: int = 8) -> dict:
    from alignchat.hub import load_model
    from alignchat.model import KVCache
    dtype = torch.bfloat16
    m, _, _ = load_model(model_name, device="cpu", dtype=dtype, quantize=quantize)
    cache = KVCache(m.cfg, 9, 1024, dtype=dtype)
    out = {}
    with torch.inference_mode():
        for b in (1, 8):
            ids, pos, sl = torch.zeros((b, 1), dtype=torch.long), torch.full((b, 1), 30), torch.arange(b)
            ts = {L: float("inf") for L in (64, 128, 256, 512, 1024)}
            for _ in range(reps):
                for L in ts:
                    t0 = time.perf_counter()
                    m(ids, positions=pos, kv_cache=cache, slots=sl, kv_len=L)
                    ts[L] = min(ts[L], time.perf_counter() - t0)
            out[f"batch{b}_ms"] = {str(L): round(t * 1e3, 2) for L, t in ts.items()}
            print(f"batch {b}: ms per decode step by attended length {out[f'batch{b}_ms']}", flush=True)
    return out


def one_option(variant: str, reps: int = 30) -> dict:
    """(In a child process with a fresh cache) compile one variant and time it."""
    from alignchat.config import preset
    from alignchat.engine.compiled import CompiledStep
    from alignchat.model import KVCache, Transformer
    torch.manual_seed(0)
    cfg = preset("tiny", vocab_size=4096, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256)
    m = Transformer(cfg).init_weights(seed=0, std=0.05).eval()
    cache = KVCache(cfg, 9, 256)
    step = CompiledStep(m, options=OPTIONS[variant])
    out = {}
    with torch.inference_mode():
        for b in (1, 8):
            ids, pos, sl = torch.randint(0, 4096, (b, 1)), torch.full((b, 1), 100), torch.arange(b)
            t0 = time.perf_counter()
            step(cache, ids, pos, sl, 128)
            cold = time.perf_counter() - t0
            c = e = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                step(cache, ids, pos, sl, 128)
                t1 = time.perf_counter()
                m(ids, positions=pos, kv_cache=cache, slots=sl, kv_len=128)
                t2 = time.perf_counter()
                c, e = min(c, t1 - t0), min(e, t2 - t1)
            out[f"batch{b}"] = {"cold_compile_s": round(cold, 1), "compiled_ms": round(c * 1e3, 3),
                                "eager_ms": round(e * 1e3, 3)}
    return out


def options() -> dict:
    out = {}
    for variant in OPTIONS:
        with tempfile.TemporaryDirectory(prefix="alignchat-inductor-") as cache:
            proc = subprocess.run([sys.executable, __file__, "--one-option", variant], capture_output=True, text=True,
                                  env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache))
        out[variant] = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
                        else {"error": proc.stderr.strip().splitlines()[-1:]})
        print(f"{variant}: {out[variant]}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", action="store_true")
    ap.add_argument("--options", action="store_true")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--quantize", default="int8")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "compile-options.json"))
    ap.add_argument("--one-option", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one_option:
        print(json.dumps(one_option(args.one_option)))
        return
    run_all = not (args.lengths or args.options)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "load_average_at_start": os.getloadavg()[0], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.lengths or run_all:
        result["attended_length"] = {"model": args.model, "quantize": args.quantize,
                                     **lengths(args.model, args.quantize)}
    if args.options or run_all:
        result["inductor_options"] = options()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
