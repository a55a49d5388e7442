"""Readers that turn the user's files into documents with bibliographic metadata and page texts.

Formats: PDF (pypdf, one text per page), BibTeX (bibtexparser) and RIS (rispy) files, whose records become
reference entries (their abstract, or failing that their title, is the searchable text), Markdown (YAML
front matter and the first heading give the metadata) and plain text.

Notable choices:
- A PDF without a text layer (a scan) is refused with a message that says to run OCR first, instead of
  being indexed as an empty document.
- A malformed BibTeX/RIS file is refused as a whole with the file and line of the bad record, so a half
  imported bibliography never looks complete.
- Full texts (PDF, Markdown, text) are read for their structure when they are finished (`structure`): the
  front matter fills the metadata the file itself lacks (a PDF's from its first page as laid out), the
  reference list is parsed, and `roles` marks what is not body text.
- A PDF's lines are joined back into paragraphs (`_tidy_pdf_text`): a short line ends its paragraph, and a
  line that opens with a front-matter label ("摘要：", "Keywords:") or a numbered affiliation starts one.
  Chinese lines sit on a character grid, so for them "short" is a tighter margin than for Latin lines.
- Every document carries two fingerprints for duplicate detection: the SHA-256 of the source bytes (or,
  for a record, of its DOI or normalised title and year) and the SHA-256 of its normalised text.
- Uploads are hostile input, so the work one upload (`limited=True`) may cause is bounded: `MAX_UPLOAD_CHARS`
  characters of text and `MAX_PDF_PAGES` pages (`UploadTooLarge`, which the server answers with 413), and
  pypdf's own limits (`pypdf.apply_configuration`) cap what one PDF stream may decompress to,
  `PDF_STREAM_LIMIT`, while the sum over the page contents is capped at `PDF_CONTENT_LIMIT`, so a
  decompression bomb costs a bounded amount of memory and is refused with a plain error. Files the local
  user adds with the CLI keep pypdf's defaults and no size limits. Any failure inside the PDF reader is an
  unreadable PDF (a UserError), never a crash: the reader is a parser of untrusted bytes.
- An encrypted PDF that opens with the empty password (owner-password-only protection) is read; any other,
  or one whose cipher this installation cannot decrypt (AES needs the `cryptography` package), is refused as
  a "password-protected PDF".
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .structure import (clean_title, continued_entries, document_roles, ends_reference_list, front_matter,
                        parse_reference, parse_references, reference_section)
from .text import HAN

PDF_SUFFIXES = {".pdf"}
BIBTEX_SUFFIXES = {".bib", ".bibtex"}
RIS_SUFFIXES = {".ris"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
TEXT_SUFFIXES = {".txt", ".text", ".rst", ""}
FULL_TEXT_KINDS = ("pdf", "markdown", "text")  # documents whose text has structure (not bibliography records)
SUPPORTED = sorted(PDF_SUFFIXES | BIBTEX_SUFFIXES | RIS_SUFFIXES | MARKDOWN_SUFFIXES | TEXT_SUFFIXES - {""})

MAX_UPLOAD_CHARS = 2_000_000  # characters of text one upload may carry
MAX_PDF_PAGES = 1_000
PDF_STREAM_LIMIT = 16 * 2 ** 20  # bytes one PDF stream may decompress to
PDF_CONTENT_LIMIT = 64 * 2 ** 20  # bytes all page content streams of one PDF may decompress to

DOI_RE = re.compile(r"\b(10\.\d{4,9}/[^\s\"<>,;]+[^\s\"<>,;.)\]])", re.IGNORECASE)


class UploadTooLarge(UserError):
    """A file over one of the per-upload limits (characters, pages, passages); the message names the limit."""


def _check_chars(n: int, name: str) -> None:
    if n > MAX_UPLOAD_CHARS:
        raise UploadTooLarge(f"{name}: more than {MAX_UPLOAD_CHARS:,} characters of text, the most one upload may "
                             f"carry; split the file and add the parts")


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
    # filled by `finish` for full texts (`structure`): page -> sorted non-body spans (start, end, role), and the
    # parsed reference list as (page, start, end, Reference)
    roles: dict = field(default_factory=dict)
    references: list = field(default_factory=list)
    front_text: str | None = None  # the first page as laid out (a PDF's, before its lines are joined)

    def finish(self) -> "ParsedDocument":
        # text out of a PDF may hold lone UTF-16 surrogates, which no database or JSON encoder accepts
        self.pages = [(p, _valid_unicode(t)) for p, t in self.pages]
        self.authors = [_valid_unicode(a) for a in self.authors]
        self.title, self.venue, self.doi, self.citekey = (
            _valid_unicode(x) if isinstance(x, str) else x for x in (self.title, self.venue, self.doi, self.citekey))
        self.meta = {k: _valid_unicode(v) if isinstance(v, str) else v for k, v in self.meta.items()}
        if self.kind in FULL_TEXT_KINDS:
            self._read_structure()
        self.title = clean_title(_clean(self.title)) or "(untitled)"
        self.doi = normalize_doi(self.doi)
        if not self.text_sha256:
            joined = "\n".join(t for _, t in self.pages)
            self.text_sha256 = hashlib.sha256(re.sub(r"\s+", " ", joined).strip().lower().encode()).hexdigest()
        return self

    def _read_structure(self) -> None:
        """Front matter into the metadata (what the file's own metadata lacks), reference entries and caption
        and author lines into `roles` and `references` (see `structure`)."""
        if not self.pages:
            return
        fm = front_matter(self.front_text or self.pages[0][1])
        self.title = self.title or fm.title
        self.authors = self.authors or fm.authors
        self.year = self.year or fm.year
        for key, value in (("affiliations", fm.affiliations), ("abstract", fm.abstract), ("keywords", fm.keywords)):
            if value and not self.meta.get(key):
                self.meta[key] = value
        in_refs = False
        for i, (page, text) in enumerate(self.pages):
            spans = document_roles(text, front=i == 0, continued=in_refs)
            entries = [(s, e) for s, e, r in spans if r == "reference"]
            if spans:
                self.roles[page] = spans
            refs = (parse_references(text) if not in_refs else
                    [(a, b, parse_reference(text[a:b], lab)) for a, b, lab in continued_entries(text)])
            self.references += [(page, a, b, ref) for a, b, ref in refs]
            # a reference list that runs to the end of its page goes on over the next pages (a PDF)
            in_refs = bool(entries) and not ends_reference_list(text)
        cited = {r.doi for *_, r in self.references if r.doi}
        if self.doi and normalize_doi(self.doi) in cited:  # the DOI of a cited work, not the document's own
            before = self.pages[0][1]
            sec = reference_section(before)
            own = [d for d in DOI_RE.findall(before[:sec[0] if sec else 5000][:5000]) if normalize_doi(d) not in cited]
            self.doi = own[0] if own else None


def _valid_unicode(s: str) -> str:
    """`s` with any lone surrogate replaced by U+FFFD."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


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


def parse_path(path: str | Path, data: bytes | None = None, name: str | None = None,
               limited: bool = False) -> list[ParsedDocument]:
    """Read one file (or its uploaded bytes) into documents; a BibTeX/RIS file may hold many records.

    `limited` (a client's upload) applies the per-upload limits of the module notes."""
    path = Path(path)
    name = name or path.name
    if data is None:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        data = path.read_bytes()
    suffix = Path(name).suffix.lower()
    if data[:5] == b"%PDF-" or suffix in PDF_SUFFIXES:
        docs = [parse_pdf(data, name, limited)]
    elif suffix in BIBTEX_SUFFIXES:
        docs = parse_bibtex(_decode(data, name, limited), name)
    elif suffix in RIS_SUFFIXES:
        docs = parse_ris(_decode(data, name, limited), name)
    elif suffix in MARKDOWN_SUFFIXES:
        docs = [parse_markdown(_decode(data, name, limited), name)]
    elif suffix in TEXT_SUFFIXES:
        docs = [parse_text(_decode(data, name, limited), name)]
    else:
        raise UserError(f"{name}: unsupported file type {suffix!r}; supported: {', '.join(SUPPORTED)}")
    file_hash = hashlib.sha256(data).hexdigest()
    for d in docs:
        if not d.source_sha256:
            d.source_sha256 = file_hash
        d.source = d.source or name
        d.finish()
    return docs


def _decode(data: bytes, name: str, limited: bool = False) -> str:
    if limited:  # both encodings take at most 4 bytes per character: refuse what must be over the limit
        _check_chars(len(data) // 4, name)
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        if limited:
            _check_chars(len(text), name)
        return text
    raise UserError(f"{name}: not UTF-8 or GB18030 text; convert it to UTF-8 and add it again")


def _pdf_limits() -> dict:
    """pypdf's resource limits for one upload (the `pypdf.Configuration` fields)."""
    return dict(zlib_maximum_output_length=PDF_STREAM_LIMIT, lzw_maximum_output_length=PDF_STREAM_LIMIT,
                run_length_maximum_output_length=PDF_STREAM_LIMIT, brotli_maximum_output_length=PDF_STREAM_LIMIT,
                jbig2_maximum_output_length=PDF_STREAM_LIMIT,
                array_based_stream_maximum_output_length=PDF_STREAM_LIMIT,
                stream_decoding_work_maximum_length=PDF_STREAM_LIMIT, image_maximum_buffer_size=PDF_STREAM_LIMIT,
                page_tree_maximum_entries=MAX_PDF_PAGES * 10)


def _content_bytes(page) -> int:
    """Decompressed size of a page's content streams (pypdf keeps the decoded data for text extraction)."""
    from pypdf.generic import ArrayObject
    contents = page.get("/Contents")
    if contents is None:
        return 0
    obj = contents.get_object()
    streams = list(obj) if isinstance(obj, ArrayObject) else [obj]
    return sum(len(s.get_object().get_data()) for s in streams if hasattr(s.get_object(), "get_data"))


def parse_pdf(data: bytes, name: str, limited: bool = False) -> ParsedDocument:
    import pypdf
    from pypdf import get_configuration
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    protected = (f"{name}: password-protected PDF; the library cannot read it. Save an unprotected copy "
                 f"(print to PDF, or `qpdf --decrypt`) and add that")
    try:
        with pypdf.apply_configuration(**(_pdf_limits() if limited else {})):
            reader = pypdf.PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not reader.decrypt(""):
                raise UserError(protected)
            n_pages = len(reader.pages)
            if limited and n_pages > MAX_PDF_PAGES:
                raise UploadTooLarge(f"{name}: {n_pages:,} pages; the library reads at most {MAX_PDF_PAGES:,} "
                                     f"pages per PDF. Split the file and add the parts")
            raw_pages: list[str] = []
            content = chars = 0
            for page in reader.pages:
                content += _content_bytes(page) if limited else 0
                if content > PDF_CONTENT_LIMIT:
                    raise UserError(f"{name}: the PDF's pages decompress to more than "
                                    f"{PDF_CONTENT_LIMIT // 2 ** 20} MiB, the most the library reads from one "
                                    f"PDF; it is refused (a decompression bomb, or not a text document)")
                text = page.extract_text() or ""
                chars += len(text)
                if limited:
                    _check_chars(chars, name)
                raw_pages.append(text)
            info = reader.metadata or {}
            title_meta = str(info.get("/Title") or "").strip()
            author_meta = str(info.get("/Author") or "")
            year_meta = info.get("/Year")
            subject_meta = str(info.get("/Subject") or "").strip()
            doi_meta = info.get("/doi")
    except UserError:
        raise
    except (FileNotDecryptedError, DependencyError) as e:  # DependencyError: AES without `cryptography`
        raise UserError(protected) from e
    except LimitReachedError as e:
        cap = PDF_STREAM_LIMIT if limited else get_configuration().zlib_maximum_output_length
        raise UserError(f"{name}: a stream in the PDF decompresses to more than {cap // 2 ** 20} MiB "
                        f"(or is otherwise over the reader's limits), the most the library reads; it is refused "
                        f"(a decompression bomb, or not a text document)") from e
    except RecursionError as e:
        raise UserError(f"{name}: not a readable PDF (its objects nest too deeply)") from e
    except Exception as e:  # noqa: BLE001 - any failure of the parser on these bytes means an unreadable PDF
        raise UserError(f"{name}: not a readable PDF ({type(e).__name__})") from e
    pages = [(i + 1, _tidy_pdf_text(t)) for i, t in enumerate(raw_pages)]
    if not pages:
        raise UserError(f"{name}: the PDF has no pages")
    if sum(len(t.strip()) for _, t in pages) < 20:
        raise UserError(f"{name}: the PDF has no text layer (it looks like a scanned image). Run OCR on it "
                        f"first (for example `ocrmypdf in.pdf out.pdf`) and add the OCR'd file")
    first = raw_pages[0]  # before line joining, so the first line is still the title line
    title = title_meta
    if not title or title.lower() in ("untitled", "microsoft word") or title.endswith((".doc", ".docx", ".pdf")):
        first_line = next((ln.strip() for ln in first.splitlines() if ln.strip()), "")
        title = first_line if 0 < len(first_line) <= 200 else Path(name).stem
    doi = doi_meta or (DOI_RE.search(" ".join(t for _, t in pages[:2])) or [None, None])[1]
    return ParsedDocument(title=title, kind="pdf", pages=pages, authors=_split_authors(author_meta),
                          year=_year(year_meta) if year_meta else None, venue=subject_meta or None,
                          doi=str(doi) if doi else None, meta={"n_pages": len(pages)}, front_text=first)


_HAN_CHAR = re.compile(f"[{HAN}]")
_OPENS_BLOCK = re.compile(r"(?:摘[ \t]*要|关键词|关键字|abstract|key[ \t]*words?|index terms|收稿日期)[ \t]*[:：]|"
                          f"\\d{{1,2}}\\.[ \t]*[{HAN}]", re.IGNORECASE)


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
        if out and not out[-1].endswith("\n") and _OPENS_BLOCK.match(ln):
            out.append("\n\n")  # "摘要：", "Keywords:", "2. 上海图书馆..." open a block of their own
        if out and not out[-1].endswith("\n"):
            prev = out[-1]
            if prev.endswith("-") and ln[:1].islower():
                out[-1] = prev[:-1]  # a word hyphenated across the line break
            else:
                out[-1] = prev + ("" if re.search("[\u4e00-\u9fff]$", prev) else " ")
        out.append(ln)
        # a short line without end punctuation is a heading; a short line with it ends a paragraph. Chinese
        # lines are set on a grid, so every full line has the same number of characters: a shorter one ends
        # its paragraph (proportional Latin lines vary too much for so tight a margin).
        han = len(_HAN_CHAR.findall(ln))
        if len(ln) < (0.85 if han * 2 > len(ln) else 0.6) * typical:
            out.append("\n\n")
    text = "".join(out)
    # blanks around a paragraph break are matched from the first blank of a run only (linear time)
    return re.sub(r"\n{3,}", "\n\n", re.sub(r"(?<![ \t])[ \t]*\n\n[ \t]*", "\n\n", text)).strip()


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
    try:
        lib = bibtexparser.parse_string(text)
    except Exception as e:  # noqa: BLE001 - the parser's own failure on these bytes: a malformed file
        raise UserError(f"{name}: malformed BibTeX file ({type(e).__name__}); nothing was imported") from e
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
        except RecursionError as e:
            raise UserError(f"{name}: bad YAML front matter (nested too deeply)") from e
        if not isinstance(meta, dict):
            meta = {}
        # only plain values are metadata: str() of an aliased YAML structure can be exponentially long
        listed = meta.get("authors") or meta.get("author")
        meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, dt.date)) and not isinstance(v, bool)}
        if isinstance(listed, list):
            meta["authors"] = [a for a in listed if isinstance(a, str)]
        body = text[m.end():]
    heading = re.search(r"^#\s+(.+)$", body, re.MULTILINE)
    title = str(meta.get("title") or (heading.group(1) if heading else "") or _first_line(body) or Path(name).stem)
    authors = meta.get("authors") or meta.get("author") or []
    authors = authors if isinstance(authors, list) else _split_authors(str(authors))
    venue, doi = meta.get("venue"), meta.get("doi")
    return ParsedDocument(title=title, kind="markdown", pages=[(None, body)], authors=[str(a) for a in authors],
                          year=_year(meta.get("year") or meta.get("date")), venue=str(venue) if venue else None,
                          doi=str(doi) if doi else _find_doi(body))


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
