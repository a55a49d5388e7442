"""The persistent library: documents and passages in SQLite, passage embeddings in a numpy file.

Layout of a library directory (default `$ALIGNCHAT_HOME/library`):

    library.sqlite     tables library_documents, library_passages, library_state (or the server's own
                       database file: every table is prefixed `library_`, so they sit beside the server's)
    embeddings.npy     float32 (rows, 384): row `emb_row` of each passage, unit length (all-MiniLM-L6-v2)

Notable choices:
- A document and all its passages are inserted in one SQLite transaction, so a crash never leaves half a
  document. The embeddings file is rewritten through a temporary file and a rename. If the process dies
  between the two, the next open finds passages whose `emb_row` is past the end of the array and embeds
  them again: ingestion resumes rather than corrupting the index.
- Every user has their own documents (`user_id`); the default user is "local". Retrieval only ever sees
  the asking user's passages.
- Duplicates are recognised by the source fingerprint, the text fingerprint or the DOI (per user).
- Passage ids are stable and human-readable: `<doc_id>:p<ordinal>`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fetch import alignchat_home
from .ingest import ParsedDocument, normalize_title, parse_path
from .text import chunk_pages

SCHEMA = """
CREATE TABLE IF NOT EXISTS library_documents (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL, authors TEXT NOT NULL,
    year INTEGER, venue TEXT, doi TEXT, citekey TEXT, source TEXT, source_sha256 TEXT, text_sha256 TEXT,
    added TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS library_documents_user ON library_documents(user_id);
CREATE TABLE IF NOT EXISTS library_passages (
    id TEXT PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES library_documents(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, ordinal INTEGER NOT NULL, page INTEGER, char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL, text TEXT NOT NULL, emb_row INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS library_passages_doc ON library_passages(doc_id);
CREATE INDEX IF NOT EXISTS library_passages_user ON library_passages(user_id);
CREATE TABLE IF NOT EXISTS library_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

DEFAULT_USER = "local"


def default_library_dir() -> Path:
    return alignchat_home() / "library"


@dataclass
class Document:
    id: str
    title: str
    kind: str
    authors: list[str]
    year: int | None
    venue: str | None
    doi: str | None
    citekey: str | None
    source: str | None
    added: str
    meta: dict = field(default_factory=dict)
    n_passages: int = 0

    def reference(self) -> str:
        """A reference-list line built only from stored metadata (never from model text)."""
        authors = self.authors
        who = ", ".join(authors[:3]) + (" et al." if len(authors) > 3 else "") if authors else ""
        bits = [b for b in (who, f"({self.year})" if self.year else "", self.title.rstrip(".") + ".") if b]
        if self.venue:
            bits.append(self.venue.rstrip(".") + ".")
        if self.doi:
            bits.append(f"https://doi.org/{self.doi}")
        elif not authors and self.source:
            bits.append(f"[{self.source}]")  # no bibliographic data: at least name the file
        return " ".join(bits)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Passage:
    id: str
    doc_id: str
    ordinal: int
    page: int | None
    char_start: int
    char_end: int
    text: str
    emb_row: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("emb_row")
        return d


@dataclass
class AddResult:
    path: str
    status: str  # added | duplicate | merged
    doc_id: str
    title: str
    n_passages: int = 0
    note: str = ""


def _doc_from_row(r: sqlite3.Row, n_passages: int = 0) -> Document:
    return Document(id=r["id"], title=r["title"], kind=r["kind"], authors=json.loads(r["authors"]), year=r["year"],
                    venue=r["venue"], doi=r["doi"], citekey=r["citekey"], source=r["source"], added=r["added"],
                    meta=json.loads(r["meta"] or "{}"), n_passages=n_passages)


def _passage_from_row(r: sqlite3.Row) -> Passage:
    return Passage(id=r["id"], doc_id=r["doc_id"], ordinal=r["ordinal"], page=r["page"], char_start=r["char_start"],
                   char_end=r["char_end"], text=r["text"], emb_row=r["emb_row"])


class Library:
    """One library directory (or a server database plus an index directory); many users inside it."""

    def __init__(self, root: str | os.PathLike | None = None, db_path: str | os.PathLike | None = None,
                 embedder=None, chunk_target: int = 120):
        self.root = Path(root) if root is not None else default_library_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path) if db_path is not None else self.root / "library.sqlite"
        self.emb_path = self.root / "embeddings.npy"
        self.chunk_target = chunk_target
        self._embedder = embedder
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        try:
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.db_path}: not a usable SQLite database ({e})") from e
        self._emb: np.ndarray | None = None
        self._retrievers: dict[str, object] = {}
        self._repair_embeddings()

    # ---- embeddings -------------------------------------------------------------------------------
    @property
    def embedder(self):
        if self._embedder is None:
            from ..embeddings import get_embedder
            self._embedder = get_embedder()
        return self._embedder

    def embeddings(self) -> np.ndarray:
        with self._lock:
            if self._emb is None:
                if self.emb_path.exists():
                    self._emb = np.load(self.emb_path)
                else:
                    self._emb = np.zeros((0, 384), dtype=np.float32)
            return self._emb

    def _save_embeddings(self, emb: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".embeddings.", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, emb)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.emb_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._emb = emb

    def _repair_embeddings(self) -> None:
        """Embed passages whose vectors were lost (a crash between the SQLite commit and the npy write)."""
        with self._lock:
            n = len(self.embeddings())
            rows = self._db.execute("SELECT * FROM library_passages WHERE emb_row >= ? ORDER BY emb_row",
                                    (n,)).fetchall()
            if not rows:
                return
            top = max(r["emb_row"] for r in rows) + 1
            vecs = self.embedder.embed([r["text"] for r in rows])
            emb = np.zeros((top, vecs.shape[1]), dtype=np.float32)
            emb[:n] = self.embeddings()
            for r, v in zip(rows, vecs):
                emb[r["emb_row"]] = v
            self._save_embeddings(emb)
            self._bump_version()

    # ---- state ------------------------------------------------------------------------------------
    def version(self) -> int:
        r = self._db.execute("SELECT value FROM library_state WHERE key='version'").fetchone()
        return int(r["value"]) if r else 0

    def _bump_version(self) -> None:
        with self._db:
            self._db.execute("INSERT INTO library_state(key, value) VALUES('version', '1') ON CONFLICT(key) "
                             "DO UPDATE SET value = CAST(value AS INTEGER) + 1")
        self._retrievers.clear()

    # ---- adding -----------------------------------------------------------------------------------
    def _find_duplicate(self, doc: ParsedDocument, user: str) -> sqlite3.Row | None:
        q = "SELECT * FROM library_documents WHERE user_id=? AND (source_sha256=? OR text_sha256=?"
        args: list = [user, doc.source_sha256, doc.text_sha256]
        if doc.doi:
            # the same DOI twice is a duplicate only within records or within full texts: a PDF whose DOI a
            # BibTeX record already has is that record's full text, and is merged instead
            q += " OR (doi=? AND (kind IN ('bibtex','ris')) = ?)"
            args += [doc.doi, doc.kind in ("bibtex", "ris")]
        return self._db.execute(q + ")", args).fetchone()

    def _matching_reference(self, doc: ParsedDocument, user: str) -> sqlite3.Row | None:
        """A BibTeX/RIS record describing this full text (same normalised title), whose metadata it inherits."""
        if doc.kind in ("bibtex", "ris"):
            return None
        want = normalize_title(doc.title)
        for r in self._db.execute("SELECT * FROM library_documents WHERE user_id=? AND kind IN ('bibtex','ris')",
                                  (user,)):
            if (doc.doi and r["doi"] == doc.doi) or (want and normalize_title(r["title"]) == want):
                return r
        return None

    def add_file(self, path: str | os.PathLike, user: str = DEFAULT_USER, data: bytes | None = None,
                 name: str | None = None) -> list[AddResult]:
        docs = parse_path(path, data=data, name=name)
        return [self.add_document(d, user) for d in docs]

    def add_document(self, doc: ParsedDocument, user: str = DEFAULT_USER) -> AddResult:
        with self._lock:
            dup = self._find_duplicate(doc, user)
            if dup is not None:
                return AddResult(doc.source, "duplicate", dup["id"], dup["title"],
                                 note=f"already in the library as {dup['id']} ({dup['source']})")
            status, note = "added", ""
            ref = self._matching_reference(doc, user)
            if ref is not None:  # the bibliography's metadata is better than what a PDF carries
                doc.authors = doc.authors or json.loads(ref["authors"])
                doc.year = doc.year or ref["year"]
                doc.venue = doc.venue or ref["venue"]
                doc.doi = doc.doi or ref["doi"]
                doc.citekey = doc.citekey or ref["citekey"]
                doc.title = ref["title"]
                doc.meta["reference_entry"] = ref["id"]
                status, note = "merged", f"metadata taken from reference entry {ref['id']}"
            doc_id = "doc-" + hashlib.sha256(f"{user}\0{doc.source_sha256}\0{doc.text_sha256}".encode()).hexdigest()[:10]
            chunks = chunk_pages(doc.pages, target=self.chunk_target)
            if not chunks:
                raise UserError(f"{doc.source}: no text to index")
            vecs = self.embedder.embed([c.text for c in chunks])
            emb = self.embeddings()
            base = len(emb)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with self._db:
                self._db.execute(
                    "INSERT INTO library_documents(id, user_id, kind, title, authors, year, venue, doi, citekey, source,"
                    " source_sha256, text_sha256, added, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (doc_id, user, doc.kind, doc.title, json.dumps(doc.authors, ensure_ascii=False), doc.year,
                     doc.venue, doc.doi, doc.citekey, doc.source, doc.source_sha256, doc.text_sha256, now,
                     json.dumps(doc.meta, ensure_ascii=False)))
                self._db.executemany(
                    "INSERT INTO library_passages(id, doc_id, user_id, ordinal, page, char_start, char_end, text, emb_row)"
                    " VALUES (?,?,?,?,?,?,?,?,?)",
                    [(f"{doc_id}:p{i}", doc_id, user, i, c.page, c.char_start, c.char_end, c.text, base + i)
                     for i, c in enumerate(chunks)])
            self._save_embeddings(np.concatenate([emb, vecs.astype(np.float32)]))
            self._bump_version()
            return AddResult(doc.source, status, doc_id, doc.title, len(chunks), note)

    def remove(self, doc_id: str, user: str = DEFAULT_USER) -> bool:
        """Delete a document and its passages (their embedding rows become unused)."""
        with self._lock, self._db:
            cur = self._db.execute("DELETE FROM library_documents WHERE id=? AND user_id=?", (doc_id, user))
        if cur.rowcount:
            self._bump_version()
        return bool(cur.rowcount)

    # ---- reading ----------------------------------------------------------------------------------
    def documents(self, user: str = DEFAULT_USER) -> list[Document]:
        rows = self._db.execute(
            "SELECT d.*, (SELECT COUNT(*) FROM library_passages p WHERE p.doc_id=d.id) AS n "
            "FROM library_documents d WHERE user_id=? ORDER BY added, id", (user,)).fetchall()
        return [_doc_from_row(r, r["n"]) for r in rows]

    def document(self, doc_id: str, user: str = DEFAULT_USER) -> Document | None:
        r = self._db.execute("SELECT * FROM library_documents WHERE id=? AND user_id=?", (doc_id, user)).fetchone()
        if r is None:
            return None
        n = self._db.execute("SELECT COUNT(*) FROM library_passages WHERE doc_id=?", (doc_id,)).fetchone()[0]
        return _doc_from_row(r, n)

    def passage(self, passage_id: str, user: str = DEFAULT_USER) -> Passage | None:
        r = self._db.execute("SELECT * FROM library_passages WHERE id=? AND user_id=?", (passage_id, user)).fetchone()
        return _passage_from_row(r) if r else None

    def passages(self, user: str = DEFAULT_USER, doc_id: str | None = None) -> list[Passage]:
        if doc_id is None:
            rows = self._db.execute("SELECT * FROM library_passages WHERE user_id=? ORDER BY doc_id, ordinal", (user,))
        else:
            rows = self._db.execute("SELECT * FROM library_passages WHERE user_id=? AND doc_id=? ORDER BY ordinal",
                                    (user, doc_id))
        return [_passage_from_row(r) for r in rows]

    def retriever(self, user: str = DEFAULT_USER):
        """The hybrid BM25 + dense retriever over this user's passages, rebuilt after any change."""
        from .retrieve import HybridRetriever
        with self._lock:
            key = f"{user}@{self.version()}"
            if key not in self._retrievers:
                self._retrievers = {k: v for k, v in self._retrievers.items() if not k.startswith(user + "@")}
                self._retrievers[key] = HybridRetriever(self, user)
            return self._retrievers[key]

    def close(self) -> None:
        self._db.close()
