"""Generation speed: our engine against llama.cpp and Hugging Face transformers on the same SmolLM2 weights, in
one run.

For each precision (default on the CPU: float32, bfloat16, int8, int4) and batch size (default 1 and 8) it
measures prompt (prefill) tokens/s and decode tokens/s of our engine, of llama.cpp (llama-cpp-python, the
`bench` extra) on a GGUF of equal bits made from the same weights, and of transformers for the float
precisions, and prints the ratios. The headline is ours/llama.cpp. Precisions and their llama.cpp types:
float32 - F32, bfloat16 - BF16, int8 (`--quantize int8`, per channel) - Q8_0, int4 (`--quantize int4`, groups
of 32, w = q*scale + min) - Q4_1. The default model's GGUF is Q4_1 already; the others are written from it by
llama.cpp's own quantiser (`llama_model_quantize`, requantising, every tensor the one type), which
dequantises Q4_1 exactly as our import does, so all three engines hold the same weights. All engines decode
greedily for exactly --new-tokens tokens (end-of-turn ignored) from the same prompts, so the work is
identical; llama.cpp's batch of 8 is 8 sequences of one context, decoded together by the low-level API.
transformers runs on our HF export of the same checkpoint. CPU by default; CUDA when present (or --device),
where llama.cpp (a CPU build) is left out. On CUDA our engine decodes with CUDA graphs (`--no-cuda-graphs`:
eagerly), and the run first checks that the graph and eager paths give the same greedy tokens. On the CPU
our engine runs twice per precision: eager decode steps and compiled ones (`--compile on`, engine/compiled.py;
`--no-compile` leaves them out). The compiled engine's first steps compile each (batch, length) bucket with a
fresh Inductor cache (the cold compile time); a second process then loads the same buckets from that cache
(the warm start time); both are reported per bucket, and the compiled path's greedy tokens are checked
against eager's.

    python bench/generate.py [--model smollm2-135m-instruct] [--precisions float32,bfloat16,int8,int4]
        [--prompt-tokens 128] [--new-tokens 64] [--no-llama-cpp] [--no-hf] [--no-compile]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.checkpoint import export_hf  # noqa: E402
from alignchat.hub import load_model  # noqa: E402
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


LLAMA_TYPES = {"float32": "F32", "bfloat16": "BF16", "int8": "Q8_0", "int4": "Q4_1"}


def find_gguf(model_name: str) -> Path | None:
    """The GGUF the model came from: the registry's file, or the path given."""
    from alignchat.hub import REGISTRY, resolve_model
    p = resolve_model(model_name)
    if p.suffix == ".gguf":
        return p
    if model_name in REGISTRY:
        ggufs = sorted(p.parent.glob("**/*.gguf"))
        return ggufs[0] if ggufs else None
    ggufs = sorted(p.glob("*.gguf")) if p.is_dir() else []
    return ggufs[0] if ggufs else None


_QUIET = []


def quiet_llama():
    """llama.cpp logs every tensor it loads or quantises; keep the table readable."""
    import ctypes

    import llama_cpp as L
    if not _QUIET:
        _QUIET.append(L.llama_log_callback(lambda level, text, data: None))
        L.llama_log_set(_QUIET[0], ctypes.c_void_p())


def gguf_of_type(source: Path, ltype: str, workdir: Path) -> Path:
    """`source` rewritten as llama.cpp type `ltype` by llama.cpp's quantiser (the source itself if it is one)."""
    import llama_cpp as L
    quiet_llama()
    if source.name.upper().endswith(f".{ltype}.GGUF"):
        return source
    out = workdir / f"{source.stem.split('.')[0]}.{ltype}.gguf"
    if not out.exists():
        q = L.llama_model_quantize_default_params()
        q.ftype = {"F32": L.LLAMA_FTYPE_ALL_F32, "BF16": L.LLAMA_FTYPE_MOSTLY_BF16, "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0,
                   "Q4_0": L.LLAMA_FTYPE_MOSTLY_Q4_0, "Q4_1": L.LLAMA_FTYPE_MOSTLY_Q4_1}[ltype]
        q.allow_requantize, q.pure, q.nthread = True, True, torch.get_num_threads()
        rc = L.llama_model_quantize(str(source).encode(), str(out).encode(), q)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {ltype} failed ({rc})")
    return out


class LlamaCpp:
    """One llama.cpp model and context with room for `n_seq` sequences of `n_ctx` tokens; greedy decoding of
    several sequences together through the low-level batch API."""

    def __init__(self, path: Path, n_ctx: int, n_seq: int, threads: int):
        import llama_cpp as L
        self.L = L
        quiet_llama()
        L.llama_backend_init()
        self.model = L.llama_model_load_from_file(str(path).encode(), L.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp cannot load {path}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_ctx * n_seq
        cp.n_batch = cp.n_ubatch = n_ctx * n_seq
        cp.n_seq_max = n_seq
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.batch = L.llama_batch_init(n_ctx * n_seq, 0, n_seq)

    def close(self):
        L = self.L
        L.llama_batch_free(self.batch)
        L.llama_free(self.ctx)
        L.llama_model_free(self.model)

    def _decode(self, items):
        b = self.batch
        b.n_tokens = len(items)
        for i, (tok, pos, seq, want) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")

    def _argmax(self, i: int) -> int:
        import numpy as np
        return int(np.ctypeslib.as_array(self.L.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).argmax())

    def run(self, prompts, new_tokens):
        """(prefill seconds, total seconds, generated ids): one batched prefill, then one token per sequence
        per decode call, greedy, as our engine's `add_requests` + `step()`."""
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)
        t0 = time.perf_counter()
        items, last = [], []
        for s, p in enumerate(prompts):
            items += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
            last.append(len(items) - 1)
        self._decode(items)
        t1 = time.perf_counter()
        out = [[self._argmax(i)] for i in last]
        for step in range(new_tokens - 1):
            self._decode([(o[-1], len(p) + step, s, True) for s, (p, o) in enumerate(zip(prompts, out))])
            for s, o in enumerate(out):
                o.append(self._argmax(s))
        t2 = time.perf_counter()
        return t1 - t0, t2 - t0, out


def bench_llama(llm, prompts, new_tokens, repeats):
    prefill, total = [], []
    for _ in range(repeats):
        pre, tot, out = llm.run(prompts, new_tokens)
        assert all(len(o) == new_tokens for o in out)
        prefill.append(pre)
        total.append(tot)
    return statistics.median(prefill), statistics.median(total)


def _rates(b, args, pre, tot):
    return b * args.prompt_tokens / pre, b * args.new_tokens / max(tot - pre, 1e-9)


def run_all(args, precisions, batches, seq_len, threads, device, workdir, source):
    """Every (precision, batch) row: ours, llama.cpp on the equal-bit GGUF (`source` rewritten), transformers."""
    import transformers
    rows, agreement, modes, kernels, compiled_info = [], None, {}, {}, {}
    compiling = not args.no_compile and not device.startswith("cuda")
    for prec in precisions:
        dtype = torch.float32 if prec == "float32" else torch.bfloat16
        quantize = prec if prec in ("int8", "int4") else None
        model, tok, meta = load_model(args.model, device=device, dtype=dtype, quantize=quantize)
        if quantize:
            kernels[prec] = meta["quantization"]["kernels"]["shapes"]  # the choice and the timings (µs)
        hf = None
        if not args.no_hf and not quantize:
            export_hf(model.cpu(), tok, workdir / f"hf-{prec}")
            hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / f"hf-{prec}", dtype=dtype).to(device).eval()
            model.to(device)
        engine = Engine(model, tok, max_batch=max(batches), max_seq_len=seq_len, cuda_graphs=not args.no_cuda_graphs,
                        prefix_cache=False)  # every repeat admits the same prompts: measure prefill, not reuse
        modes[prec] = engine.decode_mode
        if engine.decode_mode == "graph" and agreement is None:
            agreement = graph_agreement(engine, model, tok, batches, args, seq_len)
        comp = None
        if compiling:
            comp = Engine(model, tok, max_batch=max(batches), max_seq_len=seq_len, prefix_cache=False)
            comp.decode_mode = "compiled"
        llm = None
        if source is not None:
            ltype = LLAMA_TYPES[prec]
            llm = LlamaCpp(gguf_of_type(source, ltype, workdir), seq_len, max(batches), threads)
        for b in batches:
            prompts = make_prompts(tok, b, args.prompt_tokens)
            bench_ours(engine, prompts, 4, device, 1)  # warm-up
            o_pre, o_tot = bench_ours(engine, prompts, args.new_tokens, device, args.repeats)
            row = {"precision": prec, "batch": b}
            row["ours_prompt_tok_s"], row["ours_decode_tok_s"] = _rates(b, args, o_pre, o_tot)
            if comp is not None:
                bench_ours(comp, prompts, 4, device, 1)  # warm-up: compiles this batch's bucket
                c_pre, c_tot = bench_ours(comp, prompts, args.new_tokens, device, args.repeats)
                row["compiled_prompt_tok_s"], row["compiled_decode_tok_s"] = _rates(b, args, c_pre, c_tot)
                row["compiled_mode"] = comp.decode_mode  # "eager" if the compile failed
                step = comp.decoder.compiled
                row["compile_cold_s"] = {f"b{k[0]}-kv{k[1]}": round(v, 2) for k, v in step.timings.items()
                                         if k[0] == next(x for x in comp._batch_buckets() if x >= b)} if step else {}
            if llm is not None:
                bench_llama(llm, prompts, 4, 1)
                l_pre, l_tot = bench_llama(llm, prompts, args.new_tokens, args.repeats)
                row["llama_type"] = LLAMA_TYPES[prec]
                row["llama_prompt_tok_s"], row["llama_decode_tok_s"] = _rates(b, args, l_pre, l_tot)
                row["prompt_ratio_llama"] = row["ours_prompt_tok_s"] / row["llama_prompt_tok_s"]
                row["decode_ratio_llama"] = row["ours_decode_tok_s"] / row["llama_decode_tok_s"]
                if comp is not None:
                    row["compiled_decode_ratio_llama"] = row["compiled_decode_tok_s"] / row["llama_decode_tok_s"]
            if hf is not None:
                bench_hf(hf, prompts, 4, device, 1, tok.pad_id)
                h_pre, h_tot = bench_hf(hf, prompts, args.new_tokens, device, args.repeats, tok.pad_id)
                row["hf_prompt_tok_s"], row["hf_decode_tok_s"] = _rates(b, args, h_pre, h_tot)
                row["prompt_ratio"] = row["ours_prompt_tok_s"] / row["hf_prompt_tok_s"]
                row["decode_ratio"] = row["ours_decode_tok_s"] / row["hf_decode_tok_s"]
            rows.append(row)
            print(format_row(row), flush=True)
        if comp is not None:
            compiled_info[prec] = {"greedy_vs_eager": graph_agreement(comp, model, tok, batches, args, seq_len,
                                                                      "compiled"),
                                   "cold_s": {f"b{k[0]}-kv{k[1]}": round(v, 2)
                                              for k, v in comp.decoder.compiled.timings.items()},
                                   "warm_s": warm_start(args, prec, batches, seq_len)}
            print(f"{prec}: compile per bucket, cold {compiled_info[prec]['cold_s']}, "
                  f"warm (new process) {compiled_info[prec]['warm_s']}", flush=True)
        if llm is not None:
            llm.close()
        del engine, model, hf, comp
    return rows, agreement, modes, kernels, compiled_info


def warm_start(args, prec, batches, seq_len) -> dict:
    """Seconds of each bucket's first step in a new process that finds the cold run's Inductor cache."""
    cmd = [sys.executable, __file__, "--warm-probe", prec, "--model", args.model, "--batches",
           ",".join(map(str, batches)), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens",
           str(args.new_tokens)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def warm_probe(args, prec: str) -> None:
    """(In the new process of `warm_start`) load the model, compile each batch's bucket, print the timings."""
    from torch._dynamo.utils import counters
    dtype = torch.float32 if prec == "float32" else torch.bfloat16
    model, tok, _ = load_model(args.model, device="cpu", dtype=dtype, quantize=prec if prec in ("int8", "int4") else None)
    batches = [int(b) for b in args.batches.split(",")]
    comp = Engine(model, tok, max_batch=max(batches), max_seq_len=args.prompt_tokens + args.new_tokens + 8,
                  prefix_cache=False)
    comp.decode_mode = "compiled"
    for b in batches:
        bench_ours(comp, make_prompts(tok, b, args.prompt_tokens), 2, "cpu", 1)
    out = {f"b{k[0]}-kv{k[1]}": round(v, 2) for k, v in comp.decoder.compiled.timings.items()}
    out["fxgraph_cache_hit"] = counters["inductor"].get("fxgraph_cache_hit", 0)
    out["fxgraph_cache_miss"] = counters["inductor"].get("fxgraph_cache_miss", 0)
    print(json.dumps(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precisions", default=None,
                    help="comma list of float32, bfloat16, int8, int4 (default: all four on the CPU, bfloat16 on CUDA)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                    help="one float precision only (the same as --precisions DTYPE)")
    ap.add_argument("--threads", type=int, default=0, help="torch and llama.cpp threads (0: torch's default)")
    ap.add_argument("--no-llama-cpp", action="store_true", help="leave out the llama.cpp anchor")
    ap.add_argument("--no-hf", action="store_true", help="leave out the transformers anchor")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly on CUDA (default: CUDA graphs)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled CPU decode steps")
    ap.add_argument("--compile-cache", default=None, metavar="DIR",
                    help="Inductor cache of the compiled runs (default: a fresh one, so the cold compile is timed)")
    ap.add_argument("--warm-probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="result JSON (default: bench/results/generate-DEVICE-PRECISIONS.json)")
    args = ap.parse_args(argv)
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warm_probe:
        return warm_probe(args, args.warm_probe)
    device = args.device
    cuda = device.startswith("cuda")
    precisions = (args.precisions or args.dtype or ("bfloat16" if cuda else "float32,bfloat16,int8,int4")).split(",")
    bad = [p for p in precisions if p not in LLAMA_TYPES]
    if bad:
        ap.error(f"unknown precision {bad[0]!r}")
    use_llama, source = not args.no_llama_cpp and not cuda, None
    if use_llama:
        import llama_cpp
        source = find_gguf(args.model)
        if source is None:
            print("no GGUF for this model: llama.cpp left out")
            use_llama = False
    batches = [int(b) for b in args.batches.split(",")]
    seq_len = args.prompt_tokens + args.new_tokens + 8
    threads = torch.get_num_threads()
    workdir = Path(tempfile.mkdtemp(prefix="alignchat-bench-"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(args.compile_cache or workdir / "inductor").resolve())
    try:
        rows, agreement, modes, kernels, compiled_info = run_all(args, precisions, batches, seq_len, threads, device, workdir,
                                                  source if use_llama else None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"model {args.model} on {device} ({threads} threads), prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new tokens, torch {torch.__version__}, transformers {transformers.__version__}"
          + (f", llama-cpp-python {llama_cpp.__version__}" if use_llama else ""))
    hdr = (f"{'precision':>9} {'batch':>5} | {'prompt tok/s ours':>17} {'llama.cpp':>10} {'ratio':>6} {'hf':>8} "
           f"{'ratio':>6} | {'decode tok/s ours':>17} {'llama.cpp':>10} {'ratio':>6} {'hf':>8} {'ratio':>6} | "
           f"{'compiled':>8} {'ratio':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(format_row(r))
    result = {"model": args.model, "device": device, "precisions": precisions, "threads": threads,
              "machine": platform.machine(), "cpu": cpu_model(), "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "repeats": args.repeats, "torch": torch.__version__,
              "transformers": transformers.__version__,
              "llama_cpp_python": llama_cpp.__version__ if use_llama else None, "llama_types": LLAMA_TYPES,
              "decode_mode": modes, "quant_kernels": kernels, "graph_vs_eager_greedy": agreement,
              "compiled": compiled_info, "rows": rows,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out or Path(__file__).parent / "results" / f"generate-{device.split(':')[0]}-{'-'.join(precisions)}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out}")


def format_row(r) -> str:
    def f(key, fmt):
        v = r.get(key)
        return format(v, fmt) if v is not None else "-"
    return (f"{r['precision']:>9} {r['batch']:>5} | {f('ours_prompt_tok_s', '.0f'):>17} {f('llama_prompt_tok_s', '.0f'):>10} "
            f"{f('prompt_ratio_llama', '.2f'):>5}x {f('hf_prompt_tok_s', '.0f'):>8} {f('prompt_ratio', '.2f'):>5}x | "
            f"{f('ours_decode_tok_s', '.1f'):>17} {f('llama_decode_tok_s', '.1f'):>10} {f('decode_ratio_llama', '.2f'):>5}x "
            f"{f('hf_decode_tok_s', '.1f'):>8} {f('decode_ratio', '.2f'):>5}x | "
            f"{f('compiled_decode_tok_s', '.1f'):>8} {f('compiled_decode_ratio_llama', '.2f'):>5}x")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def graph_agreement(engine, model, tok, batches, args, seq_len, label="CUDA graphs"):
    """The CUDA-graph (or compiled) path must say what the eager path says: greedy tokens of the largest
    batch, compared."""
    prompts = make_prompts(tok, max(batches), args.prompt_tokens)
    p = SamplingParams(max_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    eager = Engine(model, tok, max_batch=max(batches), max_seq_len=seq_len, cuda_graphs=False, prefix_cache=False)
    a = [g.token_ids for g in engine.generate(prompts, p)]
    e = [g.token_ids for g in eager.generate(prompts, p)]
    del eager
    same = sum(x == y for ra, re_ in zip(a, e) for x, y in zip(ra, re_))
    agreement = {"identical_tokens": same, "tokens": sum(len(r) for r in e),
                 "identical_sequences": sum(ra == re_ for ra, re_ in zip(a, e)), "sequences": len(e)}
    print(f"{label} vs eager, greedy: {same}/{agreement['tokens']} tokens and "
          f"{agreement['identical_sequences']}/{len(e)} sequences identical")
    return agreement


if __name__ == "__main__":
    main()
