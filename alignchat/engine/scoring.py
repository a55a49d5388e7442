"""Scoring with the engine's model: log-likelihoods of continuations and per-token log-probabilities.

What evaluation (multiple choice, perplexity-style tasks), the AI judges and the API's `echo` + `logprobs`
completions use. None of it touches the engine's request slots or their cache.

Notable choices:
- Only the positions that are needed are projected to the vocabulary: the full (T, vocab) logits of a batch
  would be most of the memory and the time.
- Over-long inputs keep their rightmost tokens (at least one context token before a continuation).
- `loglikelihood_choices` runs a shared context once per item into a private KV cache, copies its keys and
  values to one cache slot per continuation, and scores all continuations of a group of items as one batch
  on top of it: about 1/K of the work of scoring K full sequences (multiple choice: a long question, short
  answers). `token_budget` bounds slots x cached length per group.
- `token_logprobs` uses the model only, never the slots or the cache, so the server may call it from a
  thread other than the one stepping the engine.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ContextLengthError, UserError
from ..model import KVCache


class Scoring:
    """`Engine.loglikelihood`, `loglikelihood_choices` and `token_logprobs`. Uses the engine's model, tok,
    cfg, device, max_seq_len and cache_dtype; never its slots."""

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
