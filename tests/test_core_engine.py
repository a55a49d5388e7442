"""The generation engine: batching, the KV cache, sampling controls, stop handling, beams and scoring."""
from __future__ import annotations

import pytest
import torch

from alignchat.hub import load_model
from alignchat.engine import Engine, SamplingParams
from alignchat.errors import ContextLengthError, UserError


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    model, tok, _ = load_model(tiny_ckpt)
    return Engine(model, tok, max_batch=4, max_seq_len=128)


def _no_stop(engine):
    # a random tiny model may emit its end token at any time; tests of lengths ignore it
    return dict(ignore_eos=True)


def greedy_reference(model, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def test_padded_decode_of_the_cuda_graph_path_matches_eager(engine):
    """The CUDA-graph decode path pads the batch to a bucket and the cache length to a block, with padding
    rows in a spare slot. Run that padding without capture (a CPU has no graphs): the text must not change,
    with requests joining and leaving between steps."""
    padded = Engine(engine.model, engine.tok, max_batch=5, max_seq_len=128)
    padded.decode_mode = "padded"
    assert padded._batch_buckets() == [1, 2, 4, 5]
    sizes = []
    decode = padded._decode
    padded._decode = lambda tokens, *a: sizes.append(len(tokens)) or decode(tokens, *a)
    prompts = [[3, 9, 27], [100, 4, 5, 6, 7, 8, 9, 10, 11], [42], [7, 7, 7, 7, 7], [250, 1, 2], [5, 6], [8]]
    params = [SamplingParams(max_tokens=n, temperature=t, seed=n, ignore_eos=True)
              for n, t in zip((12, 3, 9, 6, 10, 4, 7), (0, 0.8, 0, 1.0, 0, 0.7, 0))]
    out = padded.generate(prompts, params)
    assert 3 in sizes  # some steps ran 3 requests padded to 4
    assert out[0].token_ids == greedy_reference(engine.model, prompts[0], 12)
    eager = Engine(engine.model, engine.tok, max_batch=5, max_seq_len=128)
    assert eager.decode_mode == "eager"
    assert [g.token_ids for g in out] == [g.token_ids for g in eager.generate(prompts, params)]
    assert padded.cache.k[0].shape[0] == 6  # five request slots and the scratch slot


def test_batched_prompts_of_different_lengths_equal_solo_greedy(engine):
    prompts = [[3, 9, 27], [100, 4, 5, 6, 7, 8, 9, 10, 11], [42], [7, 7, 7, 7, 7], [250, 1, 2]]
    p = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    batched = engine.generate(prompts, p)  # 5 prompts on 4 slots: one waits for a free slot
    for prompt, out in zip(prompts, batched):
        assert out.token_ids == greedy_reference(engine.model, prompt, 12)
        assert out.finish_reason == "length"
        assert out.prompt_tokens == len(prompt)


def test_requests_joining_mid_flight_match_solo(engine):
    p = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    a = engine.add_request([5, 6, 7], p)
    for _ in range(4):
        engine.step()
    b = engine.add_request([11, 12, 13, 14], p)
    while not (a.finished and b.finished):
        engine.step()
    assert a.output_ids == greedy_reference(engine.model, [5, 6, 7], 10)
    assert b.output_ids == greedy_reference(engine.model, [11, 12, 13, 14], 10)
    assert engine.num_active() == 0


def test_seed_gives_same_text_alone_or_batched(engine):
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True)
    alone = engine.generate([[8, 9, 10]], p)[0].token_ids
    again = engine.generate([[8, 9, 10]], p)[0].token_ids
    batched = engine.generate([[1, 2], [8, 9, 10], [30, 31, 32, 33]],
                              [SamplingParams(max_tokens=16, temperature=1.0, seed=5, ignore_eos=True), p,
                               SamplingParams(max_tokens=16, temperature=0.8, seed=6, ignore_eos=True)])[1].token_ids
    assert alone == again == batched
    other = engine.generate([[8, 9, 10]], SamplingParams(max_tokens=16, temperature=1.0, seed=999, ignore_eos=True))
    assert other[0].token_ids != alone


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = engine.generate([[4, 5]], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0].token_ids
    k1 = engine.generate([[4, 5]], SamplingParams(max_tokens=8, temperature=1.5, top_k=1, seed=1, ignore_eos=True))
    p0 = engine.generate([[4, 5]], SamplingParams(max_tokens=8, temperature=1.5, top_p=1e-6, seed=2, ignore_eos=True))
    assert k1[0].token_ids == greedy == p0[0].token_ids


def test_repetition_and_frequency_penalties_reduce_repeats(engine):
    base = engine.generate([[9, 9, 9]], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0]
    pen = engine.generate([[9, 9, 9]], SamplingParams(max_tokens=40, temperature=0, repetition_penalty=3.0,
                                                      ignore_eos=True))[0]
    freq = engine.generate([[9, 9, 9]], SamplingParams(max_tokens=40, temperature=0, frequency_penalty=2.0,
                                                       ignore_eos=True))[0]
    distinct = lambda ids: len(set(ids))  # noqa: E731
    assert distinct(pen.token_ids) > distinct(base.token_ids)
    assert distinct(freq.token_ids) > distinct(base.token_ids)


def test_stop_strings_end_generation_and_never_leak(engine):
    full = engine.generate([[20, 21]], SamplingParams(max_tokens=30, temperature=0, ignore_eos=True))[0].text
    assert len(full) > 6
    stop = full[4:7]
    out = engine.generate([[20, 21]], SamplingParams(max_tokens=30, temperature=0, stop=[stop], ignore_eos=True))[0]
    assert out.finish_reason == "stop"
    assert out.text == full[: full.find(stop)]
    streamed = "".join(engine.stream([20, 21], SamplingParams(max_tokens=30, temperature=0, stop=[stop],
                                                              ignore_eos=True)))
    assert streamed == out.text


def test_stop_token_ids_end_generation(engine):
    greedy = engine.generate([[20, 21]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True))[0].token_ids
    out = engine.generate([[20, 21]], SamplingParams(max_tokens=10, temperature=0, ignore_eos=True,
                                                      stop_token_ids=[greedy[3]]))[0]
    assert out.finish_reason == "stop"
    assert out.token_ids == greedy[:greedy.index(greedy[3])]


def test_streaming_deltas_concatenate_to_the_whole_text(engine):
    p = SamplingParams(max_tokens=25, temperature=0.9, seed=3, ignore_eos=True)
    whole = engine.generate([[60, 61, 62]], p)[0].text
    assert "".join(engine.stream([60, 61, 62], p)) == whole
    assert engine.num_active() == 0


def test_closing_a_stream_early_frees_its_slot(engine):
    it = engine.stream([1, 2, 3], SamplingParams(max_tokens=100, temperature=0, ignore_eos=True))
    for i, _ in enumerate(it):
        if i == 2:
            break
    it.close()
    assert engine.num_active() == 0


def test_beam_search(engine):
    prompt = [33, 34, 35]
    one = engine.beam_search(prompt, num_beams=1, max_tokens=8, length_penalty=0.0)
    greedy = engine.generate([prompt], SamplingParams(max_tokens=8, temperature=0))[0]
    assert one.token_ids == greedy.token_ids
    four = engine.beam_search(prompt, num_beams=4, max_tokens=8, length_penalty=0.0)
    if len(four.token_ids) == len(greedy.token_ids) == 8:
        (lp4, _), (lpg, _) = engine.loglikelihood([(prompt, four.token_ids), (prompt, greedy.token_ids)])
        assert lp4 >= lpg - 1e-4


def test_loglikelihood_matches_a_manual_forward(engine):
    ctx, cont = [5, 6, 7, 8], [9, 10, 11]
    (lp, is_greedy), (lp2, _) = engine.loglikelihood([(ctx, cont), ([1, 2], [3])])
    with torch.no_grad():
        logp = torch.log_softmax(engine.model(torch.tensor([ctx + cont])), -1)[0]
    manual = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert abs(lp - manual) < 1e-4
    g = greedy_reference(engine.model, ctx, 3)
    assert engine.loglikelihood([(ctx, g)])[0][1] is True


def test_bad_input_gets_clear_errors(engine):
    with pytest.raises(ContextLengthError, match="context"):
        engine.add_request(list(range(1, 200)), SamplingParams(max_tokens=5))
    with pytest.raises(UserError, match="empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(UserError, match="temperature"):
        SamplingParams(temperature=-1).validate()
    with pytest.raises(UserError, match="top_p"):
        SamplingParams(top_p=0).validate()
    assert engine.num_active() == 0


def test_smollm2_answers_paris(smollm2_loaded):
    model, tok, _ = smollm2_loaded
    eng = Engine(model, tok, max_batch=2, max_seq_len=512)
    out = eng.chat([{"role": "user", "content": "What is the capital of France?"}],
                   SamplingParams(max_tokens=20, temperature=0))
    assert "Paris" in out.text
    assert out.finish_reason == "stop"  # ended its turn with <|im_end|>


def test_loglikelihood_of_overlong_continuation_keeps_its_end(engine):
    cont = [(i % 250) + 1 for i in range(200)]  # longer than the engine's 128-token context
    (lp, _), = engine.loglikelihood([([5, 6], cont)])
    (lp_tail, _), = engine.loglikelihood([([6], cont[-127:])])  # what fits: one context token + the tail
    assert abs(lp - lp_tail) < 1e-3


def test_batched_prefill_admits_many_and_rejects_all_on_one_bad_prompt(engine):
    p = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [40, 41, 42]]
    reqs = engine.add_requests([(x, p) for x in prompts])
    while not all(r.finished for r in reqs):
        engine.step()
    for x, r in zip(prompts, reqs):
        assert r.output_ids == greedy_reference(engine.model, x, 6)
    with pytest.raises(ContextLengthError):
        engine.add_requests([([1, 2], p), (list(range(1, 300)), p)])
    assert engine.num_active() == 0


def test_batched_sampler_draws_from_the_filtered_softmax():
    """The inverse-CDF sampler: frequencies match softmax(logits / T), restricted by top-k / top-p, and a
    greedy row in the same batch still takes the argmax."""
    from types import SimpleNamespace

    from alignchat.engine import Engine
    n = 4000
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])

    def draw(**kw):
        p = SamplingParams(**kw).validate()
        reqs = [SimpleNamespace(params=p, generator=torch.Generator().manual_seed(s)) for s in range(n)]
        toks = Engine._sample_rows(logits.expand(n, 4).clone(), reqs)
        return torch.bincount(toks, minlength=4).float() / n

    assert torch.allclose(draw(temperature=1.0), logits.softmax(-1), atol=0.03)
    assert torch.allclose(draw(temperature=2.0), (logits / 2).softmax(-1), atol=0.03)
    two = torch.tensor([2.0, 1.0]).softmax(-1)
    assert torch.allclose(draw(temperature=1.0, top_k=2), torch.cat([two, torch.zeros(2)]), atol=0.03)
    # top_p 0.7: the mass before token 2 is 0.88 >= 0.7, so only tokens 0 and 1 stay
    assert torch.allclose(draw(temperature=1.0, top_p=0.7), torch.cat([two, torch.zeros(2)]), atol=0.03)
    mixed = [SimpleNamespace(params=SamplingParams(temperature=0).validate(), generator=torch.Generator()),
             SimpleNamespace(params=SamplingParams(temperature=1.0, top_k=1).validate(), generator=torch.Generator())]
    rows = torch.tensor([[0.0, 3.0, 1.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    assert Engine._sample_rows(rows, mixed).tolist() == [1, 2]


def test_filtered_sampling_on_the_top_candidates_equals_the_full_sort(monkeypatch):
    """Top-k/top-p sort only the FILTER_CANDIDATES most likely tokens when those hold every kept token; with
    the same uniform draws this must pick exactly the tokens a sort of the whole vocabulary picks, and fall
    back to the whole sort when the candidates cannot hold the top-p mass (a flat distribution)."""
    import alignchat.engine as E
    V, n = 3000, 600
    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(n, V, generator=g) * 4  # the top 64 of 3000 hold most of the mass
    flat = torch.randn(n, V, generator=g) * 0.1  # they do not: the whole sort is needed
    cases = [SamplingParams(temperature=1.0, top_p=0.9), SamplingParams(temperature=0.7, top_k=40, top_p=0.95),
             SamplingParams(temperature=1.0, top_k=50), SamplingParams(temperature=1.0, top_k=2000, top_p=0.5)]
    u = torch.rand(n, generator=g)
    for logits in (peaked, flat):
        for p in cases:
            ps = [p.validate()] * n
            monkeypatch.setattr(E.sampling, "FILTER_CANDIDATES", 64)
            fast = E.Engine._sample_filtered(logits, ps, u)
            monkeypatch.setattr(E.sampling, "FILTER_CANDIDATES", V)
            full = E.Engine._sample_filtered(logits, ps, u)
            assert torch.equal(fast, full), p
            if p.top_k:
                assert (logits.gather(-1, full[:, None]) >= logits.topk(p.top_k).values[:, -1:]).all()
