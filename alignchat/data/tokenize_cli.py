"""`alignchat tokenize`: text/jsonl/parquet/`datasets` inputs → memory-mapped token shards + manifest.

It sits in `data/` beside `tokenizer` (which trains the BPE) and `shards.py` (the format it writes): the
data package holds every verb that turns text into training inputs, `train/` the verbs that train models.

Notable choices:
- Settings are one dataclass (`TokenizeConfig`) with the verbs' shared command line (`alignchat.settings`):
  flags, `KEY=VALUE`, `--config FILE`; positional arguments that are not `KEY=VALUE` are the inputs.
- Inputs are read by `alignchat.data.readers` (bad records are reported by file and line and skipped).
- The tokenizer files are copied into the shard directory, so `alignchat pretrain --data DIR` knows which
  tokenizer made the ids and the finished checkpoint carries it.
- The manifest is written last; an interrupted run leaves no manifest and is simply run again
  (tokenizing is fast next to training, so it restarts rather than resumes).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from ..settings import add_settings_arguments, setting, settings_from_args


@dataclass
class TokenizeConfig:
    """`alignchat tokenize`'s settings."""

    inputs: list[str] = setting(help=".txt, .jsonl, .parquet files, `datasets` dirs or folders of them", factory=list)
    tokenizer: str = setting("", "tokenizer.json, a directory with one (from `alignchat tokenizer train`) or a "
                                 "checkpoint (required)")
    out: str = setting("", "shard directory to write (required)")
    val_fraction: float = setting(0.01, "share of documents held out for validation, chosen by a hash of the text")
    split_seed: int = setting(0, "key of the split hash")
    shard_tokens: int = setting(100_000_000, "tokens per shard file")
    text_field: str = setting("text", "field/column with the text in jsonl/parquet")
    txt_mode: str = setting("paragraph", "what one document is in a .txt file: a blank-line separated paragraph, "
                                         "the whole file, or a line", choices=("paragraph", "file", "line"))


def add_arguments(parser) -> None:
    add_settings_arguments(
        parser, TokenizeConfig(), inputs="inputs",
        reads="INPUT files (.txt, .jsonl, .parquet, `datasets` dirs, folders of them) and --tokenizer",
        writes="--out DIR: train-NNNNN.bin and val-NNNNN.bin token shards, manifest.json (written last) and a "
               "copy of the tokenizer")


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..errors import UserError
    from ..tokenizer import Tokenizer
    from .readers import ReadOptions, read_documents
    from .shards import write_shards

    cfg = settings_from_args(args)
    if not cfg.inputs:
        raise UserError("no inputs: name the text files to tokenize")
    if not cfg.tokenizer or not cfg.out:
        raise UserError("--tokenizer and --out are required")
    if not 0 <= cfg.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    tok = Tokenizer.load(cfg.tokenizer)
    bad: list = []

    def on_bad(record) -> None:
        bad.append(record)
        print(f"warning: skipped {record}", file=sys.stderr)

    docs = (d.text for d in read_documents(cfg.inputs, ReadOptions(text_field=cfg.text_field,
                                                                   txt_mode=cfg.txt_mode), on_bad))
    with tqdm(desc="tokenize", unit="doc", dynamic_ncols=True) as bar:
        manifest = write_shards(docs, tok, cfg.out, val_fraction=cfg.val_fraction, shard_tokens=cfg.shard_tokens,
                                split_seed=cfg.split_seed, progress=bar.update, source=" ".join(cfg.inputs))
    tok.save(cfg.out)
    splits = manifest["splits"]
    for name, info in splits.items():
        print(f"{name}: {info['documents']:,} documents, {info['tokens']:,} tokens, {info['bytes']:,} bytes, "
              f"{len(info['shards'])} shard(s)")
    if bad:
        print(f"skipped {len(bad)} bad record(s)", file=sys.stderr)
    print(json.dumps({"out": cfg.out, "train_tokens": splits["train"]["tokens"], "val_tokens": splits["val"]["tokens"],
                      "skipped": len(bad)}))
    return 0
