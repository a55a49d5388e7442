"""The model-client interface: chat, generate, log-likelihood and token count, whoever runs the model.

Two clients implement it: `LocalClient` (a checkpoint on our engine, `client/local.py`) and
`EndpointClient` (any OpenAI-compatible server, `client/endpoint.py`). Evaluation, the literature
assistant and the AI judges are written against this interface only.

A prompt is one of
- a conversation (`list[dict]` of role/content messages), rendered by the model's chat template with the
  assistant's turn opened;
- a string, given to the model as it is (no template);
- a list of token ids (a local model's own ids; an endpoint passes them to /v1/completions).

Notable choices:
- Everything is batched: `generate` and `loglikelihood` take lists, so a local client fills the engine's
  slots and an endpoint client sends the requests one after another.
- A score is `Score(logprob, greedy, tokens)`: the summed log-probability of the continuation, whether
  greedy decoding would have produced it, and how many tokens it has.
- A client that cannot score text (an endpoint without prompt logprobs) raises `LoglikelihoodUnsupported`
  and says so in `supports_loglikelihood`; callers skip what needs scores and record why.
- `usage` counts tokens and seconds for generation and scoring, for efficiency reports.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Sequence, Union

from ..errors import UserError
from .sampling import SAMPLING_DEFAULTS, Sampling

Prompt = Union[str, list]  # a conversation (list of message dicts), raw text, or token ids


class LoglikelihoodUnsupported(UserError):
    """The client cannot score given text (e.g. an endpoint without prompt logprobs)."""


class Score(NamedTuple):
    logprob: float
    greedy: bool
    tokens: int


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


@dataclass
class Usage:
    """Running totals over the client's life."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    generate_seconds: float = 0.0
    scored_tokens: int = 0
    score_seconds: float = 0.0


def is_conversation(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], dict)


def is_token_ids(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(t, int) for t in prompt)


def check_prompt(prompt) -> None:
    if not (isinstance(prompt, str) or is_conversation(prompt) or is_token_ids(prompt)):
        raise UserError("a prompt is a string, a non-empty list of messages or a non-empty list of token ids")


class ModelClient(ABC):
    """One model, local or remote. Subclasses set `kind` ("local" or "endpoint") and `name`."""

    kind: str = ""
    name: str = ""

    def __init__(self):
        self.usage = Usage()

    # --- generation -------------------------------------------------------------------------------
    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], sampling: Sampling = SAMPLING_DEFAULTS,
                 truncate: bool = False) -> list[Completion]:
        """One completion per prompt. With `truncate`, a prompt too long for a local model's context keeps
        its rightmost tokens instead of failing (an endpoint applies its own limits)."""

    def chat(self, messages: list[dict], sampling: Sampling = SAMPLING_DEFAULTS) -> Completion:
        """The assistant's reply to one conversation."""
        return self.generate([list(messages)], sampling)[0]

    # --- scoring ----------------------------------------------------------------------------------
    @abstractmethod
    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]]) -> list[Score]:
        """For each (context, continuation): the score of the continuation after the context. An empty
        context scores the text on its own; a conversation as context is rendered with the assistant's turn
        opened (a local model only)."""

    def loglikelihood_choices(self, items: Sequence[tuple[Prompt, Sequence[str]]]) -> list[list[Score]]:
        """For each (context, [continuation, ...]): the score of every continuation. A local client runs each
        context once; this default scores the flattened pairs."""
        flat = self.loglikelihood([(c, x) for c, xs in items for x in xs])
        out, k = [], 0
        for _, xs in items:
            out.append(flat[k:k + len(xs)])
            k += len(xs)
        return out

    def reply_loglikelihood(self, pairs: Sequence[tuple[list[dict], str]]) -> list[Score]:
        """For each (conversation, reply): the score of `reply` as the assistant's next turn, its end-of-turn
        marker included. Needs the model's chat template, so only a local client has it."""
        raise LoglikelihoodUnsupported(f"{self.name}: scoring a reply needs the model's chat template; "
                                       "use a local model")

    @property
    def supports_loglikelihood(self) -> bool:
        return True

    # --- tokens -----------------------------------------------------------------------------------
    @abstractmethod
    def count_tokens(self, prompt: Prompt) -> int:
        """Tokens the model would read for this prompt (a conversation includes its template)."""

    @property
    def max_context(self) -> int | None:
        """The context window in tokens, when known."""
        return None

    def fit_text(self, text: str) -> str:
        """`text` cut to what one scoring pass can read (unchanged when the client cannot tell)."""
        return text

    # --- bookkeeping ------------------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> dict:
        """What runs the model, for result files and their resume fingerprints."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
