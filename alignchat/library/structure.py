"""Document structure found at ingest: the reference section and its parsed entries, figure and table captions,
and the front matter (title, authors, affiliations, year, abstract, keywords) read from the text itself.

Notable choices:
- The reference section starts at a heading line of its own ("References", "Bibliography", "Works cited",
  "参考文献", optionally Markdown-marked or numbered) and runs to an appendix-like heading or the end; the
  last such heading wins, so a sentence that mentions "references" in the body never starts it.
- Entries are segmented first (a `[n]` or `n.` marker starts an entry in numbered and GB/T 7714 lists; in an
  unnumbered list each line that opens with "Surname, I." or with a Chinese name list starts one) and then
  each clearly delimited entry is read with one regular expression per style: GB/T 7714 (`Title[J]. Venue,
  2020, 3(2): 1-9.`, types J C M Z D R N S P A EB/OL), APA-like (`Author, A. (2020). Title. Venue, 3(2).`)
  and numbered IEEE-like (`A. Author, "Title," Venue, 2020.`), with a plain `Authors. Title. Venue, year.`
  fallback. No general grammar engine: the segmentation makes each entry short and regular.
- Every pattern runs in time linear in the text (no nested unbounded repetition), as documents are hostile.
- Captions are lines that open with "Figure 3", "Fig. 3", "Table 2", "图 3" or "表 2" and stay short.
- Spans (`roles`) tell the store which parts of a page are not evidence: `front` (author and affiliation
  lines), `reference` (the section, one span per entry) and `caption`. Everything else is `body`.
- Front matter ends at the first line of running text (a Chinese sentence end, or a long Western sentence): a
  news paragraph that names a 公司, a 学院 or a 图书馆 is evidence, not an affiliation line.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .text import HAN

YEAR_RE = re.compile(r"(?<!\d)(19[5-9]\d|20[0-4]\d)(?!\d)")
_REF_HEAD = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:[0-9]{1,2}\.?[ \t]*|[IVX]{1,4}\.[ \t]*)?(?:\*\*)?"
                       r"(references|reference list|bibliography|works cited|literature cited|参考文献|参 考 文 献)"
                       r"(?:\*\*)?[ \t]*[:：]?[ \t]*$", re.IGNORECASE | re.MULTILINE)
_END_HEAD = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:appendix|appendices|附录|作者简介|致谢|acknowledg(?:e)?ments?|"
                       r"author biograph(?:y|ies)|supplementary material)\b.{0,60}$", re.IGNORECASE | re.MULTILINE)
_NUM_MARK = re.compile(r"(?:^|(?<=\s))(?:\[(\d{1,4})\]|(\d{1,4})\.(?=\s+\S))[ \t]*", re.MULTILINE)
_APA_START = re.compile(r"^[ \t]*(?:[A-Z][A-Za-z'`\-]+(?: [A-Z][A-Za-z'`\-]+)?, (?:[A-Z]\.[ \-]?){1,3}|"
                        f"[{HAN}]{{2,4}}[,，、 ])")
CAPTION_RE = re.compile(r"^[ \t]*(?:\*\*)?(?:fig(?:ure)?\.?|table|tab\.|图|表)[ \t]*[0-9]{1,3}(?:[.\-][0-9]{1,2})?"
                        r"(?:\*\*)?(?:[ \t]*[.:：、|]|[ \t]+[A-Z\u4e00-\u9fff])", re.IGNORECASE)
CAPTION_MAX = 300  # characters: a longer "Table 2 shows ..." line is body text that names a table

GBT_TYPES = {"J": "journal article", "C": "conference paper", "M": "book", "Z": "other", "D": "thesis",
             "R": "report", "N": "newspaper article", "S": "standard", "P": "patent", "A": "book chapter",
             "G": "collection", "EB": "web page", "DB": "database", "CP": "software"}
_GBT = re.compile(r"^(?P<authors>[^\[\]]{0,400}?)[.．。][ \t]*(?P<title>[^\[\]]{1,500}?)[ \t]*"
                  r"\[(?P<type>[A-Z]{1,2})(?:/OL)?\][ \t]*[.．。/]{0,2}[ \t]*(?P<rest>.*)$", re.DOTALL)
_APA = re.compile(r"^(?P<authors>[^()]{1,600}?)[ \t]*\((?P<year>(?:19|20)\d\d)[a-z]?(?:,[^()]{0,40})?\)[.,]?[ \t]*"
                  r"(?P<title>[^.?!]{1,500}[.?!])[ \t]*(?P<rest>.*)$", re.DOTALL)
_QUOTED = re.compile(r"^(?P<authors>[^\"“”]{0,600}?),?[ \t]*[\"“](?P<title>[^\"“”]{1,500}?)[,.]?[\"”][,.]?[ \t]*"
                     r"(?P<rest>.*)$", re.DOTALL)
_PLAIN = re.compile(r"^(?P<authors>[^.]{1,400}?)\.[ \t]+(?P<title>[^.]{3,500}?)\.[ \t]+(?P<rest>.*)$", re.DOTALL)
_DOI = re.compile(r"\b(10\.\d{4,9}/[^\s\"<>,;]+[^\s\"<>,;.)\]])", re.IGNORECASE)
_INITIALS = re.compile(r"(?:[A-Z]\.?[ \-]?){1,3}")
_ET_AL = re.compile(r",?[ \t]*(?:et al\.?|等)[ \t]*$", re.IGNORECASE)


@dataclass
class Reference:
    """One parsed entry of a document's reference list."""
    raw: str
    style: str  # gbt7714 | apa | numbered | plain
    type: str  # journal article, conference paper, book, thesis, ... or "unknown"
    authors: list[str] = field(default_factory=list)
    title: str = ""
    venue: str | None = None
    year: int | None = None
    doi: str | None = None
    label: str | None = None  # the entry's number in the list ("1" for "[1]")

    def to_dict(self) -> dict:
        return asdict(self)


def reference_section(text: str) -> tuple[int, int] | None:
    """(start, end) of the reference list in `text` (after its heading), or None when it has none."""
    heads = list(_REF_HEAD.finditer(text))
    if not heads:
        return None
    head = heads[-1]
    end_m = _END_HEAD.search(text, head.end())
    end = end_m.start() if end_m else len(text)
    start = head.end()
    while start < end and text[start].isspace():
        start += 1
    return (start, end) if end > start else None


def heading_span(text: str) -> tuple[int, int] | None:
    """The span of the reference heading itself (for marking it as not evidence)."""
    heads = list(_REF_HEAD.finditer(text))
    return (heads[-1].start(), heads[-1].end()) if heads else None


def split_entries(text: str, base: int = 0) -> list[tuple[int, int, str | None]]:
    """(start, end, label) of each entry of a reference list, offsets from `base`."""
    marks = [m for m in _NUM_MARK.finditer(text)]
    bracketed = [m for m in marks if m.group(1)]
    chosen = bracketed if len(bracketed) >= 2 else ([m for m in marks if m.group(2)
                                                       and (m.start() == 0 or text[m.start() - 1] == "\n")]
                                                      if len(marks) >= 2 else [])
    out: list[tuple[int, int, str | None]] = []
    if len(chosen) >= 2:
        for i, m in enumerate(chosen):
            end = chosen[i + 1].start() if i + 1 < len(chosen) else len(text)
            s = m.end()
            if text[s:end].strip():
                out.append((base + s, base + _rstrip_at(text, s, end), m.group(1) or m.group(2)))
        return out
    # unnumbered (APA-like): a line opening with "Surname, I." or a Chinese name list starts an entry
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        if line.strip() and (_APA_START.match(line) or not starts):
            starts.append(pos)
        pos += len(line)
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        while s < end and text[s].isspace():
            s += 1
        if s < end:
            out.append((base + s, base + _rstrip_at(text, s, end), None))
    return out


def _rstrip_at(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _authors(value: str) -> list[str]:
    value = _ET_AL.sub("", value.strip().rstrip(".,，。 "))
    if not value:
        return []
    if re.search(f"[{HAN}]", value) and not re.search(r"[A-Za-z]{3}", value):
        parts = re.split(r"[,，、;；]\s*", value)
    elif ";" in value:
        parts = value.split(";")
    else:
        value = re.sub(r",?\s+(?:and|&)\s+", ", ", value)
        pieces = [p.strip() for p in value.split(",") if p.strip()]
        parts = []
        i = 0
        while i < len(pieces):  # APA "Surname, I. J." pairs up a surname with its initials
            p = pieces[i]
            if i + 1 < len(pieces) and _INITIALS.fullmatch(pieces[i + 1]) and not _INITIALS.fullmatch(p):
                parts.append(f"{p}, {pieces[i + 1]}")
                i += 2
                continue
            parts.append(p)
            i += 1
    return [re.sub(r"\s+", " ", p).strip(" .") for p in parts if p.strip(" .")][:50]


def _venue_year(rest: str) -> tuple[str | None, int | None]:
    years = YEAR_RE.findall(rest)
    year = int(years[0]) if years else None
    venue = re.split(r"[,，]|(?<=[a-z]{5})\.(?:\s|$)|\s\d{4}\b", _DOI.sub("", rest).strip(), maxsplit=1)[0]
    venue = re.sub(r"^(?:in[ \t]+|In:[ \t]*)", "", venue.strip(" ./;:"), flags=re.IGNORECASE).strip(" .;:")
    if not venue or YEAR_RE.fullmatch(venue) or len(venue) > 200:
        venue = None
    return venue, year


def _kind(rest: str, venue: str | None) -> str:
    low = f"{rest} {venue or ''}".lower()
    if re.search(r"\bproc\b|proceedings|conference|workshop|symposium|^in[ :]|会议", low):
        return "conference paper"
    if "arxiv" in low:
        return "preprint"
    if re.search(r"thesis|dissertation|学位论文", low):
        return "thesis"
    if re.search(r"\d+\s*\(\d+\)|vol\.|\bpp?\.|journal|\b\d+,\s*\d+[-–]\d+", rest.lower()):
        return "journal article"
    return "unknown"


def parse_reference(raw: str, label: str | None = None) -> Reference:
    """Read one reference-list entry (see the module notes for the styles)."""
    entry = re.sub(r"\s+", " ", raw).strip()[:2000]
    lab = re.match(r"(?:\[(\d{1,4})\]|(\d{1,4})\.)\s+", entry)  # an entry given with its "[6]" or "6." label
    if lab:
        label, entry = label or lab.group(1) or lab.group(2), entry[lab.end():]
    doi_m = _DOI.search(entry)
    doi = doi_m.group(1).lower() if doi_m else None
    m = _GBT.match(entry)
    if m:
        code = m.group("type")
        rest = m.group("rest")
        venue, year = _venue_year(rest)
        if code == "M" and venue and ":" in venue:  # "City: Publisher, 2019"
            venue = venue.split(":", 1)[1].strip() or venue
        return Reference(raw=entry, style="gbt7714", type=GBT_TYPES.get(code, "other"),
                         authors=_authors(m.group("authors")), title=m.group("title").strip(" .．"), venue=venue,
                         year=year, doi=doi, label=label)
    m = _APA.match(entry)
    if m:
        rest = m.group("rest")
        venue, _ = _venue_year(rest)
        return Reference(raw=entry, style="apa", type=_kind(rest, venue), authors=_authors(m.group("authors")),
                         title=m.group("title").strip(" .?!"), venue=venue, year=int(m.group("year")), doi=doi,
                         label=label)
    m = _QUOTED.match(entry)
    if m:
        rest = m.group("rest")
        venue, year = _venue_year(rest)
        return Reference(raw=entry, style="numbered" if label else "plain", type=_kind(rest, venue),
                         authors=_authors(m.group("authors")), title=m.group("title").strip(" ,."), venue=venue,
                         year=year, doi=doi, label=label)
    m = _PLAIN.match(entry)
    if m:
        rest = m.group("rest")
        venue, year = _venue_year(rest)
        return Reference(raw=entry, style="numbered" if label else "plain", type=_kind(rest, venue),
                         authors=_authors(m.group("authors")), title=m.group("title").strip(), venue=venue,
                         year=year, doi=doi, label=label)
    years = YEAR_RE.findall(entry)
    return Reference(raw=entry, style="numbered" if label else "plain", type="unknown", title=entry[:300],
                     year=int(years[0]) if years else None, doi=doi, label=label)


def parse_references(text: str) -> list[tuple[int, int, Reference]]:
    """The reference list of `text`, as (start, end, parsed entry); empty when there is no reference section."""
    sec = reference_section(text)
    if sec is None:
        return []
    s, e = sec
    return [(a, b, parse_reference(text[a:b], label)) for a, b, label in split_entries(text[s:e], base=s)]


def caption_spans(text: str, skip: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Spans of figure and table caption lines (outside `skip`, the reference section)."""
    out = []
    pos = 0
    for line in text.splitlines(keepends=True):
        start, end = pos, pos + len(line.rstrip("\r\n"))
        pos += len(line)
        if skip and skip[0] <= start < skip[1]:
            continue
        if end - start <= CAPTION_MAX and CAPTION_RE.match(line):
            out.append((start, end))
    return out


# ---- front matter -----------------------------------------------------------------------------------

_ABSTRACT = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*)?(摘[ \t]*要|abstract|summary)(?:\*\*)?[ \t]*[:：.]?[ \t]*",
                       re.IGNORECASE | re.MULTILINE)
_KEYWORDS = re.compile(r"^[ \t]*(?:\*\*)?(关键词|关键字|key[ \t]*words?|index terms)(?:\*\*)?[ \t]*[:：.—\-]?[ \t]*"
                       r"(?P<kw>.{1,400})$", re.IGNORECASE | re.MULTILINE)
_AFFIL = re.compile(r"大学|学院|研究所|研究院|研究中心|实验室|图书馆|公司|University|Institute|Department|Dept\.|"
                    r"Laborator|College|School|Academy|Inc\.|Ltd|Corporation|Hospital|Centre|Center|邮编|\b\d{6}\b",
                    re.IGNORECASE)
_MD_MARKS = re.compile(r"^[ \t]*#{1,6}[ \t]+|[ \t]+#+[ \t]*$|\*\*|__|(?<!\w)[*_`](?=\S)|(?<=\S)[*_`](?!\w)")
_ZH_NAME = re.compile(f"^[{HAN}]{{2,4}}$")
_EN_NAME = re.compile(r"^(?:[A-Z][a-zA-Z'\-]+|[A-Z]\.)(?:[ \t]+(?:[A-Z][a-zA-Z'\-]+|[A-Z]\.|van|de|von|der)){1,3}$")
_MARKERS = re.compile(r"[\d*†‡§¹²³⁴⁵⁶⁷⁸⁹⁰,，]+$")
_DATED = re.compile(r"^.{0,40}(?:收稿日期|发表日期|出版日期|网络出版|received|accepted|published|copyright|©)"
                    r".{0,80}$", re.IGNORECASE | re.MULTILINE)
_HAN_BREAK = re.compile(f"(?<=[{HAN}，。；：、])[ \t]*\n[ \t]*(?=[{HAN}])")
_NUMBERED = re.compile(r"\d{1,2}(?:\.\d{1,2})*\.?[ \t]+\S")
# a line of running text (a Chinese sentence end, or a long Western sentence) is body text, not front matter:
# the news paragraph that names a 公司 or a 学院 is no affiliation line, and nothing after it is front matter
_PROSE = re.compile(r"[。！？]|^(?=.{160})[^\n]*[a-z][.!?]$")
_HEADING = re.compile(r"^[ \t]*(?:#{1,6}[ \t]+|\d{1,2}(?:\.\d{1,2})*\.?[ \t]+[A-Z\u4e00-\u9fff]|[一二三四五六七八九十]+[、.])")


def clean_title(title: str) -> str:
    """A title without Markdown marks (#, **, _, `) and surrounding whitespace."""
    return re.sub(r"\s+", " ", _MD_MARKS.sub("", title or "")).strip()


def _name_list(line: str) -> list[str] | None:
    """The names on an author line ("张三¹, 李四²", "Jane Doe, John Smith and Ann Lee"), or None."""
    line = re.sub(r"^(?:作者|authors?|by)[ \t]*[:：]?[ \t]*", "", line.strip(), flags=re.IGNORECASE)
    line = re.sub(r"\([^)]{0,40}\)|（[^）]{0,40}）", "", line)
    if not line or len(line) > 300 or _AFFIL.search(line):
        return None
    parts = [p.strip() for p in re.split(r"[,，、;；]|\band\b|&|[ \t]{2,}", line) if p.strip()]
    if len(parts) == 1 and re.search(f"[{HAN}]", line) and " " in line:  # "张三 李四 王五"
        parts = line.split()
    names = []
    for p in parts:
        p = _MARKERS.sub("", p).strip(" *")
        p = re.sub(r"(?<=[A-Za-z])\d+$|^\d+", "", p).strip()
        if not p:
            continue
        if not (_ZH_NAME.match(p) or _EN_NAME.match(p)):
            return None
        names.append(p)
    return names or None


@dataclass
class FrontMatter:
    title: str = ""
    authors: list[str] = field(default_factory=list)
    affiliations: list[str] = field(default_factory=list)
    year: int | None = None
    abstract: str | None = None
    keywords: list[str] = field(default_factory=list)
    front_spans: list[tuple[int, int]] = field(default_factory=list)  # author and affiliation lines


def front_matter(text: str, max_lines: int = 12) -> FrontMatter:
    """Title, authors, affiliations, year, abstract and keywords from the first lines of a document's text."""
    fm = FrontMatter()
    head = text[:20000]
    lines: list[tuple[int, int, str]] = []
    pos = 0
    for ln in head.splitlines(keepends=True):
        s = ln.strip()
        if s:
            start = pos + ln.index(s[0])
            lines.append((start, start + len(s), s))
        pos += len(ln)
    if not lines:
        return fm
    abs_m = _ABSTRACT.search(head)
    kw_m = _KEYWORDS.search(head)
    stop = min([m.start() for m in (abs_m, kw_m) if m] or [len(head)])
    fm.title = clean_title(lines[0][2])
    for start, end, s in lines[1:max_lines]:
        names = None if _NUMBERED.match(s) else _name_list(s)  # "1 引言" is a heading, not an author named 引言
        if start >= stop or _HEADING.match(s) and not names and not _AFFIL.search(s) or _PROSE.search(s):
            break
        if names and not fm.authors:
            fm.authors = names
            fm.front_spans.append((start, end))
        elif _AFFIL.search(s) and len(s) <= 300:
            fm.affiliations.append(re.sub(r"^[\d*†‡（(]+[)）.]?\s*", "", s).strip())
            fm.front_spans.append((start, end))
        elif fm.authors:
            break
    if abs_m:
        body_start = abs_m.end()
        end = len(head)
        for m in (kw_m, re.compile(r"\n[ \t]*\n").search(head, body_start)):
            if m is not None and m.start() > body_start:
                end = min(end, m.start())
        # a line break inside Chinese text is no word space (a PDF's first page is read as laid out)
        abstract = re.sub(r"\s+", " ", _HAN_BREAK.sub("", head[body_start:end])).strip()
        fm.abstract = abstract[:4000] or None
    if kw_m:
        kws = re.split(r"[;；,，、]|[ \t]{2,}", kw_m.group("kw"))
        fm.keywords = [k.strip(" .。") for k in kws if k.strip(" .。")][:30]
    front = head[:stop] if stop < len(head) else "\n".join(s for _, _, s in lines[:max_lines])
    years = YEAR_RE.findall(front)
    if not years:  # "收稿日期：2023-03-01", "Received 3 March 2023" and the like, near the top
        dated = _DATED.search(head[:6000])
        years = YEAR_RE.findall(dated.group()) if dated else []
    fm.year = int(years[0]) if years else None
    return fm


def roles(text: str, front: bool = True) -> list[tuple[int, int, str]]:
    """Non-body spans of one page's text, sorted: front-matter lines, the reference heading and entries, captions."""
    spans: list[tuple[int, int, str]] = []
    sec = reference_section(text)
    if front:
        spans += [(s, e, "front") for s, e in front_matter(text).front_spans]
    if sec is not None:
        hs = heading_span(text)
        if hs:
            spans.append((hs[0], sec[0], "reference"))
        entries = split_entries(text[sec[0]:sec[1]], base=sec[0])
        spans += _with_labels(entries, sec[0])
        if not entries:
            spans.append((sec[0], sec[1], "reference"))
    spans += [(s, e, "caption") for s, e in caption_spans(text, skip=sec)]
    spans.sort()
    out: list[tuple[int, int, str]] = []
    for s, e, r in spans:  # drop overlaps (an author line is never also a caption)
        if out and s < out[-1][1]:
            continue
        out.append((s, e, r))
    return out


def _with_labels(entries: list[tuple[int, int, str | None]], start: int) -> list[tuple[int, int, str]]:
    """Reference spans of the entries, each widened back over its "[n]" label to where the previous one ended."""
    out = []
    for a, b, _ in entries:
        out.append((start, b, "reference"))
        start = b
    return out


def continued_entries(text: str) -> list[tuple[int, int, str | None]]:
    """Entries of a reference list carried over from the previous page (up to an appendix-like heading)."""
    end_m = _END_HEAD.search(text)
    return split_entries(text[:end_m.start() if end_m else len(text)])


def ends_reference_list(text: str) -> bool:
    """Whether the reference list on (or carried onto) this page ends on it."""
    sec = reference_section(text)
    return sec[1] < len(text) if sec else bool(_END_HEAD.search(text))


def document_roles(text: str, front: bool = False, continued: bool = False) -> list[tuple[int, int, str]]:
    """`roles` of one page; `continued`: the page opens inside a reference list begun on an earlier page."""
    if not continued:
        return roles(text, front=front)
    end_m = _END_HEAD.search(text)
    end = end_m.start() if end_m else len(text)
    spans = _with_labels(continued_entries(text), 0)
    spans += [(s, e, "caption") for s, e in caption_spans(text, skip=(0, end))]
    return sorted(spans)


__all__ = ["Reference", "FrontMatter", "parse_reference", "parse_references", "reference_section", "split_entries",
           "caption_spans", "front_matter", "clean_title", "roles", "document_roles", "continued_entries",
           "ends_reference_list", "CAPTION_RE"]
