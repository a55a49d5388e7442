"""The literature assistant's server side under attack, against the real `alignchat serve` over HTTP: libraries
are keyed by account id (a name used again starts empty, a deleted user's rows and vectors are gone, a library
keyed by names is migrated), one user's large upload does not hold up another user, uploads over the limits get
a 413 naming the limit, encrypted and decompression-bomb PDFs get a 400 with the server's memory bounded, the
library's files are owner-only, lone surrogates are a 400 naming the field, and form content types are a 415."""
from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from library_corpus import CORAL, PHOTOSYNTHESIS, PRINTING, make_pdf, pdf_file  # noqa: E402
from serve_support import ServerProcess, file_mode as _mode, openai_error as _error, users_cli  # noqa: E402

OCTET = {"Content-Type": "application/octet-stream"}


class _Users:
    """Accounts on a running server, made with `alignchat users`, each with an API key."""

    def __init__(self, srv: ServerProcess, db_path: Path):
        self.srv, self.db_path = srv, db_path

    def add(self, name: str) -> dict:
        users_cli(self.srv.db_url, "add", name, "--password-stdin", stdin="correct horse battery\n")
        key = users_cli(self.srv.db_url, "key", name).strip().splitlines()[-1]
        with sqlite3.connect(self.db_path) as db:
            uid = db.execute("SELECT id FROM users WHERE username=?", (name,)).fetchone()[0]
        return {"Authorization": f"Bearer {key}", "id": uid, "owner": f"user {uid}"}


def _auth(user: dict) -> dict:
    return {"Authorization": user["Authorization"]}


def _upload(srv, user: dict | None, filename: str, data: bytes, headers: dict | None = None,
            timeout: float = 600) -> httpx.Response:
    h = {**(_auth(user) if user else {}), **(OCTET if headers is None else headers)}
    return httpx.post(srv.url + "/v1/library/documents", params={"filename": filename}, content=data, headers=h,
                      timeout=timeout)


def _docs(srv, user: dict | None) -> dict:
    r = httpx.get(srv.url + "/v1/library/documents", headers=_auth(user) if user else {}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _ask(srv, user: dict, question: str) -> dict:
    r = httpx.post(srv.url + "/v1/library/ask", json={"question": question, "strategy": "extractive"},
                   headers=_auth(user), timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    """A loopback server without login; its children start under umask 022, as a default shell has."""
    db = tmp_path_factory.mktemp("libsec") / "server.db"
    old = os.umask(0o022)
    try:
        srv = ServerProcess(tiny_ckpt, db, "--no-embeddings").wait_ready()
    finally:
        os.umask(old)
    srv.db_path = db
    srv.users = _Users(srv, db)
    yield srv
    srv.stop()


# ---- 1. keyed by account id; deleting a user deletes their library ------------------------------------------------

def test_recreated_name_sees_nothing_and_deleted_users_rows_and_vectors_are_gone(server):
    alice, bob = server.users.add("alice"), server.users.add("bob")
    assert _upload(server, alice, "coral_reefs.md", CORAL.encode()).status_code == 200
    r = _upload(server, alice, "diary.txt", b"Alice's private diary.\n\nThe vault code is 4417 and it is hidden "
                b"behind the painting in the hall.")
    assert r.status_code == 200, r.text
    assert _upload(server, bob, "printing.txt", PRINTING.encode()).status_code == 200
    old_passage = _ask(server, alice, "Why do corals turn white in warm water?")["citations"][0]["passage_id"]

    with sqlite3.connect(server.db_path) as db:
        rows = [r[0] for r in db.execute("SELECT emb_row FROM library_passages WHERE user_id=?", (alice["owner"],))]
    emb_path = server.db_path.parent / "library" / "embeddings.npy"
    assert rows and np.abs(np.load(emb_path)[rows]).sum() > 0

    users_cli(server.db_url, "delete", "alice")  # a separate process: the library's hook runs there

    with sqlite3.connect(server.db_path) as db:
        count = lambda sql, *args: db.execute(f"SELECT COUNT(*) FROM {sql}", args).fetchone()[0]  # noqa: E731
        assert count("library_documents WHERE user_id=?", alice["owner"]) == 0
        assert count("library_passages WHERE user_id=?", alice["owner"]) == 0
        assert count("library_passages WHERE text LIKE '%vault code%'") == 0
        assert count("library_documents WHERE source='diary.txt'") == 0
    emb = np.load(emb_path)
    assert not np.any(emb[[r for r in rows if r < len(emb)]]), "the deleted user's vectors are still in the index"

    again = server.users.add("alice")
    assert _docs(server, again)["data"] == []
    assert httpx.get(f"{server.url}/v1/library/passages/{old_passage}", headers=_auth(again),
                     timeout=60).status_code == 404
    assert _ask(server, again, "What is the vault code hidden behind the painting?")["not_found"]
    assert _ask(server, again, "Why do corals turn white in warm water?")["not_found"]
    # the other user's library is untouched
    assert [d["title"] for d in _docs(server, bob)["data"]] == ["The Printing Press in Europe"]
    assert not _ask(server, bob, "Who developed printing with movable metal type?")["not_found"]


def test_library_keyed_by_names_is_migrated_to_account_ids(tiny_ckpt, tmp_path):
    """A library written by an older version (owners are account names) in the server's own database."""
    from alignchat.library import Library

    db = tmp_path / "old.db"
    url = f"sqlite:///{db}"
    users_cli(url, "add", "carol", "--password-stdin", stdin="correct horse battery\n")
    users_cli(url, "add", "dave", "--password-stdin", stdin="correct horse battery\n")
    lib = Library(tmp_path / "library", db_path=db)
    lib.add_file("coral.md", user="carol", data=CORAL.encode())
    lib.add_file("printing.txt", user="dave", data=PRINTING.encode())  # an earlier account named dave
    lib.add_file("photo.txt", user="erin", data="\n\n".join(PHOTOSYNTHESIS).encode())  # no such account
    lib.add_file("orphan.txt", user="user 999", data=b"Orphaned notes of a deleted account about glaciers.")
    lib.close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE library_documents SET added='2000-01-01T00:00:00Z' WHERE user_id='dave'")

    srv = ServerProcess(tiny_ckpt, db, "--no-embeddings").wait_ready()
    try:
        carol, dave = ({"Authorization": "Bearer " + users_cli(url, "key", name).strip().splitlines()[-1]}
                       for name in ("carol", "dave"))
        assert [d["title"] for d in _docs(srv, carol)["data"]] == ["Coral Reef Bleaching Under Ocean Warming"]
        assert not _ask(srv, carol, "Why do corals turn white in warm water?")["not_found"]
        assert _docs(srv, dave)["data"] == []
        assert _docs(srv, None)["data"] == []  # the local user
    finally:
        srv.stop()
    with sqlite3.connect(db) as c:
        owners = dict(c.execute("SELECT user_id, COUNT(*) FROM library_documents GROUP BY user_id").fetchall())
        carol_id = c.execute("SELECT id FROM users WHERE username='carol'").fetchone()[0]
    # carol's moved to her id; the earlier dave's and the deleted id's are gone; erin's stay with the CLI
    assert owners == {f"user {carol_id}": 1, "erin": 1}, owners


# ---- 2. one user's large upload does not hold up another user ----------------------------------------------------

def test_large_upload_of_one_user_does_not_hold_up_another(server):
    ann, ben = server.users.add("ann"), server.users.add("ben")
    assert _upload(server, ben, "coral_reefs.md", CORAL.encode()).status_code == 200
    big = "\n\n".join(f"Observation {i} records sea turtles crossing ocean basin {i % 17} during the "
                      f"{['spring', 'summer', 'autumn', 'winter'][i % 4]} migration, tagged by team {i % 9}."
                      for i in range(1000)).encode()
    events: list[str] = []
    done = threading.Lock()
    result: dict = {}

    def upload_big():
        result["response"] = _upload(server, ann, "turtles.txt", big, timeout=1800)
        with done:
            events.append("ann's upload finished")

    t = threading.Thread(target=upload_big, daemon=True)
    t.start()
    deadline = time.monotonic() + 600
    while True:  # until ann's upload is being embedded, with most of it still to do
        busy = _docs(server, ann)["indexing"]
        if busy and busy[0]["stage"] == "embedding" and busy[0]["done"] <= busy[0]["total"] // 2:
            break
        assert t.is_alive() and time.monotonic() < deadline, (busy, result)
        time.sleep(0.05)
    assert busy[0]["filename"] == "turtles.txt" and busy[0]["total"] > 100
    assert _docs(server, ben)["indexing"] == []  # nobody sees another user's uploads
    answer = _ask(server, ben, "Why do corals turn white in warm water?")
    with done:
        events.append("ben answered")
    assert not answer["not_found"] and answer["citations"]
    t.join(1800)
    assert events == ["ben answered", "ann's upload finished"], events
    r = result["response"]
    assert r.status_code == 200 and r.json()["results"][0]["status"] == "added", r.text
    assert _docs(server, ann)["indexing"] == []


# ---- 3. limits per upload --------------------------------------------------------------------------------------

def _pypdf_blank_pages(n: int) -> bytes:
    import pypdf
    w = pypdf.PdfWriter()
    for _ in range(n):
        w.add_blank_page(612, 792)
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def test_uploads_over_the_limits_get_a_413_naming_the_limit(server):
    from alignchat.library.ingest import MAX_PDF_PAGES, MAX_UPLOAD_CHARS
    from alignchat.library.store import MAX_UPLOAD_PASSAGES
    cleo = server.users.add("cleo")
    cases = [("long.txt", b"a" * (MAX_UPLOAD_CHARS + 1), f"{MAX_UPLOAD_CHARS:,} characters"),
             ("many.txt", b"ab " * (MAX_UPLOAD_PASSAGES * 130), f"{MAX_UPLOAD_PASSAGES:,} passages"),
             ("book.pdf", _pypdf_blank_pages(MAX_PDF_PAGES + 1), f"{MAX_PDF_PAGES:,} pages")]
    for filename, data, limit in cases:
        r = _upload(server, cleo, filename, data)
        err = _error(r)
        assert r.status_code == 413 and err["code"] == "upload_too_large", (filename, r.text)
        assert limit in err["message"] and filename in err["message"], err
    assert _docs(server, cleo)["data"] == []  # nothing half-added


# ---- 4. encrypted PDFs and decompression bombs -------------------------------------------------------------------

def _encrypted(pdf: bytes, user_password: str) -> bytes:
    import pypdf
    w = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf)))
    w.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="RC4-128")
    out = io.BytesIO()
    w.write(out)
    return out.getvalue()


def _declared_aes256(pdf: bytes) -> bytes:
    """`pdf` plus an incremental update whose trailer declares AES-256 (revision 6) encryption with a user
    password nobody knows (as `qpdf --encrypt USER OWNER 256` writes)."""
    import pypdf
    trailer = pypdf.PdfReader(io.BytesIO(pdf)).trailer
    size, root = int(trailer["/Size"]), trailer.raw_get("/Root").idnum
    prev = int(re.findall(rb"startxref\s+(\d+)", pdf)[-1])
    h = lambda n: os.urandom(n).hex()  # noqa: E731
    obj = (f"{size} 0 obj\n<< /Filter /Standard /V 5 /R 6 /Length 256 /P -3904 /CF << /StdCF << /CFM /AESV3 "
           f"/AuthEvent /DocOpen /Length 32 >> >> /StmF /StdCF /StrF /StdCF /O <{h(48)}> /U <{h(48)}> "
           f"/OE <{h(32)}> /UE <{h(32)}> /Perms <{h(16)}> >>\nendobj\n").encode()
    xref = len(pdf) + len(obj)
    tail = (f"xref\n{size} 1\n{len(pdf):010d} 00000 n \ntrailer\n<< /Size {size + 1} /Root {root} 0 R /Prev {prev} "
            f"/Encrypt {size} 0 R /ID [<{h(16)}> <{h(16)}>] >>\nstartxref\n{xref}\n%%EOF\n").encode()
    return pdf + obj + tail


def _zeros_deflated(n: int) -> bytes:
    c = zlib.compressobj(9)
    block = bytes(1 << 24)
    parts = [c.compress(block) for _ in range(n // len(block))]
    return b"".join(parts + [c.compress(bytes(n % len(block))), c.flush()])


def _bomb_pdf(stream: bytes, pages: int) -> bytes:
    """A PDF of `pages` pages with a Helvetica font, each page's content its own copy of the FlateDecode `stream`."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(pages))
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i in range(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> "
                       f">> /Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream")
    return pdf_file(objects)


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak memory from /proc")
def test_encrypted_and_bomb_pdfs_get_a_400_and_memory_stays_bounded(tiny_ckpt, tmp_path):
    from alignchat.library.ingest import PDF_CONTENT_LIMIT, PDF_STREAM_LIMIT
    gib = 2 ** 30
    one_stream = _bomb_pdf(_zeros_deflated(gib), pages=1)  # 1 GiB from a ~1 MB file
    many_pages = _bomb_pdf(_zeros_deflated(PDF_STREAM_LIMIT - 2 ** 20), pages=40)  # 40 x 15 MiB, each under the cap
    srv = ServerProcess(tiny_ckpt, tmp_path / "bomb.db", "--no-embeddings").wait_ready()
    try:
        before = _peak_rss(srv.proc.pid)
        r = _upload(srv, None, "bomb.pdf", one_stream, {"Content-Type": "application/pdf"})
        assert r.status_code == 400 and "decompresses to more than" in _error(r)["message"], r.text
        assert f"{PDF_STREAM_LIMIT // 2 ** 20} MiB" in _error(r)["message"]
        r = _upload(srv, None, "pages.pdf", many_pages, {"Content-Type": "application/pdf"})
        assert r.status_code == 400 and f"{PDF_CONTENT_LIMIT // 2 ** 20} MiB" in _error(r)["message"], r.text
        grown = _peak_rss(srv.proc.pid) - before
        assert grown < 256 * 2 ** 20, f"the server's peak memory grew by {grown / 2 ** 20:.0f} MiB"

        text_pdf = make_pdf(PHOTOSYNTHESIS, title="Photosynthesis in Green Plants")
        for name, data in [("locked.pdf", _encrypted(text_pdf, "user-secret")),
                           ("aes256.pdf", _declared_aes256(text_pdf))]:
            r = _upload(srv, None, name, data, {"Content-Type": "application/pdf"})
            assert r.status_code == 400 and "password-protected PDF" in _error(r)["message"], (name, r.text)
        # protected by an owner password only: it opens with the empty password, and is read
        r = _upload(srv, None, "owner-only.pdf", _encrypted(text_pdf, ""), {"Content-Type": "application/pdf"})
        assert r.status_code == 200 and r.json()["results"][0]["title"] == "Photosynthesis in Green Plants", r.text
        assert srv.health()["status"] == "ok"
    finally:
        srv.stop()


# ---- 5. owner-only files ---------------------------------------------------------------------------------------

def _all_private(root: Path) -> list[str]:
    """Paths under `root` (itself included) that group or others may use, with their modes."""
    wrong = [] if _mode(root) == 0o700 else [f"{root} {oct(_mode(root))}"]
    for p in root.rglob("*"):
        want = 0o700 if p.is_dir() else 0o600
        if _mode(p) != want:
            wrong.append(f"{p} {oct(_mode(p))}")
    return wrong


def test_library_files_are_owner_only(server, tmp_path):
    dana = server.users.add("dana")
    assert _upload(server, dana, "coral_reefs.md", CORAL.encode()).status_code == 200
    lib_dir = server.db_path.parent / "library"
    assert (lib_dir / "embeddings.npy").is_file()
    assert _all_private(lib_dir) == []
    assert not list(lib_dir.glob(".embeddings.*"))  # no temporary file left behind

    # a library of its own (the CLI), in a directory that exists already and is open to others
    from conftest import alignchat_cmd
    own = tmp_path / "mylib"
    own.mkdir(mode=0o755)
    os.chmod(own, 0o755)
    doc = tmp_path / "coral.md"
    doc.write_text(CORAL)
    r = subprocess.run(alignchat_cmd() + ["library", "--library", str(own), "add", str(doc)], capture_output=True,
                       text=True, timeout=600, preexec_fn=lambda: os.umask(0o022))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in own.iterdir()} >= {"library.sqlite", "embeddings.npy"}
    assert _all_private(own) == []


# ---- 6. lone surrogates ----------------------------------------------------------------------------------------

def test_lone_surrogates_are_a_400_naming_the_field(server):
    for path, body, field in [("ask", {"question": "Why do corals bleach?\ud800"}, "question"),
                              ("ask", {"question": "corals", "doc_ids": ["doc-\udfff"]}, "doc_ids.0"),
                              ("review", {"topic": "reefs \ud83d"}, "topic"),
                              ("extract", {"doc_ids": ["\ud800"]}, "doc_ids.0"),
                              ("boolean", {"question": "\udc00 coral bleaching"}, "question")]:
        r = httpx.post(f"{server.url}/v1/library/{path}", content=json.dumps(body),
                       headers={"Content-Type": "application/json"}, timeout=60)
        err = _error(r)
        assert r.status_code == 400 and err["param"] == field, (path, r.text)
        assert field in err["message"] and "unicode" in err["message"].lower(), err


# ---- 7. cross-site form posts ----------------------------------------------------------------------------------

def test_upload_refuses_the_content_types_a_form_can_send(server):
    erik = server.users.add("erik")
    for ctype in ["application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
                  "text/plain;charset=UTF-8", "Text/Plain", "MULTIPART/FORM-DATA"]:
        r = _upload(server, erik, "planted.md", b"# Planted\n\nCorals are planted here.", {"Content-Type": ctype})
        err = _error(r)
        assert r.status_code == 415 and err["code"] == "unsupported_media_type", (ctype, r.text)
        assert "application/octet-stream" in err["message"] and ctype.split(";")[0].lower() in err["message"], err
    assert _docs(server, erik)["data"] == []
    # the file's bytes with an accepted type (or none: a non-browser client) are read
    for name, data, headers in [("coral_reefs.md", CORAL.encode(), OCTET),
                                ("printing.pdf", make_pdf([PRINTING]), {"Content-Type": "application/pdf"}),
                                ("notes.md", b"# Notes\n\nSea turtles migrate across oceans every year.", {})]:
        r = _upload(server, erik, name, data, headers)
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "added", (name, r.text)
