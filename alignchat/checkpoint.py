"""Checkpoints: save and load our directory format; import and export Hugging Face directories.

A checkpoint directory holds `model.safetensors`, `config.json`, `tokenizer.json`,
`tokenizer_config.json` (with the chat template) and `meta.json` (see docs/architecture.md).

Notable choices:
- Weight names are Hugging Face Llama's (Gemma 3's for a Gemma model), so our checkpoints, HF imports and HF
  exports share one mapping; a Gemma 3 export is a `Gemma3ForCausalLM` directory (`gemma3_text` config).
- `save_checkpoint` writes a complete temporary sibling directory and renames it into place: a killed
  process leaves either the old checkpoint or the new one, never half of one.
- Every load error (missing file, truncated safetensors, wrong shapes) is a `CheckpointError` that names
  the file.
- A quantised checkpoint (`alignchat quantize`, `alignchat.quant`) is the same directory: its config.json
  says `quantization` (scheme, group size) and its Linear layers are stored as `qweight`, `scales` (and
  `mins`) tensors, which load into `QuantLinear` layers; the kernels are chosen at load, on the machine.
- This module knows files, not names: `alignchat.hub.load_model` takes anything a user would type (a
  registry name, a checkpoint directory, a `.gguf` file via `gguf_import`, or a Hugging Face directory)
  and calls the loaders here, so the registry sits above the checkpoint code and never beside it.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import CheckpointError
from .fetch import atomic_write_text
from .model import Transformer
from .tokenizer import Tokenizer

FORMAT = "alignchat"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(directory: str | Path, model: Transformer, tokenizer: Tokenizer, meta: dict[str, Any] | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Atomically write a checkpoint directory. `extra_tensors` adds e.g. `score_head.*` weights."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = _contiguous_state(model)
    for k, v in (extra_tensors or {}).items():
        state[k] = v.detach().to("cpu").contiguous()
    if dtype is not None and not getattr(model, "quantization", None):
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.cfg.to_dict()
    cfg["format"] = FORMAT
    if getattr(model, "quantization", None):  # alignchat.quant: the scheme, not this machine's kernel choice
        cfg["quantization"] = {k: v for k, v in model.quantization.items() if k != "kernels"}
    atomic_write_text(tmp / "config.json", json.dumps(cfg, indent=2) + "\n")
    tokenizer.save(tmp)
    meta = {"created": _now(), **(meta or {})}
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False, default=str) + "\n")
    with open(tmp / "model.safetensors", "rb") as f:
        os.fsync(f.fileno())
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e


def read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], source: Path, dtype: torch.dtype,
                quantization: dict | None = None) -> Transformer:
    """A Transformer holding `state` (HF-named tensors), without first allocating random weights; missing or
    mis-shaped tensors are a CheckpointError naming `source`. `quantization` (a quantised checkpoint's
    config entry): its Linear layers are `alignchat.quant.QuantLinear`s, whose scales stay float32."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device="cpu")
    model.init_rope()
    if quantization:
        from .quant import QuantError, skeleton
        try:
            skeleton(model, quantization)
        except QuantError as e:
            raise CheckpointError(f"{source}: {e}") from e
    own = model.state_dict()
    wanted = {k: v for k, v in state.items() if k in own}
    if cfg.tie_embeddings:
        wanted.pop("lm_head.weight", None)
    missing = [k for k in own if k not in wanted]
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for k, v in wanted.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(v.shape)}, config expects {tuple(own[k].shape)}")
    exact = (".scales", ".mins") if quantization else ()
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() and not k.endswith(exact) else v
                           for k, v in wanted.items()}, strict=True, assign=True)
    return model


def load_checkpoint(directory: str | Path, dtype: torch.dtype = torch.float32):
    directory = Path(directory)
    cfg_dict = read_json(directory / "config.json")
    cfg = ModelConfig.from_dict(cfg_dict)
    state = read_safetensors(directory / "model.safetensors")
    model = build_model(cfg, state, directory / "model.safetensors", dtype, cfg_dict.get("quantization"))
    tok = Tokenizer.load(directory)
    meta = read_json(directory / "meta.json") if (directory / "meta.json").exists() else {}
    meta.setdefault("source", str(directory))
    return model, tok, meta


def load_extra_tensors(directory: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint outside the LM (e.g. `score_head.`), with the prefix stripped."""
    state = read_safetensors(Path(directory) / "model.safetensors")
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# --- Hugging Face ---------------------------------------------------------------------------
HF_ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "MistralForCausalLM": "llama",
            "Gemma3ForCausalLM": "gemma3"}


def _gemma3_from_hf(hf: dict) -> dict:
    """Our Gemma 3 switches from a Hugging Face `gemma3_text` config."""
    rope = hf.get("rope_parameters") or {}
    types = hf.get("layer_types") or []
    pattern = hf.get("sliding_window_pattern") or (types.index("full_attention") + 1 if "full_attention" in types else 0)
    return dict(qk_norm=True, sandwich_norms=True, norm_plus_one=True, mlp_act="gelu_tanh", embed_scale=True,
                sliding_window=hf.get("sliding_window"), sliding_window_pattern=pattern,
                rope_local_theta=float(hf.get("rope_local_base_freq")
                                       or (rope.get("sliding_attention") or {}).get("rope_theta", 10000.0)),
                query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or 256))


def _gemma3_to_hf(cfg: ModelConfig) -> dict:
    n = cfg.sliding_window_pattern
    return {
        "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": cfg.query_pre_attn_scalar or cfg.head_dim,
        "sliding_window": cfg.sliding_window,
        "layer_types": ["sliding_attention" if cfg.is_local_layer(i) else "full_attention" for i in range(cfg.n_layers)],
        "sliding_window_pattern": n,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                            "sliding_attention": {"rope_type": "default",
                                                  "rope_theta": cfg.rope_local_theta or cfg.rope_theta}},
        "final_logit_softcapping": None, "attn_logit_softcapping": None,
    }


def config_from_hf(hf: dict, source: Path) -> ModelConfig:
    archs = hf.get("architectures") or []
    family = next((HF_ARCHS[a] for a in archs if a in HF_ARCHS), None)
    if family is None and hf.get("model_type") in ("llama", "qwen2", "mistral", "gemma3_text"):
        family = {"qwen2": "qwen2", "gemma3_text": "gemma3"}.get(hf["model_type"], "llama")
    if family is None:
        raise CheckpointError(f"{source}: unsupported architecture {archs or hf.get('model_type')!r} "
                              f"(supported: {', '.join(HF_ARCHS)})")
    n_heads = hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, hidden_dim=hf["intermediate_size"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta")
                         or ((hf.get("rope_parameters") or {}).get("full_attention") or {}).get("rope_theta", 10000.0)),
        norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=family == "qwen2" or bool(hf.get("attention_bias", False)), family=family,
        bos_token_id=hf.get("bos_token_id"), eos_token_id=_first(hf.get("eos_token_id")),
        **(_gemma3_from_hf(hf) if family == "gemma3" else {}),
    )


def _first(v):
    return v[0] if isinstance(v, list) and v else v


def load_hf_dir(directory: str | Path, dtype: torch.dtype = torch.float32):
    directory = Path(directory)
    cfg = config_from_hf(read_json(directory / "config.json"), directory / "config.json")
    index = directory / "model.safetensors.index.json"
    state: dict[str, torch.Tensor] = {}
    if index.exists():
        for shard in sorted(set(read_json(index)["weight_map"].values())):
            state.update(read_safetensors(directory / shard))
    else:
        state = read_safetensors(directory / "model.safetensors")
    model = build_model(cfg, state, directory, dtype)
    tok = Tokenizer.load(directory)
    return model, tok, {"stage": "import", "source": str(directory), "source_format": "hf"}


def export_hf(model: Transformer, tokenizer: Tokenizer, out_dir: str | Path, dtype: torch.dtype = torch.float32,
              meta: dict | None = None) -> Path:
    """Write a directory that `transformers.AutoModelForCausalLM` and `AutoTokenizer` load."""
    cfg = model.cfg
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    arch, model_type = {"qwen2": ("Qwen2ForCausalLM", "qwen2"),
                        "gemma3": ("Gemma3ForCausalLM", "gemma3_text")}.get(cfg.family, ("LlamaForCausalLM", "llama"))
    hf_cfg = {
        "architectures": [arch], "model_type": model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": cfg.qkv_bias and cfg.family != "qwen2",
        "mlp_bias": False, "torch_dtype": str(dtype).removeprefix("torch."),
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id,
    }
    if cfg.family == "qwen2":
        hf_cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    if cfg.family == "gemma3":
        del hf_cfg["hidden_act"], hf_cfg["rope_theta"]
        hf_cfg.update(_gemma3_to_hf(cfg))
    atomic_write_text(tmp / "config.json", json.dumps(hf_cfg, indent=2) + "\n")
    gen = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.stop_token_ids or tokenizer.eos_id,
           "pad_token_id": tokenizer.pad_id}
    atomic_write_text(tmp / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    state = {k: v.to(dtype) for k, v in _contiguous_state(model).items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(tmp)
    atomic_write_text(tmp / "chat_template.jinja", tokenizer.chat_template)
    if meta:
        atomic_write_text(tmp / "alignchat_meta.json", json.dumps(meta, indent=2, default=str) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir

