"""`alignchat export --format hf`: write a checkpoint in the Hugging Face layout.

The result loads with `transformers.AutoModelForCausalLM.from_pretrained(dir)` and
`AutoTokenizer.from_pretrained(dir)`, chat template included, so the ecosystem's tools run our models.
"""
from __future__ import annotations

import torch

from ..settings import describe_io


def add_arguments(p) -> None:
    p.add_argument("model", help="registry name, checkpoint directory, .gguf file or Hugging Face directory")
    p.add_argument("--format", choices=["hf"], default="hf", help="output layout (default: hf)")
    p.add_argument("--out", "-o", required=True, help="output directory")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32", help="weights dtype")
    describe_io(p, reads="MODEL: a registry name (pulled on first use), checkpoint directory, .gguf file or Hugging "
                         "Face directory",
                writes="a Hugging Face model directory at --out (config.json, model.safetensors, tokenizer files "
                       "with the chat template)")


def run(args) -> int:
    from ..checkpoint import export_hf
    from ..hub import load_model
    model, tok, meta = load_model(args.model)
    out = export_hf(model, tok, args.out, dtype=getattr(torch, args.dtype), meta=meta)
    print(f"wrote Hugging Face model to {out}")
    return 0
