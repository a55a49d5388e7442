"""Helpers for the serving tests: run `alignchat serve` as a real subprocess on a free port, reached via 127.0.0.1."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def file_mode(path: Path) -> int:
    """The permission bits of `path` (0o600 for an owner-only file)."""
    return stat.S_IMODE(path.stat().st_mode)


def openai_error(r: httpx.Response) -> dict:
    """The `error` object of an error response, checked to have exactly OpenAI's four fields."""
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`alignchat serve` in a child process; `url` once /health says the model is loaded.

    `host` is what the server binds (`--host`); `url` always goes through 127.0.0.1, which a wildcard bind
    ("0.0.0.0", "") serves too."""

    def __init__(self, model: str | Path, db_path: Path, *extra: str, env: dict | None = None,
                 host: str = "127.0.0.1", source: str = "--model", log_level: str = "warning"):
        self.port = free_port()
        self.host = host
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = f"sqlite:///{db_path}"
        # float32 unless a test chooses: the CPU default (bfloat16 where the CPU has it natively, covered by
        # tests/test_quant.py) rounds differently at other batch sizes, and these tests compare batched
        # replies with solo ones and with the in-process engine
        if source == "--model" and not {"--dtype", "--quantize"} & set(extra):
            extra = ("--dtype", "float32", *extra)
        cmd = [sys.executable, "-m", "alignchat.cli", "serve", source, str(model), "--db", self.db_url,
               "--host", host, "--port", str(self.port), "--log-level", log_level, *extra]
        # beside the database, or in its nearest existing folder when the server is to create the database's
        log_dir = next(d for d in db_path.parents if d.exists())
        self.log_path = log_dir / f"{db_path.stem}.{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})

    def wait_ready(self, timeout: float = 180) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                h = httpx.get(self.url + "/health", timeout=2).json()
                if h["status"] == "ok":
                    return self
                if h["status"] == "error":
                    raise RuntimeError(f"model failed to load: {h['error']}")
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_scheduler(self, done=None, timeout: float = 120) -> dict:
        """Poll /health until `done(scheduler_stats)` (default: nothing active or waiting) and return the
        stats; the timeout only bounds a failing test, it is never what a test measures."""
        done = done or (lambda s: s["active"] == 0 and s["waiting"] == 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.health()["scheduler"]
            if done(s):
                return s
            time.sleep(0.02)
        raise AssertionError(f"the scheduler never reached the expected state: {self.health()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL: no shutdown handlers run, as when the machine or process dies."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def users_cli(db_url: str, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-m", "alignchat.cli", "users", "--db", db_url, *args], cwd=ROOT,
                         input=stdin, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return out.stdout


class ProxyProcess(ServerProcess):
    """`alignchat serve --upstream URL` (no local model) in a child process, logging at debug level (the tests
    read the log to check that no key is in it)."""

    def __init__(self, upstream: str, db_path: Path, *extra: str, env: dict | None = None):
        super().__init__(upstream, db_path, *extra, env=env, source="--upstream", log_level="debug")

    def wait_health(self, done, timeout: float = 120) -> dict:
        """Poll /health until `done(health)`; the timeout only bounds a failing test."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                h = self.health()
                if done(h):
                    return h
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"/health never reached the expected state:\n{self.log()}")


@contextlib.contextmanager
def keyed_server(model, db_path: Path, *extra: str, user: str = "alice", password: str = "correct horse battery"):
    """A ready `alignchat serve --require-login` with one account and its API key: yields (server, key)."""
    srv = ServerProcess(model, db_path, "--require-login", *extra)
    try:
        users_cli(srv.db_url, "add", user, "--password-stdin", stdin=password + "\n")
        key = users_cli(srv.db_url, "key", user).strip()
        srv.wait_ready()
        yield srv, key
    finally:
        srv.stop()


def stream_then_hang_up(url: str, body: dict, while_streaming) -> None:
    """Stream a chat completion, call `while_streaming()` after its third content delta, then close the
    connection, as a client that goes away mid-answer."""
    with httpx.Client(timeout=60) as c:
        with c.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            got = 0
            for line in r.iter_lines():
                if line.startswith("data: {") and '"delta": {"content": "' in line:
                    got += 1
                    if got == 3:
                        while_streaming()
                        break  # leaving iter_lines closes the connection: the client is gone


def post_then_hang_up(port: int, body: dict, until) -> None:
    """Send a non-streamed chat completion on a raw socket, wait for `until()`, then close the socket."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: " + str(len(payload)).encode() +
                     b"\r\n\r\n" + payload)
        until()


def sse_events(resp: httpx.Response):
    """(event name, JSON data) for each server-sent event of a streamed response (the web UI's chat stream)."""
    from httpx_sse import EventSource
    for sse in EventSource(resp).iter_sse():
        yield sse.event, json.loads(sse.data)
