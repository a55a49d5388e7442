"""`alignchat import`: convert a GGUF file or a Hugging Face directory into an alignchat checkpoint."""
from __future__ import annotations

from pathlib import Path

from ..settings import describe_io


def add_arguments(p) -> None:
    p.add_argument("source", help="registry name, .gguf file or Hugging Face model directory")
    p.add_argument("--out", "-o", required=True, help="checkpoint directory to write")
    describe_io(p, reads="SOURCE: a .gguf file, a Hugging Face model directory or a registry name (pulled on first use)",
                writes="an alignchat checkpoint directory at --out (model.safetensors, config.json, "
                       "tokenizer.json, tokenizer_config.json, meta.json)")


def run(args) -> int:
    from ..checkpoint import save_checkpoint
    from ..hub import load_model
    model, tok, meta = load_model(args.source)
    out = save_checkpoint(Path(args.out), model, tok, meta=meta)
    print(f"wrote {out} ({model.num_params() / 1e6:.1f}M parameters)")
    return 0
