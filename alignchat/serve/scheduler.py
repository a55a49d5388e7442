"""Continuous batching: one background thread drives the shared engine; HTTP handlers talk to it by queue.

Notable choices:
- Only this thread touches the engine (`add_request` / `step` / `abort`), so the engine needs no locks and its
  static per-slot KV cache is used exactly as designed: requests take a free slot between two steps, and every
  step decodes all active slots together in one batched forward pass.
- Handlers run on the asyncio event loop. Each request gets a `RequestHandle`; the thread hands it events
  (`delta`, `done`, `error`) with `loop.call_soon_threadsafe`, so the event loop never blocks on the model.
- Cancelling a handle (a client disconnected, the user pressed stop) wakes the thread, which calls
  `engine.abort` before its next step: the slot is free at once, not when the request would have ended.
- Requests beyond the engine's slots wait in a FIFO queue (bounded: past `max_waiting` new requests get a
  429-style `SchedulerBusy`), and join the batch as soon as a slot frees.
- Admission isolates requests: each is validated alone, and when the batched prefill of a step's newcomers
  fails, each is admitted again on its own, so a request that cannot be prepared fails only itself, never
  the others admitted with it.
- `stats()` exposes active/waiting counts, aborts and the largest batch stepped, for /health and the tests.
- `metrics` (metrics.EngineMetrics, read by /metrics) counts prompt and generated tokens and times each
  choice's first output, the gaps between outputs and its end; recorded by this thread before the event it
  describes is handed to the event loop.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .metrics import EngineMetrics

log = logging.getLogger("alignchat.serve")


class SchedulerBusy(Exception):
    """Too many requests are waiting for a slot."""


@dataclass
class Event:
    kind: str  # "delta" | "done" | "error"
    index: int  # which of a request group's choices (n > 1) this belongs to
    text: str = ""
    token_id: int | None = None
    logprob: float | None = None
    finish_reason: str | None = None
    completion_tokens: int = 0  # on "done": tokens this choice generated (stop tokens excluded)
    error: BaseException | None = None


@dataclass
class RequestHandle:
    prompt_ids: list[int]
    params: Any  # alignchat.engine.SamplingParams
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    index: int = 0
    engine_request: Any = None
    completion_tokens: int = 0
    finished: bool = False
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)
    last_output: float | None = None  # time.monotonic() of its latest output
    _scheduler: "Scheduler | None" = None

    def cancel(self) -> None:
        """Stop generating and free the slot (idempotent; safe from any thread)."""
        if self.finished or self.cancelled:
            return
        self.cancelled = True
        if self._scheduler is not None:
            self._scheduler._request_abort(self)

    def _emit(self, ev: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.cancelled = True


class Scheduler:
    def __init__(self, engine, max_waiting: int = 256):
        self.engine = engine
        self.max_waiting = max_waiting
        self._cond = threading.Condition()
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._aborts: list[RequestHandle] = []
        self._active: dict[int, RequestHandle] = {}  # id(engine request) -> handle
        self._stop = False
        self._thread: threading.Thread | None = None
        self.counters = {"submitted": 0, "completed": 0, "aborted": 0, "errors": 0, "steps": 0,
                         "tokens": 0, "max_batch_stepped": 0}
        self.metrics = EngineMetrics()

    # ---- called from the event loop -----------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="alignchat-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def submit(self, prompt_ids: list[int], params, queue: asyncio.Queue | None = None, index: int = 0,
               loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        loop = loop or asyncio.get_running_loop()
        handle = RequestHandle(prompt_ids=list(prompt_ids), params=params, queue=queue or asyncio.Queue(),
                               loop=loop, index=index, _scheduler=self)
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise SchedulerBusy(f"{len(self._waiting)} requests are already waiting for a slot; retry later")
            self._waiting.append(handle)
            self.counters["submitted"] += 1
            self._cond.notify_all()
        return handle

    def stats(self) -> dict:
        with self._cond:
            return {"active": len(self._active), "waiting": len(self._waiting),
                    "slots": getattr(self.engine, "max_batch", None), **self.counters}

    def _request_abort(self, handle: RequestHandle) -> None:
        with self._cond:
            self._aborts.append(handle)
            self._cond.notify_all()

    # ---- the scheduler thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        eng = self.engine
        while True:
            with self._cond:
                while not self._stop and not self._aborts and not self._active and not self._waiting:
                    self._cond.wait()
                if self._stop:
                    break
                aborts, self._aborts = self._aborts, []
            for h in aborts:
                self._abort(h)
            self._admit()
            if not self._active:
                continue
            try:
                outs = eng.step()
            except Exception as e:  # an engine failure must not kill the server: fail the batch, keep serving
                log.exception("engine step failed")
                for h in list(self._active.values()):
                    self._finish(h, Event("error", h.index, error=e))
                    try:
                        eng.abort(h.engine_request)
                    except Exception:
                        pass
                self._active.clear()
                continue
            with self._cond:
                self.counters["steps"] += 1
                self.counters["max_batch_stepped"] = max(self.counters["max_batch_stepped"], len(outs))
            for out in outs:
                h = self._active.get(id(out.request))
                if h is None:
                    continue
                req = out.request
                logprob = None
                now, real = time.monotonic(), len(req.output_ids) > h.completion_tokens
                first = h.last_output is None
                self.metrics.output(now - (h.submitted if first else h.last_output), first, real)
                h.last_output = now
                if real:  # a real token, not an end-of-turn stop token
                    h.completion_tokens = len(req.output_ids)
                    if req.params.logprobs and req.logprobs:
                        logprob = req.logprobs[-1]
                    with self._cond:
                        self.counters["tokens"] += 1
                h._emit(Event("delta", h.index, text=out.text or "", token_id=out.token_id, logprob=logprob))
                if out.finished:
                    del self._active[id(out.request)]
                    with self._cond:  # counted before the client hears of it, so /health agrees with the reply
                        self.counters["completed"] += 1
                    self._finish(h, Event("done", h.index, finish_reason=out.finish_reason or "stop",
                                          completion_tokens=h.completion_tokens))
        # shutting down: tell every listener
        for h in list(self._active.values()) + list(self._waiting):
            self._finish(h, Event("error", h.index, error=RuntimeError("the server is shutting down")))

    def _admit(self) -> None:
        """Move waiting requests into free slots, prefilling all newcomers of this step in one batch."""
        from ..errors import UserError
        eng = self.engine
        batch: list[RequestHandle] = []
        with self._cond:
            free = eng.max_batch - eng.num_active()
            while self._waiting and len(batch) < free:
                batch.append(self._waiting.popleft())
        ready = []
        for h in batch:
            if h.cancelled:
                with self._cond:
                    self.counters["aborted"] += 1
                self._finish(h, Event("done", h.index, finish_reason="abort"))
                continue
            try:  # validate alone, so one bad request fails only itself
                h.params.validate()
                eng.check_prompt(h.prompt_ids)
            except UserError as e:  # ContextLengthError and friends: the client's fault
                self._finish(h, Event("error", h.index, error=e))
                continue
            except Exception as e:
                log.exception("request could not be prepared")
                self._finish(h, Event("error", h.index, error=e))
                continue
            ready.append(h)
        if not ready:
            return
        try:
            reqs = eng.add_requests([(h.prompt_ids, h.params) for h in ready])
        except Exception:  # the engine admits all or none: admit each alone, so only the culprit fails
            for h in ready:
                self._admit_alone(h)
            return
        for h, req in zip(ready, reqs):
            h.engine_request = req
            self._active[id(req)] = h
            self.metrics.admitted(len(h.prompt_ids))

    def _admit_alone(self, h: RequestHandle) -> None:
        from ..errors import UserError
        try:
            req = self.engine.add_requests([(h.prompt_ids, h.params)])[0]
        except Exception as e:
            if not isinstance(e, UserError):
                log.exception("engine could not take a request")
            self._finish(h, Event("error", h.index, error=e))
            return
        h.engine_request = req
        self._active[id(req)] = h
        self.metrics.admitted(len(h.prompt_ids))

    def _abort(self, h: RequestHandle) -> None:
        if h.finished:
            return
        with self._cond:
            try:
                self._waiting.remove(h)
            except ValueError:
                pass
        if h.engine_request is not None and self._active.pop(id(h.engine_request), None) is not None:
            self.engine.abort(h.engine_request)
        with self._cond:
            self.counters["aborted"] += 1
        self._finish(h, Event("done", h.index, finish_reason="abort", completion_tokens=h.completion_tokens))

    def _finish(self, h: RequestHandle, ev: Event) -> None:
        if h.finished:
            return
        h.finished = True
        self.metrics.ended("error" if ev.kind == "error" else ev.finish_reason or "stop",
                           time.monotonic() - h.submitted)
        if ev.kind == "error":
            with self._cond:
                self.counters["errors"] += 1
        h._emit(ev)
