"""Answers from the user's library with an evidence chain: retrieve, decide, compose, verify, cite.

Pipeline for `ask(question)`:
1. Hybrid retrieval (BM25 + MiniLM, RRF) of the top k passages of this user's library.
2. If the best passage's evidence score is below `NOT_FOUND_THRESHOLD`, or the evidence does not name every
   key unit of the question (`covers_key_terms`: the parts of a name from code, the longer Chinese segments),
   or an English question names something ("bz2", "Android") that the library never uses and that no word of
   the evidence is close to (`unknown_name`, MiniLM cosine below `NAME_SIMILARITY`, so "CO2" beside "dioxide"
   passes), the answer is "Not found in your library" (Chinese questions get "在你的文献库中未找到"); the model is not
   asked to answer from memory.
3. Composition, by `strategy`:
   - "model": the passages are numbered [1]..[m] and a chat model (ours, or an OpenAI-compatible server)
     is told to answer only from them and to cite [n] after each sentence;
   - "extractive": the sentences of the evidence passages that best match the question (MiniLM cosine
     plus IDF-weighted term coverage, counting the heading a sentence falls under and the sentence just
     before it as its context, and preferring sentences with a number for "how many" questions) are quoted,
     each with its [n]; a heading that supplies a question term, or a signature line ("copy.deepcopy(x[,
     memo])"), is quoted with the sentence. The answer is "not found" instead when the best quote does not
     answer the question (`quote_answers`): a "how many"/"哪一年" question whose quote states no number, a
     Chinese "X的Y是谁" / "X是哪一年Y的" question whose quote never names Y, a question about "the X module"
     quoted from a document whose title does not name X, or an English question with a noun ("permission bits",
     "shortest path") that other documents of the library use and the quoted one never does, in any form WordNet
     knows (`Answerer.unsaid_noun`). No model needed, always faithful;
   - "auto" (default): "model" when a backend is configured, then verified; when fewer than half of its
     claims are supported (usual for a 135M model), the extractive answer is used instead, and in
     creative mode the model's text is kept below it with unsupported sentences marked.
4. The verifier (`verify.py`) removes citations that do not resolve and flags unsupported sentences.
5. Citation numbers are renumbered in order of first use, and the reference list is built from the library's
   metadata for the passages actually cited, never from the model's text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field


from ..errors import UserError
from .boolean import GENERIC
from .retrieve import NOT_FOUND_THRESHOLD, Hit
from .store import DEFAULT_USER, Library, Passage
from .text import (STOPWORDS, asks_quantity, content_terms, counted_unit, counts_unit, default_asked, foreign_names,
                   has_number, is_chinese, is_heading, is_statement, key_terms, named_modules, names_code, normalize,
                   question_focus, question_names, sentence_spans, tokens, wants_number, wordnet_forms,
                   wordnet_only_noun)
from .verify import Verification, Verifier, sub_citations

NOT_FOUND_EN = "Not found in your library: no passage in your library supports an answer to this question."
NOT_FOUND_ZH = "在你的文献库中未找到：文献库中没有能支持回答这个问题的段落。（not found in your library）"
_CITE = re.compile(r"\[(\d+)\]")
EVIDENCE_MIN = 0.25  # passages below this are not shown to the model at all
# a name of an English question that the library never uses counts as present when a word of the evidence is
# at least this close to it (MiniLM cosine): "CO2" beside "dioxide" scores 0.73 and "URL-safe" beside "safe"
# 0.62, while "bz2" on gzip and zlib pages scores 0.49 and "Android" on the webbrowser page 0.51
NAME_SIMILARITY = 0.6
# nouns that frame a question ("an example of", "in which situation") rather than name what it asks about; with
# the words that never name a concept (`boolean.GENERIC`) they are left out of `Answerer.unsaid_noun`
QUESTION_FRAME = GENERIC | frozenset("""
example examples instance instances drawback drawbacks definition overview idea ideas thing things something
someone anyone anything everything category categories circumstance circumstances situation situations scenario
scenarios manner outcome outcomes
""".split())

SYSTEM_EN = ("You answer questions using only the numbered passages from the user's library. After every "
             "sentence, write the number of the passage that supports it in square brackets, like [1]. Do not "
             "use outside knowledge and do not list references. If the passages do not answer the question, "
             "reply exactly: not found in your library.")
SYSTEM_ZH = ("你只能根据用户文献库中编号的段落回答问题。每句话后面用方括号写出支持它的段落编号，例如[1]。"
             "不要使用外部知识，也不要列参考文献。如果段落无法回答问题，只回答：在你的文献库中未找到。")

SHORT_SYSTEM_EN = "Answer only from the passages; cite [n] after each sentence."
SHORT_SYSTEM_ZH = "只根据段落回答，每句后注明[n]。"


@dataclass
class Citation:
    n: int
    passage_id: str
    doc_id: str
    title: str
    page: int | None
    text: str
    reference: str
    char_start: int
    char_end: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Answer:
    question: str
    answer: str
    citations: list[Citation]
    verification: Verification
    not_found: bool = False
    strategy: str = "extractive"
    backend: str | None = None
    hits: list[Hit] = field(default_factory=list)
    model_text: str | None = None  # the model's raw text, before verification (for audit)
    notes: list[str] = field(default_factory=list)

    @property
    def references(self) -> list[str]:
        return [f"[{c.n}] {c.reference}" + (f" p. {c.page}." if c.page else "") for c in self.citations]

    def to_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "not_found": self.not_found,
                "citations": [c.to_dict() for c in self.citations], "references": self.references,
                "verification": self.verification.to_dict(), "strategy": self.strategy, "backend": self.backend,
                "retrieved": [h.to_dict() for h in self.hits], "model_text": self.model_text, "notes": self.notes}

    def render(self) -> str:
        """Plain-text form for the terminal: answer, then the reference list with the quoted passages."""
        out = [self.answer]
        if self.citations:
            out.append("")
            out.append("参考文献 / References:" if is_chinese(self.question) else "References:")
            for c, ref in zip(self.citations, self.references):
                out.append(ref)
                snippet = c.text if len(c.text) <= 300 else c.text[:297] + "..."
                out.append(f"    “{snippet}” ({c.passage_id})")
        v = self.verification
        flagged = [s for s in v.claims if not s.supported]
        if v.removed or flagged:
            out.append("")
            out.append(f"verifier: removed {len(v.removed)} citation(s) not in the library; "
                       f"{len(flagged)} unsupported sentence(s)" + (" marked" if v.mode == "creative" else " removed"))
        return "\n".join(out)


def covers_key_terms(question: str, evidence: list[Hit]) -> bool:
    """Whether the evidence (its passages and the headings they fall under) names every key unit of the
    question (`text.key_terms`): passages about the Yangtze say nothing of the 京九铁路, and one about
    tempfile does not document shutil.rmtree."""
    found = set().union(*(h.terms for h in evidence)) if evidence else set()
    return all(any(t in found for t in unit) for unit in key_terms(question))


def quote_answers(question: str, quote: dict, title: str = "") -> str | None:
    """Why the best quote of an extractive answer does not answer the question, or None: a "how many", "what
    year", "多少" or "哪一年" question (`text.asks_quantity`) whose quote states no number, a Chinese "多少X"
    question none of whose quoted sentences (`quote["said"]`) counts X (`text.counts_unit`: a sentence that counts
    董事 does not say how much 资金 was injected), a Chinese "X的Y是谁/是什么" question whose quote never
    names Y (a sentence about 温州读书协会 that names no 会长 does not say who its 会长 is), or a question about
    "the X module" whose quote is from a document (`title`) that is not about X (the calendar page mentions the
    time module; it does not document it), an English "the default X of Y" question none of whose quoted
    sentences (with their headings) names both X and Y's name from code (`text.default_asked`: the default of
    altchars, or SpooledTemporaryFile's max_size, says nothing of b64encode's wrapcol or NamedTemporaryFile's
    max_size), or a Chinese question about a transliterated name none of whose quoted sentences names that
    person (`text.foreign_names`)."""
    if asks_quantity(question) and not has_number(quote["text"]):
        return "the best evidence states no number"
    # what the number counts may be in any quoted sentence of the answer
    unit = counted_unit(question) if asks_quantity(question) else None
    if unit and not any(counts_unit(s, unit) for s in quote.get("said", [quote["text"]])):
        return f"the evidence states no number of {unit[0]}"
    title_terms = set(tokens(title))
    for module in named_modules(question):
        if not all(t in title_terms for t in tokens(module)):
            return f"the best evidence is not from the documentation of {module}"
    said_all = quote.get("said", [quote["text"]])
    asked = default_asked(question)
    if asked and not any(all(w in s.lower() for w in asked[0] + asked[1]) for s in said_all):
        return f"no quoted sentence states the default {' '.join(asked[0])}" + (
            f" of {', '.join(asked[1])}" if asked[1] else "")
    quoted = "".join(said_all)
    for parts in foreign_names(question):
        if not any(part in quoted for part in parts):
            return f"the best evidence does not name {'·'.join(parts)}"
    focus = question_focus(question)
    said = normalize(quote["text"])  # raw text: 研究所所长 is cut at the function word 所 in its terms
    if focus and not any(t in said for t in focus):
        return "the best evidence does not name what the question asks about"
    return None


def _renumber(text: str, table: dict[int, Passage]) -> tuple[str, list[tuple[int, Passage]]]:
    """Renumber [n] in order of first use (1, 2, 3...) and return the used passages in that order."""
    order: dict[int, int] = {}

    def sub(m: re.Match) -> str:
        old = int(m.group(1))
        if old not in table:
            return ""
        if old not in order:
            order[old] = len(order) + 1
        return f"[{order[old]}]"

    new = sub_citations(_CITE, sub, text, table)  # quoted subscripts (`heap[0]`) are text, not markers
    return new, [(new_n, table[old]) for old, new_n in order.items()]


class Answerer:
    def __init__(self, library: Library, user: str = DEFAULT_USER, backend=None, k: int = 5,
                 not_found_threshold: float = NOT_FOUND_THRESHOLD, verifier: Verifier | None = None):
        self.library = library
        self.user = user
        self.backend = backend
        self.k = k
        self.not_found_threshold = not_found_threshold
        self.verifier = verifier or Verifier(library, user)

    def citations(self, used: list[tuple[int, Passage]]) -> list[Citation]:
        out = []
        for n, p in used:
            d = self.library.document(p.doc_id, self.user)
            out.append(Citation(n, p.id, p.doc_id, d.title, p.page, p.text, d.reference(), p.char_start, p.char_end))
        return out

    def not_found(self, question: str, hits: list[Hit], mode: str) -> Answer:
        text = NOT_FOUND_ZH if is_chinese(question) else NOT_FOUND_EN
        return Answer(question, text, [], Verification(mode, self.verifier.threshold), not_found=True,
                      strategy="none", hits=hits)

    def unknown_name(self, question: str, evidence: list[Hit]) -> str | None:
        """A name of an English question (`text.question_names`: "bz2", "Android") that no passage of the library
        uses and that no word of the evidence comes close to (MiniLM cosine below `NAME_SIMILARITY`), or None.
        Such a question is about something the library does not cover, however many of its other words the
        evidence shares; a paraphrase ("CO2" for carbon dioxide) is still answered."""
        if is_chinese(question):
            return None
        df = self.library.retriever(self.user).df
        absent = [n for n in question_names(question) if tokens(n) and not any(df.get(t) for t in tokens(n))]
        return self.far_from(absent, [h.passage.text for h in evidence]) if absent else None

    def far_from(self, names: list[str], texts: list[str]) -> str | None:
        """The first of `names` that no word of `texts` comes close to (MiniLM cosine below `NAME_SIMILARITY`),
        or None."""
        words = sorted({w.lower() for t in texts for w in re.findall(r"[A-Za-z][A-Za-z0-9]+", t)} - STOPWORDS)
        if not words:
            return names[0] if names else None
        vecs = self.library.embedder.embed(names + words)
        close = vecs[:len(names)] @ vecs[len(names):].T
        return next((n for n, row in zip(names, close) if float(row.max()) < NAME_SIMILARITY), None)

    def unsaid_noun(self, question: str, doc_id: str, evidence: list[Passage]) -> str | None:
        """A noun of an English question that the document `doc_id` never uses, in any form WordNet knows, though
        other documents of the library do, or None. The copy page documents the copy module, not "permission
        bits" (the tempfile page speaks of those), and the graphlib page speaks of nodes and cycles, never of a
        "shortest path": a question that asks for such a thing looks like the document's subject but is not
        answered by it. Only words that WordNet knows as nouns alone count (`text.wordnet_only_noun`: "path",
        not "place" or "often"), as a paraphrase changes verbs and adverbs freely; the word also counts as said
        when a synonym, hypernym or derivation is in the document ("sunlight" in a text about light, "product"
        beside "produce"), or a word of the document's evidence passages is close to it in MiniLM (as in
        `unknown_name`). Without WordNet this check never fires."""
        if is_chinese(question):
            return None
        retriever = self.library.retriever(self.user)
        said = retriever.doc_terms(doc_id)

        def in_doc(text: str) -> bool:
            terms = tokens(text)
            return bool(terms) and all(t in said for t in terms)

        raw = re.findall(r"[a-z][a-z0-9]*(?:['-][a-z0-9]+)*|\d+(?:[.,]\d+)*", normalize(question))
        words = [re.sub(r"'s$", "", w) for w in raw]
        # the words after "which", "what" or "how many" up to the first function word say what kind of thing
        # the answer is ("which reinforcement learning algorithm", "which function", "how many cities"): the
        # answer names one, and its document need not use the kind's word; nor need it use the word that a
        # number of the question names ("the year 1500")
        kind: set[str] = set()
        for i, w in enumerate(words):
            asks = w in ("which", "what") or w in ("many", "much") and i > 0 and words[i - 1] == "how"
            j = i + 1
            while asks and j < len(words) and words[j] not in STOPWORDS:
                kind.add(words[j])
                j += 1
            if i + 1 < len(words) and words[i + 1][0].isdigit():
                kind.add(w)
        unsaid: list[str] = []
        for i, word in enumerate(words):
            # the head of a compound whose first word the document uses says little of its own ("prompt text",
            # "copying behaviour"); a possessive is no such first word ("a file's permission bits")
            modified = i > 0 and not raw[i - 1].endswith("'s") and in_doc(words[i - 1])
            if (len(word) < 3 or not word.replace("-", "").isalpha() or word in QUESTION_FRAME or word in kind
                    or word in unsaid or modified or any(t in said for t in tokens(word))
                    or not any(retriever.df.get(t) for t in tokens(word)) or not wordnet_only_noun(word)):
                continue
            if not any(in_doc(f) for f in wordnet_forms(word)):
                unsaid.append(word)
        if not unsaid:
            return None
        return self.far_from(unsaid, [p.text for p in evidence if p.doc_id == doc_id])

    def checked_extractive(self, question: str, table: dict[int, Passage], notes: list[str]) -> str:
        """The extractive answer, or "" (not found) when its best quote does not answer the question
        (`quote_answers`); the reason goes into `notes`."""
        text, quote = self.compose(question, table)
        doc = self.library.document(table[quote["n"]].doc_id, self.user) if text else None
        why = quote_answers(question, quote, doc.title if doc else "") if text else None
        noun = self.unsaid_noun(question, doc.id, list(table.values())) if text and not why else None
        if noun:
            why = (f"the quoted document never names {noun!r}, nor says it another way, though other documents "
                   f"of the library do")
        if why:
            notes.append(f"not found: {why}")
            return ""
        return text

    def compose(self, question: str, table: dict[int, Passage], max_sentences: int = 3) -> tuple[str, dict]:
        """The extractive answer (the evidence sentences that best answer the question, each with its passage
        number) and its best quote, `{"text", "n", "said"}`: the quoted sentence (with the heading quoted before
        it, if it is), its passage number, and every sentence the answer quotes."""
        q_vec = self.library.embedder.embed([question])[0]
        q_terms = content_terms(question)
        idf = self.library.retriever(self.user).idf
        weights = {t: idf(t) for t in q_terms}
        total = sum(weights.values()) or 1.0
        zh = is_chinese(question)
        w_dense = 0.3 if zh else 0.6  # MiniLM's cosine says little between Chinese texts (see retrieve.py)
        number = wants_number(question)
        candidates: list[tuple[int, str, set[str], float, str, set[str]]] = []
        for n, p in table.items():
            context: set[str] = set()
            share = 0.0
            heading, head_terms = "", set()
            for s, e in sentence_spans(p.text):
                sent = p.text[s:e].strip()
                # headings and title lines are not statements worth quoting as an answer, but they are the
                # context of the sentences below them
                if not is_statement(sent):
                    if is_heading(sent) and not re.search(r"[.:!?。：；;,，]$", sent) and not sent.startswith(">>>"):
                        heading, head_terms = sent, set(tokens(sent))  # a title or signature line of its own
                    context, share = set(tokens(sent)), 1.0
                    continue
                candidates.append((n, sent, context, share, heading, head_terms))
                context, share = set(tokens(sent)), 0.5
        if not candidates:
            return "", {"text": "", "n": None, "said": []}
        vecs = self.library.embedder.embed([c[1] for c in candidates])
        scored = []
        for (n, sent, context, share, heading, head_terms), v in zip(candidates, vecs):
            terms = set(tokens(sent))
            # IDF-weighted share of the question's terms in the sentence; a term named only by the heading
            # the sentence falls under ("shlex.quote(s)" above "Return a shell-escaped version...") counts
            # fully, and the heading is then quoted with it; one named only by the sentence before
            # ("香榭丽舍大街" before "这条长达1880米的大街") counts half
            own = {t for t in weights if t in terms}
            from_head = {t for t in weights if t not in terms and t in head_terms}
            cov = (sum(weights[t] for t in own | from_head)
                   + sum(share * w for t, w in weights.items() if t not in own | from_head and t in context)) / total
            if number and not has_number(sent) and not (from_head and has_number(heading)):
                cov *= 0.5  # "how long", "哪一年": a sentence that states no number does not answer it
            # the heading is quoted too when it supplies a question term, or when it is a signature: the name
            # it gives ("exception gzip.BadGzipFile") is what a "which exception" question asks for
            with_head = bool(from_head) or bool(heading) and names_code(heading)
            quote = f"{heading}{'：' if zh else ': '}{sent}" if with_head else sent
            # a small bonus for the top-ranked passage keeps the quote anchored in the best evidence
            score = w_dense * float(v @ q_vec) + (1 - w_dense) * cov + (0.05 if n == 1 else 0.0)
            scored.append((score, n, quote))
        scored.sort(key=lambda t: -t[0])
        best = scored[0][0]
        chosen: list[tuple[int, str]] = []
        for sc, n, sent in scored:
            if len(chosen) >= max_sentences or sc < best - 0.2:
                break
            if any(sent == c[1] for c in chosen):
                continue
            chosen.append((n, sent))
        parts = []
        for n, sent in chosen:
            sent = sent.rstrip()
            if zh:
                parts.append(f"{sent}[{n}]")
            else:
                end = re.search(r"[.!?。！？]+[\"'”’)]*$", sent)
                parts.append(f"{sent[:end.start()]} [{n}]{sent[end.start():]}" if end else f"{sent} [{n}].")
        _, n, text = scored[0]
        return ("" if zh else " ").join(parts), {"text": text, "n": n, "said": [sent for _, sent in chosen]}

    def build_messages(self, question: str, table: dict[int, Passage], short: bool = False) -> list[dict]:
        zh = is_chinese(question)
        blocks = []
        for n, p in table.items():
            d = self.library.document(p.doc_id, self.user)
            where = f", p. {p.page}" if p.page else ""
            blocks.append(f"[{n}] ({d.title}{where}) {p.text}")
        user = ("段落：\n" if zh else "Passages:\n") + "\n\n".join(blocks) + ("\n\n问题：" if zh else "\n\nQuestion: ") + question
        system = (SHORT_SYSTEM_ZH if zh else SHORT_SYSTEM_EN) if short else (SYSTEM_ZH if zh else SYSTEM_EN)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def _fit(self, question: str, table: dict[int, Passage], max_tokens: int) -> list[dict]:
        """Drop the lowest-ranked passages (then trim the last one) until the prompt fits the context."""
        messages = self.build_messages(question, table)
        count = getattr(self.backend, "prompt_tokens", None)
        if count is None or count(messages) is None:
            return messages
        limit = self.backend.max_context
        while count(messages) + max_tokens >= limit and len(table) > 1:
            table.pop(max(table))
            messages = self.build_messages(question, table)
        if count(messages) + max_tokens >= limit:
            # small contexts: a one-line instruction, then the single passage cut down
            (n, p), = table.items()
            messages = self.build_messages(question, table, short=True)
            cut = p.text
            while count(messages) + max_tokens >= limit and len(cut) > 40:
                cut = cut[: int(len(cut) * 0.7)]
                table[n] = Passage(**{**p.__dict__, "text": cut})
                messages = self.build_messages(question, table, short=True)
        return messages

    def ask(self, question: str, mode: str = "strict", strategy: str = "auto", max_tokens: int = 200,
            doc_ids: list[str] | None = None) -> Answer:
        question = question.strip()
        if not question:
            raise UserError("the question is empty")
        if strategy not in ("auto", "model", "extractive"):
            raise UserError(f"unknown strategy {strategy!r}; use auto, model or extractive")
        if strategy == "model" and self.backend is None:
            raise UserError("strategy 'model' needs a backend (--backend MODEL_OR_URL)")
        hits = self.library.retriever(self.user).search(question, k=self.k, doc_ids=doc_ids)
        if not hits or max(h.evidence for h in hits) < self.not_found_threshold:
            return self.not_found(question, hits, mode)
        evidence = [h for h in hits if h.evidence >= EVIDENCE_MIN] or hits[:1]
        if not covers_key_terms(question, evidence):
            return self.not_found(question, hits, mode)
        name = self.unknown_name(question, evidence)
        if name:
            ans = self.not_found(question, hits, mode)
            ans.notes.append(f"not found: the library never names {name!r}, nor anything close to it")
            return ans
        table = {i: h.passage for i, h in enumerate(evidence, 1)}
        notes: list[str] = []
        model_text = None
        used_strategy = "extractive"
        text, report = "", None
        if self.backend is not None and strategy in ("auto", "model"):
            try:
                # the passages travel from here to the model: the verifier must see what the model saw
                messages = self._fit(question, dict(table), max_tokens)
                model_text = self.backend.complete(messages, max_tokens=max_tokens, temperature=0.0)
            except UserError as e:
                if strategy == "model":
                    raise
                notes.append(f"model failed ({e}); answered extractively")
            if model_text is not None:
                said_not_found = "not found in your library" in model_text.lower() or "未找到" in model_text
                text, report = self.verifier.verify(model_text, table, mode=mode)
                used_strategy = "model"
                weak = said_not_found or not report.claims or report.supported_share < 0.5
                if strategy == "auto" and weak:
                    notes.append(f"model answer had {report.supported_share:.0%} supported claims; "
                                 f"replaced by quoted evidence")
                    ext = self.checked_extractive(question, table, notes)
                    ext_text, ext_report = self.verifier.verify(ext, table, mode=mode)
                    if mode == "creative" and text and not said_not_found:
                        text = ext_text + "\n\n" + text
                        ext_report.sentences += report.sentences
                        ext_report.removed += report.removed
                        used_strategy = "extractive+model"
                    else:
                        text, used_strategy = ext_text, "extractive"
                        ext_report.removed += report.removed  # still report what the model fabricated
                    report = ext_report
        if report is None:
            text, report = self.verifier.verify(self.checked_extractive(question, table, notes), table, mode=mode)
        if not text.strip():
            ans = self.not_found(question, hits, mode)
            ans.verification, ans.notes, ans.model_text = report, notes, model_text
            return ans
        text, used = _renumber(text, table)
        for s in report.sentences:  # keep the report's numbers in step with the shown text
            s.citations = [next((new for new, p in used if p.id == table[c].id), c) for c in s.citations if c in table]
        return Answer(question, text, self.citations(used), report, strategy=used_strategy,
                      backend=getattr(self.backend, "name", None), hits=hits, model_text=model_text, notes=notes)


def ask(library: Library, question: str, user: str = DEFAULT_USER, backend=None, **kw) -> Answer:
    return Answerer(library, user, backend).ask(question, **kw)


__all__ = ["Answer", "Answerer", "Citation", "ask", "NOT_FOUND_EN", "NOT_FOUND_ZH"]
