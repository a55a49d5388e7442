"""Continuous batching through the real server: batched greedy output equals solo output, and a client that
disconnects frees its engine slot at once (its request is aborted, not run to the end)."""
from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from conftest import make_tiny_model
from serve_support import ServerProcess, post_then_hang_up, stream_then_hang_up

PROMPTS = ["What is the capital of France?", "Write a poem about the sea.", "床前明月光，下一句是什么？",
           "def add(a, b):", "Explain reinforcement learning from human feedback.", "你好！今天天气怎么样？"]


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    srv = ServerProcess(tiny_ckpt, tmp_path_factory.mktemp("batch") / "b.db", "--max-batch", "4").wait_ready()
    yield srv
    srv.stop()


def _chat(url: str, prompt: str, **kw) -> dict:
    r = httpx.post(url + "/v1/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 40,
        "ignore_eos": True, **kw}, timeout=120)
    r.raise_for_status()
    return r.json()


def test_concurrent_greedy_outputs_equal_solo(server):
    solo = [_chat(server.url, p)["choices"][0]["message"]["content"] for p in PROMPTS]
    before = server.health()["scheduler"]
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:  # 6 requests on 4 slots: some wait and join mid-batch
        together = list(pool.map(lambda p: _chat(server.url, p)["choices"][0]["message"]["content"], PROMPTS))
    assert together == solo
    after = server.health()["scheduler"]
    assert after["max_batch_stepped"] >= 2  # they really shared decode steps
    assert after["completed"] - before["completed"] == len(PROMPTS)
    assert after["active"] == 0 and after["waiting"] == 0
    # seeded sampling is batch-independent too
    seeded = dict(temperature=0.9, seed=11)
    alone = _chat(server.url, PROMPTS[0], **seeded)["choices"][0]["message"]["content"]
    with cf.ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda p: _chat(server.url, p, **seeded)["choices"][0]["message"]["content"],
                             [PROMPTS[0], PROMPTS[1], PROMPTS[2]]))
    assert outs[0] == alone


@pytest.fixture(scope="module")
def long_ckpt(tiny_tokenizer, tmp_path_factory):
    """A tiny random model with a very long context, so that one request could run for minutes: the test never
    has to guess how fast this machine decodes, it only has to act while the request is still running."""
    from alignchat.checkpoint import save_checkpoint
    path = tmp_path_factory.mktemp("long") / "long"
    save_checkpoint(path, make_tiny_model(tiny_tokenizer.vocab_size, max_seq_len=LONG_CONTEXT), tiny_tokenizer,
                    meta={"stage": "test"})
    return path


LONG_CONTEXT = 65536


def test_disconnect_frees_slot(long_ckpt, tmp_path):
    srv = ServerProcess(long_ckpt, tmp_path / "d.db", "--max-batch", "1", "--context", str(LONG_CONTEXT)).wait_ready()
    max_tokens = LONG_CONTEXT - 64
    try:
        body = {"model": "long", "messages": [{"role": "user", "content": "Tell me everything."}],
                "temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}
        # streamed: read a few chunks, then hang up
        def still_generating():
            h = srv.health()["scheduler"]
            assert h["active"] == 1, str(h)  # still generating while we read the stream
        stream_then_hang_up(srv.url, body, still_generating)
        stats = srv.wait_scheduler()
        assert stats["aborted"] == 1 and stats["completed"] == 0
        assert stats["tokens"] < max_tokens  # stopped early, not run to max_tokens

        # non-streamed: send the request on a raw socket, wait until the server is generating it, then hang up;
        # the server notices the closed connection and aborts the request
        post_then_hang_up(srv.port, body, lambda: srv.wait_scheduler(lambda s: s["active"] == 1))
        stats = srv.wait_scheduler()
        assert stats["aborted"] == 2 and stats["completed"] == 0
        assert stats["tokens"] < 2 * max_tokens

        # the only slot is free again: a new request is served at once
        r = httpx.post(srv.url + "/v1/chat/completions", json={**body, "max_tokens": 5}, timeout=60).json()
        assert r["usage"]["completion_tokens"] == 5
        assert srv.health()["scheduler"]["completed"] == 1
    finally:
        srv.stop()
