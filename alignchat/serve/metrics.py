"""Prometheus metrics: `GET /metrics` in the text exposition format, built with the official client library.

What it shows (every name starts `alignchat_`):
- `http_requests_total{route, method, status}` and `http_request_duration_seconds{route, method}`: every HTTP
  request this server answered, the guards' refusals included. `route` is the route's template
  (`/api/conversations/{cid}`), never the raw path, so ids and unknown URLs cannot grow the label set: a
  request no route takes (an unknown URL, or one a guard refused before routing) is `other`, and so is a
  method outside the usual seven.
  A streamed reply's duration runs to its last event.
- From the scheduler (`EngineMetrics`, one per scheduler, fed by its thread): `prompt_tokens_total` (tokens
  prefilled: a prompt counts once per choice it was admitted for), `generation_tokens_total` (generated
  tokens, end-of-turn tokens excluded: the sum of the replies' `usage.completion_tokens`),
  `time_to_first_token_seconds` (submission to the first output), `inter_token_latency_seconds` (between
  two outputs of one choice), `e2e_request_latency_seconds` (submission to the end of a choice that
  finished, by `stop` or `length`) and `generation_requests_total{finish_reason}` (`stop`, `length`,
  `abort`: cancelled, e.g. the client went away, `error`).
- Read at scrape time from the scheduler's `stats()`: `requests_waiting` (queue depth), `slots_active`
  (slots in use; with `--upstream`, requests in flight to it) and `slots` (how many there are).
- Read at scrape time from the engine's prefix cache (engine/prefix.py): `prompt_tokens_cached_total`
  (prompt tokens whose keys and values were reused, not computed) and `prompt_tokens_computed_total` (the
  rest, prefilled). Their sum is the prompt tokens the engine admitted; zero with `--no-prefix-cache` for
  the first, and with `--upstream` for both.

Notable choices:
- Each app has its own `CollectorRegistry` (several apps in one process do not clash), and each scheduler its
  own unregistered `EngineMetrics`, which the app's collector reads through `ctx.host.scheduler` at scrape
  time. So counting starts with the scheduler, whenever the model finishes loading, and no request is missed.
  Before the model is loaded the same families are shown, at zero. With `--upstream` the scheduler is the
  upstream's, which has no `EngineMetrics`: the token and latency families stay at zero there, and the
  requests, queue and slots are still counted.
- The scheduler records before it hands an event to the request's handler, and the HTTP counters are bumped
  before a reply's last byte is sent, so a client that has its answer sees it counted in the next scrape.
- Access: /metrics shows no user data (no text, user names or keys), but it does show how busy the server is
  and how it is used. So it answers whoever `auth.resolve_user` accepts as an admin: everyone on a server
  without login (loopback, the default), and beyond loopback, or with `--require-login`, an admin's API key
  or session only (401 without credentials, 403 for a non-admin). Prometheus sends the key with its scrape
  config's `authorization` block. It is left out of /openapi.json (it is text, not JSON).
- A pure ASGI middleware, like the guards: streamed replies pass through unbuffered, and a client's
  disconnect still reaches the route.
"""
from __future__ import annotations

import time

from fastapi import Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import CurrentUser, resolve_user
from .errors import APIError

PREFIX = "alignchat_"
TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0, 160.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
               10.0, 20.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0,
                   300.0, 600.0, 1200.0)
OTHER_ROUTE = "other"  # a request no route matches
FINISH_REASONS = ("stop", "length", "abort", "error")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other: `other`


class EngineMetrics:
    """What one scheduler counts (see the module docstring); thread-safe, not registered anywhere: the app's
    collector reads it."""

    def __init__(self):
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens prefilled (once per choice)",
                                     registry=None)
        self.generation_tokens = Counter(PREFIX + "generation_tokens",
                                         "Tokens generated (end-of-turn tokens excluded)", registry=None)
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds",
                              "Seconds from a choice's submission to its first output", buckets=TTFT_BUCKETS,
                              registry=None)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds",
                             "Seconds between two outputs of one choice", buckets=ITL_BUCKETS, registry=None)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds",
                             "Seconds from a choice's submission to its end (finished by stop or length)",
                             buckets=LATENCY_BUCKETS, registry=None)
        self.finished = Counter(PREFIX + "generation_requests", "Choices ended, by finish reason",
                                ["finish_reason"], registry=None)
        for reason in FINISH_REASONS:
            self.finished.labels(reason)  # shown at zero from the start

    def admitted(self, prompt_tokens: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)

    def output(self, since: float, first: bool, generated: bool) -> None:
        """One output of a choice, `since` seconds after its submission (first) or its previous output."""
        (self.ttft if first else self.itl).observe(since)
        if generated:
            self.generation_tokens.inc()

    def ended(self, reason: str, seconds: float) -> None:
        """A choice ended after `seconds` since its submission, with finish reason `reason` (or "error")."""
        if reason not in FINISH_REASONS:
            reason = "error"
        self.finished.labels(reason).inc()
        if reason in ("stop", "length"):
            self.e2e.observe(seconds)

    def collect(self):
        for metric in (self.prompt_tokens, self.generation_tokens, self.ttft, self.itl, self.e2e, self.finished):
            yield from metric.collect()


class _ServerCollector:
    """The scheduler's gauges and its `EngineMetrics`, read at scrape time from `ctx.host.scheduler`."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.idle = EngineMetrics()  # zeros until there is a scheduler (or with one that counts nothing)

    def collect(self):
        sched = self.ctx.host.scheduler
        stats = sched.stats() if sched is not None else {}
        yield GaugeMetricFamily(PREFIX + "requests_waiting", "Requests waiting for a slot (queue depth)",
                                value=stats.get("waiting") or 0)
        yield GaugeMetricFamily(PREFIX + "slots_active", "Slots in use (with --upstream: requests in flight)",
                                value=stats.get("active") or 0)
        yield GaugeMetricFamily(PREFIX + "slots", "Slots (requests decoded together)", value=stats.get("slots") or 0)
        prefix_stats = getattr(getattr(self.ctx.host, "engine", None), "prefix_stats", None)
        prefix = prefix_stats() if prefix_stats is not None else {"hit_tokens": 0, "prompt_tokens": 0}
        yield CounterMetricFamily(PREFIX + "prompt_tokens_cached", "Prompt tokens reused from the prefix cache",
                                  value=prefix["hit_tokens"])
        yield CounterMetricFamily(PREFIX + "prompt_tokens_computed", "Prompt tokens prefilled (not reused)",
                                  value=prefix["prompt_tokens"] - prefix["hit_tokens"])
        engine = getattr(sched, "metrics", None)
        yield from (engine if isinstance(engine, EngineMetrics) else self.idle).collect()


def route_of(scope: Scope) -> str:
    """The template of the route the router chose for `scope` (it records it in `scope["route"]`; a route of
    another method too: 405), or `other`: no route matched, or a guard refused the request before routing."""
    return getattr(scope.get("route"), "path", None) or OTHER_ROUTE


class HTTPMetrics:
    """Counts every HTTP request by route template, method and status (an ASGI middleware; see the docstring)."""

    def __init__(self, app: ASGIApp, metrics: "ServerMetrics"):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status: list[int] = []
        done = False

        def record(code: int) -> None:
            nonlocal done
            if not done:
                done = True
                method = scope.get("method", "")
                self.metrics.observe(route_of(scope), method if method in METHODS else OTHER_ROUTE, code,
                                     time.monotonic() - start)

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record(status[0] if status else 500)  # before the last byte leaves: see the docstring
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:  # an exception before the reply started: the outermost error middleware answers 500
            record(status[0] if status else 500)


class ServerMetrics:
    """One app's registry: the HTTP counters and the scheduler's collector."""

    def __init__(self, ctx):
        self.registry = CollectorRegistry()
        self.requests = Counter(PREFIX + "http_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.duration = Histogram(PREFIX + "http_request_duration_seconds",
                                  "Seconds from a request's arrival to its reply's last byte, by route",
                                  ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_ServerCollector(ctx))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def metrics_reader(request: Request) -> CurrentUser:
    """Who may read /metrics: an admin (on a server without login, everyone is the local admin)."""
    user = resolve_user(request)
    if user is None:
        raise APIError(401, "/metrics needs an admin's API key (`Authorization: Bearer <key>`) or session.",
                       code="invalid_api_key")
    if not user.is_admin:
        raise APIError(403, "Only an admin can read /metrics.", code="admin_required")
    return user


def install(app, ctx) -> ServerMetrics:
    """Add the request-counting middleware and `GET /metrics` to `app`; install after the guards, so that
    their refusals are counted too."""
    metrics = ServerMetrics(ctx)
    app.state.metrics = metrics
    app.add_middleware(HTTPMetrics, metrics=metrics)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(_reader: CurrentUser = Depends(metrics_reader)):
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics
