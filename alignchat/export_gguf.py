"""GGUF export: write a model and its tokenizer as a llama.cpp GGUF file (`alignchat export --format gguf`).

The file loads in llama.cpp and the tools built on it (llama-cpp-python, Ollama, LM Studio) and back in
alignchat (`alignchat.gguf_import`), chat template included.

Notable choices:
- Written with the `gguf` package's `GGUFWriter`; q8_0 blocks come from `gguf.quants.quantize`, never from
  a quantiser of our own. `f32` keeps every weight as it is; `f16` and `q8_0` store the matrices in that
  type and keep the norm gains in f32, as llama.cpp's own converter does (a matrix whose rows are not a
  multiple of Q8_0's block of 32 falls back to f16).
- The llama architecture's metadata and tensor names (`token_embd`, `blk.N.attn_q`, ...; the names are the
  importer's one mapping, `gguf_import.hf_name_to_gguf`). Our weights use Hugging Face's "rotate half"
  RoPE layout; llama.cpp's llama graph uses interleaved pairs, so the Q and K rows are permuted with
  `gguf_import.permute_rope_rows`, the exact inverse of what the importer undoes. Qwen2 models are written
  as llama.cpp's `qwen2` architecture, which takes the rows as they are (and the QKV biases).
- The tokenizer is our byte-level BPE as `tokenizer.ggml.model = gpt2`: tokens (padded with `[PAD<i>]`
  unused tokens up to the embedding's rows, as llama.cpp wants one token per row), merges, token types
  (the tokenizer's special tokens are control tokens), bos/eos/pad ids, `add_bos_token`, and the chat
  template as `tokenizer.chat_template`. The pre-tokenizer is named for llama.cpp by what it is: single
  digits, then GPT-2's byte-level regex is llama.cpp's `smollm` rule (ours and SmolLM2's); GPT-2's regex
  alone is `gpt-2`. Any other pre-tokenizer (or a normalizer) is refused rather than written wrongly.
- Architectures other than the Llama family (e.g. Gemma 3) are refused with a clear error.
- The file is written under a temporary name beside the target and renamed, so a killed export never
  leaves half a file where a model was expected.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .gguf_import import hf_name_to_gguf, permute_rope_rows

GGUF_TYPES = ("f32", "f16", "q8_0")
EXPORT_ARCHS = {"llama": "llama", "qwen2": "qwen2"}  # our config's family -> llama.cpp architecture
Q8_BLOCK = 32


def llama_cpp_pre_tokenizer(tokenizer) -> str:
    """The `tokenizer.ggml.pre` name of llama.cpp's rule that splits text as `tokenizer` does."""
    spec = json.loads(tokenizer.hf.to_str())
    if spec.get("normalizer") is not None:
        raise UserError("GGUF export: the tokenizer has a normalizer, which llama.cpp's byte-level BPE cannot "
                        "reproduce")
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]

    def byte_level(p):
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
            and byte_level(parts[1])):
        return "smollm"
    if len(parts) == 1 and byte_level(parts[0]):
        return "gpt-2"
    raise UserError(f"GGUF export: no llama.cpp pre-tokenizer matches this tokenizer's ({json.dumps(pre)[:200]})")


def tokenizer_fields(tokenizer, n_vocab: int) -> dict:
    """Tokens, merges and token types for `tokenizer.ggml.*`, padded to the model's `n_vocab` rows."""
    import gguf
    spec = json.loads(tokenizer.hf.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or model.get("continuing_subword_prefix"):
        raise UserError("GGUF export: only a byte-level BPE tokenizer can be written (tokenizer.ggml.model = gpt2)")
    size = tokenizer.vocab_size
    if size > n_vocab:
        raise UserError(f"GGUF export: the tokenizer has {size} tokens but the model only {n_vocab} embedding rows")
    tokens: list[str | None] = [None] * n_vocab
    types = [int(gguf.TokenType.NORMAL)] * n_vocab
    for text, i in model["vocab"].items():
        tokens[i] = text
    for i, added in tokenizer.hf.get_added_tokens_decoder().items():
        tokens[i] = added.content
        types[i] = int(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
    for i in range(n_vocab):
        if tokens[i] is None:
            tokens[i] = f"[PAD{i}]"
            types[i] = int(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges}


def _tensor_type(arr: np.ndarray, gguf_type: str):
    import gguf
    Q = gguf.GGMLQuantizationType
    if arr.ndim == 1 or gguf_type == "f32":
        return Q.F32
    if gguf_type == "q8_0" and arr.shape[-1] % Q8_BLOCK == 0:
        return Q.Q8_0
    return Q.F16


def export_gguf(model, tokenizer, out_path: str | Path, gguf_type: str = "f32", name: str | None = None) -> Path:
    """Write `model` (a `Transformer`) and `tokenizer` as a GGUF file at `out_path`; returns the path."""
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"--type must be one of {', '.join(GGUF_TYPES)}, not {gguf_type!r}")
    cfg = model.cfg
    arch = EXPORT_ARCHS.get(getattr(cfg, "family", "llama"))
    if arch is None:
        raise UserError(f"GGUF export supports the Llama family ({', '.join(EXPORT_ARCHS)}); this model's "
                        f"architecture is {cfg.family!r}")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise UserError(f"--out {out_path} is a directory; give the .gguf file to write")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items()}
    n_vocab = state["model.embed_tokens.weight"].shape[0]
    tok = tokenizer_fields(tokenizer, n_vocab)
    pre = llama_cpp_pre_tokenizer(tokenizer)

    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch)
    try:
        w.add_name(name or out_path.stem)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_vocab_size(n_vocab)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.hidden_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        if cfg.head_dim * cfg.n_heads != cfg.dim:
            w.add_key_length(cfg.head_dim)
            w.add_value_length(cfg.head_dim)

        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tok["tokens"])
        w.add_token_types(tok["types"])
        w.add_token_merges(tok["merges"])
        if tokenizer.bos_id is not None:
            w.add_bos_token_id(tokenizer.bos_id)
        if tokenizer.eos_id is not None:
            w.add_eos_token_id(tokenizer.eos_id)
        w.add_pad_token_id(tokenizer.pad_id)
        end_of_turn = tokenizer.token_to_id("<|im_end|>")
        if end_of_turn is not None:
            w.add_eot_token_id(end_of_turn)
        w.add_add_bos_token(bool(tokenizer.add_bos and tokenizer.bos_id is not None))
        w.add_add_eos_token(False)
        w.add_chat_template(tokenizer.chat_template)

        for hf_name, arr in state.items():
            gname = hf_name_to_gguf(hf_name)
            if gname is None:
                raise UserError(f"GGUF export: no llama.cpp tensor for {hf_name}")
            if arch == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
                arr = permute_rope_rows(arr, cfg.n_heads)
            elif arch == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
                arr = permute_rope_rows(arr, cfg.n_kv_heads)
            qtype = _tensor_type(arr, gguf_type)
            arr = np.ascontiguousarray(arr)
            if qtype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(gname, arr.astype(np.float32))
            elif qtype == gguf.GGMLQuantizationType.F16:
                w.add_tensor(gname, arr.astype(np.float16))
            else:
                q = gguf.quants.quantize(arr, qtype)
                w.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path
