"""The literature assistant's view of a model: `complete(messages)` and `prompt_tokens(messages)` over any
model client (`alignchat.client`): our own models through the shared engine, or any OpenAI-compatible server.

Notable choices:
- `ClientBackend` adapts a `ModelClient`; the answerer and the review/boolean tasks only call `complete`,
  `prompt_tokens` and read `name` and `max_context`. The server's own model (`library.api.SchedulerBackend`)
  offers the same four.
- Answers are decoded greedily with a mild repetition penalty (1.1; our engine only, an endpoint gets
  OpenAI's fields), so the same library and question give the same answer, which the verifier then checks.
- A local model gets a 2048-token context (the instructions, five passages and the answer fit; a smaller
  KV cache is faster) and one engine slot; it loads on first use, so `--model` costs nothing until a
  question needs it.
- Only the question and the retrieved passages are sent to an endpoint, and only when the user names one
  (`--endpoint URL`). Its prompt is not fitted here: counting tokens over HTTP costs a request per try; a
  server refuses what does not fit, and the answerer then answers from the evidence.
"""
from __future__ import annotations

from typing import Protocol

from ..client import GREEDY, ModelClient, make_client

LIBRARY_SAMPLING = GREEDY.but(repetition_penalty=1.1)
LOCAL_OPTIONS = {"max_batch": 1, "max_seq_len": 2048}  # options of a local model's `LocalClient`


class ChatBackend(Protocol):
    name: str
    max_context: int | None

    def complete(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0) -> str: ...

    def prompt_tokens(self, messages: list[dict]) -> int | None: ...


class ClientBackend:
    def __init__(self, client: ModelClient):
        self.client = client

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def max_context(self) -> int | None:
        return self.client.max_context

    def prompt_tokens(self, messages: list[dict]) -> int | None:
        if self.client.kind == "endpoint":
            return None
        return self.client.count_tokens(messages)

    def complete(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0) -> str:
        sampling = LIBRARY_SAMPLING.but(max_tokens=max(1, max_tokens), temperature=temperature)
        return self.client.chat(messages, sampling).text


def local_client(model: str, device: str | None = "auto", dtype: str | None = None, loaded=None) -> ModelClient:
    return make_client(model=model, device=device, dtype=dtype, loaded=loaded, **LOCAL_OPTIONS)


class LocalBackend(ClientBackend):
    """One of our models (registry name, checkpoint directory, .gguf), or one already in memory (`loaded`)."""

    def __init__(self, model: str = "smollm2-135m-instruct", device: str | None = "auto", loaded=None):
        super().__init__(local_client(str(model), device, loaded=loaded))


def make_backend(spec: str | None, model: str | None = None, api_key_env: str | None = "OPENAI_API_KEY"):
    """'none' -> no model (extractive only); an http(s) URL -> that endpoint (`model` names its model);
    anything else -> one of our models."""
    if spec is None or spec.lower() in ("none", "extractive", ""):
        return None
    if spec.startswith(("http://", "https://")):
        return ClientBackend(make_client(endpoint=spec, endpoint_model=model, api_key_env=api_key_env))
    return LocalBackend(spec)
