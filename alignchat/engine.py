"""The generation engine: batched decoding on a static, slot-based KV cache.

Chat, the HTTP API, evaluation and PPO rollouts all generate through this one engine, so making it faster
speeds up all four. It knows nothing about HTTP.

Notable choices:
- A preallocated KV cache with one slot per sequence and an explicit position per token. Requests take a
  free slot (`add_request`, which prefills the prompt), decode together one token per `step()`, and free
  their slot when they finish or are aborted. This is continuous batching: new requests join between
  steps, and a batch never waits for its longest member.
- Each request carries its own sampling parameters and its own random generator, so a seeded request
  gives the same text alone or batched, and greedy requests are unaffected by their neighbours.
- Sampling: temperature (0 = greedy), top-k, top-p, repetition penalty (CTRL-style, over prompt and
  output), OpenAI presence/frequency penalties, stop strings (held back until they can no longer match,
  so they never leak into the stream) and stop token ids. Beam search is separate (`beam_search`).
- Text is streamed through `StreamDecoder`, so deltas never split a UTF-8 character.
- The step computes next-token logits at the end, so a freshly prefilled request samples its first
  token without another forward pass.
- On CUDA, decode steps replay CUDA graphs (`cuda_graphs=True`): at this model size a step is mostly the
  launch of hundreds of small kernels, which a graph replays in one call. Shapes must be static, so the
  batch is padded up to a bucket (1, 2, 4, 8, ... max_batch) and the attended cache length up to a multiple
  of `GRAPH_KV_BLOCK`; one graph per (batch, length) bucket is captured on first use, all sharing one memory
  pool. Padding rows write into a spare cache slot that no request owns. Prefill stays eager.
- Prefill writes the prompt's keys into the cache but attends causally to its own fresh keys, without a
  mask or a cache read, so SDPA can use its flash kernels. Eager decode reads the cache of consecutive
  slots as a view rather than a gathered copy.
"""
from __future__ import annotations

import itertools
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .errors import ContextLengthError, UserError
from .model import KVCache, Transformer
from .tokenizer import StreamDecoder, Tokenizer


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
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    logprobs: list[float] | None = None


@dataclass
class StepOutput:
    request: "Request"
    token_id: int
    text: str  # the text delta this step adds (may be empty while a character or stop string is pending)
    finished: bool
    finish_reason: str | None


class Request:
    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams, tokenizer: Tokenizer, slot: int,
                 max_new: int, device):
        self.id = next(self._ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.slot = slot
        self.max_new = max_new
        self.pos = len(prompt_ids)  # position of the next token to be written into the cache
        self.output_ids: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self._held = ""  # text withheld because it may be the start of a stop string
        self.decoder = StreamDecoder(tokenizer)
        self.finished = False
        self.finish_reason: str | None = None
        self.next_logits: torch.Tensor | None = None
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        stops = set(tokenizer.stop_token_ids) if not params.ignore_eos else set()
        self.stop_ids = stops | set(params.stop_token_ids)
        self.counts: dict[int, int] = {}
        self.seen = torch.zeros(0, dtype=torch.long, device=device)
        if params.repetition_penalty != 1.0:
            self.seen = torch.tensor(sorted(set(prompt_ids)), dtype=torch.long, device=device)

    def result(self) -> Generation:
        return Generation(token_ids=list(self.output_ids), text=self.text, finish_reason=self.finish_reason or "abort",
                          prompt_tokens=len(self.prompt_ids), logprobs=list(self.logprobs) if self.params.logprobs else None)


def _apply_penalties(logits: torch.Tensor, req: Request) -> torch.Tensor:
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


GRAPH_KV_BLOCK = 256  # decode graphs attend to the cache in lengths rounded up to this
FILTER_CANDIDATES = 1024  # top-k/top-p sort only this many tokens when they hold all the kept ones


class _DecodeGraph:
    """One captured decode step for a fixed (batch, cache length): static inputs in, logits out."""

    def __init__(self, ids, pos, slots, logits, graph):
        self.ids, self.pos, self.slots, self.logits, self.graph = ids, pos, slots, logits, graph


class Engine:
    """Batched generation with a slot-based KV cache. Not thread-safe: one thread drives it."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_batch: int = 8, max_seq_len: int | None = None,
                 cache_dtype: torch.dtype | None = None, cuda_graphs: bool = True):
        self.model = model.eval()
        self.tok = tokenizer
        self.cfg = model.cfg
        self.device = next(model.parameters()).device
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or min(self.cfg.max_seq_len, 4096), self.cfg.max_seq_len)
        model.ensure_rope(self.max_seq_len)
        self.cache_dtype = cache_dtype or next(model.parameters()).dtype
        self._cache: KVCache | None = None
        self.slots: list[Request | None] = [None] * max_batch
        self.scratch_slot = max_batch  # the cache's spare slot, written only by padding rows
        # "graph" (CUDA), "eager" (the exact batch, no padding); "padded" runs the graph path's padding
        # without capturing, so it can be checked on a CPU
        # (a compiled or wrapped model decodes eagerly: capturing it would capture the compiler too)
        self.decode_mode = ("graph" if cuda_graphs and self.device.type == "cuda" and isinstance(model, Transformer)
                            else "eager")
        self._graphs: dict[tuple[int, int], _DecodeGraph] = {}
        self._graph_pool = None

    # --- slots --------------------------------------------------------------------------------
    @property
    def cache(self) -> KVCache:
        if self._cache is None:
            self._cache = KVCache(self.cfg, self.max_batch + 1, self.max_seq_len, device=self.device,
                                  dtype=self.cache_dtype)  # + the scratch slot
        return self._cache

    def has_free_slot(self) -> bool:
        return any(s is None for s in self.slots)

    def num_active(self) -> int:
        return sum(s is not None for s in self.slots)

    def check_prompt(self, prompt_ids: Sequence[int]) -> None:
        n = len(prompt_ids)
        if n == 0:
            raise UserError("the prompt is empty")
        if n >= self.max_seq_len:
            raise ContextLengthError(
                f"the prompt has {n} tokens, but this model's context is {self.max_seq_len} tokens "
                f"(prompt plus at least one generated token); shorten the prompt or the conversation")
        bad = [i for i in prompt_ids if not 0 <= int(i) < self.cfg.vocab_size]
        if bad:
            raise UserError(f"token id {bad[0]} is outside the vocabulary (size {self.cfg.vocab_size})")

    def add_request(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Request:
        """Take a free slot and prefill the prompt; the first token is sampled by the next `step()`."""
        return self.add_requests([(prompt_ids, params)])[0]

    @torch.inference_mode()
    def add_requests(self, items: Sequence[tuple[Sequence[int], SamplingParams | None]]) -> list[Request]:
        """Admit several requests with one batched prefill (right-padded to the longest prompt).

        Padding tokens write keys at positions past their row's prompt; those cache entries are overwritten
        by the row's own decode steps before any query can attend to them, so they never matter.
        Every item is validated before any slot is taken: one bad prompt admits none.
        """
        checked = []
        for prompt_ids, params in items:
            params = (params or SamplingParams()).validate()
            self.check_prompt(prompt_ids)
            checked.append((list(prompt_ids), params))
        free = [i for i, r in enumerate(self.slots) if r is None]
        if len(checked) > len(free):
            raise RuntimeError(f"{len(checked)} requests but {len(free)} free slots: check has_free_slot()")
        reqs = []
        for (prompt_ids, params), slot in zip(checked, free):
            max_new = min(params.max_tokens, self.max_seq_len - len(prompt_ids))
            reqs.append(Request(prompt_ids, params, self.tok, slot, max_new, self.device))
        if not reqs:
            return []
        T = max(len(r.prompt_ids) for r in reqs)
        ids = torch.full((len(reqs), T), self.tok.pad_id, dtype=torch.long, device=self.device)
        for j, r in enumerate(reqs):
            ids[j, :len(r.prompt_ids)] = torch.tensor(r.prompt_ids, device=self.device)
        pos = torch.arange(T, device=self.device).expand(len(reqs), T)
        slots = torch.tensor([r.slot for r in reqs], device=self.device)
        hidden = self.model(ids, positions=pos, kv_cache=self.cache, slots=slots, kv_len=T, return_hidden=True,
                            prefill=True)
        # project only each prompt's last position: the full (T, vocab) logits of a long prompt cost more
        # than the rest of the prefill on a CPU
        last = torch.tensor([len(r.prompt_ids) - 1 for r in reqs], device=self.device)
        logits = self.model.logits_from_hidden(hidden[torch.arange(len(reqs), device=self.device), last]).float()
        for j, r in enumerate(reqs):
            r.next_logits = logits[j]
            self.slots[r.slot] = r
        return reqs

    def abort(self, req: Request) -> None:
        """Free a request's slot at once (e.g. its client disconnected)."""
        if self.slots[req.slot] is req:
            self.slots[req.slot] = None
        if not req.finished:
            req.finished, req.finish_reason = True, "abort"

    # --- one decode step ------------------------------------------------------------------
    def _sample(self, reqs: list[Request]) -> tuple[list[int], list[float]]:
        """One token per request, in one batched pass (one device-to-host copy per step).

        Sampling is by inverse CDF: each request draws u ~ U[0, 1) from its own seeded generator and takes
        the first token whose cumulative probability reaches u. Every operation is row-wise, so a request's
        tokens depend only on its own logits and seed, never on what else is in the batch."""
        logits = torch.stack([r.next_logits for r in reqs])
        logprobs_all = None
        if any(r.params.logprobs for r in reqs):
            logprobs_all = torch.log_softmax(logits, dim=-1)
        if any(r.params.repetition_penalty != 1.0 or r.params.presence_penalty or r.params.frequency_penalty
               for r in reqs):
            logits = torch.stack([_apply_penalties(logits[i], r) for i, r in enumerate(reqs)])
        greedy = [r.params.greedy for r in reqs]
        if all(greedy):
            tokens = logits.argmax(-1).tolist()
        else:
            tokens = self._sample_rows(logits, reqs).tolist()
        lps = [float(logprobs_all[i, t]) if logprobs_all is not None else 0.0 for i, t in enumerate(tokens)]
        return tokens, lps

    @staticmethod
    def _sample_rows(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
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
            out[rows] = Engine._sample_filtered(x[rows], [ps[i] for i in filtered], u[rows])
        return torch.where(greedy, logits.argmax(-1), out)

    @staticmethod
    def _sample_filtered(x: torch.Tensor, ps: list[SamplingParams], u: torch.Tensor) -> torch.Tensor:
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

    def _emit(self, req: Request, delta: str, final: bool) -> str:
        """Apply stop strings to a text delta; returns what may be shown now."""
        pending = req._held + delta
        stops = req.params.stop
        if not stops:
            req._held = ""
            return pending
        window = req.text[-max(len(s) for s in stops):] + pending
        base = len(window) - len(pending)
        hit = min((window.find(s) for s in stops if window.find(s) != -1), default=-1)
        if hit != -1:
            req._held = ""
            req.finished, req.finish_reason = True, "stop"
            return pending[:max(hit - base, 0)]
        if final:
            req._held = ""
            return pending
        keep = 0
        for s in stops:
            for k in range(min(len(s) - 1, len(pending)), 0, -1):
                if pending.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        req._held = pending[len(pending) - keep:] if keep else ""
        return pending[:len(pending) - keep]

    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Sample one token for every active request, then run one batched forward for those still going."""
        reqs = [r for r in self.slots if r is not None]
        if not reqs:
            return []
        tokens, lps = self._sample(reqs)
        outs: list[StepOutput] = []
        cont: list[Request] = []
        for r, t, lp in zip(reqs, tokens, lps):
            delta = ""
            if t in r.stop_ids:
                r.finished, r.finish_reason = True, "stop"
                delta = self._emit(r, r.decoder.flush(), final=True)
            else:
                r.output_ids.append(t)
                if r.params.logprobs:
                    r.logprobs.append(lp)
                r.counts[t] = r.counts.get(t, 0) + 1
                if r.params.repetition_penalty != 1.0:
                    r.seen = torch.cat([r.seen, torch.tensor([t], device=r.seen.device)]).unique()
                raw = r.decoder.push(t)
                at_limit = len(r.output_ids) >= r.max_new
                if at_limit:
                    raw += r.decoder.flush()
                delta = self._emit(r, raw, final=at_limit)
                if not r.finished and at_limit:
                    r.finished, r.finish_reason = True, "length"
            r.text += delta
            if r.finished:
                self.slots[r.slot] = None
            else:
                r.last_token = t
                cont.append(r)
            outs.append(StepOutput(r, t, delta, r.finished, r.finish_reason))
        if cont:
            logits = self._decode([r.last_token for r in cont], [r.pos for r in cont], [r.slot for r in cont])
            for i, r in enumerate(cont):
                r.next_logits = logits[i]
                r.pos += 1
        return outs

    def _decode(self, tokens: list[int], positions: list[int], slots: list[int]) -> torch.Tensor:
        """Next-token logits (n, vocab) after writing one token per row into the cache."""
        n, dev = len(tokens), self.device
        kv_len = max(positions) + 1
        if self.decode_mode == "eager":
            ids = torch.tensor(tokens, device=dev)[:, None]
            pos = torch.tensor(positions, device=dev)[:, None]
            consecutive = slots == list(range(slots[0], slots[0] + n))
            return self.model(ids, positions=pos, kv_cache=self.cache, slots=torch.tensor(slots, device=dev),
                              kv_len=kv_len, slot_range=(slots[0], slots[0] + n) if consecutive else None)[:, -1].float()
        b = next(x for x in self._batch_buckets() if x >= n)
        L = min(self.max_seq_len, -(-kv_len // GRAPH_KV_BLOCK) * GRAPH_KV_BLOCK)
        pad = b - n  # padding rows: token 0 at position 0 of the scratch slot
        ids = torch.tensor(tokens + [0] * pad, device=dev)[:, None]
        pos = torch.tensor(positions + [0] * pad, device=dev)[:, None]
        sl = torch.tensor(slots + [self.scratch_slot] * pad, device=dev)
        if self.decode_mode == "padded":
            return self.model(ids, positions=pos, kv_cache=self.cache, slots=sl, kv_len=L)[:n, -1].float()
        g = self._graphs.get((b, L))
        if g is None:
            try:
                g = self._capture(b, L)
            except RuntimeError as e:  # never lose a request to an optimisation: fall back to eager decoding
                warnings.warn(f"CUDA graph capture failed ({e}); decoding eagerly from now on")
                self.decode_mode = "eager"
                return self._decode(tokens, positions, slots)
        g.ids.copy_(ids)
        g.pos.copy_(pos)
        g.slots.copy_(sl)
        g.graph.replay()
        return g.logits[:n].clone()  # the static output is overwritten by the next replay

    def _batch_buckets(self) -> list[int]:
        out, b = [], 1
        while b < self.max_batch:
            out.append(b)
            b *= 2
        return out + [self.max_batch]

    def _capture(self, b: int, L: int) -> _DecodeGraph:
        dev = self.device
        ids = torch.zeros((b, 1), dtype=torch.long, device=dev)
        pos = torch.zeros((b, 1), dtype=torch.long, device=dev)
        slots = torch.full((b,), self.scratch_slot, dtype=torch.long, device=dev)  # warm-up writes stay there

        def run():
            return self.model(ids, positions=pos, kv_cache=self.cache, slots=slots, kv_len=L)[:, -1].float()

        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm up (kernel selection, workspaces) outside the capture
            for _ in range(2):
                run()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the server may run other CUDA work (scoring, embeddings) on other threads meanwhile
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
            logits = run()
        self._graph_pool = graph.pool()
        g = self._graphs[(b, L)] = _DecodeGraph(ids, pos, slots, logits, graph)
        return g

    # --- conveniences built on add_request/step ---------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 progress: bool = False) -> list[Generation]:
        """Generate for many prompts, max_batch at a time, refilling slots as requests finish."""
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        for p in prompts:
            self.check_prompt(p)
        results: list[Generation | None] = [None] * len(prompts)
        queue = list(range(len(prompts)))[::-1]
        owner: dict[int, int] = {}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(prompts), desc="generate", unit="seq")
        while queue or owner:
            admit = []
            while queue and len(admit) < self.max_batch - self.num_active():
                admit.append(queue.pop())
            for i, req in zip(admit, self.add_requests([(prompts[i], params[i]) for i in admit])):
                owner[req.id] = i
            for out in self.step():
                if out.finished:
                    results[owner.pop(out.request.id)] = out.request.result()
                    if bar:
                        bar.update(1)
        if bar:
            bar.close()
        return results  # type: ignore[return-value]

    def stream(self, prompt_ids: Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text deltas for one prompt. Closing the iterator early frees the slot."""
        req = self.add_request(list(prompt_ids), params)
        try:
            while not req.finished:
                for out in self.step():
                    if out.request is req and out.text:
                        yield out.text
        finally:
            self.abort(req)

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None) -> Generation:
        ids = self.tok.render_chat(messages, add_generation_prompt=True).ids
        return self.generate([ids], params)[0]

    # --- beam search -----------------------------------------------------------------------------
    @torch.inference_mode()
    def beam_search(self, prompt_ids: Sequence[int], num_beams: int = 4, max_tokens: int = 64,
                    length_penalty: float = 1.0) -> Generation:
        """Keep the num_beams best partial sequences by total log-probability; score finished ones by
        sum_logprob / length**length_penalty. Uses its own cache (num_beams slots), reordered each step."""
        self.check_prompt(prompt_ids)
        n = len(prompt_ids)
        max_tokens = min(max_tokens, self.max_seq_len - n)
        cache = KVCache(self.cfg, num_beams, n + max_tokens + 1, device=self.device, dtype=self.cache_dtype)
        ids = torch.tensor([prompt_ids] * num_beams, device=self.device)
        pos = torch.arange(n, device=self.device).expand(num_beams, n)
        slots = torch.arange(num_beams, device=self.device)
        logits = self.model(ids, positions=pos, kv_cache=cache, slots=slots, kv_len=n)[:, -1].float()
        beam_scores = torch.full((num_beams,), float("-inf"), device=self.device)
        beam_scores[0] = 0.0  # all beams start identical: expand only the first
        beams: list[list[int]] = [[] for _ in range(num_beams)]
        finished: list[tuple[float, list[int]]] = []
        stop_ids = set(self.tok.stop_token_ids)
        V = logits.shape[-1]
        for t in range(max_tokens):
            logp = torch.log_softmax(logits, -1) + beam_scores[:, None]
            top = torch.topk(logp.view(-1), 2 * num_beams)
            new_beams, new_scores, src = [], [], []
            for score, flat in zip(top.values.tolist(), top.indices.tolist()):
                b, tok = divmod(flat, V)
                seq = beams[b] + [tok]
                if tok in stop_ids:
                    finished.append((score / max(len(seq), 1) ** length_penalty, beams[b]))
                    continue
                new_beams.append(seq)
                new_scores.append(score)
                src.append(b)
                if len(new_beams) == num_beams:
                    break
            best_running = max(new_scores) / (len(new_beams[0]) ** length_penalty) if new_scores else float("-inf")
            if len(finished) >= num_beams and max(f[0] for f in finished) >= best_running:
                break
            if not new_beams:
                break
            idx = torch.tensor(src, device=self.device)
            for layer in range(self.cfg.n_layers):
                cache.k[layer][: len(src)] = cache.k[layer][idx]
                cache.v[layer][: len(src)] = cache.v[layer][idx]
            beams, k = new_beams, len(new_beams)
            beam_scores = torch.full((num_beams,), float("-inf"), device=self.device)
            beam_scores[:k] = torch.tensor(new_scores, device=self.device)
            last = torch.tensor([[s[-1]] for s in beams] + [[0]] * (num_beams - k), device=self.device)
            p = torch.full((num_beams, 1), n + t, device=self.device)
            logits = self.model(last, positions=p, kv_cache=cache, slots=slots, kv_len=n + t + 1)[:, -1].float()
        reason = "stop"
        if not finished:
            finished = [(float(beam_scores[0]) / max(len(beams[0]), 1) ** length_penalty, beams[0])]
            reason = "length"
        score, best = max(finished, key=lambda f: f[0])
        return Generation(token_ids=best, text=self.tok.decode(best), finish_reason=reason, prompt_tokens=n,
                          logprobs=None)

    # --- scoring -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16
                      ) -> list[tuple[float, bool]]:
        """For each (context, continuation): (sum of log p(continuation | context), whether greedy decoding
        would produce the continuation). Over-long inputs keep their rightmost tokens."""
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            seqs, spans = [], []
            for i in chunk:
                ctx, cont = list(pairs[i][0]), list(pairs[i][1])
                if not ctx:  # the first continuation token needs something to be predicted from
                    ctx = [self.tok.bos_id if self.tok.bos_id is not None else self.tok.pad_id]
                if not cont:
                    raise UserError("loglikelihood needs a non-empty continuation")
                cont = cont[-(self.max_seq_len - 1):]  # keep at least one context token
                full = (ctx + cont)[-self.max_seq_len:]
                seqs.append(full)
                spans.append(len(cont))
            T = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), T), self.tok.pad_id, dtype=torch.long, device=self.device)
            for j, s in enumerate(seqs):
                ids[j, :len(s)] = torch.tensor(s, device=self.device)  # right padding: causal attention ignores it
            hidden = self.model(ids, return_hidden=True)
            for j, (s, k) in enumerate(zip(seqs, spans)):
                L = len(s)
                # project only the positions that predict the continuation: the full (T, vocab) logits of a
                # batch would be most of the memory and time
                logp = torch.log_softmax(self.model.logits_from_hidden(hidden[j, L - k - 1:L - 1]).float(), -1)
                target = torch.tensor(s[L - k:], device=self.device)
                total = float(logp.gather(-1, target[:, None]).sum())
                greedy = bool((logp.argmax(-1) == target).all())
                out[chunk[j]] = (total, greedy)
        return out

    @torch.inference_mode()
    def loglikelihood_choices(self, items: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]],
                              token_budget: int = 8192) -> list[list[tuple[float, bool]]]:
        """Score several continuations of one shared context, for many items: for each (context,
        [continuation, ...]) the (sum of log p(continuation | context), greedy?) of every continuation.

        The context is run once per item into a private KV cache, its keys/values are copied to one cache
        slot per continuation, and all continuations of a group of items then run as one batch on top of
        it. For multiple choice (a long question, short answers) this does ~1/K of the work of scoring K
        full sequences. The context's last token is fed again with the continuations (it rewrites the same
        cache entry), so every needed logit comes from the second pass. Over-long inputs keep their
        rightmost context tokens. `token_budget` bounds slots x cached length per group (cache memory)."""
        out: list[list[tuple[float, bool]]] = [[] for _ in items]
        prepared = []
        for i, (ctx, conts) in enumerate(items):
            ctx = list(ctx) or [self.tok.bos_id if self.tok.bos_id is not None else self.tok.pad_id]
            conts = [list(c) for c in conts]
            if not conts or any(not c for c in conts):
                raise UserError("loglikelihood_choices needs at least one non-empty continuation per item")
            longest = max(len(c) for c in conts)
            if longest >= self.max_seq_len:
                raise ContextLengthError(f"a continuation of {longest} tokens does not fit the {self.max_seq_len}-token context")
            ctx = ctx[-(self.max_seq_len - longest):]
            prepared.append((i, ctx, conts, len(ctx) + longest))
        # long items first so a group's items have similar lengths (less padding)
        prepared.sort(key=lambda p: -p[3])
        start = 0
        while start < len(prepared):
            group, slots_used, longest_len = [], 0, 0
            while start < len(prepared):
                i, ctx, conts, total = prepared[start]
                new_slots, new_len = slots_used + len(conts), max(longest_len, total)
                if group and new_slots * new_len > token_budget:
                    break
                group.append(prepared[start])
                slots_used, longest_len = new_slots, new_len
                start += 1
            self._score_group(group, slots_used, longest_len, out)
        return out

    def _score_group(self, group, n_slots: int, max_len: int, out) -> None:
        dev = self.device
        cache = KVCache(self.cfg, n_slots, max_len, device=dev, dtype=self.cache_dtype)
        first_slot, s = [], 0
        for _, _, conts, _ in group:
            first_slot.append(s)
            s += len(conts)
        # pass 1: every context but its last token, one row per item, right-padded (padding is written at
        # positions the second pass overwrites or never reads)
        P = max(len(ctx) - 1 for _, ctx, _, _ in group)
        if P > 0:
            ids = torch.full((len(group), P), self.tok.pad_id, dtype=torch.long, device=dev)
            for r, (_, ctx, _, _) in enumerate(group):
                if len(ctx) > 1:
                    ids[r, :len(ctx) - 1] = torch.tensor(ctx[:-1], device=dev)
            pos = torch.arange(P, device=dev).expand(len(group), P)
            self.model(ids, positions=pos, kv_cache=cache, slots=torch.tensor(first_slot, device=dev), kv_len=P,
                       return_hidden=True)
            for (_, ctx, conts, _), f in zip(group, first_slot):
                if len(conts) > 1 and len(ctx) > 1:
                    n = len(ctx) - 1
                    for layer in range(self.cfg.n_layers):
                        cache.k[layer][f + 1:f + len(conts), :, :n] = cache.k[layer][f, :, :n]
                        cache.v[layer][f + 1:f + len(conts), :, :n] = cache.v[layer][f, :, :n]
        # pass 2: [last context token] + continuation[:-1] for every continuation, at its true positions
        rows, targets = [], []
        for (_, ctx, conts, _) in group:
            for c in conts:
                rows.append((ctx[-1:] + c[:-1], len(ctx) - 1))
                targets.append(c)
        T = max(len(r) for r, _ in rows)
        ids = torch.full((len(rows), T), self.tok.pad_id, dtype=torch.long, device=dev)
        pos = torch.empty((len(rows), T), dtype=torch.long, device=dev)
        for r, (seq, p0) in enumerate(rows):
            ids[r, :len(seq)] = torch.tensor(seq, device=dev)
            pos[r] = torch.arange(p0, p0 + T, device=dev).clamp_(max=max_len - 1)
        kv_len = int(pos.max()) + 1
        hidden = self.model(ids, positions=pos, kv_cache=cache, slots=torch.arange(len(rows), device=dev),
                            kv_len=kv_len, return_hidden=True)
        r = 0
        for (i, _, conts, _) in group:
            for c in conts:
                logp = torch.log_softmax(self.model.logits_from_hidden(hidden[r, :len(c)]).float(), -1)
                target = torch.tensor(c, device=dev)
                out[i].append((float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())))
                r += 1

    @torch.inference_mode()
    def token_logprobs(self, ids: Sequence[int], top: int = 0) -> tuple[list[float | None], list[list[tuple[int, float]] | None]]:
        """Per-token log p(ids[i] | ids[:i]) of one sequence (None for the first token, which has no
        context), and the `top` most likely tokens at each position as (token id, logprob). This is what an
        OpenAI-style `echo` + `logprobs` completion reports. It uses the model only, never the slots or the
        cache, so the server may call it from a thread other than the one stepping the engine."""
        ids = list(ids)
        if not ids:
            raise UserError("token_logprobs needs at least one token")
        if len(ids) > self.max_seq_len:
            raise ContextLengthError(f"{len(ids)} tokens do not fit this model's {self.max_seq_len}-token context")
        x = torch.tensor([ids], dtype=torch.long, device=self.device)
        hidden = self.model(x, return_hidden=True)[0, :-1]
        values: list[float | None] = [None]
        tops: list[list[tuple[int, float]] | None] = [None]
        for start in range(0, hidden.shape[0], 256):  # bounded (chunk, vocab) logits at a time
            logp = torch.log_softmax(self.model.logits_from_hidden(hidden[start:start + 256]).float(), -1)
            target = torch.tensor(ids[start + 1:start + 1 + logp.shape[0]], device=self.device)
            values += logp.gather(-1, target[:, None])[:, 0].tolist()
            if top > 0:
                tv, ti = torch.topk(logp, top, dim=-1)
                tops += [list(zip(a, b)) for a, b in zip(ti.tolist(), tv.tolist())]
            else:
                tops += [[] for _ in range(logp.shape[0])]
        return values, tops
