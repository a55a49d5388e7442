"""The library_search tool scoped to the requesting account's own library, in the real server over HTTP.

Two accounts each upload one document; then each asks with `builtin_tools: ["library_search"]` and
`tool_choice: "required"`, which forces the first round's call through the function-calling grammar, so
the call happens whatever the tiny model would write by itself (its query is whatever it generates under
the grammar). Every passage the tool returned must be the asker's own: it opens with the asker's key
and is a 404 with the other's."""
from __future__ import annotations

import json

import httpx
import pytest

from serve_support import ServerProcess, users_cli
from tools_support import tools_ckpt

PASSWORD = "correct horse battery"
DOCS = {
    "alice": ("tides.md", "# Ocean tides\n\nTides are the rise and fall of sea levels caused by the gravity of the "
                          "Moon and the Sun acting on the rotating Earth. Spring tides follow the new and full moon."),
    "bob": ("volcano.md", "# Volcanoes\n\nA volcano is a rupture in the crust through which lava, ash and gases "
                          "escape. Shield volcanoes are built almost entirely of fluid lava flows."),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tools-library")
    (folder / "no-moderation.toml").write_text("enabled = false\n")
    srv = ServerProcess(tools_ckpt(), folder / "lib.db", "--require-login", "--no-embeddings",
                        "--tools", "library_search", "--moderation-policy", str(folder / "no-moderation.toml"))
    try:
        keys = {}
        for name in DOCS:
            users_cli(srv.db_url, "add", name, "--password-stdin", stdin=PASSWORD + "\n")
            keys[name] = users_cli(srv.db_url, "key", name).strip()
        srv.wait_ready()
        for name, (filename, text) in DOCS.items():
            r = httpx.post(srv.url + "/v1/library/documents", params={"filename": filename}, content=text.encode(),
                           headers={"Authorization": f"Bearer {keys[name]}",
                                    "Content-Type": "application/octet-stream"}, timeout=300)
            assert r.status_code == 200 and r.json()["results"][0]["status"] == "added", r.text
        yield srv, keys
    finally:
        srv.stop()


@pytest.mark.parametrize("asker, other", [("alice", "bob"), ("bob", "alice")])
def test_library_search_returns_only_the_askers_passages(server, asker, other):
    srv, keys = server
    r = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {keys[asker]}"}, timeout=300,
                   json={"model": str(tools_ckpt()), "messages": [{"role": "user", "content": "What does my library say?"}],
                         "builtin_tools": ["library_search"], "tool_choice": "required", "max_tool_rounds": 1,
                         "temperature": 0, "max_tokens": 48})
    assert r.status_code == 200, r.text
    call = r.json()["builtin_tool_calls"][0]
    assert call["name"] == "library_search" and not call["error"], call
    passages = json.loads(call["result"])["passages"]
    assert passages, call
    title = DOCS[asker][1].splitlines()[0].lstrip("# ")
    for p in passages:
        assert p["title"] == title
        mine = httpx.get(f"{srv.url}/v1/library/passages/{p['passage_id']}", timeout=60,
                         headers={"Authorization": f"Bearer {keys[asker]}"})
        theirs = httpx.get(f"{srv.url}/v1/library/passages/{p['passage_id']}", timeout=60,
                           headers={"Authorization": f"Bearer {keys[other]}"})
        assert mine.status_code == 200 and mine.json()["text"].startswith(p["text"][:40])
        assert theirs.status_code == 404
