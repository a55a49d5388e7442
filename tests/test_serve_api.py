"""The OpenAI-compatible API through the official `openai` client against a real uvicorn server."""
from __future__ import annotations

import json

import httpx
import numpy as np
import openai
import pytest

from serve_support import ServerProcess, users_cli


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    srv = ServerProcess(tiny_ckpt, tmp_path_factory.mktemp("api") / "api.db", "--max-batch", "4").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="local-no-key", max_retries=0, timeout=120)


def test_models_chat_whole_and_streamed(client, server):
    models = [m.id for m in client.models.list().data]
    assert models[0] == "tiny" and "all-minilm-l6-v2" in models

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12, seed=1)
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 5 and 1 <= whole.usage.completion_tokens <= 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    # streamed: the same greedy request gives the same text, delivered in pieces, ending with a finish reason
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=12,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [choice.finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens

    # the raw stream ends with data: [DONE]
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "model": "tiny", "messages": messages, "max_tokens": 3, "stream": True}, timeout=60) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"


def test_sampling_n_seed_stop_and_completions(client):
    msgs = [{"role": "user", "content": "Tell me a story."}]
    a = client.chat.completions.create(model="tiny", messages=msgs, temperature=1.0, max_tokens=16, seed=7, n=3)
    b = client.chat.completions.create(model="tiny", messages=msgs, temperature=1.0, max_tokens=16, seed=7, n=3)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]  # seeded: reproducible
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({c.message.content for c in a.choices}) > 1  # choice i uses seed + i

    full = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=24).choices[0].message.content
    if len(full) > 6:
        stop = full[3:6]
        cut = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=24, stop=[stop])
        assert cut.choices[0].message.content == full[:full.index(stop)]
        assert cut.choices[0].finish_reason == "stop"

    pen = client.chat.completions.create(model="tiny", messages=msgs, temperature=0, max_tokens=8,
                                         presence_penalty=1.5, frequency_penalty=0.5)
    assert pen.choices[0].message.content is not None

    comp = client.completions.create(model="tiny", prompt=["The capital", "北京是"], max_tokens=5, temperature=0, n=2)
    assert [c.index for c in comp.choices] == [0, 1, 2, 3]
    assert comp.choices[0].text == comp.choices[1].text  # greedy: both choices of one prompt agree
    assert comp.usage.completion_tokens <= 20
    streamed = client.completions.create(model="tiny", prompt="The capital", max_tokens=5, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == comp.choices[0].text


def test_embeddings(client):
    out = client.embeddings.create(model="all-minilm-l6-v2", input=["A cat sits on the mat.", "一只猫坐在垫子上。",
                                                                     "Stock markets fell sharply today."])
    vecs = np.array([d.embedding for d in out.data])
    assert vecs.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    sims = vecs @ vecs.T
    assert sims[0, 2] < sims[0, 0]
    as_float = client.embeddings.create(model="all-minilm-l6-v2", input="A cat sits on the mat.",
                                        encoding_format="float")
    assert np.allclose(as_float.data[0].embedding, vecs[0], atol=1e-5)  # base64 (client default) == float
    assert out.usage.prompt_tokens > 3


MALFORMED = [
    ("not json", b"{model: tiny", "invalid_json"),
    ("array body", json.dumps([1, 2]), None),
    ("missing messages", json.dumps({"model": "tiny"}), None),
    ("empty messages", json.dumps({"model": "tiny", "messages": []}), None),
    ("messages not a list", json.dumps({"model": "tiny", "messages": "hi"}), None),
    ("bad role", json.dumps({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}), None),
    ("content number", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": 5}]}), None),
    ("temperature string", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                       "temperature": "hot"}), None),
    ("temperature too high", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                         "temperature": 7}), None),
    ("negative max_tokens", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": -3}), None),
    ("n zero", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 0}), None),
    ("stream not bool", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                    "stream": "yes"}), None),
    ("too many stops", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                   "stop": ["a", "b", "c", "d", "e"]}), None),
    ("legacy functions unsupported", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                 "functions": [{"name": "f"}]}), "unsupported_parameter"),
    ("logit_bias unsupported", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                           "logit_bias": {"5": 10}}), "unsupported_parameter"),
    ("image part", json.dumps({"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}), None),
]


@pytest.mark.parametrize("name,body,code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_openai_4xx(server, name, body, code):
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 400, (name, r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["message"]
    if code:
        assert err["code"] == code


def test_other_endpoints_malformed(server):
    for path, body in [("/v1/completions", {"model": "tiny", "prompt": 5}),
                       ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": "many"}),
                       ("/v1/completions", {"model": "tiny", "prompt": [999999]}),
                       ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": 3}),
                       ("/v1/embeddings", {"model": "all-minilm-l6-v2", "input": []})]:
        r = httpx.post(server.url + path, json=body, timeout=30)
        assert r.status_code == 400, (path, body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.get(server.url + "/v1/nowhere", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and "error" in r.json()


def test_over_long_prompt_and_unknown_model(client, server):
    long_text = "The quick brown fox jumps over the lazy dog. " * 200  # far beyond the tiny model's 256 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": long_text}])
    assert e.value.status_code == 400
    assert "maximum context length is 256" in e.value.message and e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:  # prompt fits, but prompt + max_tokens does not
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
    assert "max_tokens" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt=long_text, stream=True)

    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert client.models.retrieve("tiny").id == "tiny"
    h = server.health()
    assert h["status"] == "ok" and h["scheduler"]["active"] == 0
    assert h["engine"]["device"] == "cpu" and h["engine"]["dtype"] == "float32" and h["engine"]["decode"] == "eager"


def test_api_keys_required_when_login_is_required(tiny_ckpt, tmp_path):
    db = tmp_path / "keys.db"
    srv = ServerProcess(tiny_ckpt, db, "--require-login", "--no-embeddings")
    try:
        users_cli(srv.db_url, "add", "alice", "--password-stdin", stdin="correct horse battery\n")
        key = users_cli(srv.db_url, "key", "alice").strip()
        srv.wait_ready()
        anon = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            anon.models.list()
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)
        assert ok.models.list().data[0].id == "tiny"
        r = ok.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.choices[0].message.role == "assistant"
    finally:
        srv.stop()


@pytest.mark.slow
def test_default_model_answers_through_openai_client(smollm2, tmp_path):
    srv = ServerProcess(smollm2, tmp_path / "smol.db", "--max-batch", "2", "--model-id", "smollm2-135m-instruct")
    try:
        srv.wait_ready(timeout=600)
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=600)
        r = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=20,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in r.choices[0].message.content
        chunks = client.chat.completions.create(model="smollm2-135m-instruct", temperature=0, max_tokens=20, stream=True,
                                                messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    finally:
        srv.stop()
