"""Training-step throughput: our Transformer + shared loop pieces vs. plain transformers `LlamaForCausalLM`.

Both models get the same shape (layers, width, heads, KV heads, SwiGLU width, vocabulary, tied
embeddings), the same batch, the same loss (next-token cross-entropy), the same AdamW and the same
precision (bf16 autocast on CUDA, fp32 on CPU), optionally both under `torch.compile`. Measurements
alternate between the two in several rounds and keep each side's median step time, so a busy machine
penalises both alike. Prints tokens/s, MFU (`alignchat.config.flops_per_token` over the device peak; on a
CPU the "peak" is a measured fp32 matmul rate) and the ratio ours/transformers, and saves JSON under
bench/results/.

    python bench/train.py                               # CPU default: a small shape
    python bench/train.py --shape gpt2-124m --seq 2048 --batch 16 --compile   # the H100 reference setting

Reference (issue 3): one H100, bf16, seq 2048, batch 16, GPT-2-124M shape: transformers + torch.compile
327k tokens/s (32% MFU); uncompiled 192k tokens/s.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignchat.config import ModelConfig, flops_per_token, param_count, preset  # noqa: E402
from alignchat.model import Transformer  # noqa: E402
from alignchat.train.loop import TrainConfig, autocast_context, build_optimizer, peak_flops  # noqa: E402

CPU_SHAPE = dict(vocab_size=8192, dim=256, n_layers=4, n_heads=4, n_kv_heads=4, hidden_dim=768, max_seq_len=256,
                 tie_embeddings=True)


def hf_model(cfg: ModelConfig):
    from transformers import LlamaConfig, LlamaForCausalLM
    hc = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
                     num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                     num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                     max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                     tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False,
                     attn_implementation="sdpa")
    return LlamaForCausalLM(hc)


def make_step(model, optimizer, tcfg, device, is_hf: bool):
    def step(x, y):
        with autocast_context(tcfg, device):
            logits = model(input_ids=x).logits if is_hf else model(x)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def time_steps(step, batches, device) -> list[float]:
    times = []
    for x, y in batches:
        t0 = time.perf_counter()
        step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default=None, help="a preset name (e.g. gpt2-124m); default: a small CPU shape, "
                                                  "or gpt2-124m on CUDA")
    ap.add_argument("--seq", type=int, default=None, help="sequence length (default 256 CPU / 2048 CUDA)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 4 CPU / 16 CUDA)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default 3 CPU / 20 CUDA)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile happens here)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    shape_name = args.shape or ("gpt2-124m" if cuda else "cpu-small")
    seq = args.seq or (2048 if cuda else 256)
    batch = args.batch or (16 if cuda else 4)
    steps = args.steps or (20 if cuda else 3)
    cfg = ModelConfig(**CPU_SHAPE) if shape_name == "cpu-small" else preset(shape_name)
    cfg = ModelConfig(**{**cfg.to_dict(), "max_seq_len": max(cfg.max_seq_len, seq)})
    tcfg = TrainConfig(precision="auto", lr=3e-4, weight_decay=0.1)

    torch.manual_seed(0)
    ours = Transformer(cfg).init_weights(seed=0).to(device).train()
    theirs = hf_model(cfg).to(device).train()
    n_ours, n_theirs = sum(p.numel() for p in ours.parameters()), sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs == param_count(cfg), (n_ours, n_theirs, param_count(cfg))
    if args.compile:
        ours.compile()
        theirs.compile()
    runners = {"alignchat": make_step(ours, build_optimizer(ours, tcfg, device), tcfg, device, False),
               "transformers": make_step(theirs, build_optimizer(theirs, tcfg, device), tcfg, device, True)}

    gen = torch.Generator().manual_seed(1)

    def batches(n):
        for _ in range(n):
            t = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen)
            yield t[:, :-1].to(device), t[:, 1:].to(device)

    for name, step in runners.items():
        time_steps(step, batches(args.warmup), device)
    per_step: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, step in runners.items():
            per_step[name] += time_steps(step, batches(steps), device)

    peak = peak_flops(device)
    fpt = flops_per_token(cfg, seq)
    tokens = batch * seq
    results = {}
    for name, times in per_step.items():
        med = statistics.median(times)
        tok_s = tokens / med
        results[name] = {"median_step_s": med, "tokens_per_s": tok_s,
                         "mfu": fpt * tok_s / peak if peak else None, "steps_timed": len(times)}
    ratio = results["alignchat"]["tokens_per_s"] / results["transformers"]["tokens_per_s"]
    dev_name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                                 f"{torch.get_num_threads()} threads)"
    print(f"device: {dev_name}; shape {shape_name} ({n_ours / 1e6:.1f}M params), seq {seq}, batch {batch}, "
          f"{'bf16 autocast' if cuda else 'fp32'}, compile={args.compile}")
    print(f"peak used for MFU: {peak / 1e12:.2f} TFLOP/s ({'bf16 datasheet' if cuda else 'measured fp32 matmul'})")
    print(f"{'':14s}{'tokens/s':>12s}{'MFU':>9s}{'step (ms)':>12s}")
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{name:14s}{r['tokens_per_s']:12,.0f}{mfu:>9s}{1000 * r['median_step_s']:12.1f}")
    print(f"ratio alignchat / transformers: {ratio:.3f}")
    if not cuda:
        print("note: no GPU in this run; CPU figures only (the H100 reference is 327k tok/s compiled).")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"train-{'cuda' if cuda else 'cpu'}-{shape_name}-s{seq}-b{batch}{'-compiled' if args.compile else ''}"
    record = {"device": dev_name, "shape": shape_name, "model": cfg.to_dict(), "params": n_ours, "seq": seq,
              "batch": batch, "compile": args.compile, "precision": "bf16" if cuda else "fp32",
              "peak_flops": peak, "flops_per_token": fpt, "results": results, "ratio_ours_over_hf": ratio,
              "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        import transformers
        record["transformers"] = transformers.__version__
    except ImportError:
        pass
    from alignchat.fetch import atomic_write_text
    atomic_write_text(out / f"{tag}.json", json.dumps(record, indent=2) + "\n")
    print(f"saved {out / (tag + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
