"""`alignchat export`: write a checkpoint in another layout, `--format hf` (the default) or `--format gguf`.

`hf`: a Hugging Face directory that `transformers.AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)` load, chat template included (`alignchat.checkpoint.export_hf`).
`gguf`: one llama.cpp GGUF file, `--type f32|f16|q8_0`, with the tokenizer and chat template, so the model
runs in llama.cpp and the tools built on it (`alignchat.export_gguf`).
"""
from __future__ import annotations

import torch

from ..settings import describe_io


def add_arguments(p) -> None:
    from ..export_gguf import GGUF_TYPES
    p.add_argument("model", help="registry name, checkpoint directory, .gguf file or Hugging Face directory")
    p.add_argument("--format", choices=["hf", "gguf"], default="hf", help="output layout (default: hf)")
    p.add_argument("--out", "-o", required=True, help="output directory (hf) or .gguf file (gguf)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="weights dtype (hf)")
    p.add_argument("--type", dest="gguf_type", choices=GGUF_TYPES, default="f32",
                   help="tensor type (gguf): f32 (exact), f16, or q8_0 (8-bit blocks; norms stay f32)")
    describe_io(p, reads="MODEL: a registry name (pulled on first use), checkpoint directory, .gguf file or Hugging "
                         "Face directory",
                writes="--format hf: a Hugging Face model directory at --out (config.json, model.safetensors, "
                       "tokenizer files with the chat template); --format gguf: a llama.cpp GGUF file at --out "
                       "(llama metadata, tokenizer, chat template)")


def run(args) -> int:
    from ..hub import load_model
    model, tok, meta = load_model(args.model)
    if args.format == "gguf":
        from ..export_gguf import export_gguf
        out = export_gguf(model, tok, args.out, args.gguf_type, name=meta.get("gguf_name"))
        print(f"wrote GGUF ({args.gguf_type}) to {out}")
        return 0
    from ..checkpoint import export_hf
    out = export_hf(model, tok, args.out, dtype=getattr(torch, args.dtype), meta=meta)
    print(f"wrote Hugging Face model to {out}")
    return 0
