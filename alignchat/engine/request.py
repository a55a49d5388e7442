"""One request in the slot engine: its prompt, slot, position, output so far, sampling state and stop strings.

Notable choices:
- A request owns its random generator (seeded from `SamplingParams.seed`, else from torch's global one), so
  its draws never depend on what else is in the batch.
- Stop token ids are the tokenizer's end-of-turn tokens (unless `ignore_eos`) plus `stop_token_ids`; the
  stop token itself is never part of the output.
- Stop strings are held back while the text so far may be the start of one (`emit`), so they never leak
  into the stream; the text before the stop string is shown, the stop string is not.
- Text is streamed through `StreamDecoder`, so deltas never split a UTF-8 character.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..tokenizer import StreamDecoder, Tokenizer
from .sampling import SamplingParams


@dataclass
class Generation:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    logprobs: list[float] | None = None
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache


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
        self.cached_tokens = 0  # leading prompt tokens reused from the prefix cache, not computed
        self.weights_epoch = 0  # the engine's weights epoch at admission (prefix cache validity)
        self.output_ids: list[int] = []
        self.logprobs: list[float] = []
        self.text = ""
        self._held = ""  # text withheld because it may be the start of a stop string
        self.decoder = StreamDecoder(tokenizer)
        self.finished = False
        self.finish_reason: str | None = None
        self.next_logits: torch.Tensor | None = None
        self.last_token: int | None = None  # the token the next decode step writes into the cache
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
                          prompt_tokens=len(self.prompt_ids), logprobs=list(self.logprobs) if self.params.logprobs else None,
                          cached_tokens=self.cached_tokens)

    def emit(self, delta: str, final: bool) -> str:
        """Apply stop strings to a text delta; returns what may be shown now (and finishes on a stop string)."""
        pending = self._held + delta
        stops = self.params.stop
        if not stops:
            self._held = ""
            return pending
        window = self.text[-max(len(s) for s in stops):] + pending
        base = len(window) - len(pending)
        hit = min((window.find(s) for s in stops if window.find(s) != -1), default=-1)
        if hit != -1:
            self._held = ""
            self.finished, self.finish_reason = True, "stop"
            return pending[:max(hit - base, 0)]
        if final:
            self._held = ""
            return pending
        keep = 0
        for s in stops:
            for k in range(min(len(s) - 1, len(pending)), 0, -1):
                if pending.endswith(s[:k]):
                    keep = max(keep, k)
                    break
        self._held = pending[len(pending) - keep:] if keep else ""
        return pending[:len(pending) - keep]
