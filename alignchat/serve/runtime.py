"""What one server process holds: its settings, the model (loaded on first use), the scheduler and the store.

Notable choices:
- `ServeConfig` is the single dataclass behind `alignchat serve`'s flags and `create_app`'s arguments.
- The model is pulled and loaded in a background thread at start-up (`preload`), or on the first request;
  the server answers /health and the UI at once and requests wait for the model rather than failing.
- A host holds the model. Its interface, which the API and the UI use: `model_id`, `status()`,
  `error`, `ready()`, `context_length`, `vocab_size`, `render_chat(messages)` and `encode_text(text)` (the
  prompt the scheduler takes; call them in a worker thread), `prompt_tokens(prompt)`, `scheduler`
  (`submit`, `stats`) and `local`. `ModelHost` runs a local model on our engine; `upstream.UpstreamHost`
  (`--upstream URL`) forwards to an OpenAI-compatible server, which owns the model, its tokenizer and its
  context (what that means per feature: upstream.py).
- `ServerContext.generate` is the one path from a prompt to tokens for the API and the UI alike: it submits
  one scheduler request per choice and yields their events merged; leaving the iterator (client gone, stop
  pressed, exception) cancels whatever is still running, which frees the engine slots at once (with an
  upstream: closes its connections, so that it aborts too).
- Without `--dtype` the model runs in `commands.common.load_with_precision`'s choice (on a CPU with native
  bf16, bfloat16 or float32, whichever decodes faster in a step timed at load), with `--quantize`
  quantised at load; the start-up log and /health (`engine.precision`) say what was chosen and why.
- `--compile on` compiles the CPU decode steps (`commands.common.apply_compile`); the start-up log and
  /health (`engine.compile`) say whether it took and why.
- A prompt that does not fit the context is refused before it reaches the engine, with both numbers (an
  upstream checks its own context, and its refusal is passed through).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ContextLengthError
from .errors import APIError
from .scheduler import Event, Scheduler, SchedulerBusy
from .streams import EventStream

log = logging.getLogger("alignchat.serve")

EMBEDDING_MODEL_ID = "all-minilm-l6-v2"


@dataclass
class ServeConfig:
    model: str = "smollm2-135m-instruct"  # registry name, checkpoint directory, .gguf file or HF directory
    model_id: str | None = None  # the name clients use; default: the registry name or the path's stem
    host: str = "127.0.0.1"
    port: int = 8000
    db: str | None = None  # SQLAlchemy URL; default sqlite:///$ALIGNCHAT_HOME/serve/alignchat.db
    max_batch: int = 16  # engine slots: requests decoded together in one step
    context: int = 2048  # tokens per slot (prompt + answer), capped by the model's own context; sizes the KV cache
    prefix_cache: bool = True  # reuse cached keys and values of shared prompt prefixes (engine/prefix.py)
    max_waiting: int = 256  # queued requests beyond the slots before answering 429
    max_n: int = 9  # most choices per request (labelling mode samples up to K = 9)
    max_messages: int = 2048  # messages per conversation sent to the model
    require_login: bool | None = None  # None: only when bound beyond loopback
    insecure_no_login: bool = False  # beyond loopback too, serve everyone as the admin `local` (never by default)
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides the bound and loopback ones; "*": any
    max_body: int = 2 * 1024 * 1024  # request body cap in bytes (library uploads: library.api.MAX_UPLOAD_BYTES)
    login_max_failures: int = 5  # failed logins of one user name before a lockout (4x that per client address)
    login_window: float = 900.0  # seconds without a failure after which failures are forgotten
    login_lockout: float = 30.0  # first lockout in seconds; doubles with each further failure
    device: str = "auto"  # auto: cuda if available, else cpu (`commands.common.pick_device`); or cpu, cuda:1 ...
    dtype: str | None = None  # float32 | bfloat16 | float16; default `commands.common.pick_precision`'s choice
    quantize: str | None = None  # int8 | int4: weights quantised at load (alignchat.quant)
    compile: str = "off"  # on: compiled CPU decode steps (engine/compiled.py; `commands.common.apply_compile`)
    preload: bool = True
    enable_embeddings: bool = True
    upstream: str | None = None  # an OpenAI-compatible server to answer with instead of `model`
    upstream_model: str | None = None  # the model name sent to it; default: the first one it lists
    upstream_api_key_env: str | None = "OPENAI_API_KEY"  # the variable holding its API key
    upstream_timeout: float = 300.0  # seconds to wait for the upstream's next event before answering 502
    tools: tuple[str, ...] = ()  # built-in tools this deployment enables (alignchat/tools; serve/builtin_tools.py)
    max_tool_rounds: int = 4  # most tool rounds of one answer (then a final answer with no tools offered)
    tool_timeout: float = 5.0  # seconds the python tool's program may run
    moderation_policy: str | None = None  # TOML/YAML moderation policy (alignchat.safety.policy); None: the default


def default_model_id(spec: str) -> str:
    p = Path(spec)
    if p.exists() or "/" in spec or spec.endswith(".gguf"):
        return p.stem if p.suffix == ".gguf" else p.name
    return spec


class ModelHost:
    """Loads the chat model once (in a thread) and owns the engine and scheduler built on it."""

    local = True

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.model_id = cfg.model_id or default_model_id(cfg.model)
        self.model = self.tokenizer = self.engine = self.scheduler = None
        self.error: BaseException | None = None
        self.loaded_at: float | None = None
        self.precision: dict | None = None  # what the weights run in and why (/health)
        self.compile: str | None = None  # whether decode steps are compiled and why (/health)
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._started = False

    def start_loading(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._load, name="alignchat-model-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            import torch
            from ..commands.common import apply_compile, load_with_precision, pick_device
            from ..engine import Engine
            t0 = time.monotonic()
            device = pick_device(self.cfg.device)
            model, tok, meta, dtype, why = load_with_precision(self.cfg.model, device, self.cfg.dtype,
                                                               self.cfg.quantize)
            quant = meta.get("quantization")
            self.precision = {"dtype": str(dtype).removeprefix("torch."), "reason": why,
                              "quantization": quant["scheme"] if quant else None}
            if quant:
                kernels = sorted({v[k] for v in quant["kernels"]["shapes"].values()
                                  for k in ("small_rows", "many_rows")})
                self.precision.update(kernels=kernels, group_size=quant.get("group_size"))
            model.eval()
            torch.set_grad_enabled(False)
            self.engine = Engine(model, tok, max_batch=self.cfg.max_batch, max_seq_len=self.cfg.context,
                                 prefix_cache=self.cfg.prefix_cache)
            self.compile = apply_compile(self.engine, self.cfg.compile)
            self.model, self.tokenizer = model, tok
            self.scheduler = Scheduler(self.engine, max_waiting=self.cfg.max_waiting)
            self.scheduler.start()
            self.loaded_at = time.time()
            log.info("model %s loaded in %.1fs on %s (%s, %s decoding)", self.model_id, time.monotonic() - t0,
                     device, str(dtype).removeprefix("torch."), self.engine.decode_mode)
            log.info("precision: %s%s", why, f"; weights {quant['scheme']} (kernels timed here: "
                        f"{', '.join(self.precision['kernels'])})" if quant else "")
            log.info("compiled decode: %s", self.compile)
        except BaseException as e:  # reported by /health and to every request
            log.exception("could not load model %s", self.cfg.model)
            self.error = e
        finally:
            self._ready.set()

    async def ready(self) -> None:
        """Wait until the model is loaded; raise a 503 API error if loading failed."""
        self.start_loading()
        if not self._ready.is_set():
            await asyncio.to_thread(self._ready.wait)
        if self.error is not None:
            raise APIError(503, f"The model {self.cfg.model!r} could not be loaded: {self.error}",
                           code="model_unavailable")

    @property
    def context_length(self) -> int:
        return int(self.engine.max_seq_len)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def render_chat(self, messages: list[dict]) -> list[int]:
        """The chat template's token ids for a conversation, with the assistant's turn opened (CPU work)."""
        return self.tokenizer.render_chat(messages, add_generation_prompt=True).ids

    def encode_text(self, text: str) -> list[int]:
        """A raw prompt's token ids (the control tokens it spells out are control tokens)."""
        return self.tokenizer.encode(text)

    def prompt_tokens(self, prompt: list[int]) -> int:
        return len(prompt)

    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self._ready.is_set():
            return "ok"
        return "loading" if self._started else "idle"

    def shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()


class ServerContext:
    def __init__(self, cfg: ServeConfig, store, accounts):
        self.cfg = cfg
        self.store = store
        self.accounts = accounts
        if cfg.upstream:
            from .upstream import UpstreamHost
            self.host = UpstreamHost(cfg)
        else:
            self.host = ModelHost(cfg)
        from .auth import login_required
        self.require_login = login_required(cfg)
        from ..safety.pii import install_log_redaction
        from .moderation import ModerationService
        install_log_redaction()  # personal data never reaches a log handler
        self.moderation = ModerationService.from_config(cfg, store)  # serve/moderation.py
        self.started = time.time()

    def check_model(self, name: str | None) -> None:
        if name is None:
            return
        if self.host.model_id is None:  # an upstream that has never answered: its model's name is unknown
            raise self.host.unavailable()
        if name not in ((self.host.model_id, self.cfg.model) if self.host.local else (self.host.model_id,)):
            raise APIError(404, f"The model '{name}' does not exist. This server serves '{self.host.model_id}'"
                                f" (see GET /v1/models).", param="model", code="model_not_found")

    def require_local_model(self, what: str, param: str | None = None) -> None:
        """Refuse (501) a feature that needs the model's tokenizer or scores when an upstream has them."""
        if not self.host.local:
            from .upstream import needs_local_model
            raise needs_local_model(what, param, self.host.url)

    def fit_context(self, prompt_ids, max_tokens: int | None, param: str = "messages") -> int | None:
        """Return the completion budget; refuse (400) a prompt that does not fit the context. With an upstream:
        `max_tokens` as asked (None: the upstream's default), and the upstream checks."""
        if not self.host.local:
            return max_tokens
        ctx = self.host.context_length
        n = len(prompt_ids)
        if n >= ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, your prompt "
                                f"is {n} tokens long, which leaves no room for a completion. Please shorten it.",
                           param=param, code="context_length_exceeded")
        if max_tokens is None:
            return ctx - n
        if n + max_tokens > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                                f"{n + max_tokens} tokens ({n} in the prompt, {max_tokens} for the completion). "
                                f"Please reduce the prompt or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
        return max_tokens

    async def generate(self, prompt_ids, params_list: list, request=None) -> "GenerationGroup":
        """Start len(params_list) choices of one prompt (from `host.render_chat` or `host.encode_text`, or
        token ids); iterate the returned group for their events."""
        await self.host.ready()
        if any(getattr(p, "logprobs", False) for p in params_list):
            self.require_local_model("logprobs", "logprobs")
        return GenerationGroup(self.host.scheduler, prompt_ids, params_list, request,
                               prompt_tokens=self.host.prompt_tokens(prompt_ids))


class GenerationGroup(EventStream):
    """The n choices of one request. Iterate it for their events (each choice ends with `done`);
    `cancel()` (synchronous, idempotent) frees every slot still held — called on any exit from iteration.

    `request`: poll it for a client disconnect (only for non-streamed responses; a streamed response is
    cancelled by Starlette when its client goes away, which runs the streaming generator's `finally`).
    `sched`: the local `Scheduler` or an `upstream.UpstreamScheduler` (the same interface).
    """

    def __init__(self, sched, prompt_ids, params_list: list, request=None, prompt_tokens: int | None = None):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.request = request
        self._prompt_tokens = prompt_tokens
        self.handles = []
        try:
            for i, params in enumerate(params_list):
                self.handles.append(sched.submit(prompt_ids, params, queue=self.queue, index=i))
        except SchedulerBusy as e:
            self.cancel()
            raise APIError(429, f"The server is overloaded: {e}", code="server_busy") from e
        self.remaining = len(self.handles)
        self._last_check = time.monotonic()

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens: counted here for a local model; an upstream reports it with its
        usage (0 until then)."""
        if self._prompt_tokens is not None:
            return self._prompt_tokens
        return max((h.prompt_tokens or 0 for h in self.handles), default=0)

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    async def next_event(self) -> Event | None:
        """The next event, or None when every choice has finished (or the client went away)."""
        while self.remaining:
            if self.request is None:
                ev = await self.queue.get()
            else:
                # Check for a disconnect every 0.25 s whether or not tokens are flowing.
                now = time.monotonic()
                if now - self._last_check >= 0.25:
                    self._last_check = now
                    if await self.request.is_disconnected():
                        self.cancel()
                        return None
                try:
                    ev = await asyncio.wait_for(self.queue.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    continue
            if ev.kind == "error":
                self.cancel()
                if isinstance(ev.error, APIError):  # an upstream's error, already in the client's terms
                    raise ev.error
                if isinstance(ev.error, ContextLengthError):
                    raise APIError(400, str(ev.error), param="messages", code="context_length_exceeded")
                raise APIError(500, f"generation failed: {ev.error}", type="server_error")
            if ev.kind == "done":
                self.remaining -= 1
            return ev
        return None
