"""Boolean search strings a librarian would paste: concept groups from a research question, each an OR of
synonyms and variants, ANDed, in the field syntax of PubMed, Scopus, Web of Science and CNKI, each parsed back
by a checker before it is returned.

Notable choices:
- Concepts come from the field's vocabulary first: the curated list `data/field_terms.json` (English terms,
  acronyms and Chinese terms per concept) is matched longest-first in the question, in either language, so
  "RLHF" brings "reinforcement learning from human feedback" and "基于人类反馈的强化学习", and a Chinese
  question gets the English terms too (and the reverse). What the vocabulary does not know is cut into
  phrases at connectives, question words, stop words and generic research verbs ("shape", "affect", "mean",
  影响, 研究), which are never concepts.
- Each group also gets: acronyms the user's library itself defines ("reward model (RM)"); British/American
  spelling variants (-ise/-ize, -isation/-ization, catalogue/catalog, behaviour/behavior); a truncated form
  only where truncation is safe (an English word of at least five letters before the cut, never an acronym,
  a name or a Chinese term); English synonyms from WordNet when Debian's `wordnet-base` is installed
  (`text.wordnet_synonyms`: only single-sense nouns, so a synonym never drifts to another meaning); and, with
  a model backend, the model's synonyms, marked `proposed` for the librarian to keep or drop (only short, plain
  terms are accepted: model output is untrusted).
- The output is editable JSON (`groups`: one per concept, each term with its source; `concepts`: the same
  as plain lists of terms) plus the strings; `strings_for(groups)` rebuilds the strings from an edited JSON.
- CNKI's professional search writes `SU=('a'+'b')*('c'+'d')` (`+` is OR, `*` is AND inside a field, SU is
  subject, TKA title/keywords/abstract); it matches by word so it gets no truncation marks.
- Every string is parsed back by `check(string, syntax)`: Python's `shlex` tokenizes it (quotes, parentheses,
  operators) and a small recursive-descent reader accepts only the grammar of that syntax, so an unbalanced
  parenthesis or quote, a dangling operator or two terms with no operator between them is an error.
"""
from __future__ import annotations

import functools
import json
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources

from ..errors import UserError
from .text import CHINESE_STOPWORDS, HAN, STOPWORDS, is_chinese, normalize, wordnet_available, wordnet_synonyms

SYNTAXES = ("generic", "pubmed", "scopus", "wos", "cnki")

# words that ask or relate but never name a concept
GENERIC = frozenset("""
shape shapes shaping shaped mean means meaning affect affects affected affecting effect effects impact impacts
influence influences influenced role roles relationship relation relate relates related change changes changing
use uses using used usage apply applies applied application applications improve improves study studies research
case cases compare compared comparison differ difference differences work works working help helps evidence
implication implications consequence consequences factor factors way ways kind kinds type types current
future new role potential possible challenge challenges opportunity opportunities trend trends approach
approaches toward towards regarding across perspective perspectives issue issues aspect aspects
""".split())
_QUESTION = frozenset("how what why which who whom whose when where whether does do did is are can could should "
                      "would will might may".split())
_EN_SPLIT = re.compile(r"[,;:?!.()\"“”]|\s(?:and|or|versus|vs)\s", re.IGNORECASE)
_ZH_GENERIC = ("影响", "作用", "关系", "应用", "研究", "意味着", "意味", "什么", "如何", "怎样", "哪些", "是否", "之间",
               "现状", "发展", "问题", "方面", "意义", "塑造", "改变", "带来", "对于", "方法", "策略", "路径", "模式",
               "机制", "对策", "探讨", "探析", "分析", "基于", "中的", "对", "与", "和", "及", "的",
               "在", "中", "了", "吗", "呢", "有", "是")
_ZH_SPLIT = re.compile("|".join(map(re.escape, sorted(set(_ZH_GENERIC) | set(CHINESE_STOPWORDS), key=len,
                                                       reverse=True))) + r"|[？?，,、；;：:（）()“”\"。！!\s]")
_SAFE_TERM = re.compile(f"[\\w\\s\\-.{HAN}]+\\*?")
# British -> American endings that are safe to swap in a word of three or more letters before them
_SPELLING = [("isation", "ization"), ("isations", "izations"), ("yse", "yze"), ("ysed", "yzed"), ("ysing", "yzing"),
             ("our", "or"), ("ours", "ors"), ("ogue", "og"), ("ogues", "ogs"), ("tre", "ter"), ("tres", "ters"),
             ("elling", "eling"), ("elled", "eled")]


@dataclass
class Term:
    term: str
    source: str  # question | vocabulary | library | variant | truncation | wordnet | model
    proposed: bool = False  # a model's suggestion, for the librarian to keep or drop
    plain: str | None = None  # a truncated term's whole word ("library services" for "library servic*")

    def to_dict(self) -> dict:
        return {"term": self.term, "source": self.source, "proposed": self.proposed,
                **({"plain": self.plain} if self.plain else {})}


@dataclass
class Concept:
    label: str
    terms: list[Term] = field(default_factory=list)
    vocabulary_id: str | None = None

    def add(self, term: str, source: str, proposed: bool = False, plain: str | None = None) -> None:
        term = re.sub(r"\s+", " ", term).strip()
        if term and _SAFE_TERM.fullmatch(term) and term.lower() not in {t.term.lower() for t in self.terms}:
            self.terms.append(Term(term, source, proposed, plain))

    def to_dict(self) -> dict:
        return {"concept": self.label, "vocabulary_id": self.vocabulary_id, "terms": [t.to_dict() for t in self.terms]}


# ---- the vocabulary -------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def vocabulary() -> list[dict]:
    """The curated concepts of `data/field_terms.json`."""
    data = resources.files("alignchat.library").joinpath("data/field_terms.json").read_text(encoding="utf-8")
    return json.loads(data)["concepts"]


def _variants_of(entry: dict) -> list[str]:
    return [*entry.get("en", []), *entry.get("acronyms", []), *entry.get("zh", [])]


@functools.lru_cache(maxsize=1)
def _matchers() -> list[tuple[re.Pattern, dict]]:
    """One pattern per vocabulary term, longest terms first (a longer phrase wins over the words inside it)."""
    items = []
    for entry in vocabulary():
        for v in _variants_of(entry):
            if re.search(f"[{HAN}]", v):
                pat = re.compile(re.escape(v))
            elif v in entry.get("acronyms", []):
                pat = re.compile(r"(?<![\w-])" + re.escape(v) + r"(?![\w-])")  # acronyms match their case
            else:
                pat = re.compile(r"(?<![\w-])" + re.escape(v).replace(r"\ ", r"[\s-]+").replace(r"\-", r"[\s-]?")
                                 + r"(?:e?s)?(?![\w-])", re.IGNORECASE)  # and its plural
            items.append((len(v), pat, entry))
    items.sort(key=lambda x: -x[0])
    return [(p, e) for _, p, e in items]


def find_concepts(text: str) -> list[tuple[int, int, dict]]:
    """(start, end, vocabulary entry) of the field's concepts named in `text`, in order, non-overlapping."""
    taken: list[tuple[int, int, dict]] = []
    for pat, entry in _matchers():
        for m in pat.finditer(text):
            if any(m.start() < e and s < m.end() for s, e, _ in taken):
                continue
            taken.append((m.start(), m.end(), entry))
    return sorted(taken, key=lambda x: x[0])


# ---- building the groups ----------------------------------------------------------------------------

def _spelling_variants(term: str) -> list[str]:
    out = []
    for uk, us in _SPELLING:
        pairs = ((uk, us), (us, uk)) if uk.startswith(("isation", "yse", "ysed", "ysing")) else ((uk, us),)
        for a, b in pairs:
            for m in re.finditer(f"(?<=[a-z]{{3}}){a}\\b", term):
                out.append(term[:m.start()] + b + term[m.end():])
    if "-" in term:
        out.append(term.replace("-", " "))
    return out


def _truncated(term: str) -> str | None:
    """"library services" -> "library servic*"; None where truncation is unsafe (short stems, acronyms, names,
    Chinese)."""
    if re.search(f"[{HAN}]", term) or not re.fullmatch(r"[a-z][a-z\s-]*", term):
        return None
    head, _, w = term.rpartition(" ")
    for suffix in ("ies", "es", "s", "y", "ing", "ed", "ion", "ions", "e"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 5:
            return f"{head} {w[:len(w) - len(suffix)]}*".strip()
    return None


def _candidate_phrases(question: str, zh: bool) -> list[str]:
    """The parts of the question outside vocabulary matches, cut at connectives and generic words."""
    if zh:
        return [p for p in _ZH_SPLIT.split(question) if p and len(p.strip()) >= 2 and re.search(f"[{HAN}A-Za-z]", p)]
    out = []
    for chunk in _EN_SPLIT.split(question):
        words = []
        for w in (chunk or "").split() + [""]:
            low = normalize(w).strip("'’")
            if not w or low in STOPWORDS or low in GENERIC or low in _QUESTION or not re.search(r"[a-z0-9]", low):
                if words:
                    out.append(" ".join(words))
                words = []
                continue
            words.append(w)
    return [p for p in out if len(p) > 2 or p.isupper()]


def library_acronyms(library, user: str) -> dict[str, str]:
    """Long form -> acronym pairs the library's own text defines, e.g. "reward model (RM)" (`library`: a
    `store.Library`, or None)."""
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


def concept_groups(question: str, library=None, user: str = "local", backend=None,
                   use_wordnet: bool = True) -> list[Concept]:
    question = re.sub(r"\s+", " ", question or "").strip()
    if not question:
        raise UserError("the research question is empty")
    zh = is_chinese(question)
    found = find_concepts(question)
    pieces: list[tuple[int, object]] = [(s, entry) for s, _, entry in found]
    rest, pos = [], 0
    for s, e, _ in found:
        rest.append((pos, question[pos:s]))
        pos = e
    rest.append((pos, question[pos:]))
    for start, text in rest:
        for phrase in _candidate_phrases(text, zh):
            pieces.append((start + max(text.find(phrase), 0), phrase))
    pieces.sort(key=lambda x: x[0])
    acronyms = library_acronyms(library, user)
    concepts: list[Concept] = []
    seen_ids: set[str] = set()
    for _, piece in pieces:
        if isinstance(piece, dict):
            if piece["id"] in seen_ids:
                continue
            seen_ids.add(piece["id"])
            label = (piece.get("zh") or piece["en"])[0] if zh else (piece.get("en") or piece["acronyms"])[0]
            c = Concept(label, vocabulary_id=piece["id"])
            en = [t.lower() if not re.search(r"[A-Z]{2}|GPT|[A-Z][a-z]+[A-Z]", t) else t for t in piece.get("en", [])]
            zh_terms = piece.get("zh", [])
            for t in ([*zh_terms, *piece.get("acronyms", []), *en] if zh else
                      [*en, *piece.get("acronyms", []), *zh_terms]):
                c.add(t, "vocabulary")
        else:
            phrase = piece.strip()
            keep_case = bool(re.search(r"[A-Z]{2}|[a-z][A-Z]", phrase))
            c = Concept(phrase, terms=[])
            c.add(phrase if keep_case else phrase.lower(), "question")
            low = normalize(phrase).rstrip("s")
            for long, short in acronyms.items():
                if low in (long.rstrip("s"), short.lower().rstrip("s")):
                    c.add(long, "library")
                    c.add(short, "library")
            if use_wordnet and not zh:
                for syn in wordnet_synonyms(phrase.lower())[:4]:
                    c.add(syn, "wordnet")
        for t in list(c.terms):
            if t.source in ("question", "vocabulary") and not re.search(f"[{HAN}]|[A-Z]", t.term):
                for v in _spelling_variants(t.term):
                    c.add(v, "variant")
        # a truncated form takes the place of the forms it matches ("library servic*" for "library services")
        terms, c.terms = c.terms, []
        for t in terms:
            tr = _truncated(t.term) if t.source in ("question", "vocabulary", "wordnet", "variant") else None
            c.add(tr or t.term, "truncation" if tr else t.source, t.proposed, t.term if tr else None)
        stems = [t.term[:-1].lower() for t in c.terms if t.term.endswith("*")]
        c.terms = [t for t in c.terms if t.term.endswith("*") or not any(
            t.term.lower().startswith(st) and " " not in t.term.lower()[len(st):] for st in stems)]
        concepts.append(c)
    concepts = [c for c in concepts if c.terms]
    if not concepts:
        raise UserError(f"no search concepts found in {question!r}; phrase it as a research question")
    if backend is not None:
        _model_synonyms(concepts, backend, zh)
    return concepts


def _model_synonyms(concepts: list[Concept], backend, zh: bool) -> None:
    ask = ("为下面每个检索概念各给出最多3个同义词或相关检索词，只输出JSON对象，键是概念，值是词语列表。\n" if zh else
           "For each search concept give up to 3 synonyms used in the literature. Reply with only a JSON object "
           "mapping each concept to a list of strings.\n")
    try:
        raw = backend.complete([{"role": "user", "content": ask + json.dumps([c.label for c in concepts],
                                                                             ensure_ascii=False)}], max_tokens=160)
        m = re.search(r"\{.*\}", raw or "", re.DOTALL)
        syn = json.loads(m.group()) if m else {}
    except (UserError, ValueError):
        syn = {}
    if not isinstance(syn, dict):
        return
    for c in concepts:
        extra = syn.get(c.label)
        for s in extra if isinstance(extra, list) else []:
            if isinstance(s, str) and 1 < len(s.strip()) <= 40 and re.fullmatch(f"[\\w\\s\\-{HAN}]+", s):
                c.add(s.strip().lower(), "model", proposed=True)


# ---- field syntax -----------------------------------------------------------------------------------

def _quote(t: str) -> str:
    return f'"{t}"' if re.search(r"[\s\-]|[^\x00-\x7f]", t) else t


def _english(group: list[str]) -> list[str]:
    """The terms PubMed, Scopus and Web of Science index (they search English text), or the group as it is."""
    return [t for t in group if not re.search(f"[{HAN}]", t)] or group


def _or(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"


def _terms(concept, plain: bool = False) -> list[str]:
    """The terms of a group; `plain`: truncated terms by their whole word (for CNKI)."""
    if isinstance(concept, Concept):
        return [(t.plain or t.term) if plain else t.term for t in concept.terms]
    if isinstance(concept, dict):  # an edited JSON group
        return [((t.get("plain") or t.get("term", "")) if plain else t.get("term", "")) if isinstance(t, dict)
                else str(t) for t in concept.get("terms", [])]
    return [str(t) for t in concept]


def _cnki_terms(terms: list[str]) -> list[str]:
    out = []
    for t in terms:
        t = t.rstrip("*").replace("'", " ").strip()  # CNKI matches words: no truncation marks
        if not _SAFE_TERM.fullmatch(t):
            continue
        if t and t.lower() not in {o.lower() for o in out}:
            out.append(t)
    return out


def strings_for(concepts: list) -> dict[str, str]:
    """The search strings of concept groups (`Concept`s, edited JSON groups, or lists of terms)."""
    groups = [[t for t in _terms(c) if _SAFE_TERM.fullmatch(t.rstrip("*")) and '"' not in t] for c in concepts]
    groups = [g for g in groups if g]
    if not groups:
        raise UserError("no search terms left in the concept groups")
    cnki_groups = [g for g in (_cnki_terms(_terms(c, plain=True)) for c in concepts) if g]
    cnki_field = lambda f: f"{f}=" + "*".join("(" + "+".join(f"'{t}'" for t in g) + ")" for g in cnki_groups)  # noqa: E731
    return {
        "generic": " AND ".join(_or([_quote(t) for t in g]) for g in groups),
        "pubmed": " AND ".join(_or([f"{_quote(t)}[tiab]" for t in _english(g)]) for g in groups),
        "scopus": "TITLE-ABS-KEY(" + " AND ".join(_or([_quote(t) for t in _english(g)]) for g in groups) + ")",
        "wos": "TS=(" + " AND ".join(_or([_quote(t) for t in _english(g)]) for g in groups) + ")",
        "cnki": cnki_field("SU"),
        "cnki_tka": cnki_field("TKA"),
    }


# ---- the checker ------------------------------------------------------------------------------------

class SyntaxCheckError(ValueError):
    pass


def _tokens(s: str, quote: str, punct: str) -> list[str]:
    lex = shlex.shlex(s, posix=True, punctuation_chars=punct)
    lex.quotes = quote
    lex.wordchars += "-*[]'.:/=" if quote == '"' else "-.:/"
    lex.wordchars = "".join(ch for ch in lex.wordchars if ch not in punct)
    out: list[str] = []
    try:
        for tok in lex:
            if tok and all(ch in punct for ch in tok):
                out.extend(tok)  # shlex joins a run of punctuation (")*("): one token per character
            else:
                out.append(tok)
    except ValueError as e:  # "No closing quotation"
        raise SyntaxCheckError(str(e)) from e
    return out


class _Reader:
    def __init__(self, toks: list[str], ops: set[str], fields: set[str]):
        self.toks, self.i, self.ops, self.fields = toks, 0, ops, fields

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise SyntaxCheckError(f"expected {want or 'a term'} at token {self.i}, found {tok!r}")
        self.i += 1
        return tok

    def expr(self) -> None:
        self.term()
        while self.peek() in self.ops:
            self.take()
            self.term()

    def term(self) -> None:
        tok = self.peek()
        if tok == "(":
            self.take("(")
            self.expr()
            self.take(")")
        elif tok in self.fields:
            self.take()
            if self.peek() == "=":
                self.take("=")
            self.take("(")
            self.expr()
            self.take(")")
        elif tok is None or tok in self.ops or tok in ("(", ")"):
            raise SyntaxCheckError(f"expected a term at token {self.i}, found {tok!r}")
        else:
            self.take()

    def end(self) -> None:
        if self.peek() is not None:
            raise SyntaxCheckError(f"unexpected {self.peek()!r} at token {self.i} (two terms with no operator, "
                                   f"or an unbalanced parenthesis)")


def check(string: str, syntax: str) -> None:
    """Parse a search string back in its syntax; raises `SyntaxCheckError` saying what is wrong."""
    if syntax == "cnki" or syntax == "cnki_tka":
        r = _Reader(_tokens(string, "'", "()+*-="), {"*", "+", "-"}, set())
        while True:
            f = r.take()
            if f not in ("SU", "TKA", "TI", "KY", "AB", "FT", "AU"):
                raise SyntaxCheckError(f"unknown CNKI field {f!r}")
            r.take("=")
            r.expr()
            if r.peek() in ("AND", "OR", "NOT"):
                r.take()
                continue
            break
        r.end()
        return
    if syntax not in SYNTAXES:
        raise ValueError(f"unknown syntax {syntax!r}")
    r = _Reader(_tokens(string, '"', "()"), {"AND", "OR", "NOT"}, {"TITLE-ABS-KEY", "TS="})
    r.expr()
    r.end()


@dataclass
class BooleanSearch:
    question: str
    groups: list[Concept]

    @property
    def concepts(self) -> list[list[str]]:
        return [_terms(g) for g in self.groups]

    def strings(self) -> dict[str, str]:
        out = strings_for(self.groups)
        for name, s in out.items():
            check(s, name)
        return out

    def to_dict(self) -> dict:
        strings = self.strings()
        return {"question": self.question, "language": "zh" if is_chinese(self.question) else "en",
                "concepts": self.concepts, "groups": [g.to_dict() for g in self.groups], "strings": strings,
                "checked": True, **strings}


def boolean_search(question: str, library=None, user: str = "local", backend=None) -> BooleanSearch:
    return BooleanSearch(question.strip(), concept_groups(question, library, user, backend))


__all__ = ["boolean_search", "concept_groups", "strings_for", "check", "find_concepts", "vocabulary",
           "wordnet_synonyms", "wordnet_available", "BooleanSearch", "Concept", "Term", "SyntaxCheckError"]
