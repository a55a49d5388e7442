"""Import a llama.cpp GGUF file (Llama, Qwen2 or Gemma 3 architecture) as a `Transformer` and its `Tokenizer`.

Notable choices:
- Tensors are read with the `gguf` package and dequantised with `gguf.quants.dequantize` (F32, F16, BF16,
  Q8_0, Q4_0, Q4_1, K-quants, ...), then held in float32 (or the dtype asked for).
- llama.cpp's converter permutes the rows of Q and K in Llama GGUFs so its interleaved RoPE works; we
  use the Hugging Face "rotate half" layout, so those rows are un-permuted here. Qwen2 GGUFs are not
  permuted by llama.cpp and are taken as they are.
- The tokenizer (tokens, merges or SentencePiece pieces, control tokens) and the chat template come from
  the GGUF metadata (`Tokenizer.from_gguf_fields`).
- Gemma 3: llama.cpp stores RMSNorm weights as (1 + w) for its plain x·w kernel; our Gemma norms compute
  (1 + w) themselves, so 1 is subtracted on import (and added back on export). Its Q/K are not permuted.
  The file states neither the local layers' RoPE base nor the local/global pattern; they are Gemma 3's
  (10,000; every sixth layer global), as in transformers' Gemma3TextConfig.
- A truncated or malformed file raises `CheckpointError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .config import ModelConfig
from .errors import CheckpointError
from .tokenizer import Tokenizer

SUPPORTED_ARCHS = ("llama", "qwen2", "gemma3")
GEMMA3_LOCAL_ROPE_THETA = 10000.0
GEMMA3_SLIDING_WINDOW_PATTERN = 6

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma 3: ffn_norm is the MLP's pre-norm, which Hugging Face's Gemma names apart from post_attention_layernorm
_GEMMA3_LAYER_NAMES = {
    **_LAYER_NAMES,
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}


def _layer_names(arch: str) -> dict[str, str]:
    return _GEMMA3_LAYER_NAMES if arch == "gemma3" else _LAYER_NAMES


def gguf_name_to_hf(name: str, arch: str = "llama") -> str | None:
    names = _layer_names(arch)
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    if name.startswith("blk."):
        _, idx, rest = name.split(".", 2)
        if rest in names:
            return f"model.layers.{idx}.{names[rest]}"
    return None


def hf_name_to_gguf(name: str, arch: str = "llama") -> str | None:
    inverse = {v: k for k, v in _layer_names(arch).items()}
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    if name.startswith("model.layers."):
        _, _, idx, rest = name.split(".", 3)
        if rest in inverse:
            return f"blk.{idx}.{inverse[rest]}"
    return None


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation: interleaved pairs -> rotate-half halves, per head."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's permutation (rotate-half -> interleaved); used to write GGUFs in tests and exports."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str | Path):
    import gguf
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file (bad magic {magic!r})")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # truncated files fail inside numpy memmap / struct parsing
        raise CheckpointError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from e
    meta = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = field.contents()
        except Exception:
            continue
    return reader, meta


def config_from_gguf(meta: dict, path: Path, tensor_names: set[str]) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise CheckpointError(f"{path}: architecture {arch!r} is not supported (supported: {', '.join(SUPPORTED_ARCHS)})")

    def g(key, default=None):
        return meta.get(f"{arch}.{key}", default)

    n_heads = int(g("attention.head_count"))
    dim = int(g("embedding_length"))
    vocab = int(g("vocab_size", len(meta.get("tokenizer.ggml.tokens", [])) or 0))
    key_len = g("attention.key_length")
    gemma = {}
    if arch == "gemma3":
        window = g("attention.sliding_window")
        gemma = dict(qk_norm=True, sandwich_norms=True, norm_plus_one=True, mlp_act="gelu_tanh", embed_scale=True,
                     sliding_window=int(window) if window else None,
                     sliding_window_pattern=GEMMA3_SLIDING_WINDOW_PATTERN, rope_local_theta=GEMMA3_LOCAL_ROPE_THETA,
                     query_pre_attn_scalar=float(key_len or int(g("embedding_length")) // n_heads))
    return ModelConfig(
        vocab_size=vocab, dim=dim, n_layers=int(g("block_count")), n_heads=n_heads,
        n_kv_heads=int(g("attention.head_count_kv", n_heads)), hidden_dim=int(g("feed_forward_length")),
        head_dim=int(key_len) if key_len else None,
        max_seq_len=int(g("context_length", 2048)), rope_theta=float(g("rope.freq_base", 10000.0)),
        norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        family=arch if arch in ("qwen2", "gemma3") else "llama",
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        **gemma,
    )


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32, max_seq_len: int | None = None):
    """Return (Transformer, Tokenizer, meta) from a GGUF file."""
    import gguf
    from .checkpoint import build_model

    path = Path(path)
    reader, meta = read_gguf(path)
    names = {t.name for t in reader.tensors}
    cfg = config_from_gguf(meta, path, names)
    if max_seq_len:
        cfg.max_seq_len = max_seq_len
    tokenizer = Tokenizer.from_gguf_fields(meta)
    state = {}
    arch = meta.get("general.architecture")
    permute = arch == "llama"
    for t in reader.tensors:
        hf_name = gguf_name_to_hf(t.name, arch)
        if hf_name is None:
            continue
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot dequantize tensor {t.name} ({t.tensor_type.name}): {e}") from e
        arr = np.asarray(arr, dtype=np.float32).reshape(tuple(int(s) for s in reversed(t.shape)))
        if permute and ".attn_q." in t.name:
            arr = unpermute_rope_rows(arr, cfg.n_heads)
        elif permute and ".attn_k." in t.name:
            arr = unpermute_rope_rows(arr, cfg.n_kv_heads)
        elif cfg.norm_plus_one and t.name.endswith("norm.weight"):
            arr = arr - np.float32(1.0)
        state[hf_name] = torch.from_numpy(arr.copy()).to(dtype)
    if cfg.vocab_size != state["model.embed_tokens.weight"].shape[0]:
        cfg.vocab_size = state["model.embed_tokens.weight"].shape[0]
    model = build_model(cfg, state, path, dtype)
    info = {"stage": "import", "source": str(path), "source_format": "gguf",
            "gguf_name": meta.get("general.name"), "file_type": meta.get("general.file_type")}
    return model, tokenizer, info

