"""Beam search, beside the slot engine: the `num_beams` best partial sequences by total log-probability.

Notable choices:
- Its own KV cache (one slot per beam, sized for this prompt), reordered in place each step, so a search
  never takes or disturbs the engine's request slots.
- All beams start identical, so only the first is expanded at the first step.
- Finished sequences (an end-of-turn token) are scored by sum_logprob / length**length_penalty; the search
  stops once `num_beams` have finished and none running can beat the best of them.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..model import KVCache
from .request import Generation


class BeamSearch:
    """`Engine.beam_search`. Uses the engine's model, tok, cfg, device, max_seq_len, cache_dtype and
    check_prompt; never its slots."""

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
