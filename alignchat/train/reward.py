"""Scoring with a reward model r(x, y), and the ranked-comparison batches that `rm` and `dpo` train on.

The model is `alignchat.model.ScoredTransformer` (loaded by `alignchat.hub.load_scored_model`); the stage
that trains it is `alignchat rm` (`train/rm.py`). PPO, eval and the benchmarks score with what is here.

Notable choices:
- r(x, y) is read at the last token of the response, its end-of-turn token. Conversations are rendered with
  the one chat template (`Tokenizer.render_chat`), exactly as SFT, PPO and serving render them. Over-long
  sequences lose tokens from the left, so the response end survives.
- Each ranking of K responses is one batch element: `collate_rankings` puts all K responses of each
  ranking into one padded batch, with `group` saying which ranking each row belongs to.
- `RankingBatches` is rank-aware like the other data sources: each step takes one global batch of
  `per_batch × world_size` rankings in a seeded order, and rank r reads the r-th slice of it, so W
  processes read exactly what one process with W times the batch reads.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch

from ..errors import UserError
from ..model import ScoredTransformer
from ..tokenizer import Tokenizer
from . import rl_math


# --- data ----------------------------------------------------------------------------------------------

def encode_response(tok: Tokenizer, prompt: list[dict], response: str, max_len: int) -> tuple[list[int], list[int]]:
    """Render prompt + one assistant response; return (ids, response_mask), cut from the left to max_len."""
    r = tok.render_chat(list(prompt) + [{"role": "assistant", "content": response}])
    ids, mask = r.ids, r.assistant_mask
    # only the final assistant turn is "the response"; earlier assistant turns are part of the prompt
    last_start = len(mask)
    while last_start > 0 and mask[last_start - 1] == 0:
        last_start -= 1
    end = last_start
    while last_start > 0 and mask[last_start - 1] == 1:
        last_start -= 1
    resp_mask = [0] * len(ids)
    resp_mask[last_start:end] = [1] * (end - last_start)
    ids, resp_mask = ids[:end], resp_mask[:end]  # drop template whitespace after the end-of-turn token
    if len(ids) > max_len:
        ids, resp_mask = ids[-max_len:], resp_mask[-max_len:]
    return ids, resp_mask


def pad_batch(seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad (causal attention means pads at the end never affect real tokens).

    Returns (ids (B,T), mask (B,T), last_index (B,): the position of each row's last real token)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, mk) in enumerate(zip(seqs, masks)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        m[i, :len(mk)] = torch.tensor(mk, dtype=torch.long)
    last = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)
    return ids, m, last


class RankingBatches:
    """A resumable stream of micro-batches of `per_batch` rankings for this rank, shuffled every epoch."""

    def __init__(self, comparisons, tok: Tokenizer, per_batch: int, max_len: int, seed: int = 0, *,
                 rank: int = 0, world_size: int = 1):
        self.items = [c for c in comparisons if len(c.responses) >= 2]
        if not self.items:
            raise UserError("no comparisons with two or more responses to train on")
        self.tok, self.per_batch, self.max_len, self.seed = tok, per_batch, max_len, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        return order

    def next_batch(self):
        chosen = []  # one global batch; this rank's rankings are the rank-th slice
        while len(chosen) < self.per_batch * self.world_size:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            chosen.append(self.items[self._order[self.pos]])
            self.pos += 1
        mine = chosen[self.rank * self.per_batch:(self.rank + 1) * self.per_batch]
        return collate_rankings(mine, self.tok, self.max_len)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def collate_rankings(comparisons, tok: Tokenizer, max_len: int) -> dict:
    seqs, masks, group, rankings = [], [], [], []
    for g, c in enumerate(comparisons):
        for resp in c.responses:
            ids, m = encode_response(tok, c.prompt, resp, max_len)
            seqs.append(ids)
            masks.append(m)
            group.append(g)
        rankings.append(list(c.ranking))
    ids, mask, last = pad_batch(seqs, masks, tok.pad_id)
    return {"input_ids": ids, "mask": mask, "last": last, "group": torch.tensor(group), "rankings": rankings}


# --- scoring and evaluation ----------------------------------------------------------------------------

class RewardScorer:
    """Score (prompt, response) pairs with a reward model, optionally normalised with its stored stats."""

    def __init__(self, model: ScoredTransformer, tok: Tokenizer, max_len: int = 1024, batch_size: int = 16,
                 norm: dict | None = None):
        self.model, self.tok, self.batch_size, self.norm = model, tok, batch_size, norm
        self.max_len = min(max_len, model.cfg.max_seq_len)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score_ids(self, seqs: list[list[int]]) -> torch.Tensor:
        """Scores of already-tokenised sequences, each read at its last token."""
        out = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i:i + self.batch_size]
            ids, _, last = pad_batch(chunk, [[1] * len(s) for s in chunk], self.tok.pad_id)
            out.append(self.model(ids.to(self.device), score_index=last.to(self.device)).cpu())
        scores = torch.cat(out) if out else torch.zeros(0)
        if self.norm:
            scores = (scores - self.norm["mean"]) / max(self.norm["std"], 1e-6)
        return scores

    def score(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        seqs = [encode_response(self.tok, p, r, self.max_len)[0] for p, r in zip(prompts, responses)]
        return self.score_ids(seqs)

    def pairwise_accuracy(self, comparisons) -> dict:
        comps = [c for c in comparisons if len(c.responses) >= 2]
        flat_p = [c.prompt for c in comps for _ in c.responses]
        flat_r = [r for c in comps for r in c.responses]
        scores = self.score(flat_p, flat_r)
        correct = total = 0
        i = 0
        for c in comps:
            k = len(c.responses)
            ok, n = rl_math.pairwise_accuracy(scores[i:i + k], c.ranking)
            correct, total, i = correct + ok, total + n, i + k
        return {"pair_accuracy": correct / total if total else float("nan"), "pairs": total,
                "rankings": len(comps)}
