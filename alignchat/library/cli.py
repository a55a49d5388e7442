"""`alignchat library`: add documents, list them, and ask / review / extract / boolean over them.

Examples:
    alignchat library add papers/*.pdf refs.bib notes.md
    alignchat library list
    alignchat library ask "Why do corals bleach?"                    # default: our SmolLM2 + verifier
    alignchat library ask "..." --model none                          # quoted evidence only, no model
    alignchat library ask "..." --endpoint http://gpu-box:8000/v1 --endpoint-model qwen2.5-7b --mode creative
    alignchat library review --topic "dense retrieval"
    alignchat library extract doc-1a2b3c4d5e
    alignchat library boolean "How do large language models affect reference services in libraries?"

`add` shows progress, writes each document atomically (a document is in the index completely or not at all),
skips duplicates, and carries on past files it cannot read, reporting each; the exit status is 1 when any
file failed. Every answer is verified before it is printed; `--json` prints the full record.

The answering model is chosen with the shared model flags (`alignchat.client.cli`): `--model` (default:
SmolLM2 for `ask`, none for `review` and `boolean`) or `--endpoint URL [--endpoint-model NAME]`, with the
key in the variable `--api-key-env` names. The older `--backend MODEL_OR_URL` and `--backend-model` still
work for one release.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..client.cli import add_client_args
from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--library", default=None, metavar="DIR",
                   help="library directory (default $ALIGNCHAT_HOME/library)")
    p.add_argument("--db", default=None, metavar="FILE",
                   help="SQLite file for documents and passages (default DIR/library.sqlite; may be the server's)")
    p.add_argument("--user", default="local", help="whose library (default: local)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    a = sub.add_parser("add", help="ingest PDF, BibTeX, RIS, Markdown and text files (or directories)")
    a.add_argument("paths", nargs="+", metavar="PATH")

    ls = sub.add_parser("list", help="list the documents in the library")
    ls.add_argument("--json", action="store_true")

    rm = sub.add_parser("remove", help="remove a document (by id)")
    rm.add_argument("doc_id")

    show = sub.add_parser("show", help="print a document's metadata, references and citations (by id, e.g. "
                                       "doc-1a2b3c4d5e), or one passage (doc-1a2b3c4d5e:p3)")
    show.add_argument("passage_id", metavar="ID")
    show.add_argument("--json", action="store_true")

    def backend_args(sp: argparse.ArgumentParser, default: str) -> None:
        add_client_args(sp, default_model=default, allow_none=True,
                        model_help="our model that writes the answer: registry name, checkpoint directory or .gguf "
                                   "(--endpoint URL sends the question and passages to that server instead)",
                        aliases={"--backend-model": "--endpoint-model"})
        sp.add_argument("--backend", default=None, help=argparse.SUPPRESS)  # the older MODEL_OR_URL spelling
        sp.add_argument("--json", action="store_true", help="print the whole record as JSON")

    q = sub.add_parser("ask", help="answer a question from the library, with verified citations")
    q.add_argument("question")
    q.add_argument("--mode", choices=["strict", "creative"], default="strict",
                   help="strict: only supported sentences are shown; creative: unsupported ones are kept, marked")
    q.add_argument("--strategy", choices=["auto", "model", "extractive"], default="auto",
                   help="auto: the model's answer, replaced by quoted evidence when under half of it is supported")
    q.add_argument("-k", type=int, default=5, help="passages retrieved (default 5)")
    backend_args(q, "smollm2-135m-instruct")

    r = sub.add_parser("review", help="a structured literature review of some or all documents, cited")
    r.add_argument("doc_ids", nargs="*", help="documents to review (default: all, or the best for --topic)")
    r.add_argument("--topic", default=None)
    backend_args(r, "none")

    e = sub.add_parser("extract", help="knowledge units (problem, method, data, result) per document, as JSON")
    e.add_argument("doc_ids", nargs="*", help="documents (default: all)")

    b = sub.add_parser("boolean", help="Boolean search strings for a systematic review, from a research question")
    b.add_argument("question")
    backend_args(b, "none")

    from ..settings import describe_io
    lib = "the library (--library DIR: --db, default DIR/library.sqlite, and DIR/embeddings.npy)"
    model = ("the answering model (--model, pulled on first use; or the --endpoint server, sent the question "
             "and passages)")
    describe_io(a, reads="PATHs: PDF, BibTeX, RIS, Markdown and text files or directories; the embedding model "
                         "(all-MiniLM-L6-v2, from the artifact store)",
                writes=f"each new document, its passages and their vectors into {lib}, atomically")
    describe_io(ls, reads=f"{lib}", writes="nothing (prints the documents)")
    describe_io(rm, reads=f"{lib}", writes=f"deletes the document, its passages and vectors from {lib}")
    describe_io(show, reads=f"{lib}", writes="nothing (prints the document or passage)")
    describe_io(q, reads=f"{lib}; the embedding model; {model}",
                writes="nothing (prints the verified answer, or its JSON record with --json)")
    describe_io(r, reads=f"{lib}; the embedding model; {model}, if any",
                writes="nothing (prints the cited review, or JSON with --json)")
    describe_io(e, reads=f"{lib}; the embedding model", writes="nothing (prints the knowledge units as JSON)")
    describe_io(b, reads=f"{lib}; the embedding model; {model}, if any",
                writes="nothing (prints the search strings, or JSON with --json)")


def _expand(paths: list[str]) -> list[Path]:
    from .ingest import SUPPORTED
    out: list[Path] = []
    for s in paths:
        p = Path(s)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED)
        else:
            out.append(p)
    return out


def _describe(doc, refs: list[dict], graph: dict) -> str:
    """A document's metadata, reference list and citation links, as `library show` prints them."""
    lines = [doc.title, ""]
    for label, value in (("Authors", ", ".join(doc.authors)), ("Affiliations", "; ".join(doc.meta.get("affiliations")
                                                                                          or [])),
                         ("Year", doc.year), ("Venue", doc.venue), ("DOI", doc.doi), ("Kind", doc.kind),
                         ("Source", doc.source), ("Passages", doc.n_passages)):
        if value:
            lines.append(f"{label}: {value}")
    if doc.meta.get("abstract"):
        lines += ["", f"Abstract: {doc.meta['abstract']}"]
    if doc.meta.get("keywords"):
        lines.append(f"Keywords: {'; '.join(doc.meta['keywords'])}")
    if refs:
        lines += ["", f"References ({len(refs)})"]
        for r in refs:
            who = ", ".join(r["authors"][:3]) + (" et al." if len(r["authors"]) > 3 else "")
            bits = [b for b in (who, f"({r['year']})" if r["year"] else "", r["title"], r["venue"],
                                f"doi:{r['doi']}" if r["doi"] else "", f"[{r['type']}]") if b]
            link = f"  -> {r['cited_doc_id']}" if r["cited_doc_id"] else ""
            lines.append(f"  {r['label'] or '-'}. " + " ".join(bits) + link)
    lines += ["", f"Cites in this library: {', '.join(graph['cites']) or 'none'}",
              f"Cited by in this library: {', '.join(graph['cited_by']) or 'none'}"]
    return "\n".join(lines)


def _backend(args: argparse.Namespace):
    """The answering model the flags name, or None for no model (`--model none`)."""
    from ..client.cli import client_from_args
    from .backends import LOCAL_OPTIONS, ClientBackend
    if args.backend:  # `--backend URL|MODEL|none`, kept for one release
        if args.backend.startswith(("http://", "https://")):
            args.endpoint = args.backend
        else:
            args.model = args.backend
    client = client_from_args(args, **LOCAL_OPTIONS)
    return None if client is None else ClientBackend(client)


def run(args: argparse.Namespace) -> int:
    from .store import Library
    lib = Library(args.library, db_path=args.db)
    user = args.user
    if args.action == "add":
        from tqdm import tqdm
        failures = 0
        files = _expand(args.paths)
        if not files:
            raise UserError("no files to add")
        for path in tqdm(files, desc="adding", unit="file", disable=len(files) < 2, file=sys.stderr):
            try:
                for r in lib.add_file(path, user=user):
                    extra = f" ({r.note})" if r.note else ""
                    tqdm.write(f"{r.status:9s} {r.doc_id}  {r.n_passages:4d} passages  {r.title[:70]}{extra}")
            except UserError as e:
                failures += 1
                tqdm.write(f"error     {e}", file=sys.stderr)
        return 1 if failures else 0
    if args.action == "list":
        docs = lib.documents(user)
        if args.json:
            print(json.dumps([d.to_dict() for d in docs], ensure_ascii=False, indent=2))
        else:
            for d in docs:
                print(f"{d.id}  {d.kind:8s} {d.n_passages:4d}p  {d.reference()}")
            print(f"{len(docs)} document(s)", file=sys.stderr)
        return 0
    if args.action == "remove":
        if not lib.remove(args.doc_id, user):
            raise UserError(f"no document {args.doc_id!r} in this library")
        print(f"removed {args.doc_id}")
        return 0
    if args.action == "show" and ":" not in args.passage_id:
        doc = lib.document(args.passage_id, user)
        if doc is None:
            raise UserError(f"no document {args.passage_id!r} in this library")
        refs, graph = lib.references(doc.id, user), lib.citation_graph(doc.id, user)
        if args.json:
            print(json.dumps({"document": doc.to_dict(), "references": refs, "citations": graph},
                             ensure_ascii=False, indent=2))
        else:
            print(_describe(doc, refs, graph))
        return 0
    if args.action == "show":
        p = lib.passage(args.passage_id, user)
        if p is None:
            raise UserError(f"no passage {args.passage_id!r} in this library")
        d = lib.document(p.doc_id, user)
        print(f"{d.reference()}" + (f" p. {p.page}" if p.page else "") + f"  [{p.id}, chars {p.char_start}-{p.char_end}]")
        print(p.text)
        return 0
    if args.action == "extract":
        from .tasks import extract_units
        ids = args.doc_ids or [d.id for d in lib.documents(user)]
        print(json.dumps([extract_units(lib, i, user).to_dict() for i in ids], ensure_ascii=False, indent=2))
        return 0

    backend = _backend(args)
    if args.action == "ask":
        from .answer import Answerer
        ans = Answerer(lib, user, backend=backend, k=args.k).ask(args.question, mode=args.mode,
                                                                   strategy=args.strategy)
        print(json.dumps(ans.to_dict(), ensure_ascii=False, indent=2) if args.json else ans.render())
        return 0
    if args.action == "review":
        from .tasks import review
        rv = review(lib, user, doc_ids=args.doc_ids or None, topic=args.topic, backend=backend)
        print(json.dumps(rv.to_dict(), ensure_ascii=False, indent=2) if args.json else rv.render())
        return 0
    if args.action == "boolean":
        from .tasks import boolean_query
        bq = boolean_query(args.question, lib, user, backend=backend)
        if args.json:
            print(json.dumps(bq.to_dict(), ensure_ascii=False, indent=2))
        else:
            d = bq.to_dict()
            for k in ("generic", "pubmed", "scopus", "cnki"):
                if d[k]:
                    print(f"{k:8s} {d[k]}")
        return 0
    raise UserError(f"unknown action {args.action!r}")
