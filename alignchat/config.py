"""Model configuration and named size presets, from a test-sized `tiny` to the GPT-3 175B shape.

Notable choices:
- One dataclass describes every model alignchat builds or imports (Llama-style blocks: RoPE, RMSNorm,
  SwiGLU, grouped-query attention, optional QKV bias as in Qwen2, optional tied embeddings). Gemma 3 is
  the same family with switches: q/k norms, sandwich norms, (1 + weight) norms, GeLU-tanh gating, the
  √dim embedding scale, local sliding-window layers with their own RoPE base, query_pre_attn_scalar.
- GPT-shaped presets keep the GPT layer/head/width table. Their SwiGLU inner width is 8/3 of the model width,
  so the MLP has the same 8·d² weights as GPT's 4·d two-matrix MLP and parameter counts match the papers.
- `param_count` is analytic, so the GPT-3 shape can be checked (≈175B) without allocating it.
- Any field can be overridden from the command line (`key=value`) or a TOML/YAML file, by the rules of
  `alignchat.settings` (`apply_overrides` applies them to one dataclass).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .settings import setting


def _swiglu_hidden(dim: int, multiple_of: int = 256) -> int:
    hidden = int(8 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@dataclass
class ModelConfig:
    """The model's shape."""

    vocab_size: int = setting(50304, "vocabulary size (pretraining: the tokenizer's, rounded up to 64, unless set)")
    dim: int = setting(768, "model width")
    n_layers: int = setting(12, "Transformer blocks")
    n_heads: int = setting(12, "attention heads")
    n_kv_heads: int | None = setting(None, "key/value heads (grouped-query attention); none: n_heads")
    hidden_dim: int | None = setting(None, "SwiGLU inner width; none: 8/3·dim rounded up to 256")
    head_dim: int | None = setting(None, "width of one head; none: dim / n_heads")
    max_seq_len: int = setting(2048, "context length")
    rope_theta: float = setting(10000.0, "RoPE base")
    norm_eps: float = setting(1e-5, "RMSNorm epsilon")
    tie_embeddings: bool = setting(False, "share the input embedding and the output projection")
    qkv_bias: bool = setting(False, "biases on the query/key/value projections (as in Qwen2)")
    # Gemma 3's differences from Llama, each a switch (all off: a Llama block)
    qk_norm: bool = setting(False, "RMSNorm on each query and key head before RoPE (Gemma 3)")
    sandwich_norms: bool = setting(False, "extra RMSNorms on the attention and MLP outputs (Gemma 3)")
    norm_plus_one: bool = setting(False, "RMSNorm scales by (1 + weight), weights stored around 0 (Gemma)")
    mlp_act: str = setting("silu", "gating activation of the MLP", choices=("silu", "gelu_tanh"))
    embed_scale: bool = setting(False, "multiply the input embeddings by sqrt(dim) (Gemma)")
    sliding_window: int | None = setting(None, "keys a local layer's query sees (its own included); none: no local layers")
    sliding_window_pattern: int = setting(0, "with sliding_window: every N-th layer is global, the rest local "
                                             "(0: every layer local)")
    rope_local_theta: float | None = setting(None, "RoPE base of the local layers; none: rope_theta")
    query_pre_attn_scalar: float | None = setting(None, "attention scores scaled by this**-0.5; none: head_dim")
    # bookkeeping for import/export; not used by the math
    family: str = setting("llama", "Hugging Face architecture to export as", choices=("llama", "qwen2", "gemma3"))
    bos_token_id: int | None = setting(None, "beginning-of-sequence token id (export metadata)")
    eos_token_id: int | None = setting(None, "end-of-sequence token id (export metadata)")

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.hidden_dim is None:
            self.hidden_dim = _swiglu_hidden(self.dim)
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be at least 1, got {self.sliding_window}")

    def is_local_layer(self, i: int) -> bool:
        """Whether layer i attends through the sliding window (and uses the local RoPE base)."""
        if self.sliding_window is None:
            return False
        return not (self.sliding_window_pattern and (i + 1) % self.sliding_window_pattern == 0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> None:
        from .fetch import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def param_count(cfg: ModelConfig, include_embeddings: bool = True) -> int:
    """Exact number of parameters of `alignchat.model.Transformer(cfg)`, computed without building it."""
    d, hd = cfg.dim, cfg.head_dim
    q = d * cfg.n_heads * hd
    kv = 2 * d * cfg.n_kv_heads * hd
    o = cfg.n_heads * hd * d
    bias = (cfg.n_heads + 2 * cfg.n_kv_heads) * hd if cfg.qkv_bias else 0
    mlp = 3 * d * cfg.hidden_dim
    norms = (4 if cfg.sandwich_norms else 2) * d + (2 * hd if cfg.qk_norm else 0)
    per_layer = q + kv + o + bias + mlp + norms
    total = cfg.n_layers * per_layer + d  # final norm
    if include_embeddings:
        total += cfg.vocab_size * d * (1 if cfg.tie_embeddings else 2)
    return total


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token (forward + backward): 6·N plus the attention term, as in the PaLM appendix."""
    n = param_count(cfg, include_embeddings=False)
    t = seq_len or cfg.max_seq_len
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * t


_GEMMA3 = dict(qk_norm=True, sandwich_norms=True, norm_plus_one=True, mlp_act="gelu_tanh", embed_scale=True,
               rope_local_theta=10000.0, family="gemma3")

PRESETS: dict[str, dict[str, Any]] = {
    # test-sized: builds in milliseconds on a CPU
    "tiny": dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq_len=256),
    # a few minutes of CPU pretraining; a quick GPU sanity run
    "small": dict(vocab_size=8192, dim=256, n_layers=6, n_heads=8, n_kv_heads=4, hidden_dim=768, max_seq_len=512),
    # GPT-1 (Radford et al. 2018): 12 layers, 12 heads, width 768, 512 context
    "gpt1": dict(vocab_size=40478, dim=768, n_layers=12, n_heads=12, max_seq_len=512, tie_embeddings=True),
    # GPT-2 family (vocabulary 50257 padded to 50304 for fast matmuls), 1024 context
    "gpt2-124m": dict(vocab_size=50304, dim=768, n_layers=12, n_heads=12, max_seq_len=1024, tie_embeddings=True),
    "gpt2-350m": dict(vocab_size=50304, dim=1024, n_layers=24, n_heads=16, max_seq_len=1024, tie_embeddings=True),
    "gpt2-774m": dict(vocab_size=50304, dim=1280, n_layers=36, n_heads=20, max_seq_len=1024, tie_embeddings=True),
    "gpt2-1.5b": dict(vocab_size=50304, dim=1600, n_layers=48, n_heads=25, max_seq_len=1024, tie_embeddings=True),
    # GPT-3 175B shape: 96 layers, 96 heads of 128, width 12288, 2048 context
    "gpt3-175b": dict(vocab_size=50257, dim=12288, n_layers=96, n_heads=96, hidden_dim=32768, max_seq_len=2048),
    # SmolLM2-135M (the default chat model's shape)
    "smollm2-135m": dict(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536,
                         max_seq_len=8192, rope_theta=100000.0, norm_eps=1e-5, tie_embeddings=True),
    # Gemma 3 270M (the gemma-3-270m registry model's shape): local layers with a 512-token window, every
    # sixth layer global
    "gemma3-270m": dict(vocab_size=262144, dim=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256,
                        hidden_dim=2048, max_seq_len=32768, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True,
                        **_GEMMA3, sliding_window=512, sliding_window_pattern=6, query_pre_attn_scalar=256),
    # test-sized Gemma 3: every switch on, a 16-token window, every second layer global
    "tiny-gemma3": dict(vocab_size=512, dim=64, n_layers=4, n_heads=4, n_kv_heads=1, head_dim=32, hidden_dim=128,
                        max_seq_len=256, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True, **_GEMMA3,
                        sliding_window=16, sliding_window_pattern=2, query_pre_attn_scalar=24),
}
PRESETS["gpt2"] = PRESETS["gpt2-124m"]


def preset(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return ModelConfig(**{**PRESETS[name], **overrides})


def apply_overrides(obj: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """Return a copy of dataclass `obj` with `key=value` strings (or a dict) applied, typed like the field.

    Unknown keys are an error, so a typo never silently does nothing. Nested dataclasses take `a.b=value`.
    The typing and naming rules are the verbs' (`alignchat.settings`)."""
    from .settings import SettingsSpec

    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for s in overrides:
            if "=" not in s:
                raise ValueError(f"override {s!r} is not of the form key=value")
            k, v = s.split("=", 1)
            items.append((k, v))
    spec = SettingsSpec(obj)
    return spec.apply(obj, {spec.resolve(k).dotted: v for k, v in items})
