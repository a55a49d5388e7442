"""Built-in tools in the real server over HTTP: the UI's tool loop and its stored rounds, the API's
`builtin_tools`, the three opt-in levels (deployment, account/key, conversation), admin rights, the round
limit, the python tool's failures as 200s with tool errors, and `--upstream` -> 501.

The model is `tools_support.tools_ckpt()`: a tiny model fine-tuned to call a tool on a few fixed questions
(see that module), so every tool result below comes from the real tool running what the model wrote.
Moderation is off in these servers (a policy file saying so): what is tested here is the tools, and a
moderation classifier would only add its own load time."""
from __future__ import annotations

import contextlib
import json

import httpx
import pytest

from serve_support import ProxyProcess, ServerProcess, openai_error, sse_events, users_cli
from tools_support import (ANSWER, EXPRESSION, LOOP_ANSWER, LOOP_QUESTION, PRINT_ANSWER, PRINT_QUESTION, QUESTION,
                           tools_ckpt)

PASSWORD = "correct horse battery"
GREEDY = {"temperature": 0, "max_tokens": 64}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A login-required server enabling calculator and python (not library_search), with admin `root`,
    users `alice` and `bob`, and alice's keys: one with her rights, one limited to python."""
    db = tmp_path_factory.mktemp("tools") / "tools.db"
    srv = ServerProcess(tools_ckpt(), db, "--require-login", "--no-embeddings", "--tools", "calculator,python",
                        "--tool-timeout", "2", "--max-tool-rounds", "3", *no_moderation(db.parent))
    try:
        users_cli(srv.db_url, "add", "root", "--admin", "--password-stdin", stdin=PASSWORD + "\n")
        for name in ("alice", "bob"):
            users_cli(srv.db_url, "add", name, "--password-stdin", stdin=PASSWORD + "\n")
        keys = {"alice": users_cli(srv.db_url, "key", "alice").strip(),
                "alice-python": users_cli(srv.db_url, "key", "alice", "--tools", "python").strip()}
        srv.wait_ready()
        yield srv, keys
    finally:
        srv.stop()


def no_moderation(folder) -> list[str]:
    policy = folder / "no-moderation.toml"
    policy.write_text("enabled = false\n")
    return ["--moderation-policy", str(policy)]


@contextlib.contextmanager
def login(srv, name: str):
    """An HTTP client logged into the UI as `name` (its session cookie kept)."""
    with httpx.Client(base_url=srv.url, timeout=120) as c:
        assert c.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200
        yield c


def chat(c: httpx.Client, cid: str, content: str) -> list[tuple[str, dict]]:
    with c.stream("POST", f"/api/conversations/{cid}/chat", json={"content": content, "settings": GREEDY}) as r:
        assert r.status_code == 200
        return list(sse_events(r))


def api(srv, key: str, **body) -> httpx.Response:
    return httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                      json={"model": str(tools_ckpt()), "messages": [{"role": "user", "content": QUESTION}],
                            "temperature": 0, "max_tokens": 64, **body})


def test_ui_chat_runs_the_calculator_and_stores_the_round(server):
    srv, _ = server
    with login(srv, "alice") as c:
        assert c.get("/api/me").json()["tools"] == ["calculator", "python"]
        cid = c.post("/api/conversations", json={"tools": ["calculator"]}).json()["id"]
        events = chat(c, cid, QUESTION)
        names = [e for e, _ in events]
        assert names[0] == "user" and names[-1] == "done" and names.count("tool") == 1
        tool = next(d for e, d in events if e == "tool")
        call = tool["call"]["tool_calls"][0]
        assert call["function"]["name"] == "calculator"
        assert json.loads(call["function"]["arguments"]) == {"expression": EXPRESSION}
        assert [(r["content"], r["tool"]["error"], r["tool"]["tool_call_id"]) for r in tool["results"]] == [
            (ANSWER, False, call["id"])]
        assert events[-1][1]["message"]["content"] == ANSWER
        # a reload shows the round: the call, its result, then the answer
        conv = c.get(f"/api/conversations/{cid}").json()
        assert conv["tools"] == ["calculator"]
        assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "tool", "assistant"]
        assert conv["messages"][1]["tool_calls"][0]["id"] == call["id"]
        assert conv["messages"][2]["content"] == ANSWER and conv["messages"][3]["content"] == ANSWER
        # regenerate replaces the whole answer, tool round included, and runs the loop again
        with c.stream("POST", f"/api/conversations/{cid}/chat", json={"regenerate": True, "settings": GREEDY}) as r:
            again = [e for e, _ in sse_events(r)]
        assert again.count("tool") == 1 and again[-1] == "done"
        roles = [m["role"] for m in c.get(f"/api/conversations/{cid}").json()["messages"]]
        assert roles == ["user", "assistant", "tool", "assistant"]


def test_a_conversation_with_tools_off_offers_none(server):
    srv, _ = server
    with login(srv, "alice") as c:
        cid = c.post("/api/conversations", json={}).json()["id"]
        events = chat(c, cid, QUESTION)
        assert "tool" not in [e for e, _ in events] and events[-1][0] == "done"
        roles = [m["role"] for m in c.get(f"/api/conversations/{cid}").json()["messages"]]
        assert roles == ["user", "assistant"]


def test_tools_the_deployment_does_not_enable_are_refused(server):
    srv, keys = server
    with login(srv, "alice") as c:
        r = c.post("/api/conversations", json={"tools": ["library_search"]})
        assert r.status_code == 400
        err = openai_error(r)
        assert err["param"] == "tools" and err["code"] == "tool_not_enabled"
        r = c.post("/api/conversations", json={"tools": ["shell"]})
        assert r.status_code == 400 and "unknown tool 'shell'" in openai_error(r)["message"]
    r = api(srv, keys["alice"], builtin_tools=["library_search"])
    assert r.status_code == 400 and openai_error(r)["code"] == "tool_not_enabled", r.text


def test_the_api_runs_builtin_tools_for_a_key_with_the_right(server):
    srv, keys = server
    r = api(srv, keys["alice"], builtin_tools=["calculator"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == ANSWER
    [call] = body["builtin_tool_calls"]
    assert (call["name"], json.loads(call["arguments"]), call["result"], call["error"]) == (
        "calculator", {"expression": EXPRESSION}, ANSWER, False)
    assert body["usage"]["completion_tokens"] > 0


def test_a_key_without_the_tool_is_refused(server):
    srv, keys = server
    r = api(srv, keys["alice-python"], builtin_tools=["calculator"])
    assert r.status_code == 403
    assert openai_error(r)["code"] == "tool_not_allowed" and openai_error(r)["param"] == "builtin_tools"


def test_python_failures_are_tool_errors_in_a_200(server):
    srv, keys = server
    for question, result, answer in [(LOOP_QUESTION, "error: timed out after 2 s", LOOP_ANSWER),
                                     (PRINT_QUESTION, "error: printed more than 64 KiB; stopped", PRINT_ANSWER)]:
        r = api(srv, keys["alice-python"], builtin_tools=["python"],
                messages=[{"role": "user", "content": question}])
        assert r.status_code == 200, r.text
        [call] = r.json()["builtin_tool_calls"]
        assert call["name"] == "python" and call["error"] and call["result"] == result
        assert r.json()["choices"][0]["message"]["content"] == answer


def test_rounds_are_bounded_by_the_server(server):
    srv, keys = server
    r = api(srv, keys["alice"], builtin_tools=["calculator"], max_tool_rounds=4)
    assert r.status_code == 400 and openai_error(r)["param"] == "max_tool_rounds"
    r = api(srv, keys["alice"], builtin_tools=["calculator"], max_tool_rounds=0)
    assert r.status_code == 200 and r.json()["builtin_tool_calls"] == []
    for bad, param in [({"stream": True}, "stream"), ({"n": 2}, "n"),
                       ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "builtin_tools")]:
        r = api(srv, keys["alice"], builtin_tools=["calculator"], **bad)
        assert r.status_code == 400 and openai_error(r)["param"] == param


def test_the_admin_enables_and_disables_a_users_tools(server):
    srv, _ = server
    with login(srv, "root") as admin, login(srv, "bob") as bob:
        assert bob.get("/api/me").json()["tools"] == ["calculator", "python"]
        r = bob.put("/api/admin/users/bob/tools", json={"tools": ["calculator", "python"]})
        assert r.status_code == 403  # only an admin
        r = admin.put("/api/admin/users/bob/tools", json={"tools": ["python"]})
        assert r.status_code == 200 and r.json() == {"username": "bob", "tools": ["python"]}
        assert bob.get("/api/me").json()["tools"] == ["python"]
        r = bob.post("/api/conversations", json={"tools": ["calculator"]})
        assert r.status_code == 403 and openai_error(r)["code"] == "tool_not_allowed"
        # a conversation that had the calculator on no longer offers it once the admin disables it
        assert admin.put("/api/admin/users/bob/tools", json={"tools": None}).status_code == 200
        cid = bob.post("/api/conversations", json={"tools": ["calculator"]}).json()["id"]
        assert admin.put("/api/admin/users/bob/tools", json={"tools": []}).json()["tools"] == []
        assert "tool" not in [e for e, _ in chat(bob, cid, QUESTION)]
        assert admin.put("/api/admin/users/nobody/tools", json={"tools": []}).status_code == 404
        r = admin.put("/api/admin/users/bob/tools", json={"tools": ["shell"]})
        assert r.status_code == 400 and openai_error(r)["param"] == "tools"
    # and the admin CLI does the same
    users_cli(srv.db_url, "tools", "bob", "--allow", "calculator")
    with login(srv, "bob") as bob:
        assert bob.get("/api/me").json()["tools"] == ["calculator"]
    users_cli(srv.db_url, "tools", "bob", "--all")


def test_with_an_upstream_builtin_tools_are_501(server, tmp_path):
    srv, keys = server
    proxy = ProxyProcess(srv.url + "/v1", tmp_path / "proxy.db", "--no-embeddings", "--tools", "calculator",
                         *no_moderation(tmp_path),
                         env={"OPENAI_API_KEY": keys["alice"]})
    try:
        proxy.wait_health(lambda h: h["status"] == "ok")
        model = httpx.get(proxy.url + "/v1/models", timeout=60).json()["data"][0]["id"]
        r = httpx.post(proxy.url + "/v1/chat/completions", timeout=60, json={
            "model": model, "messages": [{"role": "user", "content": QUESTION}], "builtin_tools": ["calculator"]})
        assert r.status_code == 501 and openai_error(r)["code"] == "needs_local_model"
        c = httpx.Client(base_url=proxy.url, timeout=60)
        assert c.get("/api/me").json()["tools"] == []
        r = c.post("/api/conversations", json={"tools": ["calculator"]})
        assert r.status_code == 501 and openai_error(r)["param"] == "tools"
        c.close()
    finally:
        proxy.stop()


def test_the_loop_runs_over_an_endpoint_client_with_the_servers_function_calling(server):
    """`run_tool_loop` outside the server: the model behind an OpenAI-compatible endpoint (this server,
    standard function calling, no built-in tools), the calculator run by the caller."""
    from alignchat.client import GREEDY as GREEDY_SAMPLING
    from alignchat.client.endpoint import EndpointClient
    from alignchat.tools.loop import run_tool_loop
    srv, keys = server
    with EndpointClient(srv.url, str(tools_ckpt()), api_key=keys["alice-python"]) as client:
        res = run_tool_loop(client, [{"role": "user", "content": QUESTION}], ["calculator"],
                            sampling=GREEDY_SAMPLING.but(max_tokens=64))
    assert [(c.name, json.loads(c.arguments), c.result) for c in res.calls] == [
        ("calculator", {"expression": EXPRESSION}, ANSWER)]
    assert res.final_text == ANSWER and [m["role"] for m in res.messages] == ["user", "assistant", "tool", "assistant"]
