"""The upstream host: `alignchat serve --upstream URL` answers with any OpenAI-compatible server (vLLM,
llama.cpp's server, another alignchat) instead of a local model, behind our API, UI, accounts and history.

`UpstreamHost` is the second implementation of the host interface that `runtime.ModelHost` defines (model
id, status, `ready()`, `render_chat`, `encode_text`, `scheduler`), and `UpstreamScheduler` the second
implementation of the scheduler's (`submit` -> a handle whose queue receives `delta`/`done`/`error` events,
`cancel()`, `stats()`). So `ServerContext.generate` and `GenerationGroup`, and through them the API and the
UI, run unchanged over either. Every HTTP call goes through the model-client layer (`EndpointClient`).

Notable choices:
- The upstream owns the model, its tokenizer and its chat template. A prompt here is what the client layer
  calls a prompt: a conversation (a list of messages, sent to the upstream's /v1/chat/completions, which
  applies its template), a text or a list of token ids (sent to its /v1/completions). Per feature:
  - chat and completions, whole or streamed, `n` (one upstream request per choice, choice i with seed + i,
    as a local model does), stop strings, penalties, seeds: forwarded. `top_k`, `repetition_penalty` and
    `ignore_eos` (extensions) are sent only when a request sets them, so a server that knows only OpenAI's
    fields sees only those;
  - context checks: the upstream's own. No `max_tokens` means the upstream's default (for vLLM and
    alignchat: the rest of the context), and its 400 `context_length_exceeded` is passed through;
  - token counts in `usage`: the upstream's (`stream_options.include_usage`);
  - /v1/completions with token-id prompts: forwarded as ids (they are the upstream model's ids);
  - logprobs (chat and completions) and `echo`: 501 `needs_local_model`; the scores come from a local
    model's scoring pass;
  - built-in tools run by the server (the API's `builtin_tools`, the UI's tool toggles): 501
    `needs_local_model`; they need the local tokenizer's tool format and grammar (serve/builtin_tools.py);
  - embeddings: unchanged, they come from the local MiniLM encoder, not from the chat model;
  - anything that asks for the model's tokenizer (`host.tokenizer`, e.g. the library counting its prompt's
    tokens) gets `NeedsLocalModel`, a `UserError` that says so.
- The connection is always streamed, whole replies included, so that a client who goes away (a closed
  stream, a non-streamed request whose connection closes, Stop in the UI) cancels the request's task; that
  closes the upstream connection, and the upstream aborts the generation.
- Errors are OpenAI's shape: the upstream down, timing out (`--upstream-timeout` between two events) or
  breaking its stream is 502 `upstream_unavailable`, naming the URL; its 4xx pass through with its status
  (400, 404, 413 and 429; any other 4xx becomes a 400), code, param and message, except 401/403, which mean this server's key is wrong (502
  `upstream_auth_failed`: the client's own key is fine); its 5xx are 502 `upstream_error`.
- Whether the upstream answers is known from a watcher thread that asks its /v1/models at start-up and
  then every `PROBE_EVERY` seconds (`PROBE_RETRY` while it does not answer), and from every request's
  outcome. /health shows it (`status`: ok | unavailable | loading, and `scheduler.upstream`). The model's
  name is `--upstream-model`, else the first one the upstream lists; until it is known (the upstream has
  never answered) requests get the 502.
- The key is read from the variable `--upstream-api-key-env` names; it travels only in the Authorization
  header and is never logged or shown (the client layer redacts it from what the upstream echoes).
- At most `max_batch + max_waiting` requests are in flight (what a local server would hold in its slots
  and queue); more get 429, as from a full local queue.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

from ..client.base import is_conversation
from ..client.endpoint import EndpointClient, EndpointError
from ..errors import UserError
from .errors import APIError
from .scheduler import Event, SchedulerBusy

log = logging.getLogger("alignchat.serve")

PROBE_EVERY = 15.0  # seconds between two /v1/models probes while the upstream answers
PROBE_RETRY = 2.0  # ... while it does not
CONNECT_TIMEOUT = 10.0


class NeedsLocalModel(UserError):
    """A feature that needs the model's tokenizer or scores, which an upstream keeps to itself."""


def needs_local_model(what: str, param: str | None, url: str) -> APIError:
    return APIError(501, f"{what} needs a local model: this server forwards to the upstream {url}, which keeps "
                         f"its tokenizer and scores to itself. Send the request to the upstream, or serve a "
                         f"local model (--model).", param=param, code="needs_local_model")


def api_error(e: EndpointError, url: str) -> APIError:
    """The client-facing error for an upstream failure (see the module notes)."""
    if e.status is None:
        return APIError(502, f"The upstream {url} is not answering: {e}", code="upstream_unavailable",
                        type="server_error")
    if e.status in (401, 403):
        return APIError(502, f"The upstream {url} refused this server's API key (HTTP {e.status}: {e.reason}). "
                             f"Its key is read from the variable --upstream-api-key-env names.",
                        code="upstream_auth_failed", type="server_error")
    if e.status < 500:
        # the statuses this server documents pass through; any other refusal is the client's request: 400
        status = e.status if e.status in (400, 404, 413, 429) else 400
        return APIError(status, e.reason, param=e.param, code=e.code)
    return APIError(502, f"The upstream {url} failed: HTTP {e.status}: {e.reason}", code="upstream_error",
                    type="server_error")


def request_body(prompt, params, model: str) -> tuple[str, dict]:
    """(route, body) of the upstream request for one choice: engine `SamplingParams` as OpenAI's fields."""
    body: dict[str, Any] = {"model": model, "temperature": params.temperature, "top_p": params.top_p,
                            "stream_options": {"include_usage": True}}
    if params.max_tokens is not None:
        body["max_tokens"] = params.max_tokens
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if params.presence_penalty:
        body["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        body["frequency_penalty"] = params.frequency_penalty
    if params.top_k:
        body["top_k"] = params.top_k
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    if params.ignore_eos:
        body["ignore_eos"] = True
    if is_conversation(prompt):
        return "/chat/completions", {**body, "messages": list(prompt)}
    return "/completions", {**body, "prompt": prompt}


class UpstreamHandle:
    """One choice in flight to the upstream: its events go to `queue`; `cancel()` closes its connection."""

    def __init__(self, prompt, params, queue: asyncio.Queue, index: int, loop: asyncio.AbstractEventLoop):
        self.prompt, self.params, self.queue, self.index, self.loop = prompt, params, queue, index, loop
        self.prompt_tokens: int | None = None  # reported by the upstream with its usage
        self.completion_tokens = 0  # reported by the upstream with its usage
        self.chunks = 0  # text chunks received (the count of tokens when the upstream reports no usage)
        self.finished = False
        self.task: asyncio.Task | None = None

    def cancel(self) -> None:
        """Stop the request (idempotent; safe from any thread)."""
        if self.finished or self.task is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self.task.cancel()
        else:
            self.loop.call_soon_threadsafe(self.task.cancel)

    def emit(self, ev: Event) -> None:
        if not self.finished:
            if ev.kind != "delta":
                self.finished = True
            self.queue.put_nowait(ev)


class UpstreamScheduler:
    """The scheduler interface over an upstream: one asyncio task per choice, streaming from the upstream."""

    def __init__(self, host: "UpstreamHost", max_in_flight: int):
        self.host = host
        self.max_in_flight = max(1, max_in_flight)
        self._tasks: set[asyncio.Task] = set()
        self.counters = {"submitted": 0, "completed": 0, "aborted": 0, "errors": 0, "tokens": 0}

    def submit(self, prompt, params, queue: asyncio.Queue | None = None, index: int = 0,
               loop: asyncio.AbstractEventLoop | None = None) -> UpstreamHandle:
        """Start one choice (call on the server's event loop)."""
        loop = loop or asyncio.get_running_loop()
        if len(self._tasks) >= self.max_in_flight:
            raise SchedulerBusy(f"{len(self._tasks)} requests are already in flight to the upstream; retry later")
        handle = UpstreamHandle(prompt, params, queue or asyncio.Queue(), index, loop)
        handle.task = loop.create_task(self._run(handle))
        self._tasks.add(handle.task)
        handle.task.add_done_callback(lambda task: self._ended(handle, task))
        self.counters["submitted"] += 1
        return handle

    def _ended(self, h: UpstreamHandle, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled() and not h.finished:  # the client went away: leaving `astream` closed the connection
            self.counters["aborted"] += 1
            h.emit(Event("done", h.index, finish_reason="abort", completion_tokens=h.chunks))

    async def _run(self, h: UpstreamHandle) -> None:
        host = self.host
        route, body = request_body(h.prompt, h.params, host.model_id or "")
        chat = route == "/chat/completions"
        finish = None
        try:
            async with contextlib.aclosing(host.client.astream(route, body)) as events:
                async for ev in events:
                    host.note_answer(None)
                    if "error" in ev:  # an error after the stream began
                        err = ev["error"] if isinstance(ev["error"], dict) else {}
                        raise APIError(502, f"The upstream {host.url} failed while streaming: "
                                            f"{str(err.get('message') or ev['error'])[:500]}",
                                       code="upstream_error", type="server_error")
                    usage = ev.get("usage")
                    if isinstance(usage, dict):
                        if isinstance(usage.get("prompt_tokens"), int):
                            h.prompt_tokens = usage["prompt_tokens"]
                        if isinstance(usage.get("completion_tokens"), int):
                            h.completion_tokens = usage["completion_tokens"]
                    choices = ev.get("choices")
                    if not isinstance(choices, list) or not choices:
                        continue
                    choice = choices[0] if isinstance(choices[0], dict) else {}
                    part = choice.get("delta") if chat else choice
                    text = part.get("content" if chat else "text") if isinstance(part, dict) else None
                    if isinstance(text, str) and text:
                        h.chunks += 1
                        self.counters["tokens"] += 1
                        h.emit(Event("delta", h.index, text=text))
                    if isinstance(choice.get("finish_reason"), str):
                        finish = choice["finish_reason"]
            if finish is None:
                raise APIError(502, f"The upstream {host.url} ended its stream without a finish reason.",
                               code="upstream_error", type="server_error")
            self.counters["completed"] += 1
            h.emit(Event("done", h.index, finish_reason=finish, completion_tokens=h.completion_tokens or h.chunks))
        except EndpointError as e:
            if e.status is None or e.status >= 500:
                host.note_answer(str(e))
            self.counters["errors"] += 1
            h.emit(Event("error", h.index, error=api_error(e, host.url)))
        except APIError as e:
            self.counters["errors"] += 1
            h.emit(Event("error", h.index, error=e))
        except Exception as e:  # noqa: BLE001 - whatever happens, the listener hears of it
            log.exception("upstream request failed")
            self.counters["errors"] += 1
            h.emit(Event("error", h.index, error=e))

    def stats(self) -> dict:
        return {"active": len(self._tasks), "waiting": 0, "slots": self.max_in_flight, **self.counters,
                "upstream": self.host.describe()}

    def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()


class UpstreamHost:
    """The host interface (see runtime.ModelHost) over an OpenAI-compatible upstream."""

    local = False
    model = engine = None  # no local weights or engine
    loaded_at = None
    vocab_size = None  # token ids are checked by the upstream

    def __init__(self, cfg):
        self.cfg = cfg
        self.client = EndpointClient(cfg.upstream, cfg.upstream_model, api_key_env=cfg.upstream_api_key_env,
                                     timeout=cfg.upstream_timeout, connect_timeout=min(CONNECT_TIMEOUT,
                                                                                      cfg.upstream_timeout),
                                     retries=1, max_connections=None)
        self.url = self.client.base_url
        self._name: str | None = cfg.upstream_model
        self._context: int | None = None
        self.answers: bool | None = None  # None: not asked yet
        self.error: str | None = None
        self.checked: float | None = None
        self.scheduler = UpstreamScheduler(self, cfg.max_batch + cfg.max_waiting)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._started = False

    # --- what the server shows ---------------------------------------------------------------------
    @property
    def model_id(self) -> str | None:
        """The model's name: --upstream-model, else the first one the upstream lists (None until it answered)."""
        return self._name

    @property
    def context_length(self) -> int | None:
        """The upstream model's context, when its /v1/models reports one."""
        return self._context

    @property
    def tokenizer(self):
        raise NeedsLocalModel(f"this needs the model's tokenizer, and the upstream {self.url} keeps it to itself; "
                              f"serve a local model (--model) for it")

    def status(self) -> str:
        if self.answers is None:
            return "loading" if self._started else "idle"
        return "ok" if self.answers else "unavailable"

    def describe(self) -> dict:
        return {"url": self.url, "model": self.model_id, "answers": self.answers, "error": self.error,
                "checked": self.checked, "api_key": self.client.has_key}

    # --- the upstream's state ----------------------------------------------------------------------
    def note_answer(self, error: str | None) -> None:
        """Record whether the upstream just answered (error None) or failed to."""
        if (error is None) != bool(self.answers):
            if error is None:
                log.info("upstream %s answers", self.url)
            else:
                log.warning("upstream %s does not answer: %s", self.url, error)
        self.answers, self.error, self.checked = error is None, error, time.time()

    def probe(self) -> bool:
        """Ask the upstream's /v1/models (blocking: call from a thread); learn the model's name and context."""
        try:
            listing = self.client.list_models(refresh=True)
            if self.cfg.upstream_model is None and not listing:
                raise UserError(f"{self.url}/models lists no models; name one with --upstream-model")
            name = self.cfg.upstream_model or next(iter(listing))
            entry = listing.get(name) or {}
            n = entry.get("context_length") or entry.get("max_model_len")
            self._context = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None
            self._name = name
        except UserError as e:  # EndpointError included
            self.note_answer(str(e))
            return False
        except Exception as e:  # noqa: BLE001 - e.g. an answer of the wrong shape: the watcher keeps watching
            self.note_answer(f"{self.url}/models: unexpected answer ({type(e).__name__}: {e})")
            return False
        self.note_answer(None)
        return True

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.probe()
            self._stop.wait(PROBE_EVERY if self.answers else PROBE_RETRY)

    def start_loading(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._watch, name="alignchat-upstream-watch", daemon=True).start()

    def unavailable(self) -> APIError:
        return APIError(502, f"The upstream {self.url} is not answering: {self.error or 'not asked yet'}",
                        code="upstream_unavailable", type="server_error")

    async def ready(self) -> None:
        """Return once the model's name is known; 502 when the upstream cannot tell it."""
        self.start_loading()
        if self._name is None and not await asyncio.to_thread(self.probe):
            raise self.unavailable()

    # --- prompts -------------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict]) -> list[dict]:
        """The upstream applies its own chat template: the prompt is the conversation itself."""
        return [dict(m) for m in messages]

    def encode_text(self, text: str) -> str:
        return text

    def prompt_tokens(self, prompt) -> int | None:
        return None  # known once the upstream reports its usage

    def shutdown(self) -> None:
        self._stop.set()
        self.scheduler.stop()
        self.client.close()
