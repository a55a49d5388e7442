"""The one flag set for choosing a model, shared by every verb that talks to one:

    --model NAME_OR_PATH                       a local model (registry name, checkpoint dir, .gguf, HF dir)
    --endpoint URL [--endpoint-model NAME]     any OpenAI-compatible server instead
    --api-key-env VAR                          the environment variable holding the endpoint's key
    --device auto|cpu|cuda|cuda:N              where a local model runs (auto: CUDA when present)
    --dtype float32|bfloat16|float16           its weights (default: bfloat16 on CUDA, float32 on the CPU)
    --quantize int8|int4                       quantise its weights at load (alignchat.quant)
    --compile on                               compiled CPU decode steps (alignchat.engine.compiled)

Notable choices:
- A verb whose model plays a role names the role as a prefix: `--judge-model`, `--judge-endpoint`,
  `--judge-endpoint-model`. `--api-key-env`, `--device` and `--dtype` are never prefixed (one model per
  verb needs them).
- `allow_none`: the value `none` for the model means "no model" (the literature assistant then quotes
  its evidence).
- `aliases` keeps an older spelling of a flag working, hidden from --help.
- The key itself is never a flag: a command line is visible to every user of the machine.
"""
from __future__ import annotations

import argparse

from .endpoint import DEFAULT_API_KEY_ENV

DTYPES = ("float32", "bfloat16", "float16")


def add_client_args(p: argparse.ArgumentParser, prefix: str = "", default_model: str | None = None,
                    model_help: str | None = None, allow_none: bool = False,
                    aliases: dict[str, str] | None = None) -> None:
    """Add the flag set to `p`; `client_from_args(args, prefix)` builds the client it describes.

    `aliases` maps an old flag spelling to the new one it stands for (e.g. {"--judge-url": "--judge-endpoint"})."""
    g = p.add_argument_group("model" if not prefix else f"{prefix.rstrip('-')} model")
    none = " ('none': no model)" if allow_none else ""
    default = f" (default: {default_model})" if default_model else ""
    g.add_argument(f"--{prefix}model", default=None, metavar="NAME_OR_PATH",
                   help=(model_help or "a local model: registry name, checkpoint directory, .gguf file or Hugging "
                                       "Face directory") + none + default)
    p.set_defaults(**{_dest(prefix, "model-default"): default_model})
    g.add_argument(f"--{prefix}endpoint", default=None, metavar="URL",
                   help="an OpenAI-compatible server instead of a local model, e.g. http://127.0.0.1:8000/v1 "
                        "(text is sent to it)")
    g.add_argument(f"--{prefix}endpoint-model", default=None, metavar="NAME",
                   help="model name to send to the endpoint (default: the first one its /v1/models lists)")
    g.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, metavar="VAR",
                   help=f"environment variable holding the endpoint's API key (default: {DEFAULT_API_KEY_ENV})")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights dtype of a local model (default: bfloat16 on CUDA, float32 on the CPU)")
    from ..commands.common import add_quantize_arg
    add_quantize_arg(g)
    for old, new in (aliases or {}).items():
        p.add_argument(old, dest=new.lstrip("-").replace("-", "_"), help=argparse.SUPPRESS)


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def _get(args, prefix: str, name: str):
    return getattr(args, _dest(prefix, name), None)


def model_of(args, prefix: str = "") -> str | None:
    """The local model the flags name: the one given, else the verb's default; None for 'none'."""
    model = _get(args, prefix, "model") or _get(args, prefix, "model-default")
    return None if model is None or str(model).lower() == "none" else str(model)


def wants_model(args, prefix: str = "") -> bool:
    """Whether the flags name a model at all (an endpoint, or a local model other than 'none')."""
    return bool(_get(args, prefix, "endpoint")) or model_of(args, prefix) is not None


def client_from_args(args, prefix: str = "", **local_options):
    """The client the flags describe, or None when they name no model (`--model none`, or nothing)."""
    from ..errors import UserError
    from . import make_client
    endpoint = _get(args, prefix, "endpoint")
    if endpoint:
        if _get(args, prefix, "model"):
            raise UserError(f"give either --{prefix}model or --{prefix}endpoint, not both")
        return make_client(endpoint=endpoint, endpoint_model=_get(args, prefix, "endpoint-model"),
                           api_key_env=getattr(args, "api_key_env", DEFAULT_API_KEY_ENV))
    model = model_of(args, prefix)
    if model is None:
        return None
    return make_client(model=model, device=getattr(args, "device", "auto"), dtype=getattr(args, "dtype", None),
                       quantize=getattr(args, "quantize", None), compile=getattr(args, "compile", None),
                       **local_options)
