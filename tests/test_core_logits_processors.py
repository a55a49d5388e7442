"""Per-request logits processors in the engine's batched sampling step: where constrained decoding plugs in."""
from __future__ import annotations

import pytest
import torch

from alignchat.hub import load_model
from alignchat.engine import Engine, SamplingParams
from alignchat.errors import UserError


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    model, tok, _ = load_model(tiny_ckpt)
    return Engine(model, tok, max_batch=4, max_seq_len=64)


class Forced:
    """A toy 'grammar': only the next token of `target` is allowed, chosen from the request's own output."""

    def __init__(self, target: list[int]):
        self.target = target
        self.seen: list[list[int]] = []

    def __call__(self, output_ids, logits: torch.Tensor) -> torch.Tensor:
        self.seen.append(list(output_ids))
        allowed = self.target[min(len(output_ids), len(self.target) - 1)]
        masked = torch.full_like(logits, float("-inf"))
        masked[allowed] = logits[allowed]
        return masked


def test_a_processor_constrains_its_own_request_only(engine):
    """Greedy and sampled requests with a processor emit exactly what it allows; it sees that request's
    output so far; a neighbour in the same batch without one decodes as it does alone."""
    target = [17, 5, 230, 5, 99, 42]
    plain = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    alone = engine.generate([[4, 5, 6]], plain)[0].token_ids
    greedy_proc, sampled_proc = Forced(target), Forced(target[::-1])
    out = engine.generate([[4, 5, 6], [8, 9], [10, 11, 12]], [
        plain,
        SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logits_processors=[greedy_proc]),
        SamplingParams(max_tokens=6, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True,
                       logits_processors=[sampled_proc]),
    ])
    assert out[0].token_ids == alone
    assert out[1].token_ids == target
    assert out[2].token_ids == target[::-1]
    assert greedy_proc.seen == [target[:i] for i in range(6)]


def test_processors_apply_in_order_after_the_penalties(engine):
    """A later processor sees what an earlier one returned, and the penalties come before both: the rows
    they return are what is sampled from."""
    calls = []

    def first(output_ids, logits):
        calls.append("first")
        out = torch.full_like(logits, float("-inf"))
        out[[7, 8]] = torch.tensor([1.0, 0.5])
        return out

    def second(output_ids, logits):
        calls.append("second")
        assert torch.isinf(logits).sum() == logits.numel() - 2  # the first one's mask
        return logits

    p = SamplingParams(max_tokens=4, temperature=0, repetition_penalty=5.0, ignore_eos=True,
                       logits_processors=[first, second])
    got = engine.generate([[7, 7, 7]], p)[0].token_ids
    assert got == [7, 7, 7, 7]  # a penalty after the processors would take 7 to 0.2, below 8's 0.5
    assert calls == ["first", "second"] * 4


def test_a_processor_that_is_not_callable_is_refused(engine):
    with pytest.raises(UserError, match="logits_processors"):
        engine.generate([[1, 2]], SamplingParams(logits_processors=["json"]))
    assert engine.num_active() == 0
