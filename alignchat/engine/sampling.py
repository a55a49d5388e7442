"""Sampling: `SamplingParams` and the batched step that picks one next token for every active request.

Notable choices:
- Each request carries its own sampling parameters and its own random generator, so a seeded request
  gives the same text alone or batched, and greedy requests are unaffected by their neighbours. Every
  operation is row-wise: a request's tokens depend only on its own logits and seed.
- One step, in this order (`sample_next`): the log-probabilities reported with `logprobs=True` (of the
  model's own distribution), then the penalties (CTRL-style repetition penalty over prompt and output,
  OpenAI presence/frequency penalties over the output), then each request's logits processors, then the
  choice: argmax for greedy rows, else temperature, top-k and top-p. One device-to-host copy per step.
- Logits processors are where per-request constraints plug in (a grammar's allowed-token mask, for
  constrained decoding). `SamplingParams.logits_processors` holds callables `(output_ids, logits) ->
  logits` on one request's 1-D row of float32 logits over the vocabulary, applied in order after the
  penalties, so a mask (-inf on forbidden tokens) binds greedy and sampled rows alike. They run on the
  engine's thread; `output_ids` is the request's own output so far, so a processor that follows the
  output (a parser advanced token by token) learns the token chosen at one step from `output_ids` at the
  next. Such a processor keeps state that must belong to one request, while one params object may be
  shared by a batch (`Engine.generate`): a processor with a `for_request()` method is replaced, as each
  request is admitted, by what that method returns (`for_request`), so every request gets its own state.
  Grammar-constrained decoding (grammar.py) is built this way.
- Sampling is by inverse CDF: each request draws u ~ U[0, 1) from its generator and takes the first token
  whose cumulative probability reaches u.
- Top-k/top-p sort only the `FILTER_CANDIDATES` most likely tokens when those provably hold every token the
  filters keep; otherwise the whole vocabulary. Sorting the vocabulary is most of a step's time.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from ..errors import UserError

FILTER_CANDIDATES = 1024  # top-k/top-p sort only this many tokens when they hold all the kept ones

LogitsProcessor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]
"""`(output_ids, logits) -> logits`: one request's (vocab,) float32 row in, the row to sample from out."""


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output
    presence_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: bool = False
    logits_processors: list[LogitsProcessor] = field(default_factory=list)  # see the module docstring

    def validate(self) -> "SamplingParams":
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens must be an integer >= 1"),
            (0.0 <= self.temperature <= 100.0, "temperature must be between 0 and 100"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (0.0 < self.repetition_penalty <= 10.0, "repetition_penalty must be in (0, 10]"),
            (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be between -2 and 2"),
            (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be between -2 and 2"),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings"),
            (len(self.stop) <= 16, "at most 16 stop strings"),
            # what a torch.Generator can be seeded with (an out-of-range seed would fail the whole prefill)
            (self.seed is None or (isinstance(self.seed, numbers.Integral) and not isinstance(self.seed, bool)
                                   and -2**63 <= int(self.seed) < 2**64), "seed must be an integer in [-2^63, 2^64)"),
            (isinstance(self.logits_processors, (list, tuple)) and all(callable(f) for f in self.logits_processors),
             "logits_processors must be a list of callables"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


class Sampled(Protocol):
    """What the sampler reads of a request (`request.Request` is one)."""

    params: SamplingParams
    generator: torch.Generator
    next_logits: torch.Tensor | None  # (vocab,) float32: the model's prediction of the next token
    output_ids: list[int]
    seen: torch.Tensor  # prompt and output token ids, kept when repetition_penalty != 1
    counts: dict[int, int]  # output token id -> how often it was generated


def apply_penalties(logits: torch.Tensor, req: Sampled) -> torch.Tensor:
    """One request's row with its repetition, presence and frequency penalties applied."""
    p = req.params
    if p.repetition_penalty != 1.0 and req.seen.numel():
        vals = logits[req.seen]
        logits = logits.clone()
        logits[req.seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and req.counts:
        ids = torch.tensor(list(req.counts), device=logits.device)
        cnt = torch.tensor(list(req.counts.values()), dtype=logits.dtype, device=logits.device)
        logits = logits.clone()
        logits[ids] -= p.presence_penalty + p.frequency_penalty * cnt
    return logits


def for_request(params: SamplingParams) -> SamplingParams:
    """`params` for one admitted request: each logits processor with a `for_request()` method replaced by
    the fresh one it returns (a copy of `params`), or `params` itself when none has one."""
    procs = params.logits_processors
    if not any(hasattr(p, "for_request") for p in procs):
        return params
    return dataclasses.replace(params, logits_processors=[p.for_request() if hasattr(p, "for_request") else p
                                                          for p in procs])


def apply_logits_processors(logits: torch.Tensor, reqs: Sequence[Sampled]) -> torch.Tensor:
    """The (n, vocab) batch with each request's logits processors applied to its own row, in order."""
    rows = []
    for row, r in zip(logits, reqs):
        for proc in r.params.logits_processors:
            row = proc(r.output_ids, row)
        rows.append(row)
    return torch.stack(rows)


def sample_next(reqs: Sequence[Sampled]) -> tuple[list[int], list[float]]:
    """One token per request from its `next_logits`, in one batched pass, and each token's log-probability
    under the model (0.0 for requests that did not ask for logprobs)."""
    logits = torch.stack([r.next_logits for r in reqs])
    logprobs_all = None
    if any(r.params.logprobs for r in reqs):
        logprobs_all = torch.log_softmax(logits, dim=-1)
    if any(r.params.repetition_penalty != 1.0 or r.params.presence_penalty or r.params.frequency_penalty
           for r in reqs):
        logits = torch.stack([apply_penalties(logits[i], r) for i, r in enumerate(reqs)])
    if any(r.params.logits_processors for r in reqs):
        logits = apply_logits_processors(logits, reqs)
    if all(r.params.greedy for r in reqs):
        tokens = logits.argmax(-1).tolist()
    else:
        tokens = sample_rows(logits, reqs).tolist()
    lps = [float(logprobs_all[i, t]) if logprobs_all is not None else 0.0 for i, t in enumerate(tokens)]
    return tokens, lps


def sample_rows(logits: torch.Tensor, reqs: Sequence[Any]) -> torch.Tensor:
    """The token of every row of (n, vocab) `logits`; `reqs[i]` gives row i's `params` and `generator`."""
    dev, V = logits.device, logits.shape[-1]
    ps = [r.params for r in reqs]
    greedy = torch.tensor([p.greedy for p in ps], device=dev)
    temp = torch.tensor([1.0 if p.greedy else p.temperature for p in ps], device=dev, dtype=logits.dtype)
    x = logits / temp[:, None]
    u = torch.tensor([float(torch.rand(1, generator=r.generator)) for r in reqs], device=dev, dtype=x.dtype)
    # rows without top-k/top-p: inverse CDF over the whole vocabulary, in vocabulary order
    cdf = x.softmax(-1).cumsum(-1)
    out = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_(max=V - 1)[:, 0]
    filtered = [i for i, p in enumerate(ps) if (p.top_k and p.top_k < V) or p.top_p < 1.0]
    if filtered:
        rows = torch.tensor(filtered, device=dev)
        out[rows] = sample_filtered(x[rows], [ps[i] for i in filtered], u[rows])
    return torch.where(greedy, logits.argmax(-1), out)


def sample_filtered(x: torch.Tensor, ps: Sequence[SamplingParams], u: torch.Tensor) -> torch.Tensor:
    """Top-k (ties with the k-th kept), then top-p: a token is dropped once the mass before it already
    reaches top_p (the first token always stays); then inverse CDF in descending order.

    Sorting the whole vocabulary is most of a sampling step's time, so only the FILTER_CANDIDATES most
    likely tokens are sorted when they provably hold every token the filters keep; otherwise the whole
    vocabulary is."""
    dev, V = x.device, x.shape[-1]
    k = torch.tensor([p.top_k if p.top_k and p.top_k < V else V for p in ps], device=dev)
    top_p = torch.tensor([p.top_p if p.top_p < 1.0 else float("inf") for p in ps], device=dev, dtype=x.dtype)
    lse = x.logsumexp(-1)  # the whole vocabulary's normaliser
    C = min(V, FILTER_CANDIDATES)
    vals, idx = torch.topk(x, C, dim=-1)
    # exact when k is within the candidates, or with no top-k when their mass already reaches top_p
    # (a top-k beyond the candidates needs its normaliser over all k tokens: the whole sort)
    if not bool(((k <= C) | ((k == V) & ((vals.logsumexp(-1) - lse).exp() >= top_p))).all()):
        vals, idx = torch.sort(x, dim=-1, descending=True)
        C = V
    kth = vals.gather(-1, (k.clamp(max=C) - 1)[:, None])
    vals = vals.masked_fill(vals < kth, float("-inf"))
    # probabilities after top-k: over the kept tokens where top-k applies, else over the whole vocabulary
    norm = torch.where(k < V, vals.logsumexp(-1), lse)
    probs = (vals - norm[:, None]).exp()
    vals = vals.masked_fill((probs.cumsum(-1) - probs) >= top_p[:, None], float("-inf"))
    cdf = vals.softmax(-1).cumsum(-1)
    choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).clamp_(max=C - 1)
    return idx.gather(-1, choice)[:, 0]
