"""The slot engine's prefix cache: which tokens' keys and values each cache slot holds, and, for a new prompt,
which slot to take and how much of the prompt need not be computed again.

Turn N of a conversation is turns 1…N−1 plus one new message, and requests of one deployment often share a
long system prompt. Their keys and values are already in the cache, in the slot of the request that computed
them; prefilling only the rest makes the time to first token independent of the history's length.

Notable choices:
- No separate store: a slot that a request leaves (finished or aborted) keeps its keys and values, and this
  index remembers the token ids they belong to (prompt and output, up to the last position written). An
  active slot offers its prompt.
- A prompt that extends what a free slot holds (the next turn of its conversation) takes that slot and
  computes only the rest. Otherwise it takes an empty or the least recently used free slot, and when some
  slot (active, free, or taken by an earlier prompt of the same admission) shares a prefix with it, such
  as a common system prompt or the same conversation with another last message, the engine copies those
  positions' keys and values into it: a tensor copy costs far less than recomputing them, and the longer
  sequence stays cached for whoever continues it. "Extends" tolerates losing fewer than `MIN_REUSE` cached
  tokens (a reply's last tokens that the chat template renders differently), which are not worth a slot.
- At least the prompt's last token is always computed (its logits give the first output token), and a
  match shorter than `MIN_REUSE` tokens is ignored: it would save less than the bookkeeping costs.
- The cache is only valid for the weights that computed it. The engine compares a fingerprint of the
  model's tensors (storage and in-place version counter: an optimizer step or a weight load changes it)
  before each admission and forgets every slot when it changed, so PPO rollouts after an update never see
  the old policy's keys. Tensors made under `torch.inference_mode` carry no version counter; whoever changes
  such weights in place calls `Engine.reset_prefix_cache()`.
- Disabled (`Engine(prefix_cache=False)`), a prompt takes the lowest free slot and reuses nothing: the
  engine behaves exactly as without this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

MIN_REUSE = 16  # the shortest shared prefix worth reusing, in tokens

_EMPTY = np.zeros(0, dtype=np.int64)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """The number of leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """What changes when the model's weights do: each tensor's storage and in-place version counter."""
    out = []
    for t in list(model.parameters()) + list(model.buffers()):
        try:
            version = t._version
        except RuntimeError:  # an inference tensor: no version counter (see the module docstring)
            version = -1
        out.append((t.data_ptr(), version))
    return tuple(out)


@dataclass
class Match:
    """Where a prompt goes: its `slot`, how many leading tokens are reused, and the slot to copy them from
    (None: they are in `slot` already, or nothing is reused)."""
    slot: int
    reuse: int
    source: int | None = None


class PrefixCache:
    """Per slot, the token ids whose keys and values are valid in the KV cache; plans each admission."""

    def __init__(self, n_slots: int, enabled: bool = True, min_reuse: int | None = None):
        self.enabled = enabled
        self.min_reuse = MIN_REUSE if min_reuse is None else min_reuse
        self.tokens: list[np.ndarray] = [_EMPTY] * n_slots
        self.used = [0] * n_slots  # when each slot was last taken or left (an LRU clock)
        self._clock = 0
        self.hit_tokens = 0  # prompt tokens whose keys and values were reused
        self.prompt_tokens = 0  # prompt tokens admitted

    def clear(self) -> None:
        self.tokens = [_EMPTY] * len(self.tokens)

    def hold(self, slot: int, ids: Sequence[int] | np.ndarray) -> None:
        """Record that `slot` holds valid keys and values for `ids` (positions 0..len(ids)-1)."""
        if not self.enabled:
            return
        self.tokens[slot] = np.asarray(ids, dtype=np.int64)
        self._clock += 1
        self.used[slot] = self._clock

    def plan(self, prompt: Sequence[int], free: Sequence[int]) -> Match:
        """Choose a free slot for `prompt` and what it reuses. The caller copies `source`'s first `reuse`
        positions into `slot` (when `source` is set) before anything else writes to the cache, and then
        calls `hold(slot, prompt[:reuse])`."""
        if not self.enabled:
            return Match(free[0], 0)
        ids = np.asarray(prompt, dtype=np.int64)
        cap = len(ids) - 1  # the last prompt token is always computed: its logits are needed
        shared = [min(common_prefix(ids, t), cap) if len(t) else 0 for t in self.tokens]
        shared = [n if n >= self.min_reuse else 0 for n in shared]
        best = max(range(len(shared)), key=lambda s: (shared[s], s in free))
        if shared[best] and best in free and len(self.tokens[best]) - shared[best] < self.min_reuse:
            return Match(best, shared[best])  # it continues what the slot holds
        others = [s for s in free if s != best or not shared[best]] or list(free)
        slot = min(others, key=lambda s: (len(self.tokens[s]) > 0, self.used[s]))  # empty, else LRU
        if shared[slot] >= shared[best]:
            return Match(slot, shared[slot])
        return Match(slot, shared[best], best)

    def stats(self) -> dict:
        return {"enabled": self.enabled, "hit_tokens": self.hit_tokens, "prompt_tokens": self.prompt_tokens}
