"""Readers that turn the user's files into documents with bibliographic metadata and page texts.

Formats: PDF (pypdf, one text per page), BibTeX (bibtexparser) and RIS (rispy) files, whose records become
reference entries (their abstract, or failing that their title, is the searchable text), Markdown (YAML
front matter and the first heading give the metadata) and plain text.

Notable choices:
- A PDF without a text layer (a scan) is refused with a message that says to run OCR first, instead of
  being indexed as an empty document.
- A malformed BibTeX/RIS file is refused as a whole with the file and line of the bad record, so a half
  imported bibliography never looks complete.
- Every document carries two fingerprints for duplicate detection: the SHA-256 of the source bytes (or,
  for a record, of its DOI or normalised title and year) and the SHA-256 of its normalised text.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

PDF_SUFFIXES = {".pdf"}
BIBTEX_SUFFIXES = {".bib", ".bibtex"}
RIS_SUFFIXES = {".ris"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".text", ".rst", ""}
SUPPORTED = sorted(PDF_SUFFIXES | BIBTEX_SUFFIXES | RIS_SUFFIXES | MARKDOWN_SUFFIXES | TEXT_SUFFIXES - {""})

DOI_RE = re.compile(r"\b(10\.\d{4,9}/[^\s\"<>,;]+[^\s\"<>,;.)\]])", re.IGNORECASE)


@dataclass
class ParsedDocument:
    title: str
    kind: str  # pdf | bibtex | ris | markdown | text
    pages: list[tuple[int | None, str]]  # (1-based page or None, text)
    authors: list[str] = field(default_factory=list)
    year: int | None = None
    venue: str | None = None
    doi: str | None = None
    citekey: str | None = None
    source: str = ""  # file name the user added (no directories: paths can be private)
    source_sha256: str = ""
    text_sha256: str = ""
    meta: dict = field(default_factory=dict)

    def finish(self) -> "ParsedDocument":
        self.title = _clean(self.title) or "(untitled)"
        self.doi = normalize_doi(self.doi)
        if not self.text_sha256:
            joined = "\n".join(t for _, t in self.pages)
            self.text_sha256 = hashlib.sha256(re.sub(r"\s+", " ", joined).strip().lower().encode()).hexdigest()
        return self


def normalize_doi(doi: str | None) -> str | None:
    if not doi:
        return None
    doi = doi.strip()
    doi = re.sub(r"^(?:https?://(?:dx\.)?doi\.org/|doi:\s*)", "", doi, flags=re.IGNORECASE)
    return doi.lower() or None


def normalize_title(title: str) -> str:
    return re.sub(r"[\W_]+", " ", title.lower()).strip()


def _clean(s: str | None) -> str:
    """Drop BibTeX braces and LaTeX escapes a reader would not want to see; collapse whitespace."""
    if not s:
        return ""
    s = re.sub(r"\\[a-zA-Z]+\s*\{([^{}]*)\}", r"\1", s)  # \emph{x} -> x
    s = s.replace("\\&", "&").replace("\\%", "%").replace("~", " ").replace("{", "").replace("}", "")
    return re.sub(r"\s+", " ", s).strip()


def _year(value) -> int | None:
    m = re.search(r"(1[5-9]\d\d|20\d\d)", str(value or ""))
    return int(m.group(1)) if m else None


def _split_authors(value: str | None) -> list[str]:
    if not value:
        return []
    parts = re.split(r"\s+and\s+|;|；|、", _clean(value))
    return [p.strip() for p in parts if p.strip()]


def parse_path(path: str | Path, data: bytes | None = None, name: str | None = None) -> list[ParsedDocument]:
    """Read one file (or its uploaded bytes) into documents; a BibTeX/RIS file may hold many records."""
    path = Path(path)
    name = name or path.name
    if data is None:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        data = path.read_bytes()
    suffix = Path(name).suffix.lower()
    if data[:5] == b"%PDF-" or suffix in PDF_SUFFIXES:
        docs = [parse_pdf(data, name)]
    elif suffix in BIBTEX_SUFFIXES:
        docs = parse_bibtex(_decode(data, name), name)
    elif suffix in RIS_SUFFIXES:
        docs = parse_ris(_decode(data, name), name)
    elif suffix in MARKDOWN_SUFFIXES:
        docs = [parse_markdown(_decode(data, name), name)]
    elif suffix in TEXT_SUFFIXES:
        docs = [parse_text(_decode(data, name), name)]
    else:
        raise UserError(f"{name}: unsupported file type {suffix!r}; supported: {', '.join(SUPPORTED)}")
    file_hash = hashlib.sha256(data).hexdigest()
    for d in docs:
        if not d.source_sha256:
            d.source_sha256 = file_hash
        d.source = d.source or name
        d.finish()
    return docs


def _decode(data: bytes, name: str) -> str:
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    raise UserError(f"{name}: not UTF-8 or GB18030 text; convert it to UTF-8 and add it again")


def parse_pdf(data: bytes, name: str) -> ParsedDocument:
    import pypdf
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UserError(f"{name}: the PDF is password-protected; save an unprotected copy and add that")
        raw_pages = [p.extract_text() or "" for p in reader.pages]
        pages = [(i + 1, _tidy_pdf_text(t)) for i, t in enumerate(raw_pages)]
        info = reader.metadata or {}
    except UserError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{name}: not a readable PDF ({e})") from e
    if not pages:
        raise UserError(f"{name}: the PDF has no pages")
    if sum(len(t.strip()) for _, t in pages) < 20:
        raise UserError(f"{name}: the PDF has no text layer (it looks like a scanned image). Run OCR on it "
                        f"first (for example `ocrmypdf in.pdf out.pdf`) and add the OCR'd file")
    first = raw_pages[0]  # before line joining, so the first line is still the title line
    title = str(info.get("/Title") or "").strip()
    if not title or title.lower() in ("untitled", "microsoft word") or title.endswith((".doc", ".docx", ".pdf")):
        first_line = next((ln.strip() for ln in first.splitlines() if ln.strip()), "")
        title = first_line if 0 < len(first_line) <= 200 else Path(name).stem
    doi = info.get("/doi") or (DOI_RE.search(" ".join(t for _, t in pages[:2])) or [None, None])[1]
    return ParsedDocument(title=title, kind="pdf", pages=pages, authors=_split_authors(str(info.get("/Author") or "")),
                          year=_year(info.get("/Year") or info.get("/CreationDate")) if info.get("/Year") else None,
                          venue=str(info.get("/Subject") or "").strip() or None, doi=doi,
                          meta={"n_pages": len(pages)})


def _tidy_pdf_text(text: str) -> str:
    """Undo the PDF's line layout: keep headings and paragraph ends, join lines inside paragraphs."""
    lines = text.splitlines()
    lengths = sorted(len(ln.strip()) for ln in lines if ln.strip())
    typical = lengths[len(lengths) * 3 // 4] if lengths else 0
    out: list[str] = []
    for i, ln in enumerate(lines):
        ln = ln.strip()
        if not ln:
            out.append("\n\n")
            continue
        if out and not out[-1].endswith("\n"):
            prev = out[-1]
            if prev.endswith("-") and ln[:1].islower():
                out[-1] = prev[:-1]  # a word hyphenated across the line break
            else:
                out[-1] = prev + ("" if re.search(f"[\u4e00-\u9fff]$", prev) else " ")
        out.append(ln)
        # a short line without end punctuation is a heading; a short line with it ends a paragraph
        if len(ln) < 0.6 * typical:
            out.append("\n\n")
    text = "".join(out)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]*\n\n[ \t]*", "\n\n", text)).strip()


def _record_text(title: str, authors: list[str], year, venue, abstract: str | None, keywords) -> str:
    head = title.rstrip(".") + "."
    if authors:
        head += " " + ", ".join(authors) + "."
    if venue or year:
        head += " " + " ".join(str(x) for x in (venue, year) if x) + "."
    parts = [head]
    if abstract:
        parts.append(_clean(abstract))
    if keywords:
        parts.append("Keywords: " + (", ".join(keywords) if isinstance(keywords, list) else _clean(str(keywords))) + ".")
    return "\n\n".join(parts)


def _record_hash(doi: str | None, title: str, year) -> str:
    ident = normalize_doi(doi) or f"{normalize_title(title)}|{year or ''}"
    return hashlib.sha256(ident.encode()).hexdigest()


def parse_bibtex(text: str, name: str) -> list[ParsedDocument]:
    import bibtexparser

    logging.getLogger("bibtexparser").setLevel(logging.CRITICAL)
    lib = bibtexparser.parse_string(text)
    if lib.failed_blocks:
        bad = lib.failed_blocks[0]
        raise UserError(f"{name}:{bad.start_line + 1}: malformed BibTeX record ({len(lib.failed_blocks)} bad "
                        f"record(s) in the file); fix it and add the file again - nothing was imported")
    docs = []
    for e in lib.entries:
        f = {k.lower(): v.value if hasattr(v, "value") else v for k, v in e.fields_dict.items()}
        title = _clean(f.get("title"))
        if not title:
            raise UserError(f"{name}:{e.start_line + 1}: BibTeX record {e.key!r} has no title")
        authors = _split_authors(f.get("author") or f.get("editor"))
        year = _year(f.get("year") or f.get("date"))
        venue = _clean(f.get("journal") or f.get("booktitle") or f.get("publisher") or f.get("school")) or None
        body = _record_text(title, authors, year, venue, f.get("abstract"), f.get("keywords"))
        docs.append(ParsedDocument(title=title, kind="bibtex", pages=[(None, body)], authors=authors, year=year,
                                   venue=venue, doi=f.get("doi"), citekey=e.key,
                                   source_sha256=_record_hash(f.get("doi"), title, year),
                                   meta={"entry_type": e.entry_type, "url": f.get("url"),
                                         "has_abstract": bool(f.get("abstract"))}))
    if not docs:
        raise UserError(f"{name}: no BibTeX records found")
    return docs


def parse_ris(text: str, name: str) -> list[ParsedDocument]:
    import rispy

    try:
        records = rispy.loads(text)
    except Exception as e:  # rispy raises plain IOError/ValueError with its own line info
        raise UserError(f"{name}: malformed RIS file ({e}); nothing was imported") from e
    docs = []
    for i, r in enumerate(records, 1):
        title = _clean(r.get("title") or r.get("primary_title") or r.get("translated_title"))
        if not title:
            raise UserError(f"{name}: RIS record {i} has no title (TI/T1)")
        authors = list(r.get("authors") or r.get("first_authors") or [])
        year = _year(r.get("year") or r.get("publication_year") or r.get("date"))
        venue = r.get("journal_name") or r.get("secondary_title") or r.get("alternate_title3") or r.get("publisher")
        body = _record_text(title, authors, year, venue, r.get("abstract"), r.get("keywords"))
        docs.append(ParsedDocument(title=title, kind="ris", pages=[(None, body)], authors=authors, year=year,
                                   venue=venue, doi=r.get("doi"), citekey=r.get("id"),
                                   source_sha256=_record_hash(r.get("doi"), title, year),
                                   meta={"type": r.get("type_of_reference"), "url": (r.get("urls") or [None])[0],
                                         "has_abstract": bool(r.get("abstract"))}))
    if not docs:
        raise UserError(f"{name}: no RIS records found (each starts with 'TY  -' and ends with 'ER  -')")
    return docs


def parse_markdown(text: str, name: str) -> ParsedDocument:
    meta: dict = {}
    body = text
    m = re.match(r"---\s*\n(.*?)\n---\s*\n", text, re.DOTALL)
    if m:
        import yaml
        try:
            meta = yaml.safe_load(m.group(1)) or {}
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", 0) + 2
            raise UserError(f"{name}:{line}: bad YAML front matter ({e.__class__.__name__})") from e
        if not isinstance(meta, dict):
            meta = {}
        body = text[m.end():]
    heading = re.search(r"^#\s+(.+)$", body, re.MULTILINE)
    title = str(meta.get("title") or (heading.group(1) if heading else "") or _first_line(body) or Path(name).stem)
    authors = meta.get("authors") or meta.get("author") or []
    authors = authors if isinstance(authors, list) else _split_authors(str(authors))
    return ParsedDocument(title=title, kind="markdown", pages=[(None, body)], authors=[str(a) for a in authors],
                          year=_year(meta.get("year") or meta.get("date")), venue=meta.get("venue"),
                          doi=meta.get("doi") or _find_doi(body))


def _first_line(text: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= 200 else ""


def _find_doi(text: str) -> str | None:
    m = DOI_RE.search(text[:5000])
    return m.group(1) if m else None


def parse_text(text: str, name: str) -> ParsedDocument:
    title = _first_line(text) or Path(name).stem
    if len(title) > 120:
        title = Path(name).stem
    return ParsedDocument(title=title, kind="text", pages=[(None, text)], doi=_find_doi(text))
