"""`alignchat serve --upstream URL` with a second real alignchat server as the upstream: whole and streamed
replies, n choices and stop strings are the upstream's own; a client that hangs up (streamed or not) aborts
the upstream's request; an upstream that is down, or refuses this server's key, is a prompt 502 in OpenAI's
shape; the upstream's 4xx pass through and what needs a local model is a 501; the web UI chats through it;
the upstream's key is sent and never shown."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest

from conftest import make_tiny_model
from serve_support import (ROOT, ProxyProcess, free_port, keyed_server, post_then_hang_up, sse_events as _sse_events,
                           stream_then_hang_up)

LONG_CONTEXT = 65536  # so that one request could run for minutes: a hang-up always finds it still running
KEY_ENV = "ALIGNCHAT_TEST_UPSTREAM_KEY"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def long_ckpt(tiny_tokenizer, tmp_path_factory):
    """tiny_ckpt's model and tokenizer with a very long context (see test_serve_batching.long_ckpt)."""
    from alignchat.checkpoint import save_checkpoint
    path = tmp_path_factory.mktemp("long") / "long"
    save_checkpoint(path, make_tiny_model(tiny_tokenizer.vocab_size, max_seq_len=LONG_CONTEXT), tiny_tokenizer,
                    meta={"stage": "test"})
    return path


@pytest.fixture(scope="module")
def upstream(long_ckpt, tmp_path_factory):
    """The upstream: a real alignchat server that wants an API key. (server, key)"""
    with keyed_server(long_ckpt, tmp_path_factory.mktemp("upstream") / "up.db", "--no-embeddings", "--max-batch",
                      "2", "--context", str(LONG_CONTEXT), user="gateway", password="gateway password 1") as up:
        yield up


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    up, key = upstream
    srv = ProxyProcess(up.url + "/v1", tmp_path_factory.mktemp("proxy") / "proxy.db",
                       "--upstream-api-key-env", KEY_ENV, env={KEY_ENV: key}).wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="local-no-key", max_retries=0, timeout=120)


def _direct(upstream, path: str, body: dict) -> dict:
    """The same request sent to the upstream itself."""
    up, key = upstream
    r = httpx.post(up.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _idle(s: dict) -> bool:
    return s["active"] == 0 and s["waiting"] == 0


def test_whole_and_streamed_replies_are_the_upstreams(upstream, proxy, client, tiny_tokenizer):
    up, key = upstream
    # the upstream's model; embeddings stay with this server's own encoder
    assert [m.id for m in client.models.list().data] == ["long", "all-minilm-l6-v2"]
    h = proxy.health()
    assert h["status"] == "ok" and h["model"] == "long" and h["engine"] is None
    assert h["scheduler"]["upstream"]["url"] == up.url + "/v1" and h["scheduler"]["upstream"]["answers"] is True

    greedy = dict(temperature=0, max_tokens=16)
    direct = _direct(upstream, "/v1/chat/completions", {"model": "long", "messages": CHAT, "ignore_eos": True, **greedy})
    before = up.health()["scheduler"]
    whole = client.chat.completions.create(model="long", messages=CHAT, extra_body={"ignore_eos": True}, **greedy)
    assert whole.model == "long" and whole.choices[0].message.content == direct["choices"][0]["message"]["content"]
    assert whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (direct["usage"]["prompt_tokens"], 16)

    chunks = list(client.chat.completions.create(model="long", messages=CHAT, extra_body={"ignore_eos": True},
                                                 stream=True, stream_options={"include_usage": True}, **greedy))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # delivered in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens and chunks[-1].usage.completion_tokens == 16
    after = up.health()["scheduler"]
    assert after["completed"] - before["completed"] == 2  # both were generated upstream

    # n choices: one upstream request each, choice i with seed + i, as the upstream does them itself
    sampled = dict(temperature=1.0, seed=7, max_tokens=12, n=3)
    direct_n = _direct(upstream, "/v1/chat/completions", {"model": "long", "messages": CHAT, **sampled})
    via_n = client.chat.completions.create(model="long", messages=CHAT, **sampled)
    assert [c.message.content for c in via_n.choices] == [c["message"]["content"] for c in direct_n["choices"]]
    assert len({c.message.content for c in via_n.choices}) > 1

    # /v1/completions: text prompts, and token-id prompts (the upstream model's ids) passed on as they are
    for prompt in (["The capital", "北京是"], [tiny_tokenizer.encode("The quick brown")]):
        body = {"model": "long", "prompt": prompt, "temperature": 0, "max_tokens": 6, "ignore_eos": True}
        direct_c = _direct(upstream, "/v1/completions", body)
        via_c = client.completions.create(**{k: v for k, v in body.items() if k != "ignore_eos"},
                                          extra_body={"ignore_eos": True})
        assert [c.text for c in via_c.choices] == [c["text"] for c in direct_c["choices"]]
        assert via_c.usage.prompt_tokens == direct_c["usage"]["prompt_tokens"]
        assert via_c.usage.completion_tokens == 6 * len(prompt)
    streamed = client.completions.create(model="long", prompt="The capital", temperature=0, max_tokens=6, stream=True,
                                         extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed if c.choices) == \
        _direct(upstream, "/v1/completions", {"model": "long", "prompt": "The capital", "temperature": 0,
                                              "max_tokens": 6, "ignore_eos": True})["choices"][0]["text"]

    # the upstream's key went with every request, and is nowhere to be seen
    assert key not in proxy.log() and key not in json.dumps(proxy.health())


def test_stop_strings_reach_the_upstream(upstream, client):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    full = client.chat.completions.create(model="long", messages=msgs, temperature=0, max_tokens=32,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    assert len(full) > 12
    stop = full[9:12]
    expected = full[:full.index(stop)]
    cut = client.chat.completions.create(model="long", messages=msgs, temperature=0, max_tokens=32, stop=[stop],
                                         extra_body={"ignore_eos": True})
    assert cut.choices[0].message.content == expected and cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 32
    chunks = list(client.chat.completions.create(model="long", messages=msgs, temperature=0, max_tokens=32,
                                                 stop=[stop], stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    direct = _direct(upstream, "/v1/chat/completions", {"model": "long", "messages": msgs, "temperature": 0,
                                                        "max_tokens": 32, "stop": [stop], "ignore_eos": True})
    assert direct["choices"][0]["message"]["content"] == expected


def test_client_disconnect_aborts_the_upstream_request(upstream, proxy):
    up, _key = upstream
    max_tokens = LONG_CONTEXT - 64
    body = {"model": "long", "messages": [{"role": "user", "content": "Tell me everything."}], "temperature": 0,
            "max_tokens": max_tokens, "ignore_eos": True}
    start, mine = up.wait_scheduler(_idle), proxy.wait_scheduler(_idle)

    # streamed: read a few chunks from the proxy, then hang up
    def upstream_generating():
        assert up.health()["scheduler"]["active"] == 1  # the upstream is still generating
    stream_then_hang_up(proxy.url, body, upstream_generating)
    s = up.wait_scheduler(_idle)
    assert s["aborted"] - start["aborted"] == 1 and s["completed"] == start["completed"]
    assert s["tokens"] - start["tokens"] < max_tokens  # stopped early, not run to max_tokens

    # non-streamed: send the request on a raw socket, wait until the upstream generates it, then hang up
    post_then_hang_up(proxy.port, body, lambda: up.wait_scheduler(lambda s: s["active"] == 1))
    s = up.wait_scheduler(_idle)
    assert s["aborted"] - start["aborted"] == 2 and s["completed"] == start["completed"]
    assert s["tokens"] - start["tokens"] < 2 * max_tokens
    p = proxy.wait_scheduler(_idle)
    assert p["aborted"] - mine["aborted"] == 2 and p["completed"] == mine["completed"]

    # the upstream's slot is free again: the next request is answered in full
    r = httpx.post(proxy.url + "/v1/chat/completions", json={**body, "max_tokens": 5}, timeout=60).json()
    assert r["usage"]["completion_tokens"] == 5


def test_upstream_errors_pass_through_and_local_only_features_are_501(proxy, client):
    with pytest.raises(openai.BadRequestError) as e:  # the upstream checks its context, and says so
        client.chat.completions.create(model="long", messages=CHAT, max_tokens=LONG_CONTEXT + 100)
    assert e.value.status_code == 400 and e.value.code == "context_length_exceeded"
    assert f"maximum context length is {LONG_CONTEXT}" in e.value.message and e.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert e.value.code == "model_not_found"

    for path, body, param in [
            ("/v1/chat/completions", {"messages": CHAT, "logprobs": True, "max_tokens": 2}, "logprobs"),
            ("/v1/completions", {"prompt": "The capital", "logprobs": 2, "max_tokens": 2}, "logprobs"),
            ("/v1/completions", {"prompt": "The capital", "echo": True, "max_tokens": 0}, "echo")]:
        r = httpx.post(proxy.url + path, json={"model": "long", **body}, timeout=60)
        assert r.status_code == 501, r.text
        err = r.json()["error"]
        assert err["code"] == "needs_local_model" and err["param"] == param and "local model" in err["message"]


def test_web_ui_chats_through_the_upstream(upstream, proxy):
    with httpx.Client(base_url=proxy.url, timeout=120) as c:
        me = c.get("/api/me").json()
        assert me["model"] == "long" and me["model_status"] == "ok"
        cid = c.post("/api/conversations", json={"title": "via upstream"}).json()["id"]
        with c.stream("POST", f"/api/conversations/{cid}/chat",
                      json={"content": "Hello there", "settings": {"temperature": 0, "max_tokens": 10}}) as r:
            assert r.status_code == 200
            events = list(_sse_events(r))
        kinds = [k for k, _ in events]
        assert kinds[0] == "user" and kinds[-1] == "done" and "delta" in kinds
        answer = events[-1][1]["message"]
        assert answer["model"] == "long" and answer["content"] == "".join(d["text"] for k, d in events if k == "delta")
        direct = _direct(upstream, "/v1/chat/completions", {"model": "long", "temperature": 0, "max_tokens": 10,
                                                            "messages": [{"role": "user", "content": "Hello there"}]})
        assert answer["content"] == direct["choices"][0]["message"]["content"]
        stored = c.get(f"/api/conversations/{cid}").json()["messages"]
        assert [(m["role"], m["content"]) for m in stored] == [("user", "Hello there"), ("assistant", answer["content"])]

        # compare mode: two answers, sampled upstream, recorded as a pair here
        with c.stream("POST", f"/api/conversations/{cid}/chat",
                      json={"content": "And then?", "compare": True,
                            "settings": {"temperature": 1.0, "max_tokens": 8, "seed": 3}}) as r:
            pair = next(d for k, d in _sse_events(r) if k == "pair")
        assert len(pair["responses"]) == 2 and all(pair["responses"])


def test_upstream_down_is_a_prompt_502(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    named = ProxyProcess(dead, tmp_path / "named.db", "--upstream-model", "m")
    unnamed = ProxyProcess(dead, tmp_path / "unnamed.db")
    try:
        for srv in (named, unnamed):
            h = srv.wait_health(lambda h: h["status"] != "loading")
            assert h["status"] == "unavailable" and h["engine"] is None
            assert h["scheduler"]["upstream"]["answers"] is False and dead in h["error"]
        for srv in (named, unnamed):  # unnamed: the model's name is not known, as nothing answered
            for path, body in [("/v1/chat/completions", {"messages": CHAT, "max_tokens": 4}),
                               ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 4, "stream": True}),
                               ("/v1/completions", {"prompt": "The capital", "max_tokens": 4})]:
                r = httpx.post(srv.url + path, json={"model": "m", **body}, timeout=60)
                assert r.status_code == 502, (path, body, r.text)
                err = r.json()["error"]
                assert err["code"] == "upstream_unavailable" and err["type"] == "server_error"
                assert dead in err["message"]
        assert [m["id"] for m in httpx.get(named.url + "/v1/models", timeout=30).json()["data"]] == ["m",
                                                                                                   "all-minilm-l6-v2"]
        # without --upstream-model and no answer yet, no chat model is listed (never an id of null)
        assert [m["id"] for m in httpx.get(unnamed.url + "/v1/models", timeout=30).json()["data"]] == [
            "all-minilm-l6-v2"]
        # the web UI: the user's message is kept, and the answer is an error event that says why
        with httpx.Client(base_url=named.url, timeout=60) as c:
            cid = c.post("/api/conversations", json={}).json()["id"]
            with c.stream("POST", f"/api/conversations/{cid}/chat", json={"content": "Anyone there?"}) as r:
                events = list(_sse_events(r))
            assert [k for k, _ in events] == ["user", "error"]
            assert events[1][1]["error"]["code"] == "upstream_unavailable"
            assert [m["role"] for m in c.get(f"/api/conversations/{cid}").json()["messages"]] == ["user"]
    finally:
        named.stop()
        unnamed.stop()


def test_a_refused_upstream_key_is_a_502_that_never_shows_it(upstream, tmp_path):
    up, _key = upstream
    wrong = "ac-not-the-key-0123456789abcdef"
    srv = ProxyProcess(up.url, tmp_path / "wrong.db", "--upstream-model", "long", "--upstream-api-key-env", KEY_ENV,
                       env={KEY_ENV: wrong})
    try:
        h = srv.wait_health(lambda h: h["status"] != "loading")
        assert h["status"] == "unavailable" and "HTTP 401" in h["error"]
        r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "long", "messages": CHAT, "max_tokens": 4},
                       timeout=60)
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth_failed"
        assert "--upstream-api-key-env" in r.json()["error"]["message"]
        assert wrong not in r.text and wrong not in json.dumps(srv.health()) and wrong not in srv.log()
    finally:
        srv.stop()


def test_local_model_flags_are_refused_next_to_upstream():
    out = subprocess.run([sys.executable, "-m", "alignchat.cli", "serve", "--upstream", "http://127.0.0.1:9/v1",
                          "--model", "tiny", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "--model, --device concern a local model" in out.stderr
