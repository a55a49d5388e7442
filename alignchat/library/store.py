"""The persistent library: documents and passages in SQLite, passage embeddings in a numpy file.

Layout of a library directory (default `$ALIGNCHAT_HOME/library`; 0700, every file in it 0600):

    library.sqlite     tables library_documents, library_passages, library_references, library_state (or
                       the server's own database file: every table is prefixed `library_`, so they sit
                       beside the server's)
    embeddings.npy     float32 (rows, 384): row `emb_row` of each passage, unit length (all-MiniLM-L6-v2)
    .lock              advisory lock (flock) held while the index is written

Notable choices:
- A file's documents and all their passages are inserted in one SQLite transaction, so a crash never leaves
  half a document. The embeddings file is rewritten through an owner-only temporary file, fsync and a
  rename, *before* that transaction commits, so whoever can see a passage can also see its vector. A crash
  in between leaves vectors no passage refers to, which the next open zeroes; passages whose `emb_row` is
  past the end of the array (libraries written by older versions) are embedded again on open.
- Every owner has their own documents (`user_id`). Outside the server the owner is a name (default
  "local"); the server's users are keyed by their account id, `server_user_key(id)` = "user <id>" (a
  space, which no account name has, so a key never collides with a name): a user created again under a
  deleted user's name is a new owner. `adopt_server_users` moves documents keyed by account name (written
  by older versions or by the CLI) to the id of the account of that name, when it was added after that
  account was created, and deletes what belongs to deleted accounts. `forget_server_user` (called when an
  account is deleted) deletes an owner's rows and zeroes their vectors; deleted rows are overwritten in
  the database (`secure_delete`).
- Writes lock per owner: the slow part of adding a file (chunking, embedding) holds only the owner's
  lock; the shared index is locked (in-process lock plus `flock`, so the CLI and the server can share a
  library) only to append the finished vectors and commit. Reading takes no lock: each thread has its own
  SQLite connection and the in-memory vectors are reloaded when the library's version changes.
- A client's upload (`add_file(..., limited=True)`) is bounded: `MAX_UPLOAD_PASSAGES` passages in all
  (`UploadTooLarge`), besides the readers' limits in `ingest`.
- Retrieval only ever sees the asking owner's passages.
- Duplicates are recognised by the source fingerprint, the text fingerprint or the DOI (per owner).
- Passage ids are stable and human-readable: `<doc_id>:p<ordinal>`.
- Every passage has a role (`structure.roles`): only `body` passages are evidence (`evidence_passages`, the
  retriever); `reference` entries, `caption`s and `front` (author, affiliation) lines are kept so a reader can
  open them. A document's parsed reference list is in `library_references`; the citation graph
  (`citation_graph`) links an entry to a library document by DOI or normalised title when asked, so it is
  never stale after an addition or removal.
- The schema is versioned in `library_state` ('schema', `SCHEMA_VERSION`); a library of an older schema is
  migrated when opened (`_migrate`): schema 1 -> 2 adds the roles and references to documents already there
  without re-embedding them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..errors import UserError
from ..fetch import alignchat_home, create_private_file, restrict_mode
from .ingest import ParsedDocument, UploadTooLarge, normalize_title, parse_path
from .text import Chunk, chunk_pages

try:
    import fcntl
except ImportError:  # not POSIX: the in-process lock still serialises this process's writers
    fcntl = None

log = logging.getLogger("alignchat.library")

SCHEMA = """
CREATE TABLE IF NOT EXISTS library_documents (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL, authors TEXT NOT NULL,
    year INTEGER, venue TEXT, doi TEXT, citekey TEXT, source TEXT, source_sha256 TEXT, text_sha256 TEXT,
    added TEXT NOT NULL, meta TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS library_documents_user ON library_documents(user_id);
CREATE TABLE IF NOT EXISTS library_passages (
    id TEXT PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES library_documents(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, ordinal INTEGER NOT NULL, page INTEGER, char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL, text TEXT NOT NULL, emb_row INTEGER NOT NULL, role TEXT NOT NULL DEFAULT 'body');
CREATE INDEX IF NOT EXISTS library_passages_doc ON library_passages(doc_id);
CREATE INDEX IF NOT EXISTS library_passages_user ON library_passages(user_id);
CREATE TABLE IF NOT EXISTS library_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS library_references (
    id TEXT PRIMARY KEY, doc_id TEXT NOT NULL REFERENCES library_documents(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL, ordinal INTEGER NOT NULL, passage_id TEXT, label TEXT, style TEXT NOT NULL,
    type TEXT NOT NULL, authors TEXT NOT NULL, title TEXT NOT NULL, venue TEXT, year INTEGER, doi TEXT,
    norm_title TEXT NOT NULL, raw TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS library_references_doc ON library_references(doc_id);
CREATE INDEX IF NOT EXISTS library_references_user ON library_references(user_id);
"""
SCHEMA_VERSION = 2  # library_state 'schema': 1 = no passage roles or references (before), 2 = both
EVIDENCE_ROLE = "body"  # passages of other roles (front, reference, caption) are never evidence

DEFAULT_USER = "local"
MAX_UPLOAD_PASSAGES = 3_000  # passages one upload may add (each is embedded: the costly part)
EMBED_BATCH = 64  # passages embedded between progress reports
_SERVER_KEY = re.compile(r"user \d+")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def default_library_dir() -> Path:
    return alignchat_home() / "library"


def server_user_key(user_id: int) -> str:
    """The owner key of the server's account `user_id` (see the module notes)."""
    return f"user {int(user_id)}"


def is_server_key(owner: str) -> bool:
    return bool(_SERVER_KEY.fullmatch(owner))


def server_library_paths(db_url: str) -> tuple[Path, Path | None]:
    """(index directory, SQLite file) of the library of the server whose database is `db_url`.

    A server on a SQLite file keeps the library's tables in that file and its index in `library/` beside it;
    any other server (PostgreSQL, in-memory SQLite) uses $ALIGNCHAT_HOME/library with its own library.sqlite
    (the second element is then None)."""
    from sqlalchemy.engine import make_url
    try:
        url = make_url(db_url)
    except Exception:  # noqa: BLE001 - not a URL the store would open either: the default library
        return default_library_dir(), None
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database).expanduser()
        return path.parent / "library", path
    return default_library_dir(), None


def forget_server_user(store, user_id: int) -> int:
    """Delete everything the library keeps for the server's account `user_id` (after the account is deleted).

    `store` is the server's `serve.store.Store`. Opens nothing that does not exist yet; returns the number of
    documents deleted."""
    root, db_path = server_library_paths(store.url)
    db = db_path if db_path is not None else root / "library.sqlite"
    if not db.is_file():
        return 0
    try:
        probe = sqlite3.connect(db, timeout=30)
        try:
            has_tables = probe.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                       "name='library_documents'").fetchone() is not None
        finally:
            probe.close()
    except sqlite3.Error as e:
        raise UserError(f"{db}: cannot read the library to delete the user's documents ({e})") from e
    if not has_tables:
        return 0
    lib = Library(root, db_path=db_path, repair=False)
    try:
        return lib.delete_owner(server_user_key(user_id))
    finally:
        lib.close()


def _private_dir(path: Path) -> None:
    """Create `path` (0700) or tighten it to 0700 if it grants group or others anything."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    restrict_mode(path, 0o700)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


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
    role: str = EVIDENCE_ROLE  # body | front | reference | caption

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
                   char_end=r["char_end"], text=r["text"], emb_row=r["emb_row"], role=r["role"])


class Library:
    """One library directory (or a server database plus an index directory); many owners inside it."""

    def __init__(self, root: str | os.PathLike | None = None, db_path: str | os.PathLike | None = None,
                 embedder=None, chunk_target: int = 120, repair: bool = True):
        self.root = Path(root) if root is not None else default_library_dir()
        _private_dir(self.root)
        own_db = db_path is None
        self.db_path = Path(db_path) if db_path is not None else self.root / "library.sqlite"
        # SQLite gives its journal files the database file's mode; a file that exists already is only
        # tightened when it is the library's own (a server's database belongs to the server's store)
        create_private_file(self.db_path, tighten=own_db)
        self.emb_path = self.root / "embeddings.npy"
        self.lock_path = self.root / ".lock"
        self.chunk_target = chunk_target
        self._embedder = embedder
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._write_lock = threading.Lock()  # this process's writer of the shared index (with the flock)
        self._owner_locks: dict[str, threading.Lock] = {}
        self._owner_locks_lock = threading.Lock()
        self._emb: np.ndarray | None = None
        self._emb_version: int | None = None
        self._emb_lock = threading.Lock()
        self._retrievers: dict[tuple[str, int], object] = {}
        self._retrievers_lock = threading.Lock()
        try:
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.db_path}: not a usable SQLite database ({e})") from e
        if repair:
            self._repair_embeddings()

    # ---- schema ------------------------------------------------------------------------------------
    def _migrate(self) -> None:
        """Create the tables, or bring a library written by an older version up to `SCHEMA_VERSION`."""
        conn = self._db
        has_passages = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                    "name='library_passages'").fetchone() is not None
        if has_passages:
            cols = {r[1] for r in conn.execute("PRAGMA table_info(library_passages)")}
            if "role" not in cols:
                with conn:
                    conn.execute("ALTER TABLE library_passages ADD COLUMN role TEXT NOT NULL DEFAULT 'body'")
        conn.executescript(SCHEMA)
        r = conn.execute("SELECT value FROM library_state WHERE key='schema'").fetchone()
        if r is not None and int(r[0]) >= SCHEMA_VERSION:
            return
        with self._writing():
            self._restructure_existing()
            with conn:
                conn.execute("INSERT INTO library_state(key, value) VALUES('schema', ?) ON CONFLICT(key) "
                             "DO UPDATE SET value=excluded.value", (str(SCHEMA_VERSION),))
                self._bump_version(conn)

    def _restructure_existing(self) -> None:
        """Schema 1 -> 2: read the structure of documents added before passages had roles. Each page's text is
        put back together from its passages (they overlap, and carry their offsets); the passages keep their
        ids and vectors and only get their role (the role of the span that holds most of the passage),
        the reference list is parsed, and the front matter fills metadata the document lacks."""
        from .ingest import FULL_TEXT_KINDS, ParsedDocument
        conn = self._db
        marks = ",".join("?" * len(FULL_TEXT_KINDS))
        for d in conn.execute(f"SELECT * FROM library_documents WHERE kind IN ({marks})", FULL_TEXT_KINDS).fetchall():
            ps = [_passage_from_row(r) for r in conn.execute(
                "SELECT * FROM library_passages WHERE doc_id=? ORDER BY ordinal", (d["id"],))]
            pages: dict = {}
            for p in ps:
                buf = pages.setdefault(p.page, [])
                if len(buf) < p.char_end:
                    buf.extend(" " * (p.char_end - len(buf)))
                buf[p.char_start:p.char_end] = list(p.text)
            parsed = ParsedDocument(title=d["title"], kind=d["kind"], authors=json.loads(d["authors"]), year=d["year"],
                                    pages=[(pg, "".join(buf)) for pg, buf in pages.items()], source=d["source"] or "",
                                    meta=json.loads(d["meta"] or "{}"), source_sha256=d["source_sha256"],
                                    text_sha256=d["text_sha256"])
            parsed.finish()
            updates = []
            for p in ps:
                share: dict[str, int] = {}
                for s, e, r in parsed.roles.get(p.page, []):
                    share[r] = share.get(r, 0) + max(0, min(e, p.char_end) - max(s, p.char_start))
                role, best = max(share.items(), key=lambda kv: kv[1], default=(EVIDENCE_ROLE, 0))
                if best * 2 >= p.char_end - p.char_start:
                    updates.append((role, p.id))
            with conn:
                conn.executemany("UPDATE library_passages SET role=? WHERE id=?", updates)
                conn.execute("UPDATE library_documents SET title=?, authors=?, year=?, meta=? WHERE id=?",
                             (parsed.title, json.dumps(parsed.authors, ensure_ascii=False), parsed.year,
                              json.dumps(parsed.meta, ensure_ascii=False), d["id"]))
                self._insert_references(conn, d["id"], d["user_id"], parsed, ps)

    @staticmethod
    def _insert_references(conn: sqlite3.Connection, doc_id: str, user: str, doc: ParsedDocument,
                           passages: list) -> None:
        """The parsed reference list of `doc`, each entry linked to the passage that holds its start."""
        rows = []
        for i, (page, start, _end, ref) in enumerate(doc.references):
            holder = next((p.id for p in passages if p.page == page and p.char_start <= start < p.char_end
                           and p.role != EVIDENCE_ROLE), None) or next(
                (p.id for p in passages if p.page == page and p.char_start <= start < p.char_end), None)
            rows.append((f"{doc_id}:r{i}", doc_id, user, i, holder, ref.label, ref.style, ref.type,
                         json.dumps(ref.authors, ensure_ascii=False), ref.title, ref.venue, ref.year, ref.doi,
                         normalize_title(ref.title), ref.raw))
        conn.executemany("INSERT OR REPLACE INTO library_references(id, doc_id, user_id, ordinal, passage_id, label, "
                         "style, type, authors, title, venue, year, doi, norm_title, raw) "
                         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    # ---- connections and locks ----------------------------------------------------------------------
    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (one per thread: transactions of different threads never mix)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA secure_delete = ON")  # deleted rows are overwritten, not left in free pages
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _owner_lock(self, user: str) -> threading.Lock:
        with self._owner_locks_lock:
            return self._owner_locks.setdefault(user, threading.Lock())

    @contextlib.contextmanager
    def _writing(self):
        """The right to change the shared index: this process's writer lock and an flock on DIR/.lock."""
        with self._write_lock:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    # ---- embeddings -------------------------------------------------------------------------------
    @property
    def embedder(self):
        if self._embedder is None:
            from ..embeddings import get_embedder
            self._embedder = get_embedder()
        return self._embedder

    def embeddings(self) -> np.ndarray:
        """The vectors of every passage (row `emb_row`), as of the library's current version."""
        v = self.version()
        with self._emb_lock:
            if self._emb is None or self._emb_version != v:
                self._emb = np.load(self.emb_path) if self.emb_path.exists() else np.zeros((0, 384), np.float32)
                self._emb_version = v
            return self._emb

    def _embed(self, texts: list[str], progress: Progress | None = None) -> np.ndarray:
        parts = []
        for i in range(0, len(texts), EMBED_BATCH):
            if progress:
                progress("embedding", i, len(texts))
            parts.append(np.asarray(self.embedder.embed(texts[i:i + EMBED_BATCH]), dtype=np.float32))
        if progress:
            progress("embedding", len(texts), len(texts))
        return np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)

    def _save_embeddings(self, emb: np.ndarray) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".embeddings.", suffix=".npy")  # 0600
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, emb)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.emb_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def _set_embeddings(self, emb: np.ndarray, version: int) -> None:
        with self._emb_lock:
            self._emb, self._emb_version = emb, version

    def _zero_rows(self, rows: list[int]) -> None:
        """Overwrite the vectors of deleted passages (caller holds `_writing`)."""
        emb = self.embeddings()
        rows = [r for r in rows if 0 <= r < len(emb)]
        if not rows:
            return
        emb = emb.copy()
        emb[rows] = 0.0
        self._save_embeddings(emb)
        with self._db as conn:
            v = self._bump_version(conn)
        self._set_embeddings(emb, v)

    def _repair_embeddings(self) -> None:
        """Embed passages whose vectors were lost, and zero vectors that no passage refers to."""
        with self._writing():
            emb = self.embeddings()
            n = len(emb)
            missing = self._db.execute("SELECT * FROM library_passages WHERE emb_row >= ? ORDER BY emb_row",
                                       (n,)).fetchall()
            used = {r[0] for r in self._db.execute("SELECT emb_row FROM library_passages")}
            stray = [i for i in np.flatnonzero(np.any(emb != 0, axis=1)).tolist() if i not in used] if n else []
            if not missing and not stray:
                return
            if missing:
                top = max(r["emb_row"] for r in missing) + 1
                vecs = self._embed([r["text"] for r in missing])
                grown = np.zeros((top, vecs.shape[1]), dtype=np.float32)
                grown[:n] = emb
                for r, v in zip(missing, vecs):
                    grown[r["emb_row"]] = v
                emb = grown
            else:
                emb = emb.copy()
            emb[stray] = 0.0
            self._save_embeddings(emb)
            with self._db as conn:
                v = self._bump_version(conn)
            self._set_embeddings(emb, v)

    # ---- state ------------------------------------------------------------------------------------
    def version(self) -> int:
        r = self._db.execute("SELECT value FROM library_state WHERE key='version'").fetchone()
        return int(r["value"]) if r else 0

    def _bump_version(self, conn: sqlite3.Connection) -> int:
        """Count a change (inside the caller's transaction); returns the new version."""
        conn.execute("INSERT INTO library_state(key, value) VALUES('version', '1') ON CONFLICT(key) "
                     "DO UPDATE SET value = CAST(value AS INTEGER) + 1")
        return int(conn.execute("SELECT value FROM library_state WHERE key='version'").fetchone()[0])

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
                                  (user,)).fetchall():
            if (doc.doi and r["doi"] == doc.doi) or (want and normalize_title(r["title"]) == want):
                return r
        return None

    def _check_passages(self, n: int, source: str) -> None:
        if n > MAX_UPLOAD_PASSAGES:
            raise UploadTooLarge(f"{source}: {n:,} passages; one upload may add at most {MAX_UPLOAD_PASSAGES:,} "
                                 f"passages. Split the file and add the parts")

    def add_file(self, path: str | os.PathLike, user: str = DEFAULT_USER, data: bytes | None = None,
                 name: str | None = None, progress: Progress | None = None,
                 limited: bool = False) -> list[AddResult]:
        """Read a file (or its bytes) and add its documents; `progress(stage, done, total)` is told how far.

        `limited` (a client's upload): the per-upload limits apply (`ingest`, `MAX_UPLOAD_PASSAGES`)."""
        if progress:
            progress("reading", 0, 0)
        docs = parse_path(path, data=data, name=name, limited=limited)
        items = [(d, chunk_pages(d.pages, target=self.chunk_target, roles=d.roles)) for d in docs]
        if limited:
            self._check_passages(sum(len(c) for _, c in items), name or Path(path).name)
        return self._add(items, user, progress)

    def add_document(self, doc: ParsedDocument, user: str = DEFAULT_USER) -> AddResult:
        return self._add([(doc, chunk_pages(doc.pages, target=self.chunk_target, roles=doc.roles))], user)[0]

    def _add(self, items: list[tuple[ParsedDocument, list[Chunk]]], user: str,
             progress: Progress | None = None) -> list[AddResult]:
        """Add documents with their passages: embedded under the owner's lock, written in one transaction."""
        with self._owner_lock(user):
            results: list[AddResult | None] = []
            new: list[tuple[ParsedDocument, str, list[Chunk], int]] = []  # doc, id, chunks, index in results
            seen: dict[str, tuple[str, str]] = {}  # fingerprints of this batch -> (doc id, source)
            for doc, chunks in items:
                dup = self._find_duplicate(doc, user)
                if dup is not None:
                    results.append(AddResult(doc.source, "duplicate", dup["id"], dup["title"],
                                             note=f"already in the library as {dup['id']} ({dup['source']})"))
                    continue
                marks = [doc.source_sha256, doc.text_sha256] + ([f"{doc.kind in ('bibtex', 'ris')}|{doc.doi}"]
                                                                if doc.doi else [])
                twin = next((seen[m] for m in marks if m in seen), None)
                if twin is not None:
                    results.append(AddResult(doc.source, "duplicate", twin[0], doc.title,
                                             note=f"appears twice in {twin[1]}"))
                    continue
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
                if not chunks:
                    raise UserError(f"{doc.source}: no text to index")
                doc_id = "doc-" + hashlib.sha256(
                    f"{user}\0{doc.source_sha256}\0{doc.text_sha256}".encode()).hexdigest()[:10]
                for m in marks:
                    seen[m] = (doc_id, doc.source)
                results.append(AddResult(doc.source, status, doc_id, doc.title, len(chunks), note))
                new.append((doc, doc_id, chunks, len(results) - 1))
            if not new:
                return results
            texts = [c.text for _, _, chunks, _ in new for c in chunks]
            vecs = self._embed(texts, progress)
            if progress:
                progress("saving", len(texts), len(texts))
            now = _stamp()
            with self._writing():
                emb = self.embeddings()
                if emb.shape[1:] != vecs.shape[1:] and len(emb) == 0:
                    emb = np.zeros((0, vecs.shape[1]), np.float32)
                base = len(emb)
                grown = np.concatenate([emb, vecs])
                self._save_embeddings(grown)  # before the rows: whoever sees a passage finds its vector
                rows, docs = [], []
                for doc, doc_id, chunks, _ in new:
                    docs.append((doc_id, user, doc.kind, doc.title, json.dumps(doc.authors, ensure_ascii=False),
                                 doc.year, doc.venue, doc.doi, doc.citekey, doc.source, doc.source_sha256,
                                 doc.text_sha256, now, json.dumps(doc.meta, ensure_ascii=False)))
                    for i, c in enumerate(chunks):
                        rows.append((f"{doc_id}:p{i}", doc_id, user, i, c.page, c.char_start, c.char_end, c.text,
                                     base + len(rows), c.role))
                with self._db as conn:
                    conn.executemany(
                        "INSERT INTO library_documents(id, user_id, kind, title, authors, year, venue, doi, citekey,"
                        " source, source_sha256, text_sha256, added, meta) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        docs)
                    conn.executemany(
                        "INSERT INTO library_passages(id, doc_id, user_id, ordinal, page, char_start, char_end,"
                        " text, emb_row, role) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                    for doc, doc_id, chunks, _ in new:
                        held = [Passage(f"{doc_id}:p{i}", doc_id, i, c.page, c.char_start, c.char_end, c.text, -1,
                                        c.role) for i, c in enumerate(chunks)]
                        self._insert_references(conn, doc_id, user, doc, held)
                    v = self._bump_version(conn)
                self._set_embeddings(grown, v)
            return results

    # ---- deleting ---------------------------------------------------------------------------------
    def _delete_documents(self, where: str, args: tuple) -> int:
        """Delete the documents matching `where` with their passages and zero their vectors (caller holds
        `_writing`). Returns how many documents went."""
        conn = self._db
        with conn:
            ids = [r[0] for r in conn.execute(f"SELECT id FROM library_documents WHERE {where}", args)]
            if not ids:
                return 0
            marks = ",".join("?" * len(ids))
            rows = [r[0] for r in conn.execute(f"SELECT emb_row FROM library_passages WHERE doc_id IN ({marks})",
                                               ids)]
            conn.execute(f"DELETE FROM library_references WHERE doc_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM library_passages WHERE doc_id IN ({marks})", ids)
            conn.execute(f"DELETE FROM library_documents WHERE id IN ({marks})", ids)
            v = self._bump_version(conn)
        with self._emb_lock:
            if self._emb_version is not None and self._emb_version == v - 1:
                self._emb_version = v  # the cached vectors are still right for the rows that remain
        self._zero_rows(rows)
        return len(ids)

    def remove(self, doc_id: str, user: str = DEFAULT_USER) -> bool:
        """Delete a document, its passages and their vectors."""
        with self._owner_lock(user), self._writing():
            return bool(self._delete_documents("id=? AND user_id=?", (doc_id, user)))

    def delete_owner(self, user: str) -> int:
        """Delete every document, passage and vector of one owner; returns the number of documents."""
        with self._owner_lock(user), self._writing():
            n = self._delete_documents("user_id=?", (user,))
            with self._db as conn:  # passages whose document row went by another way
                stray = [r[0] for r in conn.execute("SELECT emb_row FROM library_passages WHERE user_id=?", (user,))]
                if stray:
                    conn.execute("DELETE FROM library_passages WHERE user_id=?", (user,))
                conn.execute("DELETE FROM library_references WHERE user_id=?", (user,))
            self._zero_rows(stray)
        with self._retrievers_lock:
            self._retrievers = {k: r for k, r in self._retrievers.items() if k[0] != user}
        return n

    def owners(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT user_id FROM library_documents ORDER BY user_id")]

    def adopt_server_users(self, users: Iterable[tuple[int, str, str]], purge_replaced: bool = True) -> None:
        """Bring the owners in line with the server's accounts, given as (id, name, created "%Y-%m-%dT%H:%M:%SZ").

        - Documents keyed by an account's name and added at or after that account's creation move to its id.
        - Documents keyed by a name, added before the current account of that name was created, belonged to
          an earlier, deleted account of that name: deleted when `purge_replaced` (a library in the server's
          own database); otherwise (a library shared with the CLI) kept under the name.
        - Documents of ids that are no account any more are deleted; names that are no account are kept
          (the CLI's owners), and no server user can reach them.
        """
        users = list(users)
        by_name = {name: (server_user_key(uid), created) for uid, name, created in users}
        live = {server_user_key(uid) for uid, _, _ in users}
        for owner in self.owners():
            if is_server_key(owner):
                if owner not in live:
                    self.delete_owner(owner)
                continue
            if owner not in by_name:
                continue
            key, created = by_name[owner]
            with self._owner_lock(owner), self._owner_lock(key), self._writing():
                with self._db as conn:
                    moved = conn.execute("UPDATE library_documents SET user_id=? WHERE user_id=? AND added >= ?",
                                         (key, owner, created)).rowcount
                    conn.execute("UPDATE library_passages SET user_id=? WHERE user_id=? AND doc_id IN "
                                 "(SELECT id FROM library_documents WHERE user_id=?)", (key, owner, key))
                    conn.execute("UPDATE library_references SET user_id=? WHERE user_id=? AND doc_id IN "
                                 "(SELECT id FROM library_documents WHERE user_id=?)", (key, owner, key))
                    if moved:
                        self._bump_version(conn)
                if purge_replaced:
                    self._delete_documents("user_id=? AND added < ?", (owner, created))

    # ---- reading ----------------------------------------------------------------------------------
    def documents(self, user: str = DEFAULT_USER) -> list[Document]:
        rows = self._db.execute(
            "SELECT d.*, (SELECT COUNT(*) FROM library_passages p WHERE p.doc_id=d.id) AS n "
            "FROM library_documents d WHERE user_id=? ORDER BY added, rowid", (user,)).fetchall()
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
            rows = self._db.execute("SELECT * FROM library_passages WHERE user_id=? ORDER BY doc_id, ordinal",
                                    (user,)).fetchall()
        else:
            rows = self._db.execute("SELECT * FROM library_passages WHERE user_id=? AND doc_id=? ORDER BY ordinal",
                                    (user, doc_id)).fetchall()
        return [_passage_from_row(r) for r in rows]

    def evidence_passages(self, user: str = DEFAULT_USER, doc_id: str | None = None) -> list[Passage]:
        """The passages that may be cited as evidence: body text, never reference entries, captions or
        author lines."""
        return [p for p in self.passages(user, doc_id) if p.role == EVIDENCE_ROLE]

    def references(self, doc_id: str, user: str = DEFAULT_USER) -> list[dict]:
        """The parsed reference list of a document, in order; `cited_doc_id` is the library document an entry
        names (same DOI, or the same normalised title), or None."""
        rows = self._db.execute("SELECT * FROM library_references WHERE doc_id=? AND user_id=? ORDER BY ordinal",
                                (doc_id, user)).fetchall()
        by_doi, by_title = self._citable(user)
        out = []
        for r in rows:
            cited = (by_doi.get(r["doi"]) if r["doi"] else None) or by_title.get(r["norm_title"])
            out.append({"id": r["id"], "label": r["label"], "style": r["style"], "type": r["type"],
                        "authors": json.loads(r["authors"]), "title": r["title"], "venue": r["venue"],
                        "year": r["year"], "doi": r["doi"], "raw": r["raw"], "passage_id": r["passage_id"],
                        "cited_doc_id": cited if cited != doc_id else None})
        return out

    def _citable(self, user: str) -> tuple[dict[str, str], dict[str, str]]:
        """This owner's documents by DOI and by normalised title (titles under 12 characters never match)."""
        by_doi, by_title = {}, {}
        for r in self._db.execute("SELECT id, doi, title FROM library_documents WHERE user_id=? ORDER BY added, rowid",
                                  (user,)):
            if r["doi"]:
                by_doi.setdefault(r["doi"].lower(), r["id"])
            t = normalize_title(r["title"])
            if len(t) >= 12:
                by_title.setdefault(t, r["id"])
        return by_doi, by_title

    def citation_graph(self, doc_id: str, user: str = DEFAULT_USER) -> dict:
        """{"cites": [doc ids this document cites that are in the library], "cited_by": [doc ids citing it]}."""
        doc = self.document(doc_id, user)
        if doc is None:
            return {"cites": [], "cited_by": []}
        cites = list(dict.fromkeys(r["cited_doc_id"] for r in self.references(doc_id, user) if r["cited_doc_id"]))
        want_title = normalize_title(doc.title)
        rows = self._db.execute(
            "SELECT DISTINCT doc_id FROM library_references WHERE user_id=? AND doc_id != ? AND "
            "((doi IS NOT NULL AND doi = ?) OR (norm_title = ? AND length(norm_title) >= 12)) ORDER BY doc_id",
            (user, doc_id, (doc.doi or "").lower() or None, want_title)).fetchall()
        return {"cites": cites, "cited_by": [r[0] for r in rows]}

    def retriever(self, user: str = DEFAULT_USER):
        """The hybrid BM25 + dense retriever over this owner's passages, rebuilt after any change."""
        from .retrieve import HybridRetriever
        v = self.version()
        with self._retrievers_lock:
            self._retrievers = {k: r for k, r in self._retrievers.items() if k[1] == v}
            found = self._retrievers.get((user, v))
        if found is None:
            found = HybridRetriever(self, user)
            with self._retrievers_lock:
                self._retrievers[(user, v)] = found
        return found

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
