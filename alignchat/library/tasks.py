"""The services researchers and librarians ask for, on top of the library: knowledge units, a structured
literature review, and Boolean search strings for systematic reviews.

Notable choices:
- Knowledge units (problem, method, data, result) are *extracted*, not generated: for each facet the
  sentence of the paper that best matches the facet (MiniLM similarity to a facet description, plus cue
  words in English and Chinese) is chosen and linked to its passage and page. A facet with no sentence
  above `FACET_MIN` is null rather than invented.
- The review groups those units by facet across papers, every line cited [n] to a library passage and
  passed through the verifier; with a backend, the model adds a synthesis paragraph that is verified in
  strict mode (unsupported sentences are dropped).
- Boolean strings: the question is cut into concepts at connectives; each concept becomes an OR-group of
  its phrase, a truncated form (librar*), acronyms the library itself defines ("large language models
  (LLMs)") and, with a backend, synonyms the model proposes (kept only if short and plain). The groups
  are ANDed. Generic, PubMed ([tiab]), Scopus (TITLE-ABS-KEY) and CNKI (SU=) forms are produced.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


from ..errors import UserError
from .answer import Answerer, Citation, _renumber
from .store import DEFAULT_USER, Library, Passage
from .text import STOPWORDS, content_terms, is_chinese, normalize, sentence_spans
from .verify import Verification, Verifier

FACETS = {
    "problem": ("The problem, question or challenge the work addresses and why it matters.",
                r"\b(problem|challenge|question|issue|difficult|limitation|lack|gap|aim|goal|address)\w*|问题|挑战|难以|不足|目的"),
    "method": ("The method, approach, model, algorithm or process that is proposed or used.",
               r"\b(method|approach|propos|model|algorithm|technique|framework|process|architecture|use[sd]?|combin)\w*|方法|提出|模型|算法|采用|通过"),
    "data": ("The data, dataset, corpus, samples, participants or materials studied.",
             r"\b(data|dataset|corpus|corpora|sample|participant|survey|collected|records|task|benchmark|copies)\w*|数据|语料|样本|调查|受访"),
    "result": ("The result, finding or outcome: what was shown, measured or achieved.",
               r"\b(result|show|found|find|outperform|improv|achiev|reach|accura|increase|reduce|prefer|score)\w*|%|结果|表明|发现|提高|超过"),
}
FACET_MIN = 0.2


@dataclass
class KnowledgeUnit:
    facet: str
    text: str
    passage_id: str
    page: int | None
    score: float


@dataclass
class PaperUnits:
    doc_id: str
    title: str
    reference: str
    units: dict[str, KnowledgeUnit | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"doc_id": self.doc_id, "title": self.title, "reference": self.reference,
                "units": {k: (v.__dict__ if v else None) for k, v in self.units.items()}}


def extract_units(library: Library, doc_id: str, user: str = DEFAULT_USER) -> PaperUnits:
    """Problem, method, data and result of one document, each a sentence linked to its passage."""
    doc = library.document(doc_id, user)
    if doc is None:
        raise UserError(f"no document {doc_id!r} in this library (see `alignchat library list`)")
    passages = library.passages(user, doc_id=doc_id)
    # the title/author/venue line of a record is metadata, not a finding
    meta_terms = set(content_terms(" ".join([doc.title, *doc.authors, doc.venue or "", str(doc.year or "")])))
    cands: list[tuple[Passage, str]] = []
    for p in passages:
        for s, e in sentence_spans(p.text):
            sent = p.text[s:e].strip()
            terms = content_terms(sent)
            if len(terms) < 3 or sent.startswith("#") or not re.search(r"[.!?。！？;；]\W*$", sent):
                continue
            if sum(t in meta_terms for t in terms) >= 0.8 * len(terms):
                continue
            cands.append((p, sent))
    out = PaperUnits(doc.id, doc.title, doc.reference())
    if not cands:
        out.units = {f: None for f in FACETS}
        return out
    emb = library.embedder
    sent_vecs = emb.embed([s for _, s in cands])
    facet_vecs = emb.embed([d for d, _ in FACETS.values()])
    taken: set[int] = set()
    for (facet, (_desc, cue)), fv in zip(FACETS.items(), facet_vecs):
        best, best_i = -1.0, None
        for i, ((p, sent), sv) in enumerate(zip(cands, sent_vecs)):
            cues = len(re.findall(cue, sent, re.IGNORECASE))
            score = float(sv @ fv) + 0.15 * min(cues, 2) - (0.25 if i in taken else 0.0)
            if score > best:
                best, best_i = score, i
        if best_i is None or best < FACET_MIN:
            out.units[facet] = None
            continue
        taken.add(best_i)
        p, sent = cands[best_i]
        out.units[facet] = KnowledgeUnit(facet, sent, p.id, p.page, round(best, 4))
    return out


@dataclass
class Review:
    text: str  # Markdown, [n] citations
    citations: list[Citation]
    verification: Verification
    papers: list[PaperUnits]

    def to_dict(self) -> dict:
        return {"text": self.text, "citations": [c.to_dict() for c in self.citations],
                "references": [f"[{c.n}] {c.reference}" + (f" p. {c.page}." if c.page else "") for c in self.citations],
                "verification": self.verification.to_dict(), "papers": [p.to_dict() for p in self.papers]}

    def render(self) -> str:
        refs = [f"[{c.n}] {c.reference}" + (f" p. {c.page}." if c.page else "") for c in self.citations]
        return self.text + "\n\n## References\n" + "\n".join(refs)


def review(library: Library, user: str = DEFAULT_USER, doc_ids: list[str] | None = None, topic: str | None = None,
           backend=None, max_papers: int = 12) -> Review:
    """A structured review of a set of papers (all, the given ids, or the best matches for `topic`)."""
    docs = library.documents(user)
    if doc_ids:
        known = {d.id for d in docs}
        missing = [d for d in doc_ids if d not in known]
        if missing:
            raise UserError(f"not in this library: {', '.join(missing)}")
        docs = [d for d in docs if d.id in set(doc_ids)]
    elif topic:
        hits = library.retriever(user).search(topic, k=max_papers * 3)
        order = list(dict.fromkeys(h.document.id for h in hits if h.evidence >= 0.25))
        docs = [d for i in order for d in docs if d.id == i]
    docs = docs[:max_papers]
    if not docs:
        raise UserError("no documents to review: add some with `alignchat library add`" +
                        (f", or none matches {topic!r}" if topic else ""))
    zh = is_chinese(topic or " ".join(d.title for d in docs))
    papers = [extract_units(library, d.id, user) for d in docs]
    table: dict[int, Passage] = {}

    def cite(pid: str) -> int:
        for n, p in table.items():
            if p.id == pid:
                return n
        table[len(table) + 1] = library.passage(pid, user)
        return len(table)

    heads = {"problem": ("Problems addressed", "研究问题"), "method": ("Methods", "研究方法"),
             "data": ("Data and materials", "数据与材料"), "result": ("Findings", "主要发现")}
    lines = [f"# {'文献综述' if zh else 'Literature review'}" + (f": {topic}" if topic else ""), ""]
    lines.append(("本综述涵盖 {} 篇文献。" if zh else "This review covers {} documents from your library.").format(len(papers)))
    body_sentences: list[str] = []
    for facet, (en, cn) in heads.items():
        items = [(pu, pu.units.get(facet)) for pu in papers if pu.units.get(facet)]
        if not items:
            continue
        lines += ["", f"## {cn if zh else en}"]
        for pu, u in items:
            n = cite(u.passage_id)
            sent = u.text.rstrip()
            m = re.search(r"[.!?。！？]+[\"'”’)]*$", sent)
            claim = f"{sent[:m.start()]} [{n}]{sent[m.start():]}" if m else f"{sent} [{n}]."
            lines.append(f"- *{pu.title}*: {claim}")
            body_sentences.append(claim)
    text = "\n".join(lines)
    verifier = Verifier(library, user)
    _, report = verifier.verify(" ".join(body_sentences), dict(table), mode="strict")
    if backend is not None:
        prompt_units = "\n".join(f"[{cite(u.passage_id)}] ({pu.title}, {f}) {u.text}"
                                 for pu in papers for f, u in pu.units.items() if u)
        ask = ("用两三句话综合比较下面这些研究，每句话后用[n]注明依据：\n" if zh else
               "In two or three sentences, compare and synthesise these studies. Cite [n] after every sentence.\n")
        try:
            raw = backend.complete([{"role": "user", "content": ask + prompt_units}], max_tokens=160)
        except UserError:
            raw = ""
        synth, srep = verifier.verify(raw, table, mode="strict")
        report.removed += srep.removed
        report.sentences += srep.sentences
        if synth.strip():
            text += f"\n\n## {'综合' if zh else 'Synthesis'}\n{synth}"
    text, used = _renumber(text, table)
    return Review(text, Answerer(library, user).citations(used), report, papers)


# ---- Boolean search strings ----------------------------------------------------------------------

_CONNECTIVES = re.compile(
    r"\b(?:and|or|of|in|on|for|with|among|between|versus|vs\.?|by|to|from|about|into|within|using|use|used|"
    r"affect|affects|effect|effects|impact|impacts|influence|influences|role|do|does|how|what|which|is|are|the|"
    r"a|an|can|could|their|its|on)\b|[,;:?!.()]", re.IGNORECASE)
_ZH_CONNECTIVES = re.compile(r"[与和及对在中的了吗呢？?，,、；;：:（）()]|如何|怎样|什么|哪些|影响|作用|关系|应用|是否|研究|之间")


@dataclass
class BooleanQuery:
    question: str
    concepts: list[list[str]]  # one OR-group per concept

    def _group(self, terms: list[str], fmt) -> str:
        parts = [fmt(t) for t in terms]
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    @staticmethod
    def _quote(t: str) -> str:
        return f'"{t}"' if " " in t else t

    def generic(self) -> str:
        return " AND ".join(self._group(g, self._quote) for g in self.concepts)

    def pubmed(self) -> str:
        return " AND ".join(self._group(g, lambda t: f"{self._quote(t)}[tiab]") for g in self.concepts)

    def scopus(self) -> str:
        return "TITLE-ABS-KEY(" + " AND ".join(self._group(g, self._quote) for g in self.concepts) + ")"

    def cnki(self) -> str:
        return "SU=" + "*".join("(" + "+".join(f"'{t.rstrip('*')}'" for t in g) + ")" for g in self.concepts)

    def to_dict(self) -> dict:
        zh = any(is_chinese(t) for g in self.concepts for t in g)
        return {"question": self.question, "concepts": self.concepts, "generic": self.generic(),
                "pubmed": self.pubmed(), "scopus": self.scopus(), "cnki": self.cnki() if zh else None}


def _truncate(term: str) -> str | None:
    """librar-y/ies -> librar*, "language models" -> "language model*"; None when too broad."""
    if is_chinese(term):
        return None
    head, _, w = term.lower().rpartition(" ")
    if head:
        last = _truncate(w)
        return f"{head} {last}" if last else None
    for suffix in ("ies", "y", "es", "s", "ing", "ed", "ion", "ions"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 4:
            return w[: len(w) - len(suffix)] + "*"
    return w + "*" if len(w) >= 5 else None


def library_acronyms(library: Library | None, user: str) -> dict[str, str]:
    """Long form -> acronym pairs the library's own text defines, e.g. "reward model (RM)"."""
    found: dict[str, str] = {}
    if library is None:
        return found
    pat = re.compile(r"((?:[A-Za-z][a-z-]+\s+){1,5}[A-Za-z][a-z-]+)\s+\(([A-Z][A-Za-z]{1,7}s?)\)")
    for p in library.passages(user):
        for long, short in pat.findall(p.text):
            letters = short.rstrip("s").lower()
            words = long.lower().split()
            for k in range(len(words)):
                cand = words[k:]
                if "".join(w[0] for w in cand) == letters:
                    found[" ".join(cand)] = short
                    break
    return found


def boolean_query(question: str, library: Library | None = None, user: str = DEFAULT_USER,
                  backend=None) -> BooleanQuery:
    question = question.strip()
    if not question:
        raise UserError("the research question is empty")
    zh = is_chinese(question)
    if zh:
        raw = [c.strip() for c in _ZH_CONNECTIVES.split(question) if len(c.strip()) >= 2]
    else:
        raw = [c.strip() for c in _CONNECTIVES.split(question) if c and c.strip()]
        raw = [" ".join(w for w in c.split() if w.lower() not in STOPWORDS) for c in raw]
        raw = [c for c in raw if c and (len(c) > 2 or c.isupper())]
    concepts: list[list[str]] = []
    acronyms = library_acronyms(library, user)
    for c in dict.fromkeys(raw):
        tr = _truncate(c)
        group = [tr] if tr else [c.lower() if not c.isupper() else c]  # model* already matches models
        for long, short in acronyms.items():
            if normalize(c).rstrip("s") in (long.rstrip("s"), short.lower().rstrip("s")):
                group += [long, short]
        concepts.append(list(dict.fromkeys(group)))
    if not concepts:
        raise UserError(f"no search concepts found in {question!r}; phrase it as a research question")
    if backend is not None:
        ask = ("为下面每个检索概念各给出最多3个同义词或相关检索词，只输出JSON对象，键是概念，值是词语列表。\n" if zh else
               "For each search concept give up to 3 synonyms used in the literature. Reply with only a JSON object "
               "mapping each concept to a list of strings.\n")
        try:
            raw_json = backend.complete([{"role": "user", "content": ask + json.dumps([g[0] for g in concepts],
                                                                                      ensure_ascii=False)}],
                                        max_tokens=160)
            m = re.search(r"\{.*\}", raw_json, re.DOTALL)
            syn = json.loads(m.group()) if m else {}
        except (UserError, ValueError):
            syn = {}
        for g in concepts:
            extra = syn.get(g[0]) if isinstance(syn, dict) else None
            for s in extra if isinstance(extra, list) else []:
                # model output is untrusted: only short, plain terms join the query
                if isinstance(s, str) and 1 < len(s) <= 40 and re.fullmatch(r"[\w\s\-\u4e00-\u9fff]+", s):
                    g.append(s.strip().lower())
            g[:] = list(dict.fromkeys(g))
    return BooleanQuery(question, concepts)


__all__ = ["extract_units", "review", "boolean_query", "BooleanQuery", "PaperUnits", "KnowledgeUnit", "Review"]
