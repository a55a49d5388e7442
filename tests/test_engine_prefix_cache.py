"""The engine's prefix cache: outputs with it equal outputs without it, and the reuse really happens.

Each test runs the same requests through an engine with the cache and one without (`prefix_cache=False`,
which computes every prompt in full), on tiny random float32 models: greedy and seeded sampling must give
the same tokens. The hit counters (`prefix_stats`, each request's `cached_tokens`) show the cached path was
taken, so no test passes with the cache silently off. Over HTTP, a multi-turn chat through `alignchat serve`
gives the same replies with and without `--no-prefix-cache`, and /metrics counts the reused tokens.
"""
from __future__ import annotations

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from alignchat.config import preset
from alignchat.engine import Engine, SamplingParams
from alignchat.engine.prefix import MIN_REUSE
from alignchat.model import Transformer

from conftest import make_tiny_model
from serve_support import ServerProcess


@pytest.fixture(scope="module")
def model_tok(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer.vocab_size), tiny_tokenizer


def engines(model, tok, **kw):
    kw = {"max_batch": 4, "max_seq_len": 256, **kw}
    return Engine(model, tok, **kw), Engine(model, tok, prefix_cache=False, **kw)


def rand_ids(n: int, seed: int, vocab: int = 390) -> list[int]:
    return torch.randint(5, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def params(kind: str, seed: int, n: int = 8) -> SamplingParams:
    if kind == "greedy":
        return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)
    return SamplingParams(max_tokens=n, temperature=1.0, top_p=0.9, seed=seed, ignore_eos=True)


@pytest.mark.parametrize("kind", ["greedy", "sampled"])
def test_ten_turn_conversation_reuses_every_earlier_turn(model_tok, kind):
    """Each turn's prompt is the previous prompt, its reply and a new message: turn N reuses the keys and
    values of turns 1..N-1 (all but the reply's last token, which was sampled but never written)."""
    cached, plain = engines(*model_tok)
    history = rand_ids(30, seed=0)
    previous_written = 0
    for turn in range(10):
        a = cached.generate([history], params(kind, turn))[0]
        b = plain.generate([history], params(kind, turn))[0]
        assert a.token_ids == b.token_ids, f"turn {turn + 1}"
        if turn:
            assert a.cached_tokens == previous_written, f"turn {turn + 1}"
        assert b.cached_tokens == 0
        previous_written = len(history) + len(a.token_ids) - 1
        history = history + a.token_ids + rand_ids(7, seed=100 + turn)
    stats = cached.prefix_stats()
    assert stats["enabled"] and stats["hit_tokens"] > 0.8 * stats["prompt_tokens"]
    assert plain.prefix_stats() == {"enabled": False, "hit_tokens": 0, "prompt_tokens": stats["prompt_tokens"]}


def test_shared_system_prompt_is_copied_from_an_active_request(model_tok):
    """A running request's system prompt is copied into the slots of later requests that start with it,
    one admitted alone and two admitted together; all four decode the same tokens as without the cache."""
    system = rand_ids(40, seed=1)
    prompts = [system + [200 + i] + rand_ids(5 + i, seed=10 + i) for i in range(4)]
    ps = [params("greedy", 0, 12), params("sampled", 1, 12), params("greedy", 0, 6), params("sampled", 3, 9)]
    results = []
    for eng in engines(*model_tok):
        a = eng.add_request(prompts[0], ps[0])
        for _ in range(3):
            eng.step()
        b = eng.add_request(prompts[1], ps[1])
        eng.step()
        c, d = eng.add_requests([(prompts[2], ps[2]), (prompts[3], ps[3])])
        reqs = [a, b, c, d]
        while not all(r.finished for r in reqs):
            eng.step()
        results.append(([r.output_ids for r in reqs], [r.cached_tokens for r in reqs], {r.slot for r in reqs}))
    (cached_out, hits, slots), (plain_out, plain_hits, _) = results
    assert cached_out == plain_out
    assert hits == [0, len(system), len(system), len(system)] and plain_hits == [0] * 4
    assert len(slots) == 4  # each copied the prefix into a slot of its own


@pytest.mark.parametrize("mode", ["eager", "padded"])
def test_requests_joining_and_leaving_mid_decode(model_tok, mode):
    """Ten prompts on three slots, sharing prefixes of different lengths, of different output lengths: slots
    are refilled as requests finish, admissions mix reused and fresh rows, and one request is aborted mid-
    decode. "padded" is the CUDA-graph path's padding (scratch slot), run without capture."""
    base = rand_ids(60, seed=2)
    prompts = [base[:20 + 4 * i] + rand_ids(3 + i % 4, seed=30 + i) for i in range(8)] + [rand_ids(25, 5), [7, 8]]
    ps = [params("greedy" if i % 2 else "sampled", i, 4 + (3 * i) % 9) for i in range(10)]
    outs = []
    for eng in engines(*model_tok, max_batch=3):
        eng.decode_mode = mode
        victim = eng.add_request(base[:50], params("greedy", 0, 30))
        eng.step()
        eng.step()
        got = eng.generate(prompts[:2], ps[:2])  # decoded beside the victim
        eng.abort(victim)  # leaves 50 prompt + 2 written output positions behind
        got += eng.generate(prompts[2:], ps[2:])
        outs.append(got)
    cached, plain = outs
    assert [g.token_ids for g in cached] == [g.token_ids for g in plain]
    assert all(g.cached_tokens >= MIN_REUSE for g in cached[:8]) and cached[9].cached_tokens == 0


def test_prompt_that_is_a_prefix_of_a_cached_one(model_tok):
    """A prompt inside a cached sequence reuses all but its last token (whose logits must be computed);
    the very same prompt again likewise; a prompt shorter than MIN_REUSE reuses nothing."""
    cached, plain = engines(*model_tok)
    long = rand_ids(70, seed=3)
    p = params("greedy", 0, 10)
    first = [cached.generate([long], p)[0], plain.generate([long], p)[0]]
    assert first[0].token_ids == first[1].token_ids
    for prompt, hit in [(long[:40], 39), (long, 69), (long + first[0].token_ids[:5], 74),
                        (long[:MIN_REUSE], 0)]:
        a, b = cached.generate([prompt], p)[0], plain.generate([prompt], p)[0]
        assert a.token_ids == b.token_ids
        assert a.cached_tokens == hit, len(prompt)


def test_sliding_window_shorter_than_the_reused_prefix(tiny_tokenizer):
    """Gemma-style local layers (a 16-token window) read a reused prefix of 40+ tokens through the window
    mask: a 6-turn conversation and a shared prefix admitted beside a fresh prompt, against the engine
    without the cache."""
    torch.manual_seed(0)
    model = Transformer(preset("tiny-gemma3", vocab_size=tiny_tokenizer.vocab_size)).init_weights(seed=0, std=0.05)
    model.eval()
    assert model.cfg.sliding_window == 16
    cached, plain = engines(model, tiny_tokenizer)
    history = rand_ids(40, seed=4)
    for turn in range(6):
        a = cached.generate([history], params("greedy", 0, 8))[0]
        b = plain.generate([history], params("greedy", 0, 8))[0]
        assert a.token_ids == b.token_ids, f"turn {turn + 1}"
        assert turn == 0 or a.cached_tokens > 2 * model.cfg.sliding_window
        history = history + a.token_ids + rand_ids(5, seed=40 + turn)
    seq = list(history)  # and against recomputing the whole sequence for every token, without a cache
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    last = cached.generate([history], params("greedy", 0, 8))[0]
    assert last.token_ids == seq[len(history):] and last.cached_tokens > 4 * model.cfg.sliding_window
    mixed = [history[:50] + rand_ids(30, 6), rand_ids(45, 7)]
    got = [[g.token_ids for g in e.generate(mixed, params("sampled", 5, 10))] for e in (cached, plain)]
    assert got[0] == got[1]


def test_changed_weights_are_never_served_from_the_cache(model_tok):
    """An in-place weight update (an optimizer step, as in PPO between rollouts) forgets every cached prefix:
    the next request is computed in full, with the new weights."""
    model, tok = model_tok
    model = make_tiny_model(tok.vocab_size, seed=1)
    eng = Engine(model, tok, max_batch=2, max_seq_len=128)
    prompt = rand_ids(40, seed=8)
    p = params("greedy", 0, 10)
    eng.generate([prompt], p)
    assert eng.generate([prompt], p)[0].cached_tokens == 39
    with torch.no_grad():
        for w in model.parameters():
            w.mul_(1.5)
    after = eng.generate([prompt], p)[0]
    assert after.cached_tokens == 0
    fresh = Engine(model, tok, max_batch=2, max_seq_len=128, prefix_cache=False).generate([prompt], p)[0]
    assert after.token_ids == fresh.token_ids


def test_multi_turn_chat_over_http_with_and_without_the_prefix_cache(tiny_ckpt, tmp_path):
    """Four turns of one conversation (English, then Chinese) through /v1/chat/completions: the same greedy
    replies with the cache and with --no-prefix-cache; each reply's usage.prompt_tokens_details, /metrics and
    /health count reused prompt tokens only with the cache."""
    replies, health, metrics = {}, {}, {}
    for flag in ("", "--no-prefix-cache"):
        extra = ("--max-batch", "2", "--no-embeddings") + ((flag,) if flag else ())
        srv = ServerProcess(tiny_ckpt, tmp_path / f"chat{flag}.db", *extra).wait_ready()
        try:
            with httpx.Client(base_url=srv.url, timeout=120) as http:
                messages = [{"role": "system", "content": "You answer briefly."}]
                got, model = [], http.get("/v1/models").json()["data"][0]["id"]
                for q in ["The capital of France?", "And of Italy?", "Which is older?", "用中文。"]:
                    messages.append({"role": "user", "content": q})
                    r = http.post("/v1/chat/completions", json={"model": model, "messages": messages,
                                                               "max_tokens": 8, "temperature": 0})
                    assert r.status_code == 200, r.text
                    text = r.json()["choices"][0]["message"]["content"]
                    got.append((text, r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]))
                    messages.append({"role": "assistant", "content": text})
                replies[flag] = got
                health[flag] = http.get("/health").json()["engine"]["prefix_cache"]
                exposition = http.get("/metrics").text
                metrics[flag] = {s.name: s.value for family in text_string_to_metric_families(exposition)
                                 for s in family.samples if s.name.startswith("alignchat_prompt_tokens_c")}
        finally:
            srv.stop()
    assert [t for t, _ in replies[""]] == [t for t, _ in replies["--no-prefix-cache"]]
    assert [c for _, c in replies["--no-prefix-cache"]] == [0] * 4
    assert replies[""][0][1] == 0 and all(c > 0 for _, c in replies[""][1:])  # usage says what was reused
    on, off = health[""], health["--no-prefix-cache"]
    assert on["enabled"] and not off["enabled"] and off["hit_tokens"] == 0
    assert on["prompt_tokens"] == off["prompt_tokens"] and on["hit_tokens"] > on["prompt_tokens"] / 3
    assert metrics[""]["alignchat_prompt_tokens_cached_total"] == on["hit_tokens"]
    assert metrics[""]["alignchat_prompt_tokens_computed_total"] == on["prompt_tokens"] - on["hit_tokens"]
    assert metrics["--no-prefix-cache"]["alignchat_prompt_tokens_cached_total"] == 0
