"""The citation verifier: every answer passes through it before a user sees it.

What it does, in order:
1. Drops any reference list the model wrote itself (the reference list is built from library metadata).
2. Finds citations. `[n]` must be a number of a passage the answer was given; `[doc-…:pN]`/`[doc-…]`
   must be a body passage/document of this user's library (a reference entry, caption or author line is
   never evidence, so citing one is removed like a fabricated citation); author-year citations such as "(Smith et al.,
   2019)" and DOIs must match a library document. Anything else is a fabricated citation: it is removed
   from the text and reported in `removed`. A bracket written onto an identifier (`heap[0]`, `m[1][2]`) whose
   whole expression appears in a given passage is quoted code, not a citation, and is left as it is
   (`sub_citations`); the same bracket not found in the passages is still read as a citation.
3. Splits the answer into sentences and scores each against the passages it cites:

       support = 0.5 · lexical + 0.5 · dense

   lexical = share of the sentence's content terms (stemmed words, Chinese character bigrams) found in
   the passage; dense = MiniLM cosine of sentence and passage. A sentence is *supported* when
   support ≥ SUPPORT_THRESHOLD (0.45) and every number it states (years, counts, percentages) appears in
   the cited passage. Sentences with no citation are unsupported. Optionally a judge (e.g. a larger model
   behind an OpenAI-compatible server) adds an entailment probability as a third, equally weighted term.
   The threshold was set on the test library: sentences copied or paraphrased from their passage score
   0.55–1.0; on-topic but unsupported ones 0.15–0.40.
4. Strict mode shows only supported claims (unsupported sentences and fragments left over from removed
   citations are dropped); creative mode keeps everything and marks each unsupported sentence with
   "[unverified]" ("[未核实]" in Chinese).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .store import DEFAULT_USER, Library, Passage
from .text import content_terms, is_chinese, numbers, sentence_spans, tokens

SUPPORT_THRESHOLD = 0.45
MIN_CONTENT_TERMS = 2  # shorter fragments ("In short:") are neither claims nor flagged

_NUM_CITE = re.compile(r"\[\s*(\d+(?:\s*[,，;；]\s*\d+)*)\s*\]")
_RANGE_CITE = re.compile(r"\[\s*(\d+)\s*[-–]\s*(\d+)\s*\]")
_ID_CITE = re.compile(r"\[\s*(doc-[0-9a-z]+(?::p\d+)?)\s*\]", re.IGNORECASE)
_AUTHOR_YEAR = re.compile(
    r"\(\s*((?:[A-Z][A-Za-z'\-]+|[\u4e00-\u9fff]{1,4})(?:\s+(?:et al\.?|and|&)\s*(?:[A-Z][A-Za-z'\-]+)?)?"
    r"(?:\s*(?:等|等人))?)\s*[,，]?\s*((?:1[5-9]|20)\d\d)[a-z]?\s*\)")
_DOI = re.compile(r"(?:https?://(?:dx\.)?doi\.org/|doi:\s*)?\b10\.\d{4,9}/[^\s\"<>,;\]]*[^\s\"<>,;.)\]]", re.I)
_REF_HEADER = re.compile(r"^\s*(?:#+\s*)?(?:\*\*)?(references|reference list|bibliography|sources|works cited|"
                         r"参考文献|引用文献)(?:\*\*)?\s*[:：]?\s*$", re.IGNORECASE | re.MULTILINE)
UNVERIFIED_EN, UNVERIFIED_ZH = "[unverified]", "[未核实]"
_BEFORE_BRACKET = re.compile(r"[A-Za-z0-9_)\]]")  # ASCII only: a citation may follow a Chinese character directly
_HEAD = re.compile(r"\S*$")


def _quoted_subscript(m: re.Match, passage_texts: list[str]) -> bool:
    """Is the bracket `m` an index on an identifier that the passages contain (`heap[0]`), i.e. quoted text?"""
    text, start = m.string, m.start()
    if start == 0 or not _BEFORE_BRACKET.match(text[start - 1]):
        return False
    head = re.sub(r"^[^A-Za-z0-9_]+", "", _HEAD.search(text, max(0, start - 200), start).group())
    if not re.match(r"[A-Za-z_]", head):
        return False  # "[1][2]": a citation after a citation
    expr = head + m.group()
    return any(expr in t for t in passage_texts)


def sub_citations(pattern: re.Pattern, repl: Callable[[re.Match], str], text: str,
                  table: dict[int, Passage]) -> str:
    """`pattern.sub(repl, text)` over citation markers only: quoted subscripts from the passages are kept."""
    texts = [p.text for p in table.values()]
    return pattern.sub(lambda m: m.group() if _quoted_subscript(m, texts) else repl(m), text)


def find_citations(pattern: re.Pattern, text: str, table: dict[int, Passage]) -> list[re.Match]:
    texts = [p.text for p in table.values()]
    return [m for m in pattern.finditer(text) if not _quoted_subscript(m, texts)]


@dataclass
class SentenceCheck:
    text: str
    citations: list[int]
    supported: bool
    score: float
    reason: str  # "supported" | "no citation" | "low support" | "number not in passage" | "not a claim"


@dataclass
class Verification:
    mode: str
    threshold: float
    sentences: list[SentenceCheck] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)  # fabricated citations taken out of the text
    dropped_reference_list: bool = False

    @property
    def claims(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if s.reason != "not a claim"]

    @property
    def supported_share(self) -> float:
        c = self.claims
        return sum(s.supported for s in c) / len(c) if c else 0.0

    @property
    def fabricated(self) -> int:
        return len(self.removed)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "threshold": self.threshold, "supported_share": round(self.supported_share, 4),
                "n_claims": len(self.claims), "n_supported": sum(s.supported for s in self.claims),
                "fabricated_citations": self.fabricated, "removed": self.removed,
                "dropped_reference_list": self.dropped_reference_list,
                "sentences": [asdict(s) for s in self.sentences]}


class Verifier:
    def __init__(self, library: Library, user: str = DEFAULT_USER, threshold: float = SUPPORT_THRESHOLD,
                 judge: Callable[[str, str], float] | None = None):
        self.library = library
        self.user = user
        self.threshold = threshold
        self.judge = judge

    # -- citation resolution ------------------------------------------------------------------------
    def _library_doc_by_author_year(self, name: str, year: int) -> bool:
        surname = re.split(r"\s+(?:et al|and|&)|等", name)[0].strip().lower()
        for d in self.library.documents(self.user):
            if d.year == year and any(surname and surname in a.lower() for a in d.authors):
                return True
        return False

    def _doi_in_library(self, doi: str) -> bool:
        doi = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:\s*)", "", doi, flags=re.I).lower()
        return any(d.doi == doi for d in self.library.documents(self.user))

    def strip_fabricated(self, text: str, table: dict[int, Passage]) -> tuple[str, list[dict], bool]:
        """Remove citations that do not resolve to this library; return (text, removed, dropped_refs)."""
        removed: list[dict] = []
        dropped = False
        m = _REF_HEADER.search(text)
        if m:
            # a model-written reference list: each entry that is not a library document counts as fabricated
            for line in text[m.end():].splitlines():
                line = line.strip()
                if len(line) < 8:
                    continue
                doi = _DOI.search(line)
                known = bool(doi and self._doi_in_library(doi.group()))
                if not known:
                    known = any(d.title.lower() in line.lower() for d in self.library.documents(self.user))
                if not known:
                    removed.append({"citation": line[:200], "reason": "reference list entry not in the library"})
            text = text[:m.start()].rstrip()
            dropped = True

        def ranges(mm: re.Match) -> str:
            a, b = int(mm.group(1)), int(mm.group(2))
            return "[" + ",".join(str(i) for i in range(a, b + 1)) + "]" if 0 < b - a < 20 else mm.group()

        text = sub_citations(_RANGE_CITE, ranges, text, table)

        def numeric(mm: re.Match) -> str:
            keep = []
            for part in re.split(r"[,，;；]", mm.group(1)):
                n = int(part)
                if n in table:
                    keep.append(n)
                else:
                    removed.append({"citation": f"[{n}]", "reason": "no such numbered passage among the evidence"})
            return "".join(f"[{n}]" for n in keep)

        text = sub_citations(_NUM_CITE, numeric, text, table)

        def by_id(mm: re.Match) -> str:
            ident = mm.group(1).lower()
            if ":p" in ident:
                p = self.library.passage(ident, self.user)
                if p is not None and p.role != "body":
                    removed.append({"citation": mm.group(), "reason": f"a {p.role} passage (reference entry, caption "
                                                                      f"or author line), not evidence"})
                    return ""
                if p is not None:
                    n = next((k for k, v in table.items() if v.id == p.id), None)
                    if n is None:
                        n = max(table, default=0) + 1
                        table[n] = p
                    return f"[{n}]"
            elif self.library.document(ident, self.user) is not None:
                ps = self.library.evidence_passages(self.user, doc_id=ident)
                if ps:
                    n = next((k for k, v in table.items() if v.doc_id == ident), None)
                    if n is None:
                        n = max(table, default=0) + 1
                        table[n] = ps[0]
                    return f"[{n}]"
            removed.append({"citation": mm.group(), "reason": "no such document or passage in the library"})
            return ""

        text = _ID_CITE.sub(by_id, text)

        def author_year(mm: re.Match) -> str:
            if self._library_doc_by_author_year(mm.group(1), int(mm.group(2))):
                return mm.group()
            removed.append({"citation": mm.group(), "reason": "author-year reference not in the library"})
            return ""

        text = _AUTHOR_YEAR.sub(author_year, text)

        def doi(mm: re.Match) -> str:
            if self._doi_in_library(mm.group()):
                return mm.group()
            removed.append({"citation": mm.group(), "reason": "DOI not in the library"})
            return ""

        text = _DOI.sub(doi, text)
        text = re.sub(r"[ \t]+([.,;:。，；：!?！？])", r"\1", text)
        text = re.sub(r"[ \t]{2,}", " ", text)
        return text.strip(), removed, dropped

    # -- support ------------------------------------------------------------------------------------
    def support(self, sentence: str, passage: Passage, sentence_vec: np.ndarray | None = None) -> tuple[float, str]:
        terms = content_terms(sentence)
        ptoks = set(tokens(passage.text))
        lexical = sum(t in ptoks for t in terms) / len(terms) if terms else 0.0
        if sentence_vec is None:
            sentence_vec = self.library.embedder.embed([sentence])[0]
        emb = self.library.embeddings()
        pvec = emb[passage.emb_row] if passage.emb_row < len(emb) else self.library.embedder.embed([passage.text])[0]
        dense = max(float(sentence_vec @ pvec), 0.0)
        parts = [lexical, dense]
        if self.judge is not None:
            parts.append(float(self.judge(passage.text, sentence)))
        score = sum(parts) / len(parts)
        missing = numbers(sentence) - numbers(passage.text)
        if missing:
            return score, "number not in passage"
        return score, "supported" if score >= self.threshold else "low support"

    def verify(self, text: str, table: dict[int, Passage], mode: str = "strict") -> tuple[str, Verification]:
        """Return the text to show and the verification report. `table` maps [n] to passages (may grow)."""
        if mode not in ("strict", "creative"):
            raise ValueError(f"mode must be 'strict' or 'creative', not {mode!r}")
        clean, removed, dropped = self.strip_fabricated(text, table)
        report = Verification(mode=mode, threshold=self.threshold, removed=removed, dropped_reference_list=dropped)
        spans = sentence_spans(clean)
        bare = [re.sub(r"\s+([.,;:!?。，；：！？])", r"\1", sub_citations(_NUM_CITE, lambda m: "", clean[s:e], table))
                .strip() for s, e in spans]
        vecs = self.library.embedder.embed(bare) if bare else np.zeros((0, 384), np.float32)
        shown: list[str] = []
        marker = UNVERIFIED_ZH if is_chinese(clean) else UNVERIFIED_EN
        for (s, e), sentence, vec in zip(spans, bare, vecs):
            raw = clean[s:e]
            cites = [int(n) for m in find_citations(_NUM_CITE, raw, table) for n in re.split(r"[,，;；]", m.group(1))]
            if len(content_terms(sentence)) < MIN_CONTENT_TERMS:
                check = SentenceCheck(sentence, cites, True, 1.0, "not a claim")
            elif not cites:
                check = SentenceCheck(sentence, cites, False, 0.0, "no citation")
            else:
                # the sentence is supported if any one of its cited passages supports it
                results = [self.support(sentence, table[n], vec) for n in dict.fromkeys(cites)]
                best, reason = max(results, key=lambda r: (r[1] == "supported", r[0]))
                check = SentenceCheck(sentence, cites, reason == "supported", round(best, 4), reason)
            report.sentences.append(check)
            if check.supported and (check.reason != "not a claim" or mode == "creative"):
                shown.append(raw)
            elif mode == "creative":
                shown.append(f"{raw} {marker}")
        joiner = "" if is_chinese(clean) else " "
        return joiner.join(shown).strip(), report
