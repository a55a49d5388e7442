"""Options shared by verbs that load a model and sample from it.

Notable choices:
- `--quantize int8|int4` quantises a float model's weights at load (`alignchat.quant`); a quantised
  checkpoint (`alignchat quantize`) loads quantised without it.
- Without `--dtype`, the interactive verbs (`generate`, `chat`, and the server) take `pick_precision`'s
  choice: bfloat16 on a CPU with native bf16 arithmetic, float32 on one without, bfloat16 on CUDA, with the
  reason said. `pick_dtype` (float32 on any CPU) stays the default of the batch verbs and benchmarks, whose
  numbers must not change with the machine.
- `--compile on` decodes through compiled steps on a CPU (`alignchat.engine.compiled`): one graph per
  (batch, length) bucket, compiled when first needed and cached under $ALIGNCHAT_HOME/inductor. It is off by
  default: a cold compile of one SmolLM2 bucket took minutes on a shared 2-core CPU, a cached one over a minute
  (docs/performance.md), which a server's first requests would wait for.
  `add_quantize_arg` adds it, so every verb with `--quantize` has it too.
"""
from __future__ import annotations

import argparse

import torch

from ..client.sampling import SAMPLING_DEFAULTS
from ..hub import DEFAULT_MODEL


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"registry name, checkpoint directory, .gguf file or Hugging Face directory (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: bfloat16 on CUDA and on a CPU with native bf16, else float32)")
    p.add_argument("--context", type=int, default=2048, help="context window the engine allocates (default 2048)")
    add_quantize_arg(p)


def add_quantize_arg(p) -> None:
    from ..quant import SCHEMES
    p.add_argument("--quantize", default=None, choices=SCHEMES,
                   help="quantise the weights at load: int8 (per channel) or int4 (groups of 32), kernels chosen "
                        "by timing them here (default: as stored; a quantised checkpoint loads quantised)")
    add_compile_arg(p)


def add_compile_arg(p) -> None:
    from ..engine.compiled import COMPILE_CHOICES
    p.add_argument("--compile", default=None, choices=COMPILE_CHOICES,
                   help="on: decode through torch.compile'd steps on a CPU, one per batch/length bucket, compiled "
                        "on first use and cached under $ALIGNCHAT_HOME/inductor (a cold compile can take minutes "
                        "per bucket; a failed one decodes eagerly). Default: off")


def apply_compile(engine, choice: str | None) -> str:
    """Switch `engine` to compiled decode steps when `choice` is "on" and this device can; returns what was
    done and why, for the start-up log and /health."""
    if choice != "on":
        return f"off: {engine.decode_mode} decoding (--compile on compiles CPU decode steps)"
    from ..engine.compiled import compile_available, inductor_cache_dir
    if engine.device.type != "cpu":
        return f"off: --compile applies to CPU decoding; on {engine.device} the engine decodes with " \
               f"{engine.decode_mode} steps"
    if not compile_available(engine.device):
        return "off: no C++ compiler for Inductor's code was found (g++, or $CXX); decoding eagerly"
    engine.decode_mode = "compiled"
    return f"on: decode steps compiled per (batch, length) bucket when first needed, cached in {inductor_cache_dir()}"


def add_sampling_args(p: argparse.ArgumentParser, max_tokens: int = 256) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens, help=f"maximum new tokens (default {max_tokens})")
    d = SAMPLING_DEFAULTS
    g.add_argument("--temperature", "-t", type=float, default=d.temperature, help=f"0 = greedy (default {d.temperature})")
    g.add_argument("--top-k", type=int, default=d.top_k, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"nucleus sampling mass (default {d.top_p})")
    g.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty,
                   help=f">1 discourages repeats (default {d.repetition_penalty})")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")


def sampling_from_args(args):
    from ..engine import SamplingParams
    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, repetition_penalty=args.repetition_penalty, stop=list(args.stop),
                          seed=args.seed)


def pick_device(name: str | None = "auto") -> str:
    """The one device choice: "auto" (or None/"") is CUDA when present, else the CPU; anything else as given."""
    if name and name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, name: str | None = None) -> torch.dtype:
    """`name` ("float32", "bfloat16", "float16") or the default: bfloat16 on CUDA, float32 elsewhere."""
    if name:
        return getattr(torch, name)
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def pick_precision(device: str, name: str | None = None) -> tuple[torch.dtype, str]:
    """(dtype, why): `name` as asked, else `quant.auto_precision`'s choice for the device (bfloat16 where native)."""
    if name:
        return getattr(torch, name), f"{name}: as asked (--dtype)"
    from ..quant import auto_precision
    return auto_precision(device)


def load_with_precision(model: str, device: str, dtype: str | None = None, quantize: str | None = None):
    """(model, tokenizer, meta, dtype, why): `model` loaded in `pick_precision`'s choice. Where that choice
    is bfloat16 on a CPU (native bf16, no --dtype, no --quantize) it is settled by measuring: the model
    loads in float32 and `quant.measured_cpu_precision` times a decode step in both."""
    from ..hub import load_model
    torch_dtype, why = pick_precision(device, dtype)
    measure = (str(device).startswith("cpu") and dtype is None and quantize is None
               and torch_dtype == torch.bfloat16)
    loaded, tok, meta = load_model(model, device=device, dtype=torch.float32 if measure else torch_dtype,
                                   quantize=quantize)
    if measure:
        from ..quant import measured_cpu_precision
        torch_dtype, why = measured_cpu_precision(loaded)
        if torch_dtype != torch.float32:
            loaded = loaded.to(torch_dtype)
    return loaded, tok, meta, torch_dtype, why


def load_for_inference(model: str, device: str | None = None, dtype: str | None = None,
                       quantize: str | None = None, auto: bool = False):
    """(model, tokenizer, meta) on `device` (default: cuda if available) in `dtype` (see `pick_dtype`; with
    `auto`, `pick_precision`, whose reason is `meta["precision"]`), quantised with `quantize`."""
    from ..hub import load_model
    device = pick_device(device)
    if auto:
        model, tok, meta, _, why = load_with_precision(model, device, dtype, quantize)
    else:
        model, tok, meta = load_model(model, device=device, dtype=pick_dtype(device, dtype), quantize=quantize)
        why = None
    if why:
        meta["precision"] = why
    return model, tok, meta


def load_engine(args, max_batch: int = 1):
    from ..engine import Engine
    model, tok, meta = load_for_inference(args.model, args.device, args.dtype, getattr(args, "quantize", None),
                                          auto=True)
    engine = Engine(model, tok, max_batch=max_batch, max_seq_len=args.context)
    meta["compile"] = apply_compile(engine, getattr(args, "compile", None))
    return engine, meta
