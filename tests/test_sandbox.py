"""The code sandbox (`alignchat.sandbox`): real guest programs run through `run_python` on every backend
this machine has.

Each escape is asserted by its effect on the host, never by the guest's word alone: files that must not
appear, a listening socket that must not receive a connection, processes that must not survive the call.
Backends that are absent are skipped with what to install.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alignchat import sandbox
from alignchat.sandbox import OUTPUT_LIMIT, SandboxUnavailable, humaneval_program, run_python

ROOT = Path(__file__).resolve().parents[1]


def _available(name: str) -> str:
    problem = sandbox.backend_problem(name)
    if problem:
        pytest.skip(f"sandbox backend {name!r} is not available here: {problem}")
    return name


@pytest.fixture(params=sandbox.ISOLATING)
def isolated(request) -> str:
    return _available(request.param)


@pytest.fixture(params=sandbox.BACKENDS)
def backend(request) -> str:
    return _available(request.param)


def guest(src: str, **values) -> str:
    """Dedent a guest program and bind `values` (Python literals) as its globals."""
    head = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    return head + textwrap.dedent(src)


def report(res) -> dict:
    assert res.status == "ok", res
    return json.loads(res.stdout.strip().splitlines()[-1])


def marked_processes(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and int(pid) != os.getpid():
            found.append(int(pid))
    return found


@pytest.fixture
def outside(tmp_path):
    """Host paths a guest must not create: in the host /tmp, in the repository, in a test directory."""
    token = f"alignchat-escape-{uuid.uuid4().hex}"
    paths = [Path("/tmp") / token, ROOT / token, tmp_path / token]
    yield paths
    for p in paths:  # clean up after a failure, so a broken sandbox leaves no litter
        for q in (p, p.with_suffix(".db")):
            if q.is_dir():
                shutil.rmtree(q)
            elif q.exists():
                q.unlink()


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv
    srv.close()


def assert_no_connection(srv: socket.socket) -> None:
    """The guest has exited, so a connection it made would already wait in the backlog."""
    srv.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn, _ = srv.accept()
        conn.close()


# ------------------------------------------------------------------------------------- escapes

ESCAPE_ATTEMPTS = """
import json, os, socket, subprocess, sys
def attempt(fn):
    try:
        return "ok: " + str(fn())
    except Exception as e:
        return "denied: " + type(e).__name__
def write(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("escaped")
    return path
out = {
    "passwd": attempt(lambda: open("/etc/passwd").read()[:20]),
    "writes": [attempt(lambda p=p: write(p)) for p in OUTSIDE],
    "connect": attempt(lambda: socket.create_connection(("127.0.0.1", PORT), timeout=5).close()),
    "id": subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip(),
    "uid": [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()],
    "setuid0": attempt(lambda: os.setuid(0)),
}
print(json.dumps(out))
"""


def test_guest_rewriting_its_interpreter_still_cannot_read_write_connect_or_be_root(isolated, outside, listener):
    # The attack that beat the in-process policy: rewrite the policy globals in __main__, drop every
    # audit hook it can reach, then read, write, connect and run `id`. Here nothing it can touch is a fence.
    tamper = """
    import sys
    main = sys.modules["__main__"]
    for name in ("_ROOT", "_READ_OK", "_BLOCKED_PREFIXES", "_guard"):
        setattr(main, name, "/" if name == "_ROOT" else ())
    main.__dict__.update({k: None for k in list(vars(main)) if k.startswith("_") and not k.startswith("__")})
    """
    res = run_python(guest(tamper, OUTSIDE=[str(p) for p in outside], PORT=listener.getsockname()[1])
                     + ESCAPE_ATTEMPTS, backend=isolated)
    out = report(res)
    assert out["passwd"].startswith("denied"), out
    assert not any(p.exists() for p in outside), out
    assert out["connect"].startswith("denied"), out
    assert_no_connection(listener)
    if os.geteuid() == 0:
        assert out["id"] not in ("", "0") and 0 not in out["uid"][:3], out
        assert out["uid"][3] in ([], [out["uid"][2]]) and out["setuid0"].startswith("denied"), out


def test_reading_etc_passwd_and_repository_files_fails(isolated):
    targets = ["/etc/passwd", "/etc/shadow", str(ROOT / "README.md"), str(ROOT / "pyproject.toml"),
               str(Path(sandbox.__file__).resolve())]
    res = run_python(guest("""
    import json
    out = {}
    for path in TARGETS:
        try:
            out[path] = "read " + open(path).read()[:10]
        except OSError as e:
            out[path] = "denied " + type(e).__name__
    print(json.dumps(out))
    """, TARGETS=targets), backend=isolated)
    out = report(res)
    assert all(v.startswith("denied") for v in out.values()), out
    assert all(Path(t).exists() for t in targets)  # they are there on the host


def test_writing_outside_leaves_nothing(isolated, outside):
    res = run_python(guest("""
    import json, os
    out = []
    for path in OUTSIDE:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("escaped")
            out.append("wrote")
        except OSError as e:
            out.append(type(e).__name__)
    print(json.dumps(out))
    """, OUTSIDE=[str(p) for p in outside]), backend=isolated)
    out = report(res)
    assert out[0] == "wrote", out   # the guest's /tmp is a private tmpfs: the write succeeds there ...
    assert not any(p.exists() for p in outside), out   # ... and nothing reaches the host


def test_sqlite_and_mkdir_outside_leave_nothing(isolated, outside):
    # sqlite3 and os.mkdir passed the old open()-only policy untouched.
    res = run_python(guest("""
    import json, os, sqlite3
    out = []
    for path in OUTSIDE:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            db = sqlite3.connect(path + ".db")
            db.execute("create table t (x)")
            db.commit()
            db.close()
            out.append("db")
        except Exception as e:
            out.append(type(e).__name__)
        try:
            os.mkdir(path)
            os.mkdir(os.path.join(path, "sub"))
            out.append("dir")
        except OSError as e:
            out.append(type(e).__name__)
    print(json.dumps(out))
    """, OUTSIDE=[str(p) for p in outside]), backend=isolated)
    out = report(res)
    assert out[:2] == ["db", "dir"], out  # done in the private /tmp
    for p in outside:
        assert not p.exists() and not p.with_suffix(".db").exists(), (p, out)


def test_socket_to_a_listening_loopback_port_never_arrives(isolated, listener):
    port = listener.getsockname()[1]
    res = run_python(guest("""
    import json, socket
    out = []
    for family, addr in ((socket.AF_INET, ("127.0.0.1", PORT)), (socket.AF_INET6, ("::1", PORT))):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(addr)
            out.append("connected")
        except OSError as e:
            out.append(type(e).__name__)
    print(json.dumps(out))
    """, PORT=port), backend=isolated)
    out = report(res)
    assert "connected" not in out, out
    assert_no_connection(listener)


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop applies when the host runs as root")
def test_guest_is_not_root_when_the_host_is(isolated):
    res = run_python("import os, subprocess\nprint(os.getuid(), os.geteuid(), "
                     "subprocess.run(['id', '-u'], capture_output=True, text=True).stdout.strip())", backend=isolated)
    assert res.status == "ok", res
    uid, euid, id_u = res.stdout.split()
    assert uid != "0" and euid != "0" and id_u == uid, res.stdout


@pytest.mark.parametrize("guest_hangs", [False, True], ids=["guest-exits", "guest-hangs"])
def test_setsid_grandchild_is_gone_when_the_call_returns(isolated, guest_hangs):
    marker = f"alignchat-orphan-{uuid.uuid4().hex}"
    # the grandchild leaves the session and keeps the output pipes open
    res = run_python(guest("""
    import subprocess, sys, time
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(10**6)", MARKER], start_new_session=True)
    print("spawned", flush=True)
    if HANG:
        time.sleep(10**6)
    """, MARKER=marker, HANG=guest_hangs), backend=isolated, timeout=5)
    assert "spawned" in res.stdout, res
    assert res.status == ("timeout" if guest_hangs else "ok"), res
    assert marked_processes(marker) == []


@pytest.mark.parametrize("program", ["import time\ntime.sleep(10**6)", "while True:\n    pass"], ids=["sleep", "spin"])
def test_guest_that_never_exits_times_out(backend, program):
    res = run_python(program, backend=backend, timeout=2)
    assert res.status == "timeout" and not res.passed, res


def test_fork_bomb_is_contained(isolated):
    marker = f"alignchat-forkbomb-{uuid.uuid4().hex}"
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    res = run_python(guest("import os, sys\nos.execv(sys.executable, [sys.executable, '-c', BOMB, MARKER])\n",
                           BOMB=bomb, MARKER=marker), backend=isolated, timeout=3, max_processes=16)
    assert res.status == "timeout", res
    assert marked_processes(marker) == []


def _memory() -> dict[str, int]:
    status = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", status, re.M).group(1)) << 10 for k in ("VmRSS", "VmHWM")}


def test_huge_output_is_capped_and_memory_stays_bounded(backend):
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _memory()
    res = run_python("import sys\nchunk = 'x' * 2**20\nfor _ in range(400):\n    sys.stdout.write(chunk)\n",
                     backend=backend)
    after = _memory()
    assert res.status == "output_limit" and res.truncated and not res.passed, res.detail
    assert res.stdout == "x" * OUTPUT_LIMIT
    baseline = before["VmRSS"] if reset else before["VmHWM"]
    assert after["VmHWM"] - baseline < 64 << 20, (before, after)  # 400 MB went by; tens of MB at most stayed


def test_memory_limit_is_enforced(backend):
    res = run_python("b = bytearray(4 * 2**30)", backend=backend, memory_mb=1024)
    assert res.status == "failed" and "MemoryError" in res.stderr, res
    ok = run_python("b = bytearray(64 * 2**20)\nprint(len(b))", backend=backend, memory_mb=1024)
    assert ok.status == "ok" and ok.stdout.strip() == str(64 * 2**20), ok


PROMPT = 'def add(a: int, b: int) -> int:\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def test_humaneval_solutions_pass_and_wrong_ones_fail(backend):
    good = run_python(humaneval_program(PROMPT, "    return a + b\n", TEST, "add"), backend=backend)
    assert good.passed and good.status == "ok" and good.returncode == 0, good
    bad = run_python(humaneval_program(PROMPT, "    return a - b\n", TEST, "add"), backend=backend)
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.detail, bad
    broken = run_python(humaneval_program(PROMPT, "    return a +\n", TEST, "add"), backend=backend)
    assert broken.status == "failed" and "SyntaxError" in broken.stderr, broken


def test_output_and_exit_status_are_returned_to_the_caller(backend):
    res = run_python("import sys\nprint('héllo')\nprint('oops', file=sys.stderr)\nsys.exit(3)", backend=backend)
    assert (res.status, res.returncode, res.stdout, res.stderr) == ("failed", 3, "héllo\n", "oops\n"), res
    assert res.backend == backend and not res.truncated


def test_many_threads_at_once_keep_their_own_results(backend):
    tokens = [uuid.uuid4().hex for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda t: run_python(f"print({t!r})", backend=backend), tokens))
    assert [(r.status, r.stdout.strip()) for r in results] == [("ok", t) for t in tokens]


DEGRADED = """
import logging, sys
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
from alignchat.sandbox import SandboxUnavailable, run_python
a, b = run_python("print(6 * 7)"), run_python("print(7 * 8)")
print(a.backend, a.status, a.stdout.strip(), b.stdout.strip())
for kwargs in ({"strict": True}, {"backend": "bwrap"}):
    try:
        run_python("print(1)", **kwargs)
        print("ran", kwargs)
    except SandboxUnavailable as e:
        print("refused:", e)
"""


def test_without_isolation_tools_it_degrades_with_one_clear_warning(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path), "ALIGNCHAT_SANDBOX": "auto"}
    proc = subprocess.run([sys.executable, "-c", DEGRADED], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "plain ok 42 56", proc.stdout
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("WARNING alignchat.sandbox")]
    assert len(warnings) == 1 and "isolation is reduced" in warnings[0] and "bubblewrap" in warnings[0], proc.stderr
    assert lines[1].startswith("refused: strict sandbox mode") and "bubblewrap" in lines[1], lines
    assert lines[2].startswith("refused: sandbox backend 'bwrap' is unavailable") and "apt-get install bubblewrap" \
        in lines[2], lines


def test_unknown_backend_is_refused():
    with pytest.raises(SandboxUnavailable, match="unknown sandbox backend"):
        run_python("print(1)", backend="docker")
