"""Text handling shared by ingest, retrieval and the verifier: tokens for BM25, sentences, passages.

Notable choices:
- Chinese has no spaces, so BM25 indexes Han characters as overlapping character bigrams plus single
  characters (the single characters keep one-character words such as 水 findable). Latin text is lowercased
  words with a light English suffix stripper, so "citations" matches "citation", "retrieved" matches
  "retrieve" and "readable" matches "read" without a stemming library.
- Sentences split on Western and Chinese end punctuation; abbreviations such as "e.g." and "et al." do
  not end a sentence. Documents are hostile input: every pattern here runs in time linear in the text.
- Passages are built from whole sentences, about `target` units long (a unit is a Latin word or a Han
  character), and each keeps its page and character offsets in the page text, so a citation can point
  at the exact place. Spans of other roles (reference entries, captions, author lines; `structure.roles`)
  are cut into passages of their own, so body passages never contain them.
- What a question asks for is read with two small patterns, not a parser: `asks_quantity` ("how many",
  "what year", "多少", "哪一年") and `question_focus` (Y in "X的Y是谁" and "X是哪一年Y的"); `has_number` counts
  digits, Chinese numerals and English number words, so "a multiple of four characters" states a number.
- Two more patterns read what an English question is about: `question_names` (words with a digit or a capital
  that does not open the sentence: "bz2", "Android") and `named_modules` (X in "the X module"); the answerer
  checks the first against the library's words and the evidence's, the second against the quoted document's
  title.
- WordNet (Debian's `wordnet-base`, read directly from `WORDNET_DIR`) says which words are nouns alone
  (`wordnet_only_noun`: "path", not "place") and gives a word's synonyms, hypernyms and derivations
  (`wordnet_forms`), so the answerer can tell a noun a document never uses in any form from a paraphrase of one
  it does; without WordNet both answer nothing and that check is off.
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_RE = re.compile(f"[{HAN}]")
_TOKEN_RE = re.compile(f"[{HAN}]+|[a-z0-9]+(?:[-'][a-z0-9]+)*")
_UNIT_RE = re.compile(f"[{HAN}]|[A-Za-z0-9]+")

# Function words carry no evidence: they are left out of the support score and of query coverage.
STOPWORDS = frozenset("""
a an the and or but if then else of to in on at by for with from as is are was were be been being am do does
did done have has had having it its this that these those there here which who whom whose what when where why
how not no nor so than too very can could may might must shall should will would i me my we our you your he
him his she her they them their us about into over under again further once all any both each few more most
other some such only own same also just up down out off s t don now one ones whether while during before after
above below between through per via within without upon among etc e g eg ie i.e let lets tell say says said
please explain describe give show find according
""".split())
# Chinese function words and question fillers. Han runs are cut at them before making bigrams, so a
# question's "多少", "为什么" or "的" never counts as matching evidence; "多长" and "多高" keep their 长 and 高,
# which the answer's 全长 or 高达 contains. Longest first.
CHINESE_STOPWORDS = sorted(set("""
为什么 怎么样 有没有 是不是 哪一年 什么 哪些 哪个 哪里 哪位 如何 怎么 怎样 多少 大约 现在 可以 主要 进行 后来 变成
时候 是否
一个 一些 这个 那个 这些 那些 我们 他们 它们 你们 因为 所以 但是 而且 以及 或者 通过 对于 关于 已经 还是 就是
之后 之前 以后 其中 能够 需要 问题 请问 回答 告诉 一共 总共
的 了 和 是 在 也 就 都 而 及 与 或 这 那 之 其 为 对 从 被 把 以 于 吗 呢 吧 啊 有 个 只 很 请 哪 做 等 着 过 要
会 能 让 给 将 并 又 即 但 如 则 所 此 该 各 每 谁 几 多
""".split()), key=len, reverse=True)
_ZH_STOP_RE = re.compile("|".join(map(re.escape, CHINESE_STOPWORDS)))


def han_segments(run: str) -> list[str]:
    """A run of Han characters cut at Chinese function words (which are dropped)."""
    return [seg for seg in _ZH_STOP_RE.split(run) if seg]


def is_chinese(text: str) -> bool:
    """True when Han characters make up a large share of the letters (used to pick reply language)."""
    han = len(_HAN_RE.findall(text))
    latin = len(re.findall(r"[A-Za-z]", text))
    return han > 0 and han * 3 >= latin


def normalize(text: str) -> str:
    # NFKC folds full-width Latin letters and digits (common in Chinese text) into ASCII
    return unicodedata.normalize("NFKC", text).lower()


def _stem(word: str) -> str:
    if word.endswith(("'s", "’s")):  # a possessive ("a file's") is the word itself
        word = word[:-2]
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, keep in (("ational", "ate"), ("ization", "ize"), ("iveness", "ive"), ("fulness", "ful"),
                         ("ousness", "ous"), ("ies", "y"), ("sses", "ss"), ("ing", ""), ("edly", ""),
                         ("able", ""), ("ible", ""), ("ed", ""), ("ly", ""), ("es", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return word
            word = word[: len(word) - len(suffix)] + keep
            break
    # "retriev-ed"/"retriev-al" and "citat-ion"/"cite" meet at a common stem
    for suffix in ("ation", "ion", "al", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: len(word) - len(suffix)]
    return word


def tokens(text: str) -> list[str]:
    """BM25 tokens: stemmed lowercase Latin words, and Han segments as character unigrams + bigrams."""
    out: list[str] = []
    for run in _TOKEN_RE.findall(normalize(text)):
        if _HAN_RE.match(run):
            for seg in han_segments(run):
                out.extend(seg)
                out.extend(a + b for a, b in zip(seg, seg[1:]))
        elif run not in STOPWORDS:
            out.append(_stem(run))
    return out


def content_terms(text: str) -> list[str]:
    """Distinct content terms of a text, in order, for coverage and support scores: Latin stems, Han
    bigrams (and one-character Han segments), numbers; single Latin letters are dropped."""
    seen: dict[str, None] = {}
    for run in _TOKEN_RE.findall(normalize(text)):
        if _HAN_RE.match(run):
            for seg in han_segments(run):
                for t in ([seg] if len(seg) == 1 else [a + b for a, b in zip(seg, seg[1:])]):
                    seen.setdefault(t, None)
        elif run not in STOPWORDS and (len(run) > 1 or run.isdigit()):
            seen.setdefault(_stem(run), None)
    return list(seen)


_WANTS_NUMBER = re.compile(r"\bhow (?:many|much|long|often|old|far|large|big|deep|high|fast)\b|"
                           r"\bwhat (?:year|percentage)\b|\bwhen\b|"
                           f"多少|多长|多深|多高|多远|多久|多大|几(?![乎何])[{HAN}]|哪一?年|何时", re.IGNORECASE)
_NUMBER = re.compile(r"[0-9０-９]|[两二三四五六七八九十百千万亿零]|\b(?:two|three|four|five|six|seven|eight|nine|ten|"
                     r"eleven|twelve|twenty|thirty|forty|fifty|hundred|thousand|million|billion|dozen|once|twice)\b",
                     re.IGNORECASE)


_ASKS_QUANTITY = re.compile(_WANTS_NUMBER.pattern.replace(r"\bwhen\b|", ""), re.IGNORECASE)


def asks_quantity(question: str) -> bool:
    """`wants_number` without the English "when", which as often asks for a condition ("when does it write to
    disk?") as for a date: such a question is answered only by a sentence that states a number."""
    return bool(_ASKS_QUANTITY.search(question))


def wants_number(question: str) -> bool:
    """Whether a question asks for a quantity or a date ("how many", "what year", "多少", "哪一年")."""
    return bool(_WANTS_NUMBER.search(question))


def has_number(text: str) -> bool:
    """Whether a text states a number, in digits, Chinese numerals or English number words (一 and "one"
    aside: they are in too many words)."""
    return bool(_NUMBER.search(text))


# "多少X" / "几X": what the number of a Chinese answer must count, its measure word or noun ("多少名工人": 名,
# "多少资金": 资金, "第几个": 个)
_ZH_COUNTED = re.compile(f"(?:多少|几)([{HAN}]{{1,2}})")
_ZH_NUMERAL = "[0-9./%一两二三四五六七八九十百千万亿零]"
_ZH_CLAUSE_END = "，。；：！？、,;:!?\\s"


def counted_unit(question: str) -> str | None:
    """What a Chinese "多少X" or "几X" question counts (the one or two characters after 多少/几: 名工 in
    多少名工人, 资金 in 多少资金), or None."""
    m = _ZH_COUNTED.search(normalize(question))
    return m.group(1) if m else None


def counts_unit(text: str, unit: str) -> bool:
    """Whether a Chinese text states a number of `unit` (from `counted_unit`): a number followed within three
    characters of its clause by the unit's first character ("12人", "100亿铢资金", "500多长住人口"), or a
    two-character unit followed as closely by a number ("人口约50万"). A sentence that counts 人 does not say
    how much 资金 was injected."""
    t = normalize(text)
    gap = f"[^{_ZH_CLAUSE_END}]{{0,3}}?"
    if re.search(f"{_ZH_NUMERAL}{gap}{re.escape(unit[0])}", t):
        return True
    return len(unit) == 2 and bool(re.search(f"{re.escape(unit)}{gap}{_ZH_NUMERAL}", t))


# a name from code: a dotted name (shutil.rmtree), snake_case, camelCase, or letters run into digits (b64decode)
_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+|\b[A-Za-z]\w*_\w*|\b[a-z]+[A-Z]\w*|\b[A-Za-z]+\d+[A-Za-z]\w*")


def names_code(text: str) -> bool:
    """Whether a text names something from code (a dotted name, snake_case, camelCase, b64decode): a signature
    line such as "copy.deepcopy(x[, memo])" says what the description below it is about."""
    return bool(_IDENTIFIER.search(text))


def key_terms(question: str) -> list[list[str]]:
    """The units of a question that evidence must mention before it can answer it, each as the terms of which
    at least one must be found: every Chinese segment of three or more characters between function words (its
    bigrams; "京九铁路全长" has 京九, 九铁, 铁路, 路全, 全长), and every part of a name from code (shutil.rmtree:
    shutil, rmtree). Plain English words and two-character Chinese words are left out: a paraphrase ("insert"
    for "adds", 野外 for 野生) must not make a question unanswerable."""
    units: list[list[str]] = []
    for run in _TOKEN_RE.findall(normalize(question)):
        if _HAN_RE.match(run):
            units += [[a + b for a, b in zip(seg, seg[1:])] for seg in han_segments(run) if len(seg) >= 3]
    for ident in _IDENTIFIER.findall(question):
        units += [[t] for t in dict.fromkeys(tokens(ident))]
    return units


_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*")


def question_names(question: str) -> list[str]:
    """The names in an English question: words with a digit ("bz2", "CO2") or a capital letter that does not
    open the sentence ("Android", "GzipFile"), in order; a library that never uses one may still use another
    word for it ("carbon dioxide"), which `answer.Answerer` checks."""
    out: dict[str, None] = {}
    for m in _WORD.finditer(question):
        w = m.group()
        opens = not question[:m.start()].strip() or re.search(r"[.!?:;]\s*$", question[:m.start()])
        if w.lower() in STOPWORDS or len(w) < 2:  # "I", "A"
            continue
        if any(c.isdigit() for c in w) or (not opens and any(c.isupper() for c in w)):
            out.setdefault(w, None)
    return list(out)


_MODULE = re.compile(r"\bthe ([A-Za-z_][\w.]*) (?:module|package)\b", re.IGNORECASE)


def named_modules(question: str) -> list[str]:
    """X in "the X module" / "the X package": a question about a module is answered from the document about it
    (a page whose title names X), not from another page that mentions X in passing."""
    return [m.group(1) for m in _MODULE.finditer(question)]


# "X的Y是谁/是什么/叫什么": Y, the thing asked about; "X是哪一年Y的": Y, the event dated; the quoted answer must
# name it
_ZH_FOCUS = re.compile(f"的([{HAN}]{{2,4}}?)(?:是谁|是什么|叫什么|有哪些|是哪)|(?:哪一年|哪年|何时)([{HAN}]{{2}})的?\\W*$")
def question_focus(question: str) -> list[str]:
    """The bigrams of what a Chinese question asks about: Y in "X的Y是谁/是什么" (会长 in 温州读书协会的会长是谁)
    and in "X是哪一年Y的" (成立 in 华广公司是哪一年成立的), or []."""
    m = _ZH_FOCUS.search(normalize(question))
    if not m:
        return []
    seg = m.group(1) or m.group(2)
    return [a + b for a, b in zip(seg, seg[1:])]


# "the default X of/for Y": X, the setting asked about ("wrapcol", "buffer size"), and the names from code in Y
_DEFAULT_OF = re.compile(r"\bdefault ((?:[\w.]+ ){0,2}?[\w.]+)(?: (?:of|for|in|used by) (?:the )?(.+?))?\W*$",
                         re.IGNORECASE)


def default_asked(question: str) -> tuple[list[str], list[str]] | None:
    """For an English "what is the default X of Y?" question, the words of X and the last part of each name
    from code in Y (`tempfile.NamedTemporaryFile`: NamedTemporaryFile, lowercased), or None. Its answer is a
    sentence that states X for Y: the default of another setting, or of X in another function, does not
    answer it."""
    if is_chinese(question):
        return None
    m = _DEFAULT_OF.search(question)
    if not m:
        return None
    setting = [w for w in re.findall(r"[a-z0-9_]+", m.group(1).lower()) if w not in STOPWORDS]
    owners = [ident.split(".")[-1].lower() for ident in _IDENTIFIER.findall(m.group(2) or "")]
    return (setting, owners) if setting else None


# a transliterated foreign name (祖宾·梅塔, 哈维尔·索拉纳): a quote that never names it is about someone else
_ZH_FOREIGN_NAME = re.compile(f"([{HAN}]{{2}})[·•・]([{HAN}]{{2}})")


def foreign_names(question: str) -> list[tuple[str, str]]:
    """The transliterated names of a Chinese question, each as the two characters on either side of its dot
    (祖宾·梅塔: 祖宾, 梅塔; the question does not say where the name begins and ends, and either half names
    the person in a quote)."""
    return _ZH_FOREIGN_NAME.findall(normalize(question))


# ---- WordNet (Debian's wordnet-base, read directly) -------------------------------------------------------
WORDNET_DIR = Path(os.environ.get("ALIGNCHAT_WORDNET", "/usr/share/wordnet"))
WORDNET_POS = ("noun", "verb", "adj", "adv")
_WORDNET_FILE_POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
# WordNet's own detachment rules (morphy): "copies" -> "copy", "bits" -> "bit", "serializes" -> "serialize"
_WORDNET_DETACH = {"noun": (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
                            ("men", "man"), ("ies", "y")),
                   "verb": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
                            ("ing", "")),
                   "adj": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")), "adv": ()}
# the relations through which a document says a word another way: synonyms (the synset itself), the more
# general word (hypernym: "sunlight" -> "light") and derivations ("permission" -> "permit", "product" ->
# "produce"); more specific words (hyponyms) drift too far ("permission" -> "pass", "path" -> "steps")
_WORDNET_RELATIONS = frozenset({"@", "@i", "+"})


@functools.lru_cache(maxsize=None)
def _wordnet_index(pos: str) -> dict[str, tuple[int, ...]]:
    """lemma -> the byte offsets of its synsets in data.`pos`, most frequent sense first; {} without WordNet."""
    path = WORDNET_DIR / f"index.{pos}"
    if not path.is_file():
        return {}
    index: dict[str, tuple[int, ...]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            if line.startswith(" "):  # the licence header
                continue
            parts = line.split()
            n_synsets, n_ptrs = int(parts[2]), int(parts[3])
            index[parts[0]] = tuple(int(x) for x in parts[4 + n_ptrs + 2:4 + n_ptrs + 2 + n_synsets])
    return index


@functools.lru_cache(maxsize=None)
def _wordnet_exceptions(pos: str) -> dict[str, tuple[str, ...]]:
    """Irregular forms -> their lemmas ("made" -> "make"), from `pos`.exc."""
    path = WORDNET_DIR / f"{pos}.exc"
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, ...]] = {}
    with open(path, encoding="latin-1") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = out.get(parts[0], ()) + tuple(parts[1:])
    return out


def wordnet_available() -> bool:
    return bool(_wordnet_index("noun"))


def wordnet_lemmas(word: str, pos: str) -> list[str]:
    """The WordNet lemmas of `pos` that an English word is a form of ("bytes" -> ["byte"]); [] without WordNet."""
    w = word.lower().replace(" ", "_")
    index = _wordnet_index(pos)
    found = [w] + list(_wordnet_exceptions(pos).get(w, ()))
    found += [w[:len(w) - len(a)] + b for a, b in _WORDNET_DETACH[pos] if w.endswith(a) and len(w) > len(a)]
    return [x for x in dict.fromkeys(found) if x in index]


@functools.lru_cache(maxsize=4096)
def _wordnet_synset(pos: str, offset: int) -> tuple[tuple[str, ...], tuple[tuple[str, int, str, int, int], ...]]:
    """The words of a synset and its pointers (symbol, offset, pos, source word, target word; 0: the whole
    synset)."""
    with open(WORDNET_DIR / f"data.{pos}", "rb") as f:
        f.seek(offset)
        fields = f.readline().decode("latin-1").split(" | ")[0].split()
    n = int(fields[3], 16)
    words = tuple(re.sub(r"\(.*\)$", "", fields[4 + 2 * i]) for i in range(n))  # as WordNet writes them: "DNA"
    at = 4 + 2 * n
    pointers = []
    for j in range(int(fields[at])):
        sym, off, p, st = fields[at + 1 + 4 * j:at + 5 + 4 * j]
        pointers.append((sym, int(off), _WORDNET_FILE_POS[p], int(st[:2], 16), int(st[2:], 16)))
    return words, tuple(pointers)


def wordnet_only_noun(word: str) -> bool:
    """Whether WordNet knows an English word only as a noun ("permission", "path", "bytes"; not "place", which is
    also a verb, nor "often"): such a word names a thing, which a text either mentions or does not."""
    return bool(wordnet_lemmas(word, "noun")) and not any(wordnet_lemmas(word, pos) for pos in WORDNET_POS[1:])


def wordnet_forms(word: str) -> set[str]:
    """Other words for an English word, over all its senses: its synonyms, its hypernyms and its derivations
    (`_WORDNET_RELATIONS`), as plain phrases ("carbon dioxide"); set() without WordNet."""
    out: set[str] = set()
    for pos in WORDNET_POS:
        for lemma in wordnet_lemmas(word, pos):
            for offset in _wordnet_index(pos)[lemma]:
                words, pointers = _wordnet_synset(pos, offset)
                words = tuple(w.lower() for w in words)
                out.update(words)
                for sym, off, p, source, target in pointers:
                    if sym not in _WORDNET_RELATIONS or (source and words[source - 1] != lemma):
                        continue
                    their = tuple(w.lower() for w in _wordnet_synset(p, off)[0])
                    out.update([their[target - 1]] if target else their)
    out.discard(word.lower())
    return {w.replace("_", " ") for w in out}


def wordnet_synonyms(phrase: str) -> list[str]:
    """The synonyms of an English noun (phrase) that WordNet knows in exactly one sense, so that a synonym
    never drifts to another meaning ("reinforcement learning" has one sense; "bank" has ten), as WordNet writes
    them; [] for other words and without WordNet."""
    lemma = phrase.lower().replace(" ", "_")
    offsets = _wordnet_index("noun").get(lemma)
    if not offsets or len(offsets) != 1:
        return []
    return [w.replace("_", " ") for w in _wordnet_synset("noun", offsets[0])[0] if w.lower() != lemma]


def numbers(text: str) -> set[str]:
    """Numbers written in a text (years, counts, percentages), for the verifier's number check."""
    return {n.replace(",", "") for n in re.findall(r"\d+(?:[.,]\d+)*", normalize(text))
            if not re.fullmatch(r"\d", n)}


_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|et al|etc|vs|cf|fig|figs|eq|no|vol|pp|p|dr|mr|mrs|ms|prof|st|jr|sr)"
                     r"|\b[A-Z])\.$", re.IGNORECASE)
# A run of full stops is tried from its first stop only (the lookbehind): tried from every stop of a long run,
# the backtracking `\.+` made a text of dots cost time quadratic in its length.
_SENT_END = re.compile(r"[。！？；!?]+[”’\"')）]*|(?<!\.)\.+[”’\"')）]*(?=\s|$)|\n\s*\n")
_CITATION_TAIL = re.compile(r"(?:\s*\[\s*\d+(?:\s*[,，;]\s*\d+)*\s*\])+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text`, trimmed of surrounding whitespace."""
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENT_END.finditer(text):
        end = m.end()
        if m.group().startswith(".") and _ABBREV.search(text[max(0, m.start() - 8):m.start() + 1]):
            continue
        # a citation marker right after the full stop ("... retrieval. [2]") belongs to this sentence
        tail = _CITATION_TAIL.match(text, end)  # matched in place: slicing the rest of the text per sentence
        if tail:                                 # was quadratic
            end = tail.end()
        spans.append((start, end))
        start = end
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            out.append((s, e))
    return out


def is_statement(sentence: str) -> bool:
    """Whether a sentence is a statement worth quoting: at least three content terms and end punctuation (a
    heading, a title line or a signature such as "shlex.quote(s)" is not)."""
    s = sentence.strip()
    return len(content_terms(s)) >= 3 and bool(re.search(r"[.!?。！？;；]\W*$", s)) and not s.startswith("#")


def is_heading(line: str) -> bool:
    """Whether a sentence span is a heading that the text below it is about: no statement, two or more content
    terms, short, and not a bracketed aside such as "（新华社发）"."""
    s = line.strip()
    return (not is_statement(s) and len(content_terms(s)) >= 2 and units(s) <= 30
            and not re.fullmatch(r"[(（\[].*[)）\]]", s))


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text)]


def units(text: str) -> int:
    """Length in units: Latin words plus Han characters (roughly tokens for both scripts)."""
    return len(_UNIT_RE.findall(text))


@dataclass
class Chunk:
    page: int | None  # 1-based page number for paged sources (PDF), else None
    char_start: int  # offsets into that page's (or the whole document's) extracted text
    char_end: int
    text: str
    role: str = "body"  # body | front | reference | caption (`structure.roles`): only body text is evidence


def _chunk_span(page: int | None, text: str, lo: int, hi: int, target: int, overlap_sentences: int,
                max_units: int, role: str) -> list[Chunk]:
    """Passages of whole sentences of text[lo:hi] (offsets into `text`)."""
    spans: list[tuple[int, int]] = []
    for s, e in sentence_spans(text[lo:hi]):
        s, e = s + lo, e + lo
        if units(text[s:e]) <= max_units:
            spans.append((s, e))
            continue
        pos = s
        while pos < e:  # split an over-long sentence into pieces of about `target` units
            count, cut = 0, pos
            for m in _UNIT_RE.finditer(text, pos, e):
                count += 1
                cut = m.end()
                if count >= target:
                    break
            else:
                cut = e
            spans.append((pos, cut))
            pos = cut
            while pos < e and text[pos].isspace():
                pos += 1
    chunks: list[Chunk] = []
    i = 0
    while i < len(spans):
        j, size = i, 0
        while j < len(spans) and (size == 0 or size + units(text[spans[j][0]:spans[j][1]]) <= target):
            size += units(text[spans[j][0]:spans[j][1]])
            j += 1
        start, end = spans[i][0], spans[j - 1][1]
        chunks.append(Chunk(page, start, end, text[start:end], role))
        if j >= len(spans):
            break
        i = max(i + 1, j - overlap_sentences)
    return chunks


def chunk_pages(pages: list[tuple[int | None, str]], target: int = 120, overlap_sentences: int = 1,
                max_units: int = 220, roles: dict | None = None) -> list[Chunk]:
    """Cut each page into passages of whole sentences, ~`target` units, overlapping by one sentence.

    Passages never cross a page boundary, so every passage has one page number a reader can open.
    A sentence longer than `max_units` (tables, run-on text) is cut on whitespace/characters.
    `roles` maps a page to its sorted non-body spans (start, end, role): each span (a reference entry, a
    caption, an author line) becomes passages of its own with that role, and body passages never include it.
    """
    chunks: list[Chunk] = []
    for page, text in pages:
        pos = 0
        for s, e, role in (roles or {}).get(page, []):
            if s > pos:
                chunks += _chunk_span(page, text, pos, s, target, overlap_sentences, max_units, "body")
            chunks += _chunk_span(page, text, s, e, target, 0, max_units, role)
            pos = max(pos, e)
        chunks += _chunk_span(page, text, pos, len(text), target, overlap_sentences, max_units, "body")
    return [c for c in chunks if c.text.strip()]
