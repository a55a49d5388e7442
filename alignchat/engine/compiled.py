"""Compiled decode steps: the padded decode forward compiled by `torch.compile` (Inductor's C++ code on a CPU),
one graph per (batch bucket, cache-length bucket), its compiled code cached on disk.

    step = CompiledStep(model)                      # compiles nothing yet
    logits = step(cache, ids, pos, slots, kv_len)   # (b, vocab); a new (b, kv_len) compiles once

Notable choices:
- Static shapes (`dynamic=False`, `fullgraph=True`): the decoder (decode.py) pads the batch to a bucket and
  the attended cache length to a multiple of `decode.COMPILE_KV_BLOCK`, as it does for CUDA graphs, so each
  (batch, length) bucket is one graph compiled on first use (lazily: a server compiles only the buckets its
  traffic reaches). Dynamo keeps one entry per bucket; its recompile limit is raised to cover them all
  (past it, Dynamo would run further buckets uncompiled).
- The KV cache is a graph input mutated in place (the step writes one key/value per row), so the compiled
  step reads and writes the engine's own cache; the weights are parameters read as inputs, so one compiled
  step serves float32, bfloat16 and `QuantLinear` (its packed int8/int4 kernels are ATen ops Inductor
  calls as they are).
- Inductor's default options, chosen by measuring (bench/compile_options.py, docs/performance.md): against
  them `freezing` (weights folded in as constants and prepacked) and `max_autotune` (C++ GEMM templates,
  as "max-autotune-no-cudagraphs") made a cold compile 1.2-1.8x longer and no step faster, at batch 1 and 8.
  `CompiledStep(options=...)` still takes them.
- Disk cache: Inductor's FX graph cache and AOTAutograd cache live under `$ALIGNCHAT_HOME/inductor`
  (`TORCHINDUCTOR_CACHE_DIR`, unless the user set it), so a restarted process loads a bucket's compiled
  code instead of regenerating and rebuilding it. Dynamo still traces each bucket once per process.
- A compile that fails raises `CompileFailed` for the decoder to warn and decode eagerly (decode.py): no
  request is lost to an optimisation. The failed step has written nothing the eager rerun does not rewrite.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

COMPILE_CHOICES = ("off", "on")  # the verbs' --compile


class CompileFailed(RuntimeError):
    """torch.compile could not build or run a decode step (no C++ compiler, an unsupported op ...)."""


def inductor_cache_dir() -> Path:
    """Where Inductor's caches live: $TORCHINDUCTOR_CACHE_DIR if set, else $ALIGNCHAT_HOME/inductor. (Inductor
    writes its own default, a directory under /tmp, into that variable when anything first asks it for its
    cache; that value counts as unset.)"""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from ..fetch import alignchat_home
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env and os.path.abspath(env) != os.path.abspath(default_cache_dir()):
        return Path(env)
    return alignchat_home() / "inductor"


def use_disk_cache() -> Path:
    """Point Inductor's caches (FX graph cache, AOTAutograd cache) at `inductor_cache_dir()` and turn them
    on; returns the directory. Called before the first compile of a process."""
    path = inductor_cache_dir()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return path


def compile_available(device: torch.device | str) -> bool:
    """Whether this process can compile a CPU decode step (a C++ compiler for Inductor's code)."""
    import shutil
    if torch.device(device).type != "cpu":
        return False
    from torch._inductor import config as inductor_config
    cxx = inductor_config.cpp.cxx[-1] or "g++"
    return shutil.which(cxx) is not None


_RESERVED = 0  # buckets the compiled steps made in this process may compile, all together


def _decode_forward(model, ids, pos, slots, cache, kv_len: int):
    return model(ids, positions=pos, kv_cache=cache, slots=slots, kv_len=kv_len)[:, -1].float()


class CompiledStep:
    """The padded decode forward, compiled once per (batch, kv_len) bucket; `timings` records each bucket's
    first call (trace + compile or disk-cache load + one step), in seconds."""

    def __init__(self, model, mode: str | None = None, options: dict | None = None, n_buckets: int = 64):
        global _RESERVED
        self.model = model
        self.cache_dir = use_disk_cache()
        import torch._dynamo.config as dynamo_config
        _RESERVED += n_buckets  # every compiled step of this process shares one Dynamo cache entry list
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):  # default 8 / 256
            if hasattr(dynamo_config, name):
                setattr(dynamo_config, name, max(getattr(dynamo_config, name), _RESERVED))
        kw = {"options": options} if options else {"mode": mode}
        self._fn = torch.compile(_decode_forward, dynamic=False, fullgraph=True, **kw)
        self.timings: dict[tuple[int, int], float] = {}

    def __call__(self, cache, ids, pos, slots, kv_len: int) -> torch.Tensor:
        key = (ids.shape[0], kv_len)
        first = key not in self.timings
        t0 = time.perf_counter()
        try:
            out = self._fn(self.model, ids, pos, slots, cache, kv_len)
        except Exception as e:  # noqa: BLE001 - any compiler error: the caller decodes eagerly instead
            raise CompileFailed(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from e
        if first:
            self.timings[key] = time.perf_counter() - t0
        return out
