"""`alignchat moderation events|classify|check-policy`: the admin's view of moderation.

`events` lists (or, with `--out`, exports as JSONL) the moderation decisions the server recorded;
they hold no message text beyond a short excerpt of a flagged one, with personal data replaced.
`classify` scores text with the moderation classifier; `check-policy` loads a policy file and prints
the actions it resolves to, so a typo is caught before a deployment starts.

Notable choices:
- The export is written atomically and owner-only (0600), like every user-data file.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..fetch import atomic_write_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ev = sub.add_parser("events", help="list or export the server's moderation events (newest first)")
    ev.add_argument("--db", default=None, help="database URL (default: the server's default SQLite file)")
    ev.add_argument("--limit", type=int, default=100, help="most events (default: 100)")
    ev.add_argument("--action", dest="only_action", choices=["block", "flag", "allow"], default=None,
                    help="only events with this action")
    ev.add_argument("--direction", choices=["input", "output"], default=None, help="only this direction")
    ev.add_argument("--out", default=None, help="write JSONL here (0600) instead of printing")
    cl = sub.add_parser("classify", help="score text with the moderation classifier (JSON per line)")
    cl.add_argument("text", nargs="*", help="texts (default: one per line on standard input)")
    cp = sub.add_parser("check-policy", help="load a moderation policy file and print what it resolves to")
    cp.add_argument("policy", help="TOML/YAML policy file")
    from ..settings import describe_io
    describe_io(ev, reads="the server's database (--db): its moderation events",
                writes="JSONL to --out (owner-only) or standard output; the database is only read")
    describe_io(cl, reads="the texts; the classifier's heads (alignchat/safety/data/heads.npz) and MiniLM",
                writes="one JSON result per text to standard output")
    describe_io(cp, reads="the policy file", writes="the resolved policy as JSON to standard output")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    if args.action == "check-policy":
        from ..safety.policy import load_policy
        print(json.dumps(load_policy(args.policy).to_dict(), indent=2))
        return 0
    if args.action == "classify":
        from ..safety.classifier import get_classifier
        texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
        for text, r in zip(texts, get_classifier().moderate(texts)):
            print(json.dumps({"flagged": r.flagged, "categories": r.top(), "category_scores": r.scores},
                             ensure_ascii=False))
        return 0
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    from .moderation import list_events
    from .store import Store
    store = Store(args.db)
    try:
        events = list_events(store, args.limit, args.only_action, args.direction)
    finally:
        store.dispose()
    lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
    if args.out:
        atomic_write_text(args.out, lines, private=True)
        print(f"wrote {len(events)} moderation events to {args.out}")
    else:
        sys.stdout.write(lines)
    return 0
