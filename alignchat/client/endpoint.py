"""`EndpointClient`: any OpenAI-compatible HTTP server (our `alignchat serve`, vLLM, llama.cpp's server, ...).

Routes used: /v1/chat/completions (conversations), /v1/completions (text and token-id prompts, and scoring
with `echo` + `logprobs`), /v1/models (the model name when none is given, and the context length when the
server reports one as `context_length` or `max_model_len`).

Notable choices:
- The base URL may be given with or without /v1 (or with a trailing /chat/completions); it is normalised
  to `.../v1`.
- The API key comes from the environment variable named by `api_key_env` (default `OPENAI_API_KEY`), or
  is passed in; it travels only in the Authorization header and is never logged, printed or put in an
  error message. Without a key no Authorization header is sent.
- Retries: connection failures and HTTP 429/500/502/503/504 are retried (`retries` times, waiting 0.5 s,
  1 s, 2 s, ... or the server's Retry-After, at most 30 s); other errors are not. Every error names the
  URL and carries the server's own message.
- Log-likelihood uses /v1/completions with `echo`, `logprobs=1` and `max_tokens=1`, summing the echoed
  logprobs of the continuation's tokens (a text API tokenizes context + continuation together, so a
  continuation should start with a space to keep the token boundary where a local model puts it). A
  context too long for the endpoint keeps its rightmost part. Whether the endpoint can do this at all is
  probed once (`supports_loglikelihood`).
- Token counts are the `usage.prompt_tokens` of a one-token request: every OpenAI-compatible server
  reports them, none has to offer a tokenizer route.
- `astream` is the one asynchronous call: it POSTs with `stream: true` and yields each server-sent event's
  JSON object. Leaving it early (break, an exception, the calling task cancelled) closes the connection,
  which is how an OpenAI-compatible server learns that its client went away and stops generating. Only a
  failure to connect is retried (nothing was sent to the model yet); an HTTP error or a broken stream is
  an `EndpointError` at once, so a caller in front of a user never waits on retries it did not ask for.
- The events are read with `httpx-sse` (the SSE wire format: multi-line data, comments, CRLF).
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import AsyncIterator, Sequence

from ..errors import UserError
from .base import Completion, LoglikelihoodUnsupported, ModelClient, Prompt, Score, check_prompt, is_conversation
from .sampling import GREEDY, SAMPLING_DEFAULTS, Sampling

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
RETRY_STATUS = {429, 500, 502, 503, 504}


class EndpointError(UserError):
    """An endpoint answered with an error or could not be reached (`status` None).

    `code` and `param` are OpenAI's fields when the server sent them; `reason` is the server's own message
    (the key redacted), while the exception's text also names the URL and the status."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 param: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param
        self.reason = reason if reason is not None else message


def normalise_base_url(url: str) -> str:
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise UserError(f"endpoint {url!r}: give an http:// or https:// URL")
    for tail in ("/chat/completions", "/completions"):
        if base.endswith(tail):
            base = base[: -len(tail)]
    return base if base.endswith("/v1") else base + "/v1"


class EndpointClient(ModelClient):
    kind = "endpoint"

    def __init__(self, url: str, model: str | None = None, api_key_env: str | None = DEFAULT_API_KEY_ENV,
                 api_key: str | None = None, timeout: float = 120.0, retries: int = 2,
                 connect_timeout: float | None = None, max_connections: int | None = 100):
        """`timeout`: seconds to wait for the server (for `astream`: between two events); `connect_timeout`:
        for a connection (default: `timeout`); `max_connections`: concurrent `astream` calls (None: no cap)."""
        import httpx
        super().__init__()
        self.base_url = normalise_base_url(url)
        key = api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._key = key  # kept only to redact it from anything a server echoes back
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout if connect_timeout is not None else timeout)
        self._http = httpx.Client(timeout=self._timeout, headers=self._headers)
        self._ahttp = None  # the asynchronous client, made on first use inside the caller's event loop
        self._max_connections = max_connections
        self.retries = max(0, retries)
        self._model = model
        self._listing: dict | None = None
        self._ll_ok: bool | None = None

    def __repr__(self) -> str:
        return f"EndpointClient({self.base_url!r}, model={self._model!r})"

    @property
    def has_key(self) -> bool:
        """Whether requests carry an API key (the key itself is never exposed)."""
        return bool(self._key)

    # --- HTTP ---------------------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[api key]") if self._key else text

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx
        url = self.base_url + path
        last = ""
        for attempt in range(self.retries + 1):
            wait = 0.5 * 2 ** attempt
            try:
                r = self._http.request(method, url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as e:
                last = f"{url}: cannot connect ({type(e).__name__}: {e})"
            except httpx.HTTPError as e:
                raise EndpointError(f"{url}: request failed ({type(e).__name__}: {e})") from None
            else:
                if r.status_code < 400:
                    try:
                        return r.json()
                    except ValueError:
                        raise EndpointError(f"{url}: the answer is not JSON: {self._redact(r.text[:200])!r}",
                                            r.status_code) from None
                message, code, param = self._error_of(r)
                last = f"{url}: HTTP {r.status_code}: {message}"
                if r.status_code not in RETRY_STATUS:
                    raise EndpointError(last, r.status_code, code, param, message)
                try:
                    wait = min(float(r.headers.get("retry-after", wait)), 30.0)
                except ValueError:
                    pass
                if attempt == self.retries:
                    raise EndpointError(last, r.status_code, code, param, message)
            if attempt < self.retries:
                time.sleep(wait)
        raise EndpointError(f"{last} (after {self.retries + 1} attempts)")

    def _error_of(self, r) -> tuple[str, str | None, str | None]:
        """(message, code, param) of an error answer; OpenAI's body when the server sent one."""
        try:
            err = r.json().get("error")
        except (ValueError, AttributeError):
            err = None
        if isinstance(err, dict) and err.get("message"):
            code, param = err.get("code"), err.get("param")
            return (self._redact(str(err["message"]))[:500], code if isinstance(code, str) else None,
                    param if isinstance(param, str) else None)
        return self._redact(r.text[:300]), None, None

    # --- streaming (asynchronous) -----------------------------------------------------------------
    def _async_http(self):
        import httpx
        if self._ahttp is None:
            self._ahttp = httpx.AsyncClient(timeout=self._timeout, headers=self._headers,
                                            limits=httpx.Limits(max_connections=self._max_connections))
        return self._ahttp

    async def astream(self, path: str, body: dict) -> AsyncIterator[dict]:
        """POST `body` with `stream: true` to `path` (e.g. "/chat/completions") and yield the JSON object of
        each server-sent event until `data: [DONE]` or the end of the stream. The body is sent as given
        (`model` included). Leaving the iteration early closes the connection (see the module notes).

        Raises `EndpointError`: with the server's status, code, param and message for an HTTP error, with
        status None when the server cannot be reached (after `retries` further tries), times out or breaks
        the stream."""
        import httpx
        from httpx_sse import SSEError, aconnect_sse
        url = self.base_url + path
        http = self._async_http()
        for attempt in range(self.retries + 1):
            try:
                async with aconnect_sse(http, "POST", url, json={**body, "stream": True}) as source:
                    r = source.response
                    if r.status_code >= 400:
                        await r.aread()
                        message, code, param = self._error_of(r)
                        raise EndpointError(f"{url}: HTTP {r.status_code}: {message}", r.status_code, code, param,
                                            message)
                    async for sse in source.aiter_sse():
                        data = sse.data
                        if data == "[DONE]":
                            return
                        try:
                            event = json.loads(data)
                        except ValueError:
                            raise EndpointError(f"{url}: a streamed event is not JSON: "
                                                f"{self._redact(data[:200])!r}") from None
                        if not isinstance(event, dict):
                            raise EndpointError(f"{url}: a streamed event is not a JSON object")
                        yield event
                    return
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                if attempt == self.retries:
                    raise EndpointError(f"{url}: cannot connect ({type(e).__name__}: {e})") from None
            except SSEError as e:  # not an event stream
                raise EndpointError(f"{url}: the reply is not a server-sent event stream ({e})") from None
            except httpx.HTTPError as e:  # timed out, or the stream broke, after the request was sent
                raise EndpointError(f"{url}: request failed ({type(e).__name__}: {e})") from None
            await asyncio.sleep(0.5 * 2 ** attempt)

    async def aclose(self) -> None:
        if self._ahttp is not None:
            await self._ahttp.aclose()
            self._ahttp = None

    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, {"model": self.model, **body})

    # --- the model --------------------------------------------------------------------------------
    def _models(self) -> dict:
        if self._listing is None:
            data = self._request("GET", "/models").get("data")
            self._listing = {m["id"]: m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)
                             and m["id"]} if isinstance(data, list) else {}
        return self._listing

    def list_models(self, refresh: bool = False) -> dict:
        """The endpoint's /v1/models entries by id (asked again with `refresh`)."""
        if refresh:
            self._listing = None
        return self._models()

    @property
    def model(self) -> str:
        """The model name sent with every request: the one given, else the endpoint's first model."""
        if self._model is None:
            listing = self._models()
            if not listing:
                raise UserError(f"{self.base_url}/models lists no models; name one with --endpoint-model")
            self._model = next(iter(listing))
        return self._model

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self._model or 'default'}@{self.base_url}"

    @property
    def max_context(self) -> int | None:
        try:
            entry = self._models().get(self.model) or {}
        except UserError:
            return None
        n = entry.get("context_length") or entry.get("max_model_len")
        return int(n) if isinstance(n, int) and n > 0 else None

    def describe(self) -> dict:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url}

    def close(self) -> None:
        self._http.close()

    # --- generation -------------------------------------------------------------------------------
    def _complete(self, prompt: Prompt, sampling: Sampling, i: int = 0) -> Completion:
        check_prompt(prompt)
        fields = sampling.openai_fields(i)
        if is_conversation(prompt):
            data = self._post("/chat/completions", {**fields, "messages": list(prompt)})
            route = "/chat/completions"
        else:
            data = self._post("/completions", {**fields, "prompt": prompt if isinstance(prompt, str) else list(prompt)})
            route = "/completions"
        try:
            choice = data["choices"][0]
            text = (choice["message"].get("content") if is_conversation(prompt) else choice.get("text")) or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise EndpointError(f"{self.base_url}{route}: unexpected answer (no choices[0] text)") from None
        u = data.get("usage") or {}
        return Completion(text, int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0),
                          choice.get("finish_reason") or "stop")

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling = SAMPLING_DEFAULTS,
                 truncate: bool = False) -> list[Completion]:
        t0 = time.perf_counter()
        res = [self._complete(p, sampling, i) for i, p in enumerate(prompts)]
        self.usage.generate_seconds += time.perf_counter() - t0
        self.usage.prompt_tokens += sum(r.prompt_tokens for r in res)
        self.usage.completion_tokens += sum(r.completion_tokens for r in res)
        return res

    def count_tokens(self, prompt: Prompt) -> int:
        c = self._complete(prompt, GREEDY.but(max_tokens=1))
        if not c.prompt_tokens:
            raise EndpointError(f"{self.base_url}: the answer reports no usage.prompt_tokens; cannot count tokens")
        return c.prompt_tokens

    # --- scoring ----------------------------------------------------------------------------------
    @property
    def supports_loglikelihood(self) -> bool:
        if self._ll_ok is None:
            try:
                self._score_one("The sky is", " blue")
                self._ll_ok = True
            except LoglikelihoodUnsupported:
                self._ll_ok = False
        return self._ll_ok

    def _score_one(self, context: str, continuation: str) -> Score:
        if not isinstance(context, str):
            raise LoglikelihoodUnsupported(f"{self.base_url}: an endpoint scores text only (its chat template "
                                           "is not known here)")
        for _ in range(6):
            text = context + continuation
            try:
                data = self._post("/completions", {"prompt": text, "max_tokens": 1, "echo": True, "logprobs": 1,
                                                   "temperature": 0})
                break
            except EndpointError as e:
                too_long = e.code == "context_length_exceeded" or "context_length_exceeded" in str(e)
                if not too_long or not context:
                    raise LoglikelihoodUnsupported(f"endpoint does not score prompts: {e}") from None
                # too long: keep the rightmost part of the context, and retry
                m = re.search(r"context length is (\d+) tokens.*?prompt is (\d+) tokens", str(e))
                keep = 0.9 * int(m.group(1)) / int(m.group(2)) if m else 0.5
                context = context[len(context) - int(len(context) * keep):]
        else:
            raise UserError(f"{self.base_url}: could not fit a scoring prompt into the endpoint's context")
        lp = (data.get("choices") or [{}])[0].get("logprobs") or {}
        offsets, tokens, values = lp.get("text_offset"), lp.get("tokens"), lp.get("token_logprobs")
        if not offsets or not values or len(offsets) < 2:
            raise LoglikelihoodUnsupported(f"{self.base_url}: returned no prompt logprobs (needs echo + logprobs)")
        top = lp.get("top_logprobs") or [None] * len(values)
        total, greedy, n = 0.0, True, 0
        for off, tok, v, alts in zip(offsets, tokens, values, top):
            if off >= len(text):
                break  # the generated token after the echoed prompt
            if off >= len(context) and v is not None:
                total += v
                n += 1
                if alts:
                    greedy = greedy and max(alts, key=alts.get) == tok
        if n == 0:
            raise LoglikelihoodUnsupported(f"{self.base_url}: returned no logprobs for the continuation tokens")
        return Score(total, greedy, n)

    def loglikelihood(self, pairs: Sequence[tuple[Prompt, str]]) -> list[Score]:
        if not self.supports_loglikelihood:
            raise LoglikelihoodUnsupported(f"{self.base_url} does not return prompt logprobs")
        t0 = time.perf_counter()
        out = [self._score_one(c, x) for c, x in pairs]
        self.usage.score_seconds += time.perf_counter() - t0
        self.usage.scored_tokens += sum(s.tokens for s in out)
        return out
