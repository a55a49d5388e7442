"""`alignchat tokenize`: text/jsonl/parquet/`datasets` inputs → memory-mapped token shards + manifest.

Notable choices:
- Inputs are read by `alignchat.data.readers` (bad records are reported by file and line and skipped).
- The tokenizer files are copied into the shard directory, so `alignchat pretrain --data DIR` knows which
  tokenizer made the ids and the finished checkpoint carries it.
- The manifest is written last; an interrupted run leaves no manifest and is simply run again
  (tokenizing is fast next to training, so it restarts rather than resumes).
"""
from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help=".txt, .jsonl, .parquet files, `datasets` dirs or folders of them")
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer.json, a directory with one (from `alignchat tokenizer train`) or a checkpoint")
    parser.add_argument("--out", required=True, help="shard directory to write")
    parser.add_argument("--val-fraction", type=float, default=0.01,
                        help="share of documents held out for validation, chosen by a hash of the text (default 0.01)")
    parser.add_argument("--split-seed", type=int, default=0, help="key of the split hash (default 0)")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (default 1e8)")
    parser.add_argument("--text-field", default="text", help="field/column with the text in jsonl/parquet (default text)")
    parser.add_argument("--txt-mode", default="paragraph", choices=["paragraph", "file", "line"],
                        help="what one document is in a .txt file (default: a blank-line separated paragraph)")


def run(args) -> int:
    from tqdm.auto import tqdm

    from ..data.readers import ReadOptions, read_documents
    from ..data.shards import write_shards
    from ..errors import UserError
    from ..tokenizer import Tokenizer

    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    tok = Tokenizer.load(args.tokenizer)
    bad: list = []

    def on_bad(record) -> None:
        bad.append(record)
        print(f"warning: skipped {record}", file=sys.stderr)

    docs = (d.text for d in read_documents(args.inputs, ReadOptions(text_field=args.text_field,
                                                                    txt_mode=args.txt_mode), on_bad))
    with tqdm(desc="tokenize", unit="doc", dynamic_ncols=True) as bar:
        manifest = write_shards(docs, tok, args.out, val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
                                split_seed=args.split_seed, progress=bar.update, source=" ".join(args.inputs))
    tok.save(args.out)
    splits = manifest["splits"]
    for name, info in splits.items():
        print(f"{name}: {info['documents']:,} documents, {info['tokens']:,} tokens, {info['bytes']:,} bytes, "
              f"{len(info['shards'])} shard(s)")
    if bad:
        print(f"skipped {len(bad)} bad record(s)", file=sys.stderr)
    print(json.dumps({"out": args.out, "train_tokens": splits["train"]["tokens"], "val_tokens": splits["val"]["tokens"],
                      "skipped": len(bad)}))
    return 0
