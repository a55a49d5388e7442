"""Storage through the real server: users never see each other's data, acknowledged messages survive a
SIGKILLed server, the database is SQLite in WAL mode with migrations, and the export has the shared schemas."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import httpx
import pytest

from serve_support import ROOT, ServerProcess, sse_events as _sse_events, users_cli


def _chat(client: httpx.Client, cid: str, content: str, **extra) -> list[tuple[str, dict]]:
    with client.stream("POST", f"/api/conversations/{cid}/chat",
                       json={"content": content, "settings": {"max_tokens": 6, "temperature": 0}, **extra}) as r:
        assert r.status_code == 200, r.read()
        return list(_sse_events(r))


def _login(url: str, user: str, pw: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=60)
    r = c.post("/api/login", json={"username": user, "password": pw})
    assert r.status_code == 200, r.text
    return c


def test_cross_user_isolation(tiny_ckpt, tmp_path):
    srv = ServerProcess(tiny_ckpt, tmp_path / "iso.db", "--require-login", "--no-embeddings")
    try:
        users_cli(srv.db_url, "add", "alice", "--password-stdin", stdin="alice-password\n")
        users_cli(srv.db_url, "add", "bob", "--password-stdin", stdin="bob-password\n")
        srv.wait_ready()
        # without login: nothing
        anon = httpx.Client(base_url=srv.url, timeout=30)
        assert anon.get("/api/conversations").status_code == 401
        assert anon.get("/api/me").json()["error"]["code"] == "login_required"
        assert anon.post("/api/login", json={"username": "alice", "password": "wrong-one"}).status_code == 401

        alice, bob = _login(srv.url, "alice", "alice-password"), _login(srv.url, "bob", "bob-password")
        conv = alice.post("/api/conversations", json={"system_prompt": "secret plans"}).json()
        cid = conv["id"]
        events = _chat(alice, cid, "alice's private question")
        answer = next(d["message"] for n, d in events if n == "done")
        pair = next(d for n, d in _chat(alice, cid, "compare please", compare=True) if n == "pair")

        assert bob.get("/api/conversations").json()["data"] == []
        not_found = [
            bob.get(f"/api/conversations/{cid}"),
            bob.patch(f"/api/conversations/{cid}", json={"title": "mine now"}),
            bob.delete(f"/api/conversations/{cid}"),
            bob.post(f"/api/conversations/{cid}/chat", json={"content": "hi"}),
            bob.post(f"/api/messages/{answer['id']}/feedback", json={"rating": -1}),
            bob.put(f"/api/messages/{answer['id']}", json={"content": "vandalised"}),
            bob.post(f"/api/pairs/{pair['pair_id']}/choose", json={"chosen": 0}),
        ]
        for r in not_found:
            assert r.status_code == 404, (r.request.method, r.request.url, r.text)
            assert r.json()["error"]["code"] == "not_found"
        # bob is not an admin: no labelling, no export
        assert bob.post("/api/label/demonstrations", json={"prompt": [{"role": "user", "content": "q"}],
                                                           "response": "a"}).status_code == 403
        assert bob.get("/api/admin/export/sft").status_code == 403

        mine = alice.get(f"/api/conversations/{cid}").json()
        assert mine["title"] == "alice's private question" and mine["system_prompt"] == "secret plans"
        assert [m["content"] for m in mine["messages"]][:2] == ["alice's private question", answer["content"]]
        assert len(alice.get("/api/conversations").json()["data"]) == 1
        # logging out ends the session
        alice.post("/api/logout")
        assert alice.get("/api/conversations").status_code == 401
    finally:
        srv.stop()


def test_acknowledged_messages_survive_kill(tiny_ckpt, tmp_path):
    db = tmp_path / "kill.db"
    srv = ServerProcess(tiny_ckpt, db).wait_ready()
    c = httpx.Client(base_url=srv.url, timeout=60)
    cid = c.post("/api/conversations", json={}).json()["id"]
    first = _chat(c, cid, "first question")
    first_answer = next(d["message"] for n, d in first if n == "done")
    acked = None
    with c.stream("POST", f"/api/conversations/{cid}/chat",
                  json={"content": "second question, 第二个问题", "settings": {"max_tokens": 200}}) as r:
        assert r.status_code == 200
        for name, data in _sse_events(r):
            if name == "user":
                acked = data["message"]  # the server says it has it...
                srv.kill()  # ...and dies at once, mid-answer
                break
    c.close()
    assert acked is not None and acked["content"] == "second question, 第二个问题"

    srv2 = ServerProcess(tiny_ckpt, db).wait_ready()
    try:
        conv = httpx.get(f"{srv2.url}/api/conversations/{cid}", timeout=30).json()
        ids = [m["id"] for m in conv["messages"]]
        contents = [m["content"] for m in conv["messages"]]
        assert contents[:3] == ["first question", first_answer["content"], "second question, 第二个问题"]
        assert acked["id"] in ids and first_answer["id"] in ids
    finally:
        srv2.stop()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] >= 2


def test_migrations_upgrade_an_old_database(tmp_path):
    from alignchat.serve.store import SCHEMA_VERSION, Store
    db = tmp_path / "old.db"
    s = Store(f"sqlite:///{db}")
    s.dispose()
    with sqlite3.connect(db) as con:  # pretend the file was made by version 1
        con.execute("DROP INDEX ix_messages_conv_seq")
        con.execute("DELETE FROM schema_version")
        con.execute("INSERT INTO schema_version (version, applied) VALUES (1, '2024-01-01 00:00:00')")
    s = Store(f"sqlite:///{db}")
    s.dispose()
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "ix_messages_conv_seq" in names


def test_feedback_export_schemas(tiny_ckpt, tmp_path):
    srv = ServerProcess(tiny_ckpt, tmp_path / "fb.db", "--no-embeddings").wait_ready()
    try:
        c = httpx.Client(base_url=srv.url, timeout=60)  # loopback: the local admin user, no login
        cid = c.post("/api/conversations", json={"system_prompt": "Be kind."}).json()["id"]
        ans = next(d["message"] for n, d in _chat(c, cid, "Hello 你好") if n == "done")
        assert c.post(f"/api/messages/{ans['id']}/feedback", json={"rating": 1}).json()["rating"] == 1
        assert c.put(f"/api/messages/{ans['id']}", json={"content": "Hello! 你好！"}).status_code == 200
        pair = next(d for n, d in _chat(c, cid, "Compare this", compare=True) if n == "pair")
        assert c.post(f"/api/pairs/{pair['pair_id']}/choose", json={"chosen": 1}).status_code == 200
        assert c.post(f"/api/pairs/{pair['pair_id']}/choose", json={"chosen": 0}).status_code == 409
        conv = c.get(f"/api/conversations/{cid}").json()
        assert conv["messages"][-1]["content"] == pair["responses"][1]  # the chosen answer joins the chat
        sample = c.post("/api/label/sample", json={"prompt": [{"role": "user", "content": "Name a colour."}],
                                                   "k": 3, "settings": {"max_tokens": 5}}).json()
        assert len(sample["responses"]) == 3
        assert c.post("/api/label/rankings", json={"prompt": [{"role": "user", "content": "Name a colour."}],
                                                   "responses": sample["responses"], "ranking": [2, 0, 0]}).status_code == 400
        assert c.post("/api/label/rankings", json={"prompt": [{"role": "user", "content": "Name a colour."}],
                                                   "responses": sample["responses"], "ranking": [2, 0, 1],
                                                   "criteria": ["helpful", "honest"]}).status_code == 200
        assert c.post("/api/label/demonstrations", json={"prompt": [{"role": "user", "content": "Say hi."}],
                                                         "response": "Hi there!"}).status_code == 200
    finally:
        srv.stop()
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "alignchat.cli", "feedback", "export", "--db", srv.db_url,
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    comps = [json.loads(x) for x in (out / "comparisons.jsonl").read_text().splitlines()]
    assert {r["source"] for r in sft} == {"ui:demonstration", "ui:edit"}
    for r in sft:
        assert set(r) == {"id", "messages", "source", "task", "format", "meta"}
        assert r["format"] in ("demonstration", "dialogue") and r["messages"][-1]["role"] == "assistant"
    edit = next(r for r in sft if r["source"] == "ui:edit")
    assert edit["messages"] == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello 你好"},
                                {"role": "assistant", "content": "Hello! 你好！"}]
    by_source = {r["source"]: r for r in comps}
    assert set(by_source) == {"ui:ranking", "ui:pair", "ui:thumb"}
    for r in comps:
        assert {"id", "prompt", "responses", "ranking", "criteria", "labeller", "source", "created", "meta"} <= set(r)
        assert r["labeller"] == "human:local" and sorted(r["ranking"]) == list(range(len(r["responses"])))
    assert by_source["ui:ranking"]["ranking"] == [2, 0, 1] and len(by_source["ui:ranking"]["responses"]) == 3
    assert by_source["ui:pair"]["ranking"] == [1, 0] and by_source["ui:pair"]["responses"] == pair["responses"]
    thumb = by_source["ui:thumb"]
    assert thumb["rating"] == 1 and thumb["ranking"] == [0] and len(thumb["responses"]) == 1
    assert thumb["prompt"][-1] == {"role": "user", "content": "Hello 你好"}
