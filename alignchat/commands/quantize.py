"""`alignchat quantize`: write a weight-only quantised checkpoint, `--to int8` (one scale per output channel) or
`--to int4` (groups of `--group-size` input columns), that every verb loads as it loads any checkpoint.

Notable choices:
- The output is the project's checkpoint directory (safetensors, config, tokenizer, meta), with the scheme
  and group size in config.json's `quantization` and in meta.json, so `serve`, `chat`, `generate`, `eval`
  and the benchmarks take it with `--model DIR` and no further flag.
- Quantisation starts from the float32 weights; the kernels are not saved but timed on the machine that
  loads the checkpoint (`alignchat.quant.choose_kernels`).
- It reports the logits' drift on a short fixed text (max |Δ| against the float model, and how many of its
  next-token choices agree), so a user sees what was lost before serving the result.
"""
from __future__ import annotations

import time

from ..settings import describe_io

PROBE = ("The history of natural language processing generally started in the 1950s. In 1950, Alan Turing "
         "published an article titled Computing Machinery and Intelligence. 人工智能是计算机科学的一个分支。")


def add_arguments(p) -> None:
    from ..quant import INT4_GROUP_SIZE, SCHEMES
    p.add_argument("model", help="registry name, checkpoint directory, .gguf file or Hugging Face directory")
    p.add_argument("--to", required=True, choices=SCHEMES, help="int8 (per output channel) or int4 (group-wise)")
    p.add_argument("--out", "-o", required=True, help="output checkpoint directory")
    p.add_argument("--group-size", type=int, default=INT4_GROUP_SIZE,
                   help=f"int4: input columns per scale and minimum (default {INT4_GROUP_SIZE})")
    describe_io(p, reads="MODEL: a registry name (pulled on first use), checkpoint directory, .gguf file or Hugging "
                         "Face directory, in float",
                writes="a quantised checkpoint directory at --out (model.safetensors with qweight/scales tensors, "
                       "config.json with `quantization`, tokenizer files, meta.json); the drift report to standard "
                       "output")


def run(args) -> int:
    import copy

    import torch

    from ..checkpoint import save_checkpoint
    from ..errors import UserError
    from ..hub import load_model
    from ..quant import QuantError, quantize_model
    if args.group_size < 2 or args.group_size % 2:
        raise UserError("--group-size must be an even number of at least 2")
    model, tok, meta = load_model(args.model, device="cpu", dtype=torch.float32)
    if getattr(model, "quantization", None):
        raise UserError(f"{args.model} is already quantised ({model.quantization['scheme']}); quantise the float "
                        f"checkpoint instead")
    ids = torch.tensor([tok.encode(PROBE)[: min(64, model.cfg.max_seq_len)]])
    with torch.inference_mode():
        ref = model(ids).float()
    float_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    t0 = time.monotonic()
    qmodel = copy.deepcopy(model)
    del model
    try:
        quantize_model(qmodel, args.to, group_size=args.group_size)
    except QuantError as e:
        raise UserError(f"{args.model}: {e}") from e
    with torch.inference_mode():
        out = qmodel(ids).float()
    q_bytes = sum(t.numel() * t.element_size() for t in qmodel.state_dict().values())
    drift = (out - ref).abs().max().item()
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    meta = {k: v for k, v in meta.items() if k not in ("created", "quantization", "precision")}
    meta.update(stage="quantize", parent=str(args.model), quantization=qmodel.quantization,
                probe={"tokens": ids.shape[1], "max_abs_logit_drift": round(drift, 4), "top1_agreement": round(agree, 4)})
    out_dir = save_checkpoint(args.out, qmodel, tok, meta=meta)
    print(f"quantised {args.model} to {args.to} in {time.monotonic() - t0:.1f}s: {float_bytes / 2**20:.0f} MiB float32 "
          f"-> {q_bytes / 2**20:.0f} MiB")
    print(f"probe of {ids.shape[1]} tokens: max |logit drift| {drift:.3f}, next-token agreement {agree:.1%}")
    print(f"wrote {out_dir}")
    return 0
