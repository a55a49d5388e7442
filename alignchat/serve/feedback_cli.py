"""`alignchat feedback export|stats`: the chat UI's feedback as training data.

`export` writes the SFT JSONL (demonstrations, edited answers) and the comparison JSONL (rankings, decided
pairs, thumbs) in the shared schemas that `alignchat sft`, `rm`, `ppo` and `dpo` read (see docs/serving.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="write sft.jsonl and comparisons.jsonl from the server's database")
    ex.add_argument("--db", default=None, help="database URL (default: the server's default SQLite file)")
    ex.add_argument("--out", default="feedback", help="output directory (default: ./feedback)")
    ex.add_argument("--sft", default=None, help="SFT file (default: OUT/sft.jsonl)")
    ex.add_argument("--comparisons", default=None, help="comparison file (default: OUT/comparisons.jsonl)")
    ex.add_argument("--redact-pii", action="store_true",
                    help="replace e-mail addresses, phone numbers and ID numbers with <EMAIL>/<PHONE>/<ID> "
                         "(the cleaning stage's detectors)")
    st = sub.add_parser("stats", help="count the feedback in the database")
    st.add_argument("--db", default=None, help="database URL (default: the server's default SQLite file)")
    from ..settings import describe_io
    describe_io(ex, reads="the server's database (--db): feedback, rankings, edits and demonstrations with their "
                          "conversations",
                writes="the SFT JSONL (--sft, default OUT/sft.jsonl) and the comparison JSONL (--comparisons, "
                       "default OUT/comparisons.jsonl); the database is only read")
    describe_io(st, reads="the server's database (--db): the feedback it holds",
                writes="nothing (prints the counts as JSON); the database is only read")


def run(args: argparse.Namespace) -> int:
    from .export import export_feedback, feedback_counts
    from .store import Store
    store = Store(args.db)
    try:
        if args.action == "stats":
            print(json.dumps(feedback_counts(store)))
            return 0
        out = Path(args.out)
        sft = Path(args.sft) if args.sft else out / "sft.jsonl"
        comps = Path(args.comparisons) if args.comparisons else out / "comparisons.jsonl"
        counts = export_feedback(store, sft, comps, redact_pii=args.redact_pii)
        print(f"wrote {counts['sft']} SFT conversations to {sft}")
        print(f"wrote {counts['comparisons']} comparisons to {comps}")
        return 0
    finally:
        store.dispose()
