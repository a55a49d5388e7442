"""Sampling options of a model client, and the one set of default values.

Notable choices:
- `Sampling` is what a caller asks for; each client turns it into what its model takes: the engine's
  `SamplingParams` (local) or the fields of an OpenAI request body (endpoint).
- `SAMPLING_DEFAULTS` is the one set of defaults for open-ended sampling: temperature 0.7, top-p 0.9,
  top-k off, no repetition penalty, 256 new tokens. The CLI, the web UI and the API (for fields a request
  leaves out) take their defaults from here (docs/architecture.md).
- `GREEDY` (temperature 0) is not a default but a choice: evaluation and the literature assistant decode
  greedily so that a score or an answer is reproducible.
- An endpoint receives only the fields of OpenAI's API (max_tokens, temperature, top_p, stop, seed): `top_k`,
  `repetition_penalty` and `ignore_eos` apply to our own engine only, so a request never fails on a server
  that rejects fields it does not know. OpenAI allows at most 4 stop strings; an endpoint gets the first 4.
- With a seed, prompt i of a batch uses seed + i: a batch gives different but reproducible samples (the
  server does the same for the n choices of one request).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # >1 discourages tokens already in prompt or output
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None
    ignore_eos: bool = False

    def __post_init__(self):
        stop = self.stop
        if isinstance(stop, str):
            stop = (stop,)
        object.__setattr__(self, "stop", tuple(stop or ()))

    def but(self, **changes) -> "Sampling":
        """A copy with some fields changed: `GREEDY.but(max_tokens=24)`."""
        return replace(self, **changes)

    def seed_for(self, i: int) -> int | None:
        return None if self.seed is None else self.seed + i

    def engine_params(self, i: int = 0):
        """The engine's `SamplingParams` for prompt i of a batch."""
        from ..engine import SamplingParams
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, repetition_penalty=self.repetition_penalty, stop=list(self.stop),
                              seed=self.seed_for(i), ignore_eos=self.ignore_eos)

    def openai_fields(self, i: int = 0) -> dict:
        """The OpenAI request-body fields for prompt i of a batch (OpenAI's fields only; see the module notes)."""
        body = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.stop:
            body["stop"] = list(self.stop)[:4]
        if self.seed is not None:
            body["seed"] = self.seed_for(i)
        return body


SAMPLING_DEFAULTS = Sampling()
GREEDY = Sampling(temperature=0.0, top_p=1.0)
