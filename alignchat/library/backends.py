"""Chat backends for the literature assistant: our own models through the shared engine, or any
OpenAI-compatible server.

Notable choices:
- `LocalBackend` loads a model with `alignchat.checkpoint.load_model` (a registry name such as
  `smollm2-135m-instruct`, a checkpoint directory or a .gguf) and generates with the one shared
  `alignchat.engine.Engine`; nothing leaves the machine.
- `OpenAIBackend` posts to `{URL}/chat/completions` with httpx. Only the question and the retrieved
  passages are sent, and only when the user names the server (`--backend URL`).
- Both can tell how many tokens a prompt will take (`prompt_tokens`), so the answerer can drop
  lower-ranked passages until the prompt fits the model's context instead of failing.
"""
from __future__ import annotations

import os
from typing import Protocol

from ..errors import UserError


class ChatBackend(Protocol):
    name: str
    max_context: int | None

    def complete(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0) -> str: ...

    def prompt_tokens(self, messages: list[dict]) -> int | None: ...


class LocalBackend:
    def __init__(self, model: str = "smollm2-135m-instruct", device: str | None = None, loaded=None):
        self.name = str(model)
        self._device = device
        self._engine = None
        self._loaded = loaded  # (model, tokenizer, meta) already in memory, e.g. the server's
        self.max_context: int | None = None

    @property
    def engine(self):
        if self._engine is None:
            from ..checkpoint import load_model
            from ..commands.common import pick_device
            from ..engine import Engine
            model, tok, _meta = self._loaded or load_model(self.name, device=pick_device(self._device))
            # 2048 tokens hold the instructions, five passages and the answer; a smaller KV cache is faster
            self._engine = Engine(model, tok, max_batch=1, max_seq_len=2048)
            self.max_context = self._engine.max_seq_len
        return self._engine

    def prompt_tokens(self, messages: list[dict]) -> int:
        eng = self.engine
        return len(eng.tok.render_chat(messages, add_generation_prompt=True).ids)

    def complete(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0) -> str:
        from ..engine import SamplingParams
        eng = self.engine
        room = eng.max_seq_len - self.prompt_tokens(messages) - 1
        params = SamplingParams(max_tokens=max(1, min(max_tokens, room)), temperature=temperature,
                                repetition_penalty=1.1, seed=0)
        return eng.chat(messages, params).text


class OpenAIBackend:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, timeout: float = 120.0):
        import httpx
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        key = api_key or os.environ.get("ALIGNCHAT_BACKEND_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers)
        self.model = model
        self.name = f"{self.base_url} ({model or 'default model'})"
        self.max_context = None

    def _model(self) -> str:
        if self.model is None:
            import httpx
            try:
                r = self._client.get(f"{self.base_url}/models")
                r.raise_for_status()
                data = r.json().get("data") or []
            except (httpx.HTTPError, ValueError) as e:
                raise UserError(f"backend {self.base_url}: cannot list models ({e}); pass --backend-model") from e
            if not data:
                raise UserError(f"backend {self.base_url}: serves no models; pass --backend-model")
            self.model = data[0]["id"]
        return self.model

    def prompt_tokens(self, messages: list[dict]) -> None:
        return None

    def complete(self, messages: list[dict], max_tokens: int = 256, temperature: float = 0.0) -> str:
        import httpx
        body = {"model": self._model(), "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        try:
            r = self._client.post(f"{self.base_url}/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise UserError(f"backend {self.base_url}: request failed ({e})") from e
        if r.status_code >= 400:
            raise UserError(f"backend {self.base_url}: HTTP {r.status_code}: {r.text[:300]}")
        try:
            return r.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise UserError(f"backend {self.base_url}: unexpected response ({e}): {r.text[:300]}") from e


def make_backend(spec: str | None, model: str | None = None, api_key: str | None = None):
    """'none' -> extractive only (no model); an http(s) URL -> OpenAIBackend; anything else -> LocalBackend."""
    if spec is None or spec.lower() in ("none", "extractive", ""):
        return None
    if spec.startswith(("http://", "https://")):
        return OpenAIBackend(spec, model=model, api_key=api_key)
    return LocalBackend(spec)
