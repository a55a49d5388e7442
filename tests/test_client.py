"""The model-client layer: the same calls on a local checkpoint and on a real `alignchat serve` endpoint agree
(greedy text, token counts, log-likelihoods); the endpoint reads its key from the variable --api-key-env
names and never leaks it; errors name the URL; retries; the shared flag set; judges and verbs through it."""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignchat.client import GREEDY, LoglikelihoodUnsupported, Sampling, make_client
from alignchat.client.cli import add_client_args, client_from_args
from alignchat.client.endpoint import EndpointClient, EndpointError, normalise_base_url
from alignchat.errors import UserError

from serve_support import ROOT, ServerProcess, free_port, keyed_server

KEY_ENV = "ALIGNCHAT_TEST_ENDPOINT_KEY"


@pytest.fixture(scope="module")
def served(tiny_ckpt, tmp_path_factory):
    """A real server that requires an API key: (server, key)."""
    with keyed_server(tiny_ckpt, tmp_path_factory.mktemp("client") / "client.db", "--no-embeddings", "--max-batch",
                      "2") as served:
        yield served


@pytest.fixture(scope="module")
def local(tiny_ckpt):
    return make_client(model=str(tiny_ckpt), device="cpu")


@pytest.fixture
def remote(served, monkeypatch):
    srv, key = served
    monkeypatch.setenv(KEY_ENV, key)
    client = make_client(endpoint=srv.url, api_key_env=KEY_ENV)  # no model name: the server's first one
    yield client
    client.close()


def test_local_and_endpoint_clients_agree(local, remote):
    chat = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}]
    raw = "The quick brown fox"
    # greedy text, one prompt at a time on both sides
    for prompt in (chat, raw, local.tokenizer.encode("北京是中国的首都")):
        a = local.generate([prompt], GREEDY.but(max_tokens=12))[0]
        b = remote.generate([prompt], GREEDY.but(max_tokens=12))[0]
        assert a.text == b.text and a.completion_tokens == b.completion_tokens >= 1
        assert a.prompt_tokens == b.prompt_tokens == local.count_tokens(prompt)
    assert local.chat(chat, GREEDY.but(max_tokens=6)).text == remote.chat(chat, GREEDY.but(max_tokens=6)).text
    # token counts: the chat template is counted too
    for prompt in (chat, raw, "你好！今天我能帮你什么？"):
        assert local.count_tokens(prompt) == remote.count_tokens(prompt)
    assert local.count_tokens(chat) > local.count_tokens(chat[-1]["content"])
    # log-likelihoods: the remote one from echoed prompt logprobs over HTTP, the local one from the engine
    pairs = [("The capital of France is", " Paris"), ("Question: Is the sky blue?\nAnswer:", " yes"),
             ("The quick brown", " fox jumps over the lazy dog")]
    for (lp_a, greedy_a, n_a), (lp_b, greedy_b, n_b) in zip(local.loglikelihood(pairs), remote.loglikelihood(pairs)):
        assert n_a == n_b >= 1 and abs(lp_a - lp_b) < 1e-3 and greedy_a == greedy_b and lp_a < 0
    items = [("The capital of China is", [" Beijing", " Paris", " the moon"])]
    for row_a, row_b in zip(local.loglikelihood_choices(items), remote.loglikelihood_choices(items)):
        assert [round(s.logprob, 3) for s in row_a] == pytest.approx([round(s.logprob, 3) for s in row_b], abs=2e-3)
    assert remote.supports_loglikelihood and remote.model == "tiny"
    assert remote.usage.completion_tokens > 0 and remote.usage.scored_tokens > 0 and local.usage.scored_tokens > 0
    assert remote.describe() == {"backend": "openai", "model": "tiny", "base_url": remote.base_url}
    # a reply's own score needs the chat template, which only the local model has
    assert local.reply_loglikelihood([(chat, "Paris.")])[0].tokens >= 2
    with pytest.raises(LoglikelihoodUnsupported):
        remote.reply_loglikelihood([(chat, "Paris.")])


def test_endpoint_key_comes_from_the_named_variable_and_never_leaks(served, monkeypatch, caplog):
    srv, key = served
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv(KEY_ENV, raising=False)
    anonymous = EndpointClient(srv.url + "/v1/", api_key_env=KEY_ENV)
    with pytest.raises(EndpointError) as e:
        anonymous.chat([{"role": "user", "content": "hi"}], GREEDY.but(max_tokens=2))
    assert e.value.status == 401 and srv.url + "/v1/models" in str(e.value)
    monkeypatch.setenv("SOME_OTHER_VAR", key)
    keyed = EndpointClient(srv.url, model="tiny", api_key_env="SOME_OTHER_VAR")
    assert keyed.chat([{"role": "user", "content": "hi"}], GREEDY.but(max_tokens=2)).completion_tokens >= 1
    with pytest.raises(EndpointError) as bad:  # a server error names the URL and carries the server's message
        keyed.generate(["hi"], GREEDY.but(max_tokens=10_000_000))
    assert bad.value.status == 400 and f"{srv.url}/v1/completions: HTTP 400" in str(bad.value)
    assert key not in caplog.text and key not in repr(keyed) and key not in str(bad.value)


class _Flaky(BaseHTTPRequestHandler):
    """Answers the first `fail` POSTs with `status`, then like an OpenAI server."""

    def do_POST(self):
        srv = self.server
        srv.seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        if len(srv.seen) <= srv.fail:
            body = json.dumps({"error": {"message": "busy, try again", "code": srv.code}}).encode()
            self.send_response(srv.status)
            self.send_header("Retry-After", "0")
        else:
            body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def flaky():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    srv.seen, srv.fail, srv.status, srv.code = [], 0, 503, None
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_endpoint_retries_busy_servers_but_not_bad_requests(flaky):
    url = f"http://127.0.0.1:{flaky.server_address[1]}"
    flaky.fail = 2
    client = EndpointClient(url, model="m", retries=2)
    c = client.chat([{"role": "user", "content": "hi"}], Sampling(max_tokens=5, seed=7, stop=("a", "b", "c", "d", "e")))
    assert c.text == "ok" and c.prompt_tokens == 3 and len(flaky.seen) == 3
    body = flaky.seen[-1]  # OpenAI's fields only, at most 4 stop strings
    assert body["model"] == "m" and body["seed"] == 7 and body["stop"] == ["a", "b", "c", "d"]
    assert not {"top_k", "repetition_penalty", "ignore_eos"} & set(body)
    flaky.seen.clear()
    flaky.fail, flaky.status, flaky.code = 5, 400, "invalid_value"
    with pytest.raises(EndpointError) as e:
        client.chat([{"role": "user", "content": "hi"}])
    assert len(flaky.seen) == 1 and e.value.code == "invalid_value" and "busy, try again" in str(e.value)


def test_endpoint_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    client = EndpointClient(url, model="m", retries=1)
    with pytest.raises(EndpointError) as e:
        client.generate(["hi"])
    assert f"{url}/v1/completions: cannot connect" in str(e.value) and "after 2 attempts" in str(e.value)
    with pytest.raises(UserError):
        normalise_base_url("localhost:8000")
    assert normalise_base_url("http://h:1/v1/chat/completions") == normalise_base_url("http://h:1/") == "http://h:1/v1"


def test_one_flag_set_for_every_verb(tiny_ckpt):
    p = argparse.ArgumentParser()
    add_client_args(p, default_model="smollm2-135m-instruct", allow_none=True)
    local = client_from_args(p.parse_args(["--model", str(tiny_ckpt), "--device", "cpu"]), max_batch=2)
    assert local.kind == "local" and local.name == str(tiny_ckpt) and local.max_batch == 2 and local.device == "cpu"
    assert client_from_args(p.parse_args([])).name == "smollm2-135m-instruct"  # the verb's default, not loaded yet
    assert client_from_args(p.parse_args(["--model", "none"])) is None
    remote = client_from_args(p.parse_args(["--endpoint", "http://h:1", "--endpoint-model", "m", "--api-key-env", "V"]))
    assert remote.kind == "endpoint" and remote.model == "m" and remote.base_url == "http://h:1/v1"
    with pytest.raises(UserError):
        client_from_args(p.parse_args(["--model", "x", "--endpoint", "http://h:1"]))
    j = argparse.ArgumentParser()
    add_client_args(j, prefix="judge-", aliases={"--judge-url": "--judge-endpoint"})
    args = j.parse_args(["--judge-url", "http://h:2/v1"])  # an older spelling, hidden from --help
    assert client_from_args(args, "judge-").base_url == "http://h:2/v1" and "--judge-url" not in j.format_help()
    assert args.device == "auto" and "--judge-endpoint-model" in j.format_help()
    # the library's verbs: a default model per action, 'none', and the older --backend spelling
    from alignchat.library.cli import _backend
    from alignchat.library.cli import add_arguments as library_arguments
    lp = argparse.ArgumentParser()
    library_arguments(lp)
    assert _backend(lp.parse_args(["ask", "q"])).name == "smollm2-135m-instruct"
    assert _backend(lp.parse_args(["review"])) is None and _backend(lp.parse_args(["ask", "q", "--model", "none"])) is None
    old = _backend(lp.parse_args(["ask", "q", "--backend", "http://h:3", "--backend-model", "m"]))
    assert old.client.kind == "endpoint" and old.client.model == "m" and old.prompt_tokens([]) is None
    # sampling: one set of defaults; a batch with a seed gives prompt i the seed + i
    d = Sampling()
    assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty, d.max_tokens) == (0.7, 0.9, 0, 1.0, 256)
    assert GREEDY.but(seed=3).engine_params(2).seed == 5 and GREEDY.engine_params().temperature == 0.0


def test_judges_through_an_endpoint(tiny_tokenizer, tmp_path):
    """`compare judge` (with its older flag spellings) and the AI judges of `compare` and `eval winrate` over a
    real server, whose tiny model has a context long enough for the rubric."""
    from conftest import make_tiny_model

    from alignchat.checkpoint import save_checkpoint
    from alignchat.data import comparisons as C
    from alignchat.eval.judges import AIJudge
    from alignchat.train.compare import EndpointJudge, ModelJudge
    ckpt = tmp_path / "judge"
    save_checkpoint(ckpt, make_tiny_model(tiny_tokenizer.vocab_size, max_seq_len=2048), tiny_tokenizer,
                    meta={"stage": "test"})
    srv = ServerProcess(ckpt, tmp_path / "judge.db", "--no-embeddings", "--max-batch", "2").wait_ready()
    try:
        sampled = tmp_path / "sampled.jsonl"
        C.write_comparisons(sampled, [C.Comparison(prompt=[{"role": "user", "content": "Say hi."}],
                                                   responses=["hi", "hello"], ranking=[0, 1], labeller="ai:unranked",
                                                   source="test", criteria=[], meta={"unranked": True})])
        p = subprocess.run([sys.executable, "-m", "alignchat.cli", "compare", "judge", "--input", str(sampled),
                            "--out", str(tmp_path / "ranked.jsonl"), "--judge-url", srv.url + "/v1",
                            "--judge-name", "judge", "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        res = json.loads(p.stdout)
        # a random tiny model never writes "RANKING: ...": the record is retried, then skipped and counted
        assert res["judge"] == "endpoint:judge" and res["unparseable_skipped"] == 1 and res["ranked"] == 0

        remote = make_client(endpoint=srv.url)
        assert EndpointJudge(remote, retries=0).rank([{"role": "user", "content": "hi"}], ["a", "b"]) is None
        with pytest.raises(UserError):
            ModelJudge(remote)  # log-likelihood judging needs the model's chat template
        # the eval judge falls back to a short generation on an endpoint (it cannot score a reply there)
        assert AIJudge(remote).prefer_first([{"role": "user", "content": "Name a colour."}], "Blue.", "Seven.") in (
            0.0, 0.5, 1.0)
    finally:
        srv.stop()
