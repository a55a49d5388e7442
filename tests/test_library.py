"""The literature assistant end to end on a small bilingual library the tests build themselves (three PDFs
written here, Markdown, English and Chinese text, BibTeX and RIS): ingest and duplicates, recall@5 on 34
paraphrased questions, the verifier (fabricated citations removed, unsupported sentences flagged), "not
found", answers through our engine and through an OpenAI-compatible HTTP server, the CLI and the HTTP API."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from library_corpus import NO_EVIDENCE_QUESTIONS, QUESTIONS, make_pdf, write_corpus  # noqa: E402

from alignchat.errors import UserError  # noqa: E402
from alignchat.library import Library  # noqa: E402
from alignchat.library.answer import Answerer  # noqa: E402
from alignchat.library.verify import Verifier  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("library-src"))


@pytest.fixture(scope="module")
def lib(tmp_path_factory, corpus):
    library = Library(tmp_path_factory.mktemp("library"))
    library.doc_ids = {}
    for key, path in corpus.items():
        library.doc_ids[key] = [r.doc_id for r in library.add_file(path)]
    return library


def _passage_with(lib, phrase):
    return next(p for p in lib.passages() if phrase in p.text)


def test_ingest_metadata_pages_and_duplicates(lib, corpus):
    docs = {d.id: d for d in lib.documents()}
    assert len(docs) == 11  # 3 PDFs, 2 text, 2 Markdown, 3 BibTeX records, 1 RIS record
    bm25 = docs[lib.doc_ids["bib"][0]]
    assert bm25.authors == ["Robertson, Stephen", "Zaragoza, Hugo"] and bm25.year == 2009
    assert bm25.doi == "10.1561/1500000019" and bm25.kind == "bibtex" and "BM25" in bm25.title
    coral = docs[lib.doc_ids["coral"][0]]
    assert (coral.year, coral.venue, coral.doi) == (2019, "Marine Ecology Notes", "10.5555/coral.2019.7")
    ris = docs[lib.doc_ids["ris"][0]]
    assert ris.authors == ["王丽", "李强"] and ris.venue == "图书情报工作"
    photo = docs[lib.doc_ids["photosynthesis"][0]]
    assert photo.title == "Photosynthesis in Green Plants" and photo.kind == "pdf"
    pages = {p.page for p in lib.passages(doc_id=photo.id)}
    assert pages == {1, 2}
    calvin = _passage_with(lib, "RuBisCO")
    assert calvin.page == 2 and calvin.char_end > calvin.char_start
    # adding the same files again changes nothing
    before = len(lib.passages())
    for r in lib.add_file(corpus["bib"]) + lib.add_file(corpus["photosynthesis"]):
        assert r.status == "duplicate"
    assert len(lib.passages()) == before


def test_bad_inputs_get_clear_errors_and_lose_nothing(lib, tmp_path):
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(make_pdf(["x"], draw_only=True))
    with pytest.raises(UserError, match="no text layer.*OCR"):
        lib.add_file(scan)
    bad = tmp_path / "bad.bib"
    bad.write_text("@article{ok, title={Fine}, year={2001}}\n\n@book{broken, title={x}\n@misc{z, title={y}}\n")
    n_docs = len(lib.documents())
    with pytest.raises(UserError, match=r"bad\.bib:3: malformed BibTeX"):
        lib.add_file(bad)
    assert len(lib.documents()) == n_docs
    with pytest.raises(UserError, match="unsupported file type"):
        (tmp_path / "x.docx").write_bytes(b"PK")
        lib.add_file(tmp_path / "x.docx")


def test_recall_at_5_on_paraphrased_questions(lib):
    assert len(QUESTIONS) >= 30
    retriever = lib.retriever()
    found_at_5 = found_at_1 = 0
    misses = []
    for question, key, phrase in QUESTIONS:
        hits = retriever.search(question, k=5)
        right = [i for i, h in enumerate(hits) if h.document.id in lib.doc_ids[key] and phrase in h.passage.text]
        found_at_5 += bool(right)
        found_at_1 += bool(right and right[0] == 0)
        if not right:
            misses.append(question)
    recall5, recall1 = found_at_5 / len(QUESTIONS), found_at_1 / len(QUESTIONS)
    print(f"\nrecall@5={recall5:.3f} recall@1={recall1:.3f} over {len(QUESTIONS)} questions")
    assert recall5 >= 0.9, misses
    assert recall1 >= 0.6


def test_chinese_bm25_needs_no_segmenter(lib):
    hits = lib.retriever().search("野外现在大约有多少只大熊猫？", k=3)
    assert hits[0].bm25_rank is not None and "1864" in hits[0].passage.text


def test_verifier_removes_citations_to_things_not_in_the_library(lib):
    p = _passage_with(lib, "Johannes Gutenberg developed")
    text = ("Gutenberg built a press with movable metal type in Mainz around 1440 [1]. "
            "Printing also spread to Asia [doc-deadbeef00:p3]. "
            "Presses became common in Europe (Smith et al., 2015) [7].\n\nReferences:\n"
            "[1] J. Smith. A History of Print. Oxford, 2015. doi:10.9999/fake.123")
    shown, report = Verifier(lib).verify(text, {1: p}, mode="creative")
    reasons = {r["citation"]: r["reason"] for r in report.removed}
    assert "[doc-deadbeef00:p3]" in reasons and "[7]" in reasons and "(Smith et al., 2015)" in reasons
    assert any("History of Print" in c for c in reasons)  # the model's own reference list
    assert "deadbeef" not in shown and "[7]" not in shown and "Smith" not in shown and "[1]" in shown
    # a real passage id is accepted and mapped to a number
    real = _passage_with(lib, "zooxanthellae")
    shown2, report2 = Verifier(lib).verify(f"Corals host algae called zooxanthellae [{real.id}].", {1: p})
    assert report2.fabricated == 0 and "[2]" in shown2


def test_verifier_flags_unsupported_sentences(lib):
    p = _passage_with(lib, "Johannes Gutenberg developed")
    text = ("Johannes Gutenberg built a printing press with movable metal type in Mainz around 1440 [1]. "
            "The printing press was invented by Isaac Newton in 1702 [1]. "
            "Penguins are flightless birds that live in Antarctica [1]. "
            "Books became cheaper and more people learned to read.")
    strict, report = Verifier(lib).verify(text, {1: p}, mode="strict")
    by_text = {s.text.split()[0]: s for s in report.sentences}
    assert by_text["Johannes"].supported and by_text["Johannes"].score >= 0.45
    assert not by_text["The"].supported and by_text["The"].reason == "number not in passage"
    assert not by_text["Penguins"].supported and by_text["Penguins"].reason == "low support"
    assert not by_text["Books"].supported and by_text["Books"].reason == "no citation"
    assert "Newton" not in strict and "Penguins" not in strict and "Gutenberg" in strict
    creative, _ = Verifier(lib).verify(text, {1: p}, mode="creative")
    assert "Penguins are flightless birds that live in Antarctica [1]. [unverified]" in creative


# the opening of the Python documentation's heapq page, whose code subscripts look like [n] markers
HEAPQ_DOC = ("heapq - Heap queue algorithm\n\n"
             "This module provides an implementation of the heap queue algorithm, also known as the priority queue "
             "algorithm. Heaps are binary trees for which every parent node has a value less than or equal to any of "
             "its children. This implementation uses arrays for which heap[k] <= heap[2*k+1] and heap[k] <= "
             "heap[2*k+2] for all k, counting elements from zero. For the sake of comparison, non-existing elements "
             "are considered to be infinite. The interesting property of a heap is that its smallest element is "
             "always the root, heap[0].\n")


def test_code_subscripts_quoted_from_a_passage_are_not_citations(tmp_path):
    library = Library(tmp_path / "lib")
    library.add_file("heapq.txt", data=HEAPQ_DOC.encode(), name="heapq.txt")
    p = next(x for x in library.passages() if "heap[0]" in x.text)
    text = ("The interesting property of a heap is that its smallest element is always the root, heap[0] [1]. "
            "Heaps are binary trees for which every parent node is smaller than its children [4].")
    shown, report = Verifier(library).verify(text, {1: p}, mode="creative")
    assert [r["citation"] for r in report.removed] == ["[4]"]  # the marker to no passage is still fabricated
    assert "always the root, heap[0] [1]." in shown and "[4]" not in shown
    first = report.sentences[0]
    assert "heap[0]" in first.text and first.citations == [1] and first.supported
    # a subscript the passages do not contain is not quoted text: it is read as a marker
    _, report2 = Verifier(library).verify("Its smallest element is always the root, heap[3] [1].", {1: p})
    assert [r["citation"] for r in report2.removed] == ["[3]"]
    # end to end: the extractive answer quotes the code, cites only the passage, and keeps heap[0] when renumbered
    ans = Answerer(library).ask("Which element of a heap is always its smallest element?", strategy="extractive")
    assert not ans.not_found and "heap[0]" in ans.answer and ans.verification.fabricated == 0
    assert [c.passage_id for c in ans.citations] == [p.id]


def test_no_evidence_question_gets_not_found(lib):
    answerer = Answerer(lib)
    for q in NO_EVIDENCE_QUESTIONS:
        ans = answerer.ask(q, strategy="extractive")
        assert ans.not_found and "not found in your library" in ans.answer.lower() and not ans.citations, q
    answerable = [answerer.ask(q, strategy="extractive") for q, _, _ in QUESTIONS[::12]]
    assert not any(a.not_found for a in answerable)


def test_extractive_answers_cite_real_supporting_passages(lib):
    answerer = Answerer(lib)
    for q, key, phrase in [QUESTIONS[9], QUESTIONS[19], QUESTIONS[25]]:
        ans = answerer.ask(q, strategy="extractive")
        assert ans.citations and not ans.not_found
        for c in ans.citations:  # every citation resolves to this library, with its metadata
            p = lib.passage(c.passage_id)
            assert p is not None and p.text == c.text and lib.document(c.doc_id).title == c.title
            assert f"[{c.n}]" in ans.answer
        assert ans.verification.supported_share == 1.0
        assert any(phrase in c.text for c in ans.citations)
        assert ans.references[0].startswith("[1] ")


def test_answer_through_our_engine_is_verified(lib, tiny_ckpt):
    """A random tiny model writes nonsense: nothing it says survives strict mode unverified."""
    from alignchat.library.backends import LocalBackend
    backend = LocalBackend(str(tiny_ckpt))
    ans = Answerer(lib, backend=backend).ask(QUESTIONS[15][0], max_tokens=24)
    assert ans.model_text is not None and ans.backend == str(tiny_ckpt)
    assert ans.citations and all(lib.passage(c.passage_id) for c in ans.citations)
    assert all(s.supported for s in ans.verification.claims)
    assert "Gutenberg" in ans.answer


class _ChatServer:
    """A real OpenAI-compatible chat server on 127.0.0.1, answering with our engine and a tiny model."""

    def __init__(self, ckpt):
        import uvicorn
        from fastapi import FastAPI

        from alignchat.hub import load_model
        from alignchat.engine import Engine, SamplingParams
        model, tok, _ = load_model(ckpt)
        engine = Engine(model, tok, max_batch=1)
        app = FastAPI()
        self.requests: list[dict] = []

        @app.get("/v1/models")
        def models():
            return {"object": "list", "data": [{"id": "tiny", "object": "model"}]}

        @app.post("/v1/chat/completions")
        def chat(body: dict):
            self.requests.append(body)
            msgs = body["messages"]
            # the model writes its own continuation; a fabricated reference is appended to it as a model
            # citing "from memory" would, so the verifier has something real to catch
            ids = tok.render_chat(msgs, add_generation_prompt=True).ids[-200:]
            text = engine.generate([ids], SamplingParams(max_tokens=8, temperature=0))[0].text
            text += " As shown by (Hinton et al., 2006) [9]."
            return {"id": "x", "object": "chat.completion", "model": "tiny",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                break
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(5)


def test_openai_compatible_backend_over_http(lib, tiny_ckpt):
    from alignchat.library.backends import make_backend
    srv = _ChatServer(tiny_ckpt)
    try:
        backend = make_backend(f"http://127.0.0.1:{srv.port}/v1")
        ans = Answerer(lib, backend=backend).ask(QUESTIONS[19][0], mode="creative")
    finally:
        srv.close()
    assert srv.requests and "Passages:" in srv.requests[0]["messages"][-1]["content"]
    assert srv.requests[0]["model"] == "tiny"
    removed = [r["citation"] for r in ans.verification.removed]
    assert "(Hinton et al., 2006)" in removed and "[9]" in removed
    assert "Hinton" not in ans.answer
    assert ans.citations and all(lib.passage(c.passage_id) for c in ans.citations)


def test_index_persists_and_repairs_lost_embeddings(lib):
    n = len(lib.passages())
    lib.emb_path.unlink()  # as if the process died between the SQLite commit and the .npy write
    reopened = Library(lib.root)
    assert len(reopened.passages()) == n and len(reopened.embeddings()) >= n
    hits = reopened.retriever().search(QUESTIONS[0][0], k=3)
    assert "chloroplasts" in hits[0].passage.text
    lib._emb = None  # the module's shared library re-reads the repaired file


def test_removed_documents_leave_no_vectors_and_stray_vectors_are_zeroed(tmp_path, corpus):
    import numpy as np
    library = Library(tmp_path / "own")
    [coral] = library.add_file(corpus["coral"])
    [printing] = library.add_file(corpus["printing"])
    gone = [p.emb_row for p in library.passages(doc_id=coral.doc_id)]
    assert library.remove(coral.doc_id) and library.document(coral.doc_id) is None
    emb = np.load(library.emb_path)
    assert not emb[gone].any() and emb[[p.emb_row for p in library.passages()]].all(axis=1).any()
    # vectors written without their rows (the process died before the commit) are zeroed on the next open
    np.save(library.emb_path, np.concatenate([emb, np.ones((2, emb.shape[1]), np.float32)]))
    reopened = Library(library.root)
    assert not np.load(library.emb_path)[-2:].any()
    assert reopened.retriever().search("Who built a press with movable type?", k=1)[0].document.id == printing.doc_id


def test_per_user_libraries_are_separate(lib, corpus):
    lib.add_file(corpus["printing"], user="alice")
    assert [d.title for d in lib.documents("alice")] == ["The Printing Press in Europe"]
    assert not lib.retriever("alice").search("What is photosynthesis?", k=5)[0].passage.text.startswith("Photo")
    own = lib.passages()[0]
    assert lib.passage(own.id, user="alice") is None


def test_knowledge_units_review_and_boolean(lib):
    from alignchat.library.tasks import boolean_query, extract_units, review
    ris = extract_units(lib, lib.doc_ids["ris"][0])
    assert "300" in ris.units["data"].text and "润色" in ris.units["result"].text
    assert ris.units["result"].passage_id.startswith(lib.doc_ids["ris"][0])
    dpr = extract_units(lib, lib.doc_ids["bib"][1])
    assert "9 to 19" in dpr.units["result"].text
    rv = review(lib, topic="ranking and retrieval of passages")
    assert rv.citations and all(lib.passage(c.passage_id) for c in rv.citations)
    assert rv.verification.fabricated == 0 and rv.verification.supported_share == 1.0
    assert "## Findings" in rv.text and "[1]" in rv.text
    bq = boolean_query("How do large language models affect reference services in academic libraries?", lib)
    d = bq.to_dict()
    assert d["generic"].startswith('("large language model*" OR "foundation model" OR')
    assert '("reference servic*" OR "reference desk"' in d["generic"] and '("academic librar*" OR' in d["generic"]
    assert d["generic"].count(" AND ") == 2 and d["scopus"].startswith("TITLE-ABS-KEY(")
    assert d["pubmed"].count(") AND (") == 2 and d["cnki"].startswith("SU=('large language models'+")
    zh = boolean_query("大语言模型对高校图书馆参考咨询服务的影响").to_dict()
    assert zh["cnki"].startswith("SU=('大语言模型'+'大型语言模型'+") and zh["cnki"].count(")*(") == 2


def test_cli_add_list_ask_boolean(tmp_path, corpus):
    from conftest import alignchat_cmd
    base = alignchat_cmd() + ["library", "--library", str(tmp_path / "lib")]
    run = lambda *a: subprocess.run(base + list(a), capture_output=True, text=True, timeout=300)  # noqa: E731
    r = run("add", str(corpus["coral"]), str(corpus["bib"]), str(tmp_path / "missing.pdf"))
    assert r.returncode == 1 and "missing.pdf: no such file" in r.stderr and r.stdout.count("added") == 4
    r = run("list", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 4
    r = run("ask", "Why do corals turn white in warm seas?", "--backend", "none", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert not out["not_found"] and out["citations"][0]["title"].startswith("Coral Reef Bleaching")
    r = run("show", out["citations"][0]["passage_id"])
    assert r.returncode == 0 and "zooxanthellae" in r.stdout
    r = run("boolean", "coral bleaching and ocean warming")
    assert r.returncode == 0 and "AND" in r.stdout


def test_http_api_upload_ask_passage(tmp_path, corpus, tiny_ckpt):
    """The router inside the real server app on uvicorn: upload, list, ask, open a cited passage."""
    import uvicorn

    from alignchat.library import api
    from alignchat.serve.app import create_app
    api._libraries.clear()
    app = create_app(model=str(tiny_ckpt), db=f"sqlite:///{tmp_path / 'server.db'}", preload=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.05)
    try:
        base = f"http://127.0.0.1:{port}/v1/library"
        with httpx.Client(timeout=120) as c:
            raw = {"Content-Type": "application/octet-stream"}  # a form's types are refused (415)
            r = c.post(f"{base}/documents", params={"filename": "大熊猫.txt"}, content=corpus["panda"].read_bytes(),
                       headers=raw)
            assert r.status_code == 200 and r.json()["results"][0]["status"] == "added"
            r = c.post(f"{base}/documents", params={"filename": "scan.pdf"}, content=make_pdf(["x"], draw_only=True),
                       headers={"Content-Type": "application/pdf"})
            assert r.status_code == 400 and "OCR" in r.text
            assert len(c.get(f"{base}/documents").json()["data"]) == 1
            r = c.post(f"{base}/ask", json={"question": "大熊猫的食物主要是什么？", "strategy": "extractive"})
            body = r.json()
            assert r.status_code == 200 and not body["not_found"] and "竹子" in body["answer"]
            cit = body["citations"][0]
            assert set(cit) >= {"n", "passage_id", "doc_id", "title", "page", "text"}
            p = c.get(f"{base}/passages/{cit['passage_id']}").json()
            assert p["text"] == cit["text"] and p["title"] == "大熊猫"
            assert c.get(f"{base}/passages/doc-0000000000:p0").status_code == 404
            r = c.post(f"{base}/ask", json={"question": "Who won the World Cup in 1966?", "strategy": "extractive"})
            assert r.json()["not_found"]
            assert c.post(f"{base}/ask", json={"question": "", "strategy": "extractive"}).status_code in (400, 422)
        # the library lives in the server's own database file, beside its tables
        import sqlite3
        with sqlite3.connect(tmp_path / "server.db") as db:
            assert db.execute("SELECT COUNT(*) FROM library_documents").fetchone()[0] == 1
    finally:
        server.should_exit = True
        t.join(5)
        api._libraries.clear()
