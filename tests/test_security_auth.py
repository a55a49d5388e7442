"""The server's authentication and HTTP-level defences, against the real `alignchat serve` over HTTP: login on
public binds, the body-size cap, the local user surviving deletion, the Host allow-list and cross-site request
check, login throttling and equal work for unknown names, owner-only database files, and `users add`
without a terminal."""
from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
import time

import httpx
import pytest

from serve_support import ROOT, ServerProcess, file_mode as _mode, free_port, openai_error as _error, users_cli

MAX_BODY = 65536


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    """A loopback server without login whose database folder does not exist before it starts."""
    db = tmp_path_factory.mktemp("sec") / "fresh" / "data" / "sec.db"
    srv = ServerProcess(tiny_ckpt, db, "--no-embeddings", "--max-body", str(MAX_BODY),
                        "--allowed-host", "chat.example").wait_ready()
    srv.db_path = db
    yield srv
    srv.stop()


# ---- 1. a public bind requires login --------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", ""])
def test_public_bind_requires_login(tiny_ckpt, tmp_path, host):
    srv = ServerProcess(tiny_ckpt, tmp_path / "public.db", "--no-embeddings", host=host).wait_ready()
    try:
        assert srv.health()["require_login"] is True
        for method, path, body in [("GET", "/api/me", None), ("GET", "/api/conversations", None),
                                   ("POST", "/api/conversations", {}), ("GET", "/v1/library/documents", None),
                                   ("POST", "/v1/chat/completions",
                                    {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})]:
            r = httpx.request(method, srv.url + path, json=body, timeout=30)
            assert r.status_code == 401, (path, r.text)
        # an arbitrary key is not the local user either
        r = httpx.get(srv.url + "/api/conversations", headers={"Authorization": "Bearer whatever"}, timeout=30)
        assert r.status_code == 401
    finally:
        srv.stop()


def test_only_the_insecure_flag_turns_login_off_beyond_loopback(tiny_ckpt, tmp_path):
    from alignchat.serve.app import create_app
    from alignchat.serve.runtime import ServeConfig
    db = f"sqlite:///{tmp_path / 'inproc.db'}"
    for cfg in [ServeConfig(host="0.0.0.0", db=db), ServeConfig(host="", db=db),
                ServeConfig(host="192.168.1.20", db=db), ServeConfig(host="0.0.0.0", db=db, require_login=False)]:
        app = create_app(model=str(tiny_ckpt), config=cfg, preload=False)
        assert app.state.ctx.require_login is True, cfg
        app.state.ctx.store.dispose()
    app = create_app(model=str(tiny_ckpt), db=db, preload=False)
    assert app.state.ctx.require_login is False  # loopback
    app.state.ctx.store.dispose()
    srv = ServerProcess(tiny_ckpt, tmp_path / "insecure.db", "--no-embeddings", "--insecure-no-login",
                        host="0.0.0.0").wait_ready()
    try:
        assert httpx.get(srv.url + "/api/me", timeout=30).json()["user"]["username"] == "local"
        assert "WARNING: --insecure-no-login" in srv.log()
    finally:
        srv.stop()


# ---- 2. the body cap --------------------------------------------------------------------------------------------

def _raw_post(srv: ServerProcess, path: str, headers: dict, chunks: list[bytes] = (), chunked: bool = False,
              finish: bool = True):
    """POST with exactly these headers and body pieces, then read the answer (http.client, nothing buffered).
    `finish=False` leaves a chunked body unterminated: the server must answer without waiting for its end."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.putrequest("POST", path)
        for k, v in headers.items():
            conn.putheader(k, v)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for c in chunks:
            conn.send(b"%x\r\n%s\r\n" % (len(c), c) if chunked else c)
        if chunked and finish:
            conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def test_body_size_cap(server):
    import json

    from alignchat.library.api import MAX_UPLOAD_BYTES
    # a declared length over the cap is refused before any of the body is sent
    status, body, _ = _raw_post(server, "/v1/chat/completions",
                                {"Content-Type": "application/json", "Content-Length": str(MAX_BODY + 1)})
    err = json.loads(body)["error"]
    assert status == 413 and err["code"] == "request_too_large" and str(MAX_BODY) in err["message"], body
    # a chunked body is counted as it streams: cut off once past the cap
    status, body, _ = _raw_post(server, "/api/conversations", {"Content-Type": "application/json"},
                                [b"x" * 16384] * (MAX_BODY // 16384) + [b"x"], chunked=True, finish=False)
    assert status == 413 and str(MAX_BODY) in json.loads(body)["error"]["message"], body
    # bodies under the cap, whole or chunked, are served
    small = json.dumps({"title": "chunked", "system_prompt": "s" * (MAX_BODY - 1000)}).encode()
    status, body, _ = _raw_post(server, "/api/conversations", {"Content-Type": "application/json"},
                                [small[:30000], small[30000:]], chunked=True)
    assert status == 200 and json.loads(body)["title"] == "chunked", body
    r = httpx.post(server.url + "/api/conversations", json={"system_prompt": "s" * (MAX_BODY - 1000)}, timeout=30)
    assert r.status_code == 200
    # the library upload has the library's own, larger limit: a body over --max-body reaches the library
    r = httpx.post(server.url + "/v1/library/documents", params={"filename": "big.exe"},
                   content=b"y" * (MAX_BODY * 2), timeout=60)
    assert r.status_code == 400 and "unsupported file type" in _error(r)["message"], r.text
    status, body, _ = _raw_post(server, "/v1/library/documents?filename=huge.txt",
                                {"Content-Length": str(MAX_UPLOAD_BYTES + 1)})
    assert status == 413 and str(MAX_UPLOAD_BYTES) in json.loads(body)["error"]["message"], body
    assert server.health()["status"] == "ok"


# ---- 3. the local user survives `users delete local` -------------------------------------------------------------

def test_deleting_the_local_user_does_not_break_new_conversations(server):
    r = httpx.post(server.url + "/api/conversations", json={"title": "before"}, timeout=30)
    assert r.status_code == 200
    users_cli(server.db_url, "delete", "local")
    r = httpx.post(server.url + "/api/conversations", json={"title": "after"}, timeout=30)
    assert r.status_code == 200, r.text
    listed = httpx.get(server.url + "/api/conversations", timeout=30).json()["data"]
    assert [c["title"] for c in listed] == ["after"]  # the deleted user's conversations went with it
    assert httpx.get(server.url + "/api/me", timeout=30).json()["user"] == {"username": "local", "is_admin": True}


# ---- 4. Host allow-list and cross-site requests ------------------------------------------------------------------

def test_host_header_must_name_this_server(server):
    url = server.url + "/api/conversations"
    for host in ["attacker.example", f"attacker.example:{server.port}", "127.0.0.1.attacker.example",
                 "localhost.attacker.example", "evil@127.0.0.1", "10.1.2.3"]:
        r = httpx.get(url, headers={"Host": host}, timeout=30)
        assert r.status_code == 400 and _error(r)["code"] == "host_not_allowed", (host, r.text)
        assert "data" not in r.json()
    for host in [f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}", "localhost",
                 "LOCALHOST", "chat.example", "chat.example:443"]:
        r = httpx.get(url, headers={"Host": host}, timeout=30)
        assert r.status_code == 200 and "data" in r.json(), (host, r.text)


def test_cross_site_state_changes_are_refused(server):
    own = server.url
    other = f"http://127.0.0.1:{free_port()}"
    before = len(httpx.get(own + "/api/conversations", timeout=30).json()["data"])
    for headers in [{"Origin": "http://attacker.example"}, {"Origin": other}, {"Origin": "null"},
                    {"Origin": "http://127.0.0.1"}, {"Origin": f"http://localhost:{server.port}"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Sec-Fetch-Site": "same-site", "Origin": other}]:
        r = httpx.post(own + "/api/conversations", json={"title": "forged"}, headers=headers, timeout=30)
        assert r.status_code == 403 and _error(r)["code"] == "cross_site_request", (headers, r.text)
        r = httpx.post(own + "/v1/library/documents", params={"filename": "planted.txt"}, headers={
            **headers, "Content-Type": "text/plain"}, content=b"planted=Coral reefs are planted here.", timeout=30)
        assert r.status_code == 403, (headers, r.text)
        assert httpx.post(own + "/api/logout", headers=headers, timeout=30).status_code == 403
    assert len(httpx.get(own + "/api/conversations", timeout=30).json()["data"]) == before
    assert httpx.get(own + "/v1/library/documents", timeout=30).json()["data"] == []
    # the server's own pages, non-browser clients and keyed API clients are served
    for headers in [{"Origin": own, "Sec-Fetch-Site": "same-origin"}, {},
                    {"Origin": "http://attacker.example", "Authorization": "Bearer any-key"}]:
        r = httpx.post(own + "/api/conversations", json={"title": "ok"}, headers=headers, timeout=30)
        assert r.status_code == 200, (headers, r.text)


# ---- 5. login throttling, SameSite cookies, equal work for unknown names ----------------------------------------

def test_login_throttling_and_strict_cookie(tiny_ckpt, tmp_path):
    srv = ServerProcess(tiny_ckpt, tmp_path / "login.db", "--no-embeddings", "--require-login",
                        "--login-lockout", "1", "--login-window", "3600").wait_ready()
    try:
        users_cli(srv.db_url, "add", "alice", "--password-stdin", stdin="alice-password\n")

        def login(pw: str, name: str = "alice") -> httpx.Response:
            return httpx.post(srv.url + "/api/login", json={"username": name, "password": pw}, timeout=60)

        r = login("nope-nope", name="nobody")
        assert r.status_code == 401 and _error(r)["code"] == "bad_credentials"
        for i in range(5):
            assert login(f"wrong-{i}").status_code == 401
        r = login("alice-password")  # the right password, after 5 wrong ones
        assert r.status_code == 429 and _error(r)["code"] == "too_many_attempts", r.text
        wait = int(r.headers["Retry-After"])
        assert wait >= 1 and "set-cookie" not in r.headers
        time.sleep(wait)  # the lockout the server announced
        r = login("alice-password")
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"].lower()
        assert "samesite=strict" in cookie and "httponly" in cookie
        assert login("wrong-again").status_code == 401  # the success cleared alice's failures
    finally:
        srv.stop()


def test_login_throttle_backoff_and_address_limit():
    from alignchat.serve.auth import LoginThrottle, LoginThrottled
    now = [1000.0]
    t = LoginThrottle(max_failures=3, window=100.0, lockout=10.0, address_factor=2, clock=lambda: now[0])

    def attempt(user, client="10.0.0.1", ok=False):
        t.end(t.begin(user, client), ok)

    for _ in range(3):
        attempt("alice")
    with pytest.raises(LoginThrottled) as e:
        t.begin("alice", "10.0.0.9")  # another address: the user name is locked
    assert e.value.retry_after == 10
    now[0] += 10
    attempt("alice", "10.0.0.9")  # after the lockout one more try, wrong again: twice as long
    with pytest.raises(LoginThrottled) as e:
        t.begin("alice", "10.0.0.9")
    assert e.value.retry_after == 20
    now[0] += 20
    attempt("alice", "10.0.0.9", ok=True)  # success clears the user name
    attempt("alice", "10.0.0.9")
    t.begin("alice", "10.0.0.9")  # one failure only: admitted
    # in-flight attempts count: parallel guesses cannot overshoot the limit
    keys = [t.begin("bob", f"10.0.0.{i}") for i in range(3)]
    with pytest.raises(LoginThrottled):
        t.begin("bob", "10.0.0.7")
    for k in keys:
        t.end(k, False)
    with pytest.raises(LoginThrottled) as e:
        t.begin("bob", "10.0.0.7")
    assert e.value.retry_after == 10
    # one address spraying many names: locked after address_factor x max_failures failures
    for i in range(6):
        attempt(f"name-{i}", "10.9.9.9")
    with pytest.raises(LoginThrottled):
        t.begin("carol", "10.9.9.9")
    t.begin("carol", "10.9.9.8")
    # failures are forgotten after a quiet window
    now[0] += 10 * 2 ** 3 + 100
    t.begin("carol", "10.9.9.9")


def test_unknown_user_costs_the_same_scrypt_calls_as_a_wrong_password(tmp_path, monkeypatch):
    from alignchat.serve import auth
    from alignchat.serve.store import Store
    store = Store(f"sqlite:///{tmp_path / 'count.db'}")
    acc = auth.Accounts(store)
    acc.create_user("alice", "alice-password")
    acc.local_user()  # exists, cannot log in (no password)
    calls = []
    real = hashlib.scrypt

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(auth.hashlib, "scrypt", counting)
    acc.login("alice", "warm-up-password")  # the process's first login also makes the dummy hash

    def cost(name, pw):
        calls.clear()
        assert acc.login(name, pw, client=None) is None
        return len(calls)

    assert cost("alice", "wrong-password") == 1
    assert cost("nobody-by-this-name", "wrong-password") == 1
    assert cost("local", "wrong-password") == 1
    calls.clear()
    assert acc.login("alice", "alice-password") is not None and len(calls) == 1
    store.dispose()


# ---- 6. owner-only database files -------------------------------------------------------------------------------

def test_database_files_are_owner_only(server, tmp_path):
    db = server.db_path
    assert _mode(db.parent) == 0o700
    for f in [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]:
        assert f.exists() and _mode(f) == 0o600, f
    # the users CLI, on a new file and on the default location
    fresh = tmp_path / "cli-made" / "users.db"
    users_cli(f"sqlite:///{fresh}", "add", "bob", "--password-stdin", stdin="bob-password\n")
    assert _mode(fresh.parent) == 0o700 and _mode(fresh) == 0o600
    home = tmp_path / "home"
    out = subprocess.run([sys.executable, "-m", "alignchat.cli", "users", "list"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "ALIGNCHAT_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    assert _mode(home / "serve") == 0o700 and _mode(home / "serve" / "alignchat.db") == 0o600
    # a file an older version left world-readable is tightened on the next open
    os.chmod(fresh, 0o644)
    users_cli(f"sqlite:///{fresh}", "list")
    assert _mode(fresh) == 0o600


# ---- 7. `users add` without a terminal ----------------------------------------------------------------------------

def test_users_add_without_a_terminal(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'tty.db'}"

    def users(*args, stdin=None):
        # a new session has no controlling terminal, as under cron, CI or `ssh host cmd`
        return subprocess.run([sys.executable, "-m", "alignchat.cli", "users", "--db", db_url, *args], cwd=ROOT,
                              input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, start_new_session=True)

    out = users("add", "bob")
    assert out.returncode == 2 and "--password-stdin" in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = users("add", "bob", "--password-stdin", stdin="")
    assert out.returncode == 2 and "no password" in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = users("add", "bob", "--password-stdin", stdin="bob-password\n")
    assert out.returncode == 0, out.stderr
    assert '"username": "bob"' in users("list").stdout
