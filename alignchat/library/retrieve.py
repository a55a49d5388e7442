"""Hybrid retrieval over one user's passages: BM25 and MiniLM dense similarity, fused by reciprocal rank.

Notable choices:
- BM25 (rank-bm25's Okapi) runs over `text.tokens`, i.e. stemmed English words and Chinese character
  unigrams + bigrams, so Chinese questions find Chinese passages without a segmenter.
- The dense side is a dot product with the stored unit-length MiniLM vectors.
- Only body passages are searched: reference-list entries, captions and author lines are never evidence.
- Reciprocal-rank fusion, score = Σ 1/(60 + rank) over the two rankings (Cormack et al. 2009), needs no
  score calibration between BM25 and cosine.
- RRF chooses the candidate passages; whether a passage is *evidence*, and how the candidates are
  ordered, is decided by `evidence = w·dense cosine + (1-w)·coverage`, where coverage is the IDF-weighted share of
  the question's content terms found in the passage, and w = 0.5 for English questions but 0.3 for
  Chinese ones (MiniLM's English vocabulary gives any two Chinese texts a cosine near 0.5, so its
  Chinese similarities say little). A question whose best passage scores below `NOT_FOUND_THRESHOLD`
  (0.30) gets "not found in your library". The value comes from the test library: answerable paraphrased
  questions score about 0.38 or more, off-topic ones 0.25 or less.
- A passage's coverage also counts the terms of the heading it falls under (`heading_terms`): in a long
  reference page the passage that answers a question about `b64decode` may never name it, while the
  signature line above it does. BM25 and the embeddings see only the passage's own text.
- The fused ranking chooses the candidates (its top `RERANK`·k, plus the top k of BM25 and of the dense
  ranking alone), and their evidence orders them: for Chinese questions the dense ranking is close to noise,
  so a passage that BM25 ranks first and that covers every question term must not lose its place to
  passages that merely rank well on both lists.
- The retriever reads a library through the few methods of `Corpus` (`store.Library` has them, and builds
  and caches one retriever per owner and version in `Library.retriever`), so this module does not import
  the store.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .text import content_terms, is_chinese, is_heading, sentence_spans, tokens

RRF_K = 60
RERANK = 4  # the top RERANK·k passages of the fused ranking are re-ordered by evidence
NOT_FOUND_THRESHOLD = 0.30


class Corpus(Protocol):
    """What the retriever reads of a library (`store.Library`): one owner's passages (`store.Passage`: id,
    doc_id, page, text, emb_row) and documents (`store.Document`: id, title, ...), the unit-length passage
    vectors that `emb_row` indexes, and the embedder of questions."""

    embedder: Any  # .embed(list[str]) -> (n, dim) unit-length float32

    def passages(self, user: str) -> list: ...

    def documents(self, user: str) -> list: ...

    def embeddings(self) -> np.ndarray: ...


@dataclass
class Hit:
    passage: Any  # store.Passage
    document: Any  # store.Document
    score: float  # fused RRF score (orders the hits)
    evidence: float  # w·dense + (1-w)·coverage (decides whether this is evidence at all)
    dense: float
    coverage: float
    bm25: float
    bm25_rank: int | None
    dense_rank: int | None
    terms: set = field(default_factory=set)  # the passage's terms and those of the heading it falls under

    def to_dict(self) -> dict:
        return {"passage_id": self.passage.id, "doc_id": self.document.id, "title": self.document.title,
                "page": self.passage.page, "text": self.passage.text, "score": round(self.score, 5),
                "evidence": round(self.evidence, 4), "dense": round(self.dense, 4),
                "coverage": round(self.coverage, 4), "bm25": round(self.bm25, 4),
                "bm25_rank": self.bm25_rank, "dense_rank": self.dense_rank}


def heading_terms(passages: list) -> list[set[str]]:
    """For each passage (of one owner, in document order), the terms of the heading in effect where it starts:
    the last heading line (`text.is_heading`) of its document before it. A passage deep in a section is then
    still about the section's subject ("base64.b64decode(s, ...)" over "A binascii.Error exception is raised
    if s is incorrectly padded.")."""
    current: dict[str, set[str]] = {}
    out = []
    for p in passages:
        out.append(current.get(p.doc_id, set()))
        for s, e in sentence_spans(p.text):
            if is_heading(p.text[s:e]):
                current[p.doc_id] = set(tokens(p.text[s:e]))
    return out


class HybridRetriever:
    def __init__(self, library: Corpus, user: str):
        self.library = library
        # only body text is evidence: reference entries, captions and author lines are never retrieved
        self.passages = [p for p in library.passages(user) if getattr(p, "role", "body") == "body"]
        self.docs = {d.id: d for d in library.documents(user)}
        emb = library.embeddings()
        rows = [p.emb_row for p in self.passages]
        self.emb = emb[rows] if rows else np.zeros((0, emb.shape[1] if emb.ndim == 2 else 384), np.float32)
        self.token_sets = []
        corpus = []
        df: Counter = Counter()
        for p, heading in zip(self.passages, heading_terms(self.passages)):
            toks = tokens(p.text)
            corpus.append(toks)
            s = set(toks)
            df.update(s)
            self.token_sets.append(s | heading)
        self.n = len(self.passages)
        self.df = df
        self._doc_terms: dict[str, set[str]] | None = None
        self.bm25 = None
        if self.n:
            from rank_bm25 import BM25Okapi
            self.bm25 = BM25Okapi(corpus)

    def doc_terms(self, doc_id: str) -> set[str]:
        """The terms of a document: those of its passages and of the headings they fall under."""
        if self._doc_terms is None:
            terms: dict[str, set[str]] = {}
            for p, s in zip(self.passages, self.token_sets):
                terms.setdefault(p.doc_id, set()).update(s)
            self._doc_terms = terms
        return self._doc_terms.get(doc_id, set())

    def idf(self, term: str) -> float:
        # always positive, and largest for terms the library has never seen
        d = self.df.get(term, 0)
        return math.log(1.0 + (self.n - d + 0.5) / (d + 0.5))

    def coverage(self, query_terms: list[str], token_set: set[str]) -> float:
        if not query_terms:
            return 0.0
        total = sum(self.idf(t) for t in query_terms)
        return sum(self.idf(t) for t in query_terms if t in token_set) / total if total else 0.0

    def search(self, query: str, k: int = 5, doc_ids: set[str] | list[str] | None = None,
               query_vec: np.ndarray | None = None, pool: int = 50) -> list[Hit]:
        if not self.n:
            return []
        allowed = np.ones(self.n, dtype=bool)
        if doc_ids is not None:
            wanted = set(doc_ids)
            allowed = np.array([p.doc_id in wanted for p in self.passages])
            if not allowed.any():
                return []
        q_tokens = tokens(query)
        bm25 = self.bm25.get_scores(q_tokens) if q_tokens else np.zeros(self.n)
        if query_vec is None:
            query_vec = self.library.embedder.embed([query])[0]
        dense = self.emb @ query_vec
        bm25_masked = np.where(allowed & (bm25 > 0), bm25, -np.inf)
        dense_masked = np.where(allowed, dense, -np.inf)
        bm25_order = [int(i) for i in np.argsort(-bm25_masked, kind="stable")[:pool] if np.isfinite(bm25_masked[i])]
        dense_order = [int(i) for i in np.argsort(-dense_masked, kind="stable")[:pool] if np.isfinite(dense_masked[i])]
        fused: dict[int, float] = {}
        bm25_rank = {i: r for r, i in enumerate(bm25_order, 1)}
        dense_rank = {i: r for r, i in enumerate(dense_order, 1)}
        for ranking in (bm25_rank, dense_rank):
            for i, r in ranking.items():
                fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + r)
        q_terms = content_terms(query)
        w = 0.3 if is_chinese(query) else 0.5
        hits = []
        # candidates: the top of the fused ranking and the top of each ranking alone (a passage that only BM25
        # finds, as often for Chinese questions where MiniLM's cosine says little, still gets its evidence read)
        top_fused = sorted(fused, key=lambda i: -fused[i])[:RERANK * k]
        candidates = dict.fromkeys(top_fused + bm25_order[:k] + dense_order[:k])
        for i in candidates:
            cov = self.coverage(q_terms, self.token_sets[i])
            d = float(dense[i])
            p = self.passages[i]
            hits.append(Hit(p, self.docs[p.doc_id], fused[i], w * max(d, 0.0) + (1 - w) * cov, d, cov,
                            float(bm25[i]), bm25_rank.get(i), dense_rank.get(i), self.token_sets[i]))
        # the fused ranking picks the candidates; their evidence orders them (see the module docstring)
        hits.sort(key=lambda h: (-h.evidence, -h.score))
        return hits[:k]
