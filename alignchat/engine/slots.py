"""The slot engine: `Engine`, continuous batching on a static, preallocated KV cache.

Notable choices:
- One cache slot per sequence and an explicit position per token. Requests take a free slot
  (`add_requests`, which prefills their prompts in one batch), decode together one token per `step()`, and
  free their slot when they finish or are aborted. New requests join between steps, and a batch never
  waits for its longest member.
- The cache has one spare slot beyond `max_batch`, written only by the padding rows of a CUDA-graph decode
  step (decode.py).
- Prefill writes the prompts' keys into the cache but attends causally to its own fresh keys, without a
  mask or a cache read, so SDPA can use its flash kernels; it projects only each prompt's last position
  to the vocabulary. The step computes next-token logits at its end, so a freshly prefilled request samples
  its first token without another forward pass.
- Every request of an admission is validated before any slot is taken: one bad prompt admits none.
- Each admitted request gets its own copy of the logits processors that keep state (`sampling.for_request`),
  so one `SamplingParams` with a grammar constraint can be shared by a batch.
- Prefix caching (prefix.py): a slot keeps its keys and values when its request leaves, and a new prompt
  takes the free slot whose tokens it continues, or another free slot into which the prefix it shares with
  any slot is copied first, so admission computes only the rest of the prompt. Such an admission runs the cache-reading path (per-row positions,
  a mask over cache positions) instead of the flash prefill; one with nothing to reuse is the plain
  prefill. `prefix_stats()` counts reused and admitted prompt tokens.
- Beam search (beam.py) and scoring (scoring.py) run on the same model with caches of their own.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..errors import ContextLengthError, UserError
from ..model import KVCache, Transformer
from ..tokenizer import Tokenizer
from . import sampling
from .beam import BeamSearch
from .decode import Decoder
from .prefix import PrefixCache, weights_fingerprint
from .request import Generation, Request, StepOutput
from .sampling import SamplingParams
from .scoring import Scoring


class Engine(Scoring, BeamSearch):
    """Batched generation with a slot-based KV cache. Not thread-safe: one thread drives it."""

    # the batched sampler of `step()` (sampling.py), also reachable here
    _sample_rows = staticmethod(sampling.sample_rows)
    _sample_filtered = staticmethod(sampling.sample_filtered)

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_batch: int = 8, max_seq_len: int | None = None,
                 cache_dtype: torch.dtype | None = None, cuda_graphs: bool = True, prefix_cache: bool = True):
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
        self.decoder = Decoder(model, self.device, max_batch, self.max_seq_len, self.scratch_slot,
                               cuda_graphs=cuda_graphs)
        self.prefix = PrefixCache(max_batch, enabled=prefix_cache)
        self._weights: tuple | None = None  # the fingerprint the cached keys and values were computed with
        self._epoch = 0  # bumped when that fingerprint changes

    @property
    def decode_mode(self) -> str:
        """"graph" (CUDA graphs), "eager" (the exact batch), or "padded" (the graph path's padding without
        capture, to check it on a CPU); see decode.py."""
        return self.decoder.mode

    @decode_mode.setter
    def decode_mode(self, mode: str) -> None:
        self.decoder.mode = mode

    # --- slots --------------------------------------------------------------------------------
    @property
    def cache(self) -> KVCache:
        if self._cache is None:
            self._cache = KVCache(self.cfg, self.max_batch + 1, self.max_seq_len, device=self.device,
                                  dtype=self.cache_dtype)  # + the scratch slot
        return self._cache

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
        """Admit several requests with one batched prefill (right-padded to the longest prompt part computed).

        With the prefix cache each row computes only its prompt past the reused prefix, at positions
        reuse..len-1, attending to the cached keys before it. Padding tokens write keys at positions past
        their row's prompt; those cache entries are overwritten by the row's own decode steps before any
        query can attend to them, so they never matter.
        Every item is validated before any slot is taken: one bad prompt admits none.
        """
        checked = []
        for prompt_ids, params in items:
            params = (params or SamplingParams()).validate()
            self.check_prompt(prompt_ids)
            checked.append((list(prompt_ids), sampling.for_request(params)))  # its own processor state
        free = [i for i, r in enumerate(self.slots) if r is None]
        if len(checked) > len(free):
            raise RuntimeError(f"{len(checked)} requests but {len(free)} free slots: admit at most "
                               f"max_batch - num_active()")
        if not checked:
            return []
        epoch = self._weights_epoch()
        reqs = []
        for prompt_ids, params in checked:
            match = self.prefix.plan(prompt_ids, free)
            free.remove(match.slot)
            if match.source is not None:  # before any write of this admission, which only the plans know
                self._copy_prefix(match.source, match.slot, match.reuse)
            self.prefix.hold(match.slot, prompt_ids[:match.reuse])  # valid even if the prefill below fails
            max_new = min(params.max_tokens, self.max_seq_len - len(prompt_ids))
            r = Request(prompt_ids, params, self.tok, match.slot, max_new, self.device)
            r.cached_tokens, r.weights_epoch = match.reuse, epoch
            reqs.append(r)
        dev = self.device
        start = [r.cached_tokens for r in reqs]
        T = max(len(r.prompt_ids) - s for r, s in zip(reqs, start))
        ids = torch.full((len(reqs), T), self.tok.pad_id, dtype=torch.long, device=dev)
        for j, (r, s) in enumerate(zip(reqs, start)):
            ids[j, :len(r.prompt_ids) - s] = torch.tensor(r.prompt_ids[s:], device=dev)
        slots = torch.tensor([r.slot for r in reqs], device=dev)
        if any(start):  # read the cache: per-row positions, a mask over cache positions
            # padding past the context's end writes (junk) at its last position, which no prompt reaches
            pos = (torch.tensor(start, device=dev)[:, None] + torch.arange(T, device=dev)).clamp_(
                max=self.max_seq_len - 1)
            hidden = self.model(ids, positions=pos, kv_cache=self.cache, slots=slots,
                                kv_len=max(len(r.prompt_ids) for r in reqs), return_hidden=True)
        else:
            pos = torch.arange(T, device=dev).expand(len(reqs), T)
            hidden = self.model(ids, positions=pos, kv_cache=self.cache, slots=slots, kv_len=T, return_hidden=True,
                                prefill=True)
        # project only each prompt's last position: the full (T, vocab) logits of a long prompt cost more
        # than the rest of the prefill on a CPU
        last = torch.tensor([len(r.prompt_ids) - 1 - s for r, s in zip(reqs, start)], device=dev)
        logits = self.model.logits_from_hidden(hidden[torch.arange(len(reqs), device=dev), last]).float()
        for j, r in enumerate(reqs):
            r.next_logits = logits[j]
            self.slots[r.slot] = r
            self.prefix.hold(r.slot, r.prompt_ids)
            self.prefix.prompt_tokens += len(r.prompt_ids)
            self.prefix.hit_tokens += r.cached_tokens
        return reqs

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Copy the keys and values of positions 0..n-1 from slot `src` to slot `dst`, in every layer."""
        cache = self.cache
        for k, v in zip(cache.k, cache.v):
            k[dst, :, :n].copy_(k[src, :, :n])
            v[dst, :, :n].copy_(v[src, :, :n])

    def _leave(self, req: Request) -> None:
        """Free a request's slot; its keys and values stay there for the prefix cache."""
        self.slots[req.slot] = None
        if not self.prefix.enabled:
            return
        if req.weights_epoch == self._weights_epoch():
            self.prefix.hold(req.slot, (req.prompt_ids + req.output_ids)[:req.pos])  # the positions written
        else:  # the weights changed while it ran: its keys are of another model
            self.prefix.hold(req.slot, [])

    def _weights_epoch(self) -> int:
        """A number that changes whenever the model's weights do; a change forgets every cached prefix."""
        if self.prefix.enabled:
            weights = weights_fingerprint(self.model)
            if weights != self._weights:  # an optimizer step, a weight load: the cached keys are stale
                self.prefix.clear()
                self._weights, self._epoch = weights, self._epoch + 1
        return self._epoch

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after changing the model's weights in a way the engine cannot see:
        prefix.py)."""
        self.prefix.clear()

    def prefix_stats(self) -> dict:
        """{"enabled", "hit_tokens": prompt tokens reused from the cache, "prompt_tokens": prompt tokens admitted}."""
        return self.prefix.stats()

    def abort(self, req: Request) -> None:
        """Free a request's slot at once (e.g. its client disconnected)."""
        if self.slots[req.slot] is req:
            self._leave(req)
        if not req.finished:
            req.finished, req.finish_reason = True, "abort"

    # --- one decode step ------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[StepOutput]:
        """Sample one token for every active request, then run one batched forward for those still going."""
        reqs = [r for r in self.slots if r is not None]
        if not reqs:
            return []
        tokens, lps = sampling.sample_next(reqs)
        outs: list[StepOutput] = []
        cont: list[Request] = []
        for r, t, lp in zip(reqs, tokens, lps):
            delta = ""
            if t in r.stop_ids:
                r.finished, r.finish_reason = True, "stop"
                delta = r.emit(r.decoder.flush(), final=True)
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
                delta = r.emit(raw, final=at_limit)
                if not r.finished and at_limit:
                    r.finished, r.finish_reason = True, "length"
            r.text += delta
            if r.finished:
                self._leave(r)
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
        """Next-token logits (n, vocab) after writing one token per row into the cache (decode.py)."""
        return self.decoder.decode(self.cache, tokens, positions, slots)

    def _batch_buckets(self) -> list[int]:
        return self.decoder.batch_buckets()

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
