"""The cost of constrained decoding: decode tokens/s with and without a JSON Schema, at batch 1 and 8.

Both runs decode greedily for exactly --new-tokens tokens per request from the same chat prompts, in the
same process on the same engine; the unconstrained run is the anchor, and the ratio is constrained /
unconstrained. Runs alternate (plain, constrained, plain, ...) and the ratio is the median of each pair's,
so a machine whose load changes during the run skews both sides alike. The schema (a list of at least
--new-tokens records: a string, a bounded integer, a boolean)
cannot be finished within the budget, so every constrained token is decoded under a live grammar, none
after it is complete. The time spent in the constraint itself (advancing the parser, computing and
applying the mask) is measured too, per request and step: it depends far less on the machine's load
than the end-to-end ratio does. Prefill is timed apart and left out of decode tokens/s. One-time costs are reported
too: building the tokenizer's llguidance view and compiling the schema.

    python bench/constrained.py [--model smollm2-135m-instruct] [--new-tokens 64] [--batches 1,8]

Results: bench/results/constrained-MODEL-DEVICE.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.commands.common import pick_dtype  # noqa: E402
from alignchat.engine import Engine, SamplingParams  # noqa: E402
from alignchat.engine import grammar  # noqa: E402
from alignchat.hub import load_model  # noqa: E402

QUESTIONS = ["List the items in a kitchen as JSON.", "List the books on my shelf as JSON.",
             "List the tools in a workshop as JSON.", "List the animals on a farm as JSON.",
             "List the fruits at the market as JSON.", "List the parts of a bicycle as JSON.",
             "List the planets and their moons as JSON.", "List the instruments of an orchestra as JSON."]


def schema_for(new_tokens: int) -> dict:
    record = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                               "count": {"type": "integer", "minimum": 0, "maximum": 1000},
                                               "in_stock": {"type": "boolean"}},
              "required": ["name", "count", "in_stock"], "additionalProperties": False}
    return {"type": "object", "properties": {"items": {"type": "array", "items": record,
                                                       "minItems": max(new_tokens, 1)}},
            "required": ["items"], "additionalProperties": False}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timed:
    """A logits processor wrapped to add the seconds spent in it to `spent[0]` (per-request copies too)."""

    def __init__(self, inner, spent: list):
        self.inner, self.spent = inner, spent

    def for_request(self) -> "Timed":
        return Timed(self.inner.for_request(), self.spent)

    def __call__(self, output_ids, logits):
        t0 = time.perf_counter()
        out = self.inner(output_ids, logits)
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        self.spent[0] += time.perf_counter() - t0
        return out


def run(engine, prompts, params, device) -> tuple[float, list]:
    """Decode seconds of one batch (prefill excluded) and its requests."""
    reqs = engine.add_requests([(p, params) for p in prompts])
    sync(device)
    t0 = time.perf_counter()
    while any(not r.finished for r in reqs):
        engine.step()
    sync(device)
    assert all(len(r.output_ids) == params.max_tokens for r in reqs), [len(r.output_ids) for r in reqs]
    return time.perf_counter() - t0, reqs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="default: float32 on CPU, bfloat16 on CUDA")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA (default: CUDA graphs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="result JSON (default: bench/results/constrained-MODEL-DEVICE.json)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    dtype = pick_dtype(device, args.dtype)
    model, tok, _ = load_model(args.model, device=device, dtype=dtype)
    batches = [int(b) for b in args.batches.split(",")]
    prompts_all = [tok.render_chat([{"role": "user", "content": q}], add_generation_prompt=True).ids
                   for q in (QUESTIONS * (max(batches) // len(QUESTIONS) + 1))[:max(batches)]]
    seq_len = max(len(p) for p in prompts_all) + args.new_tokens + 8
    engine = Engine(model, tok, max_batch=max(batches), max_seq_len=seq_len, cuda_graphs=not args.no_cuda_graphs,
                        prefix_cache=False)  # every repeat admits the same prompts: measure prefill, not reuse
    schema = schema_for(args.new_tokens)

    t0 = time.perf_counter()
    grammar.tokenizer_info(tok)
    t1 = time.perf_counter()
    constraint = grammar.json_constraint(tok, schema)
    t2 = time.perf_counter()
    plain = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    spent = [0.0]
    constrained = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True,
                                 logits_processors=[Timed(constraint, spent)])  # each request: its own parser

    load_before = os.getloadavg()  # a shared machine's other work shows in the numbers: say how busy it was
    rows, sample = [], ""
    for b in batches:
        prompts = prompts_all[:b]
        run(engine, prompts, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True), device)  # warm-up
        run(engine, prompts, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True,
                                            logits_processors=[constraint]), device)
        pairs = []
        spent[0] = 0.0
        for _ in range(args.repeats):
            t_plain, _ = run(engine, prompts, plain, device)
            t_con, reqs = run(engine, prompts, constrained, device)
            pairs.append((t_plain, t_con))
        sample = reqs[0].text
        n = b * args.new_tokens
        t_plain = statistics.median(p for p, _ in pairs)
        t_con = statistics.median(c for _, c in pairs)
        rows.append({"batch": b, "plain_decode_tok_s": n / t_plain, "constrained_decode_tok_s": n / t_con,
                     "ratio": statistics.median(p / c for p, c in pairs),
                     "overhead_ms_per_step": statistics.median(1000 * (c - p) / args.new_tokens for p, c in pairs),
                     "constraint_ms_per_request_step": 1000 * spent[0] / (args.repeats * n),
                     "pairs_s": pairs})

    head = (f"model {args.model} on {device} ({torch.get_num_threads()} threads, {str(dtype)[6:]}, decode "
            f"{engine.decode_mode}), {args.new_tokens} new tokens per request, llguidance "
            f"{grammar._llg().__version__}, torch {torch.__version__}")
    hdr = "| batch | decode tok/s plain | with schema | ratio | overhead ms/step | constraint ms/request/step |"
    lines = [hdr, "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['plain_decode_tok_s']:.1f} | {r['constrained_decode_tok_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['overhead_ms_per_step']:.2f} | "
                     f"{r['constraint_ms_per_request_step']:.3f} |")
    load = (f"load average (1 min) {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on "
            f"{os.cpu_count()} cores")
    once = (f"one-time: llguidance tokenizer {1000 * (t1 - t0):.0f} ms, schema compile {1000 * (t2 - t1):.1f} ms")
    print(head)
    print("\n".join(lines))
    print(once)
    print(load)
    print(f"first constrained reply (greedy): {sample[:160]}")

    result = {"model": args.model, "device": device, "dtype": str(dtype)[6:], "threads": torch.get_num_threads(),
              "machine": platform.machine(), "new_tokens": args.new_tokens, "repeats": args.repeats,
              "torch": torch.__version__, "llguidance": grammar._llg().__version__,
              "decode_mode": engine.decode_mode, "tokenizer_build_s": t1 - t0, "schema_compile_s": t2 - t1,
              "load_average_before": load_before[0], "load_average_after": os.getloadavg()[0],
              "schema": schema, "sample": sample, "rows": rows,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    name = Path(args.model).name.removesuffix(".gguf")
    out = Path(args.out or Path(__file__).parent / "results" / f"constrained-{name}-{device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    md = [f"# Constrained decoding cost: {args.model}", "", head, "", *lines, "", once, "", load, "",
          "Greedy, end-of-turn ignored, the same prompts and engine; the schema cannot be completed within the "
          "budget, so every constrained token is decoded under a live grammar (bench/constrained.py).", ""]
    out.with_suffix(".md").write_text("\n".join(md))
    print(f"saved {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
