"""Generation speed: our engine against Hugging Face transformers on the same SmolLM2 weights, in one run.

For each batch size (default 1 and 8) it measures prompt (prefill) tokens/s and decode tokens/s, for both engines, and
prints the ratio ours/transformers. Both decode greedily for exactly --new-tokens tokens (end-of-turn
ignored) from the same prompts, so the work is identical. transformers runs on our HF export of the same
checkpoint. CPU by default; CUDA when present (or --device). On CUDA our engine decodes with CUDA graphs
(`--no-cuda-graphs`: eagerly), and the run first checks that the graph and eager paths give the same greedy
tokens.

    python bench/generate.py [--model smollm2-135m-instruct] [--prompt-tokens 128] [--new-tokens 64]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.checkpoint import export_hf  # noqa: E402
from alignchat.hub import load_model  # noqa: E402
from alignchat.commands.common import pick_dtype  # noqa: E402
from alignchat.engine import Engine, SamplingParams  # noqa: E402

BASE_TEXT = ("The history of natural language processing generally started in the 1950s, although work can be "
             "found from earlier periods. In 1950, Alan Turing published an article titled Computing Machinery "
             "and Intelligence which proposed what is now called the Turing test as a criterion of intelligence. ")


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_prompts(tok, batch, n_tokens):
    ids = tok.encode(BASE_TEXT * 20)
    # different offsets so the rows of a batch differ, same length so both engines do the same work
    return [ids[i * 7: i * 7 + n_tokens] for i in range(batch)]


def bench_ours(engine, prompts, new_tokens, device, repeats):
    prefill, total = [], []
    p = SamplingParams(max_tokens=new_tokens, temperature=0, ignore_eos=True)
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        reqs = engine.add_requests([(pr, p) for pr in prompts])  # one batched prefill, as a server admits them
        sync(device)
        t1 = time.perf_counter()
        while any(not r.finished for r in reqs):
            engine.step()
        sync(device)
        t2 = time.perf_counter()
        assert all(len(r.output_ids) == new_tokens for r in reqs)
        prefill.append(t1 - t0)
        total.append(t2 - t0)
    return statistics.median(prefill), statistics.median(total)


@torch.inference_mode()
def bench_hf(hf, prompts, new_tokens, device, repeats, pad_id):
    ids = torch.tensor(prompts, device=device)
    mask = torch.ones_like(ids)
    prefill, total = [], []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        hf(input_ids=ids, attention_mask=mask, use_cache=True)
        sync(device)
        t1 = time.perf_counter()
        sync(device)
        t2 = time.perf_counter()
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                          do_sample=False, pad_token_id=pad_id)
        sync(device)
        t3 = time.perf_counter()
        assert out.shape[1] == ids.shape[1] + new_tokens
        prefill.append(t1 - t0)
        total.append(t3 - t2)
    return statistics.median(prefill), statistics.median(total)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="weights and activations for both engines (default: float32 on CPU, bfloat16 on CUDA)")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA (default: CUDA graphs)")
    ap.add_argument("--out", default=None, help="result JSON (default: bench/results/generate-DEVICE-DTYPE.json)")
    args = ap.parse_args(argv)
    import transformers

    device = args.device
    dtype = pick_dtype(device, args.dtype)
    model, tok, _ = load_model(args.model, device=device, dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        export_hf(model.cpu(), tok, Path(d) / "hf")
        hf = transformers.AutoModelForCausalLM.from_pretrained(Path(d) / "hf", dtype=dtype).to(device).eval()
    model.to(device)
    batches = [int(b) for b in args.batches.split(",")]
    seq_len = args.prompt_tokens + args.new_tokens + 8
    engine = Engine(model, tok, max_batch=max(batches), max_seq_len=seq_len, cuda_graphs=not args.no_cuda_graphs)
    agreement = None
    if engine.decode_mode == "graph":
        # the graph path must say what the eager path says: greedy tokens of the largest batch, compared
        prompts = make_prompts(tok, max(batches), args.prompt_tokens)
        p = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        eager = Engine(model, tok, max_batch=max(batches), max_seq_len=seq_len, cuda_graphs=False)
        a = [g.token_ids for g in engine.generate(prompts, p)]
        e = [g.token_ids for g in eager.generate(prompts, p)]
        del eager
        same = sum(x == y for ra, re_ in zip(a, e) for x, y in zip(ra, re_))
        agreement = {"identical_tokens": same, "tokens": sum(len(r) for r in e),
                     "identical_sequences": sum(ra == re_ for ra, re_ in zip(a, e)), "sequences": len(e)}
        print(f"CUDA graphs vs eager, greedy: {same}/{agreement['tokens']} tokens and "
              f"{agreement['identical_sequences']}/{len(e)} sequences identical")
    rows = []
    for b in batches:
        prompts = make_prompts(tok, b, args.prompt_tokens)
        bench_ours(engine, prompts, 4, device, 1)  # warm-up
        bench_hf(hf, prompts, 4, device, 1, tok.pad_id)
        o_pre, o_tot = bench_ours(engine, prompts, args.new_tokens, device, args.repeats)
        h_pre, h_tot = bench_hf(hf, prompts, args.new_tokens, device, args.repeats, tok.pad_id)
        n_prompt, n_new = b * args.prompt_tokens, b * args.new_tokens
        row = {
            "batch": b,
            "ours_prompt_tok_s": n_prompt / o_pre, "hf_prompt_tok_s": n_prompt / h_pre,
            "ours_decode_tok_s": n_new / max(o_tot - o_pre, 1e-9), "hf_decode_tok_s": n_new / max(h_tot - h_pre, 1e-9),
        }
        row["prompt_ratio"] = row["ours_prompt_tok_s"] / row["hf_prompt_tok_s"]
        row["decode_ratio"] = row["ours_decode_tok_s"] / row["hf_decode_tok_s"]
        rows.append(row)
    hdr = f"{'batch':>5} | {'prompt tok/s ours':>17} {'hf':>9} {'ratio':>6} | {'decode tok/s ours':>17} {'hf':>9} {'ratio':>6}"
    print(f"model {args.model} on {device} ({torch.get_num_threads()} threads, {str(dtype)[6:]}, decode {engine.decode_mode}), prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, transformers {transformers.__version__}, torch {torch.__version__}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['batch']:>5} | {r['ours_prompt_tok_s']:>17.0f} {r['hf_prompt_tok_s']:>9.0f} {r['prompt_ratio']:>5.2f}x | "
              f"{r['ours_decode_tok_s']:>17.1f} {r['hf_decode_tok_s']:>9.1f} {r['decode_ratio']:>5.2f}x")
    result = {"model": args.model, "device": device, "dtype": str(dtype)[6:], "threads": torch.get_num_threads(), "machine": platform.machine(),
              "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "torch": torch.__version__,
              "transformers": transformers.__version__, "decode_mode": engine.decode_mode,
              "graph_vs_eager_greedy": agreement, "rows": rows,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out or Path(__file__).parent / "results" / f"generate-{device.split(':')[0]}-{str(dtype)[6:]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
