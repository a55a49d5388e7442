"""The services researchers and librarians ask for, on top of the library: knowledge units and a synthesising
literature review (Boolean search strings for systematic reviews are in `boolean`).

Notable choices:
- Knowledge units (problem, method, data, result) are *extracted*, not generated: for each facet the
  sentence of the paper that best matches the facet (MiniLM similarity to a facet description, plus cue
  words in English and Chinese) is chosen and linked to its passage and page. Only body passages are
  candidates (never reference entries, captions or author lines), and a sentence labelled "Abstract:" is
  preferred less than the body's. A facet with no sentence above `FACET_MIN` is null rather than invented.
- The review synthesises across papers: documents are grouped by shared method and by shared finding (a
  concept of the field vocabulary in either language, else at least `GROUP_MIN_SHARED` distinctive shared
  terms), each group with a paragraph that names what they share and quotes each member, every quote cited
  [n] and verified (strict); then a comparison table (document x facet, Markdown and CSV) and a gaps line
  (facets no document covers). Chinese output for a Chinese topic. With a backend, the model adds a
  paragraph that is verified in strict mode (unsupported sentences are dropped).
- A quoted sentence loses the paper's own "[3]" markers, which would read as citations of the review.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field


from ..errors import UserError
from .answer import Answerer, Citation, _renumber
from .store import DEFAULT_USER, Library, Passage
from .text import content_terms, is_chinese, sentence_spans
from .verify import Verification, Verifier, sub_citations

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
_ABSTRACT_LINE = re.compile(r"\s*(?:abstract|summary|摘\s*要)\s*[:：.]", re.IGNORECASE)  # the body says it better


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
    passages = library.evidence_passages(user, doc_id=doc_id)  # body text only
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
            score = float(sv @ fv) + 0.15 * min(cues, 2) - (0.25 if i in taken else 0.0) - (
                0.2 if _ABSTRACT_LINE.match(sent) else 0.0)
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
class Group:
    """Documents that share a method (or a finding), with the cited synthesis paragraph about them."""
    facet: str  # method | result
    label: str  # what they share: a concept of the field's vocabulary, or their shared terms
    doc_ids: list[str]
    paragraph: str  # Markdown with [n] citations

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Review:
    text: str  # Markdown, [n] citations
    citations: list[Citation]
    verification: Verification
    papers: list[PaperUnits]
    groups: list[Group] = field(default_factory=list)
    table_markdown: str = ""
    table_csv: str = ""
    gaps: str = ""
    language: str = "en"

    def to_dict(self) -> dict:
        return {"text": self.text, "citations": [c.to_dict() for c in self.citations],
                "references": [f"[{c.n}] {c.reference}" + (f" p. {c.page}." if c.page else "") for c in self.citations],
                "verification": self.verification.to_dict(), "papers": [p.to_dict() for p in self.papers],
                "groups": [g.to_dict() for g in self.groups], "table_markdown": self.table_markdown,
                "table_csv": self.table_csv, "gaps": self.gaps, "language": self.language,
                "table": self.table_rows()}

    def table_rows(self) -> list[dict]:
        """The comparison table as rows: document, then each facet's sentence (None where it has none)."""
        import csv
        import io
        rows = list(csv.DictReader(io.StringIO(self.table_csv))) if self.table_csv else []
        return [{k: (v or None) for k, v in r.items()} for r in rows]

    def render(self) -> str:
        refs = [f"[{c.n}] {c.reference}" + (f" p. {c.page}." if c.page else "") for c in self.citations]
        return self.text + "\n\n## References\n" + "\n".join(refs)


HEADS = {"problem": ("Problem", "研究问题"), "method": ("Method", "研究方法"), "data": ("Data", "数据"),
         "result": ("Result", "研究结果")}
GROUP_MIN_SHARED = 2  # distinctive terms two units must share to group them when no field concept links them
_GENERIC_TERMS = set(content_terms(" ".join(d for d, _ in FACETS.values()) +
                                   " we our paper study studies survey propose proposed approach model models "
                                   "method methods result results show shows found use used using based answer "
                                   "本文 本研究 研究 方法 结果 表明 发现 采用 基于 模型 通过 提出 进行"))


def _shared_groups(papers: list[PaperUnits], facet: str, zh: bool) -> list[tuple[str, list[PaperUnits]]]:
    """Papers grouped by what their `facet` units share: first a concept of the field's vocabulary (in either
    language, so a Chinese and an English paper on RLHF meet), then distinctive shared terms."""
    from .boolean import find_concepts
    units = {pu.doc_id: pu.units.get(facet) for pu in papers}
    with_unit = [pu for pu in papers if units[pu.doc_id]]
    concepts = {pu.doc_id: {e["id"]: e for _, _, e in find_concepts(units[pu.doc_id].text)} for pu in with_unit}
    groups: list[tuple[str, list[PaperUnits]]] = []
    left = list(with_unit)
    while True:
        counts: dict[str, list[PaperUnits]] = {}
        for pu in left:
            for cid in concepts[pu.doc_id]:
                counts.setdefault(cid, []).append(pu)
        best = max(counts.items(), key=lambda kv: (len(kv[1]), -len(kv[0])), default=None)
        if best is None or len(best[1]) < 2:
            break
        entry = concepts[best[1][0].doc_id][best[0]]
        label = (entry.get("zh") or entry["en"])[0] if zh else (entry.get("en") or entry["acronyms"])[0]
        groups.append((label, best[1]))
        left = [pu for pu in left if pu not in best[1]]
    terms = {pu.doc_id: [t for t in content_terms(units[pu.doc_id].text) if t not in _GENERIC_TERMS
                         and not t.isdigit()] for pu in left}
    while left:
        pu = left[0]
        mates = [o for o in left[1:] if len(set(terms[pu.doc_id]) & set(terms[o.doc_id])) >= GROUP_MIN_SHARED]
        if mates:
            shared = [t for t in terms[pu.doc_id] if all(t in terms[o.doc_id] for o in mates)][:3] or \
                     [t for t in terms[pu.doc_id] if t in terms[mates[0].doc_id]][:3]
            words = [_surface(t, units[pu.doc_id].text) for t in shared]
            groups.append(("、".join(words) if zh else ", ".join(words), [pu, *mates]))
        left = [o for o in left if o is not pu and o not in mates]
    return groups


def _surface(term: str, text: str) -> str:
    """The word of `text` that a content term (a stem such as "catalogu") came from."""
    for w in re.findall(r"[A-Za-z0-9][A-Za-z0-9'-]*", text):
        if content_terms(w) == [term]:
            return w.lower()
    return term


def _cell(text: str, limit: int = 160) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


_OWN_CITES = re.compile(r"\s*\[\s*\d+(?:\s*[,，\-–]\s*\d+)*\s*\]")


def _claim(sentence: str, n: int) -> str:
    """A quoted sentence with its citation before the end punctuation."""
    sent = _OWN_CITES.sub("", sentence).rstrip()  # the paper's own "[3]" would read as one of ours
    m = re.search(r"[.!?。！？]+[\"'”’)]*$", sent)
    return f"{sent[:m.start()]} [{n}]{sent[m.start():]}" if m else f"{sent} [{n}]."


def review(library: Library, user: str = DEFAULT_USER, doc_ids: list[str] | None = None, topic: str | None = None,
           backend=None, max_papers: int = 12) -> Review:
    """A synthesising review of a set of papers (all, the given ids, or the best matches for `topic`): the
    documents grouped by shared method and by shared finding, each group with a cited paragraph; a comparison
    table (document x problem/method/data/result, Markdown and CSV); and the facets no document covers."""
    import csv
    import io
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
    zh = is_chinese(topic) if topic else sum(is_chinese(d.title) for d in docs) * 2 > len(docs)
    papers = [extract_units(library, d.id, user) for d in docs]
    table: dict[int, Passage] = {}

    def cite(pid: str) -> int:
        for n, p in table.items():
            if p.id == pid:
                return n
        table[len(table) + 1] = library.passage(pid, user)
        return len(table)

    def short(pu: PaperUnits) -> str:
        t = pu.title
        return t if len(t) <= 60 else t[:57].rstrip() + "…"

    claims: list[str] = []  # quoted sentences, verified below
    lines = [f"# {'文献综述' if zh else 'Literature review'}" + (f"：{topic}" if zh and topic else f": {topic}" if topic
                                                                 else ""), ""]
    lines.append(("本综述涵盖文献库中的 {} 篇文献。" if zh else "This review covers {} documents from your library.")
                 .format(len(papers)))
    groups: list[Group] = []
    for facet, head_en, head_zh, verb_en, verb_zh in (
            ("method", "Synthesis by shared method", "按研究方法综合", "use", "采用了"),
            ("result", "Findings", "主要发现", "report findings on", "报告了关于")):
        found = _shared_groups(papers, facet, zh)
        grouped = {pu.doc_id for _, members in found for pu in members}
        loose = [pu for pu in papers if pu.units.get(facet) and pu.doc_id not in grouped]
        if not found and not loose:
            continue
        lines += ["", f"## {head_zh if zh else head_en}"]
        for label, members in found:
            ns = [cite(pu.units[facet].passage_id) for pu in members]
            marks = "".join(f"[{n}]" for n in ns)
            if zh:
                lead = f"{len(members)} 篇文献{verb_zh}{label}{'' if facet == 'method' else '的结果'} {marks}。"
            else:
                lead = f"{len(members)} documents {verb_en} {label} {marks}."
            quoted = []
            for pu, n in zip(members, ns):
                c = _claim(pu.units[facet].text, n)
                claims.append(c)
                quoted.append(f"*{short(pu)}*: {c}")
            if facet == "method":  # what the group found with that method
                outs = [(pu, pu.units.get("result")) for pu in members if pu.units.get("result")]
                if outs:
                    quoted.append(("其结果：" if zh else "With it, they found: ") + " ".join(
                        f"*{short(pu)}*: {_claim(u.text, cite(u.passage_id))}" for pu, u in outs))
                    claims += [_claim(u.text, cite(u.passage_id)) for _, u in outs]
            paragraph = lead + " " + " ".join(quoted)
            lines += ["", f"### {label}", "", paragraph]
            groups.append(Group(facet, label, [pu.doc_id for pu in members], paragraph))
        quoted_already = [pu for pu in loose if _claim(pu.units[facet].text, cite(pu.units[facet].passage_id))
                          in claims]
        loose = [pu for pu in loose if pu not in quoted_already]
        if quoted_already and not loose and not found:
            lines += ["", "各文献的结果已在上文随其研究方法给出。" if zh else
                      "Each document's findings are given with its method group above."]
        if loose:
            lines += ["", f"### {'其他文献' if zh else 'Other documents'}", ""]
            for pu in loose:
                c = _claim(pu.units[facet].text, cite(pu.units[facet].passage_id))
                claims.append(c)
                lines.append(f"- *{short(pu)}*: {c}")
    # the comparison table
    heads = [HEADS[f][1 if zh else 0] for f in FACETS]
    md = [f"| {'文献' if zh else 'Document'} | " + " | ".join(heads) + " |", "|" + " --- |" * (len(heads) + 1)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["document", "doc_id", *FACETS])
    for pu in papers:
        cells, raw = [], []
        for f in FACETS:
            u = pu.units.get(f)
            if u:
                n = cite(u.passage_id)
                cells.append(f"{_cell(u.text)} [{n}]")
                raw.append(u.text)
            else:
                cells.append("—")
                raw.append("")
        md.append("| " + " | ".join(x.replace("|", "\\|") for x in [short(pu), *cells]) + " |")
        writer.writerow([pu.title, pu.doc_id, *raw])
    lines += ["", f"## {'对比表' if zh else 'Comparison table'}", "", *md]
    # the gaps
    uncovered = [f for f in FACETS if not any(pu.units.get(f) for pu in papers)]
    partial = {f: [short(pu) for pu in papers if not pu.units.get(f)] for f in FACETS if f not in uncovered}
    names = lambda fs: ("、" if zh else ", ").join(HEADS[f][1 if zh else 0].lower() if not zh else HEADS[f][1]  # noqa: E731
                                                   for f in fs)
    if zh:
        gaps = (f"空白：没有文献涉及{names(uncovered)}。" if uncovered else "空白：每个方面都至少有一篇文献涉及。")
        missing = "；".join(f"{HEADS[f][1]}：{'、'.join(ds)}" for f, ds in partial.items() if ds)
        if missing:
            gaps += f"（缺少该方面的文献——{missing}）"
    else:
        gaps = (f"Gaps: no document covers {names(uncovered)}." if uncovered else
                "Gaps: every facet is covered by at least one document.")
        missing = "; ".join(f"{HEADS[f][0].lower()}: {', '.join(ds)}" for f, ds in partial.items() if ds)
        if missing:
            gaps += f" (documents without it - {missing})"
    lines += ["", f"## {'研究空白' if zh else 'Gaps'}", "", gaps]
    text = "\n".join(lines)
    verifier = Verifier(library, user)
    _, report = verifier.verify(" ".join(dict.fromkeys(claims)), dict(table), mode="strict")
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
            text += f"\n\n## {'模型综合' if zh else 'Model synthesis'}\n{synth}"
    text, used = _renumber(text, table)
    new_of = {p.id: n for n, p in used}
    mapping = {old: new_of[p.id] for old, p in table.items() if p.id in new_of}
    marker = re.compile(r"\[(\d+)\]")
    renum = (lambda s: sub_citations(marker, lambda m: f"[{mapping.get(int(m.group(1)), m.group(1))}]", s,  # noqa: E731
                                     table))
    for g in groups:
        g.paragraph = renum(g.paragraph)
    table_md = renum("\n".join(md))
    return Review(text, Answerer(library, user).citations(used), report, papers, groups, table_md, buf.getvalue(),
                  gaps, "zh" if zh else "en")


# ---- Boolean search strings (boolean.py) ------------------------------------------------------

def boolean_query(question: str, library: Library | None = None, user: str = DEFAULT_USER, backend=None):
    """Boolean search strings for a research question (`boolean.boolean_search`)."""
    from .boolean import boolean_search
    return boolean_search(question, library, user, backend=backend)


__all__ = ["extract_units", "review", "boolean_query", "PaperUnits", "KnowledgeUnit", "Review", "Group"]
