"""Run untrusted Python (HumanEval solutions, code from chat users) in an isolated, limited process.

`run_python(program)` starts a fresh interpreter on `program` inside a sandbox and returns a
`SandboxResult`: a status word (`ok`, `failed`, `timeout`, `output_limit`, `error`), the exit status, and
the captured stdout and stderr text, each capped. It is safe to call from many threads at once.

Backends, best first (`auto` takes the first that works here; `ALIGNCHAT_SANDBOX` or `backend=` picks one):
- `bwrap`: bubblewrap. New network, PID, IPC and UTS namespaces (and a user namespace when not root); a
  fresh root that holds only read-only, nosuid binds of /usr, the /lib* and /bin directories and the
  interpreter's own prefix, a new /proc, a minimal /dev and a size-capped private tmpfs at /tmp that is
  the working directory. No /etc, /root, /home, the repository or the host /tmp. Environment cleared.
- `unshare`: util-linux only, for root without bubblewrap. The same namespaces, and the same read-only
  root built by a short shell script in the new mount namespace and entered with `chroot`.
- `plain`: a child process with resource limits only, for machines with neither. It is not isolation;
  a warning naming what to install is logged once, and strict mode (`strict=True` or
  `ALIGNCHAT_SANDBOX_STRICT=1`) refuses to run instead.
In every backend the guest gets rlimits on CPU seconds, address space, file size, open files and
processes, and no core files; as root, the isolating backends run it as uid/gid 65534 (nobody) with no
supplementary groups, no capabilities and no-new-privileges.

Notable choices:
- No in-process policy. The only code that runs before the guest is a short trampoline that copies the
  program from stdin into the working directory, sets the rlimits and `exec`s a fresh `python -I` on it;
  nothing of the trampoline survives the `exec`, so the guest has no policy object to rewrite. Every
  fence is enforced by the kernel (namespaces, mounts, uid, rlimits). The trampoline runs after `exec`,
  in the child, so no `preexec_fn` is used (it is unsafe with threads).
- The uid is dropped with `setpriv` inside the sandbox rather than with bwrap's `--uid`: as root,
  `--uid` needs a user namespace whose ids map back to host root, and a guest that is root on the host
  (even without capabilities) owns root's files and is exempt from RLIMIT_NPROC. `setpriv` makes the
  guest the real host uid 65534, which RLIMIT_NPROC binds. That count is per uid, so concurrent
  sandboxes share it: a fork bomb in one can make forks fail in another until its deadline;
  `max_processes` is per call. Without root the guest already runs as the caller, so bwrap uses its
  user namespace and no drop is needed.
- The whole process tree dies at the deadline: the guest lives in its own PID namespace, and killing that
  namespace's init (the child of the bwrap/unshare process) makes the kernel kill and reap every process
  in it, including ones that called setsid(). The bwrap/unshare process exits only after that teardown,
  so a call returns with nothing left running. A normal exit tears the namespace down the same way,
  because the init is a two-word `sh` that exits with the guest (bwrap runs it `--as-pid-1`): bwrap's own
  init outlives the guest while any descendant lives, and bwrap reports the exit before it is gone.
  `setpriv --pdeathsig KILL` and bwrap's `--die-with-parent` (unshare's `--kill-child`) take the sandbox
  down with the evaluator if the evaluator itself is killed.
- Output is read as it arrives, non-blocking, with a deadline; each stream keeps at most `output_limit`
  bytes (1 MiB by default) and the sandbox is killed once one overflows (status `output_limit`,
  `truncated`), so memory stays bounded whatever the guest prints. The call never waits for pipes after
  the guest has exited, so a descendant holding them open (possible only in `plain`) cannot hang it.
- Backends are probed once per process by running a trivial program, so a bwrap that the kernel or a
  container forbids is found before real work and `auto` falls back with the reason.
- The guest interpreter is the base interpreter (`sys._base_executable`), not the virtual environment,
  whose packages live under the project directory that the sandbox hides: the guest gets the standard
  library only.
- The `plain` backend does not drop privileges or fence files or the network; it still runs in a fresh
  temporary directory with the limits, and kills its process group at the deadline (a descendant that
  starts a new session escapes that: one more reason it warns).
"""
from __future__ import annotations

import json
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from .errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("bwrap", "unshare", "plain")
ISOLATING = ("bwrap", "unshare")
SANDBOX_UID = SANDBOX_GID = 65534          # "nobody"
OUTPUT_LIMIT = 1 << 20                     # bytes kept per stream
_FILE_LIMIT = 16 << 20                     # RLIMIT_FSIZE
_DISK_LIMIT = 64 << 20                     # size of the private /tmp tmpfs
_OPEN_FILES = 64
_GRACE = 10.0                              # seconds to wait for a killed sandbox to be reaped
_INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)"

# Runs in the sandbox, as the guest user, before the guest: argv = workdir, then NAME=soft:hard limits.
_TRAMPOLINE = r'''
import os, resource, sys
os.chdir(sys.argv[1])
src = sys.stdin.buffer.read()
with open("main.py", "wb") as f:
    f.write(src)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
for item in sys.argv[2:]:
    name, _, value = item.partition("=")
    res = getattr(resource, "RLIMIT_" + name, None)
    if res is None:
        continue
    soft, hard = (int(v) for v in value.split(":"))
    old_hard = resource.getrlimit(res)[1]
    if old_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, old_hard), min(hard, old_hard)
    resource.setrlimit(res, (soft, hard))
os.execv(sys.executable, [sys.executable, "-I", "main.py"])
'''

# Runs as root in the new mount/PID namespace of the unshare backend: builds a read-only root on a tmpfs
# over this namespace's /tmp and enters it, with _REAPER as init. argv: _REAPER, the size of the guest's
# /tmp, then bind:PATH / link:PATH:TARGET items, "--", and the command.
_UNSHARE_SETUP = r'''
set -eu
umask 022
reaper=$1; shift
guest_path=$PATH
PATH=/usr/sbin:/usr/bin:/sbin:/bin
size=$1; shift
r=/tmp
mount -t tmpfs -o mode=0755,size=8m,nosuid,nodev sandbox-root "$r"
while [ "$1" != -- ]; do
  case $1 in
    bind:*) p=${1#bind:}; mkdir -p "$r$p"; mount --bind "$p" "$r$p"
            mount -o remount,bind,ro,nosuid,nodev "$r$p" ;;
    link:*) spec=${1#link:}; ln -s "${spec#*:}" "$r${spec%%:*}" ;;
  esac
  shift
done
shift
mkdir -p "$r/proc" "$r/dev" "$r/tmp"
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
for d in null zero full random urandom; do
  touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"
done
mount -t tmpfs -o "mode=1777,size=$size,nosuid,nodev" sandbox-tmp "$r/tmp"
cd "$r"
chroot=$(command -v chroot)
PATH=$guest_path
exec "$chroot" . /bin/sh -c "$reaper" sh "$@"
'''

# The PID namespace's init in both isolating backends: runs the guest as its child, reaps orphans, and
# exits with the guest's status, which tears the namespace down before bwrap/unshare can report it.
_REAPER = '"$@"; exit $?'


class SandboxUnavailable(UserError):
    """The requested isolation cannot be provided on this machine; the message says what to install."""


@dataclass(frozen=True)
class SandboxResult:
    status: str              # ok | failed | timeout | output_limit | error
    returncode: int | None   # exit status (signal N: 128+N, or -N in plain); None if stopped or not started
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False  # a stream reached output_limit and was cut
    backend: str = ""
    detail: str = ""         # one line: the last stderr line, or why the run stopped

    @property
    def passed(self) -> bool:
        """The program exited 0 within every limit."""
        return self.status == "ok"


# ------------------------------------------------------------------------------------- backend choice

_lock = threading.Lock()
_problems: dict[str, str | None] = {}
_warned = False


def _is_root() -> bool:
    return os.geteuid() == 0


def _tool(name: str) -> str | None:
    return shutil.which(name)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def backend_problem(name: str) -> str | None:
    """None when backend `name` works on this machine, else why not (naming what to install)."""
    if name not in BACKENDS:
        raise SandboxUnavailable(f"unknown sandbox backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    with _lock:
        if name not in _problems:
            _problems[name] = _check(name)
        return _problems[name]


def _check(name: str) -> str | None:
    if name == "plain":
        return None
    if name == "bwrap":
        if not _tool("bwrap"):
            return f"bubblewrap (bwrap) is not installed; {_INSTALL_HINT}"
        if _is_root() and not _tool("setpriv"):
            return "setpriv (util-linux) is needed to drop root inside bubblewrap; install util-linux"
    if name == "unshare":
        if not _is_root():
            return f"the unshare backend needs root; {_INSTALL_HINT}"
        missing = [t for t in ("unshare", "setpriv", "mount", "chroot", "sh") if not _tool(t)]
        if missing:
            return f"{', '.join(missing)} not found; install util-linux, mount and coreutils"
    probe = _execute(name, "print('ok')", timeout=60.0, memory_mb=512, output_limit=4096, max_processes=16)
    if probe.status == "ok" and probe.stdout.strip() == "ok":
        return None
    why = (probe.stderr.strip().splitlines() or [probe.detail or probe.status])[-1][:300]
    return f"{name} does not work here ({why}); {_INSTALL_HINT} and allow namespaces"


def _choose(backend: str | None, strict: bool | None) -> str:
    global _warned
    name = (backend or os.environ.get("ALIGNCHAT_SANDBOX") or "auto").strip().lower()
    strict = _env_flag("ALIGNCHAT_SANDBOX_STRICT") if strict is None else strict
    if name == "auto":
        reasons = []
        for candidate in ISOLATING:
            problem = backend_problem(candidate)
            if problem is None:
                return candidate
            reasons.append(problem)
        name, reason = "plain", "; ".join(reasons)
    else:
        problem = backend_problem(name)
        if problem is not None:
            raise SandboxUnavailable(f"sandbox backend {name!r} is unavailable: {problem}")
        reason = "the plain backend was selected"
    if name == "plain":
        if strict:
            raise SandboxUnavailable(f"strict sandbox mode refuses to run untrusted code without isolation: "
                                     f"{reason}")
        with _lock:
            first, _warned = not _warned, True
        if first:
            log.warning("sandbox isolation is reduced: untrusted code runs as a plain child process with "
                        "resource limits only (same user, no filesystem, network or process-tree fence) "
                        "because %s. To isolate it, %s; set ALIGNCHAT_SANDBOX_STRICT=1 to refuse instead.",
                        reason, _INSTALL_HINT)
    return name


# ---------------------------------------------------------------------------------------- command lines

def _interpreter() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _root_layout() -> tuple[list[tuple[str, str]], list[str]]:
    """(symlinks as (path, target), read-only bind paths) that make up the sandbox's root."""
    links, binds = [], ["/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            links.append((d, os.readlink(d)))
        elif os.path.isdir(d):
            binds.append(d)
    interp = _interpreter()
    extra = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    if not any(interp.startswith(p.rstrip("/") + "/") for p in extra):
        extra.add(os.path.dirname(interp))
    for p in sorted(extra):
        if not any(p == b or p.startswith(b + "/") for b in binds) and os.path.isdir(p):
            binds.append(p)
    return links, binds


def _limits(timeout: float, memory_mb: int, max_processes: int) -> list[str]:
    cpu = max(1, math.ceil(timeout)) + 1
    mem = memory_mb << 20
    return [f"CPU={cpu}:{cpu + 1}", f"AS={mem}:{mem}", f"FSIZE={_FILE_LIMIT}:{_FILE_LIMIT}",
            f"NOFILE={_OPEN_FILES}:{_OPEN_FILES}", f"NPROC={max_processes}:{max_processes}", "CORE=0:0"]


def _drop_privileges() -> list[str]:
    if not _is_root():
        return []
    return [_tool("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_GID}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def _outer() -> list[str]:
    setpriv = _tool("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def _command(backend: str, workdir: str, limits: list[str]) -> tuple[list[str], dict[str, str]]:
    guest = [_interpreter(), "-I", "-S", "-c", _TRAMPOLINE, workdir, *limits]
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    if backend == "plain":
        return guest, env
    links, binds = _root_layout()
    if backend == "bwrap":
        argv = [*_outer(), _tool("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--clearenv"]
        if _is_root():
            argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        else:
            argv += ["--unshare-all"]
        for k, v in env.items():
            argv += ["--setenv", k, v]
        made = {"/"}
        for path in binds:
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                parent = "/" + "/".join(parts[:i])
                if parent not in made:
                    argv += ["--dir", parent]
                    made.add(parent)
            argv += ["--ro-bind", path, path]
        for path, target in links:
            argv += ["--symlink", target, path]
        argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(_DISK_LIMIT),
                 "--tmpfs", workdir, "--chdir", workdir]
        return [*argv, "--as-pid-1", "/bin/sh", "-c", _REAPER, "sh", *_drop_privileges(), *guest], env
    specs = [f"bind:{p}" for p in binds] + [f"link:{p}:{t}" for p, t in links]
    argv = [*_outer(), _tool("unshare") or "unshare", "--fork", "--kill-child", "--pid", "--net", "--mount",
            "--ipc", "--uts", "--propagation", "private", "--", _tool("sh") or "/bin/sh", "-c", _UNSHARE_SETUP,
            "sh", _REAPER, str(_DISK_LIMIT), *specs, "--", *_drop_privileges(), *guest]
    return argv, env


# -------------------------------------------------------------------------------------------- running

def run_python(program: str, *, timeout: float = 10.0, memory_mb: int = 1024, output_limit: int = OUTPUT_LIMIT,
               max_processes: int = 64, backend: str | None = None, strict: bool | None = None) -> SandboxResult:
    """Run `program` (Python source) in the sandbox and return its status and capped output.

    `timeout` is wall-clock seconds for the whole run (CPU seconds are capped just above it); `memory_mb`
    caps the address space; `output_limit` bytes are kept per stream. `backend` (default
    $ALIGNCHAT_SANDBOX or auto) and `strict` (default $ALIGNCHAT_SANDBOX_STRICT) are described in the
    module docstring; an unavailable explicit backend, or strict mode without isolation, raises
    `SandboxUnavailable`.
    """
    name = _choose(backend, strict)
    return _execute(name, program, timeout=timeout, memory_mb=memory_mb, output_limit=output_limit,
                    max_processes=max_processes)


def _execute(backend: str, program: str, *, timeout: float, memory_mb: int, output_limit: int,
             max_processes: int) -> SandboxResult:
    host_dir = tempfile.mkdtemp(prefix="alignchat-sandbox-") if backend == "plain" else None
    try:
        argv, env = _command(backend, host_dir or "/tmp", _limits(timeout, memory_mb, max_processes))
        return _supervise(backend, argv, env, program.encode("utf-8", "surrogatepass"), timeout, output_limit)
    finally:
        if host_dir:
            shutil.rmtree(host_dir, ignore_errors=True)


def _supervise(backend: str, argv: list[str], env: dict[str, str], program: bytes, timeout: float,
               output_limit: int) -> SandboxResult:
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd="/", start_new_session=True, close_fds=True)
    except OSError as e:
        return SandboxResult("error", None, backend=backend, detail=f"could not start the sandbox: {e}")
    bufs = {"stdout": bytearray(), "stderr": bytearray()}
    stopped = None
    try:
        stopped = _pump(proc, program, deadline, output_limit, bufs)
    finally:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        if stopped is None and _has_exited(proc.pid):
            _killpg(proc.pid)  # stragglers of the plain backend; the unreaped leader keeps the group id ours
            proc.wait()
        else:
            _stop(proc, namespace=backend != "plain")
    out, err = (bufs[k].decode("utf-8", "replace") for k in ("stdout", "stderr"))
    rc = None if stopped else proc.returncode
    if stopped == "timeout":
        return SandboxResult("timeout", rc, out, err, False, backend, f"exceeded the {timeout:g}s time limit")
    if stopped:
        return SandboxResult("output_limit", rc, out, err, True, backend,
                             f"{stopped} exceeded {output_limit} bytes; the program was stopped")
    if rc == 0:
        return SandboxResult("ok", 0, out, err, False, backend)
    if rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return SandboxResult("timeout", rc, out, err, False, backend, "CPU time limit")
    tail = err.strip().splitlines()[-1:] or [f"exit status {rc}"]
    return SandboxResult("failed", rc, out, err, False, backend, tail[0][:300])


def _pump(proc: subprocess.Popen, program: bytes, deadline: float, limit: int, bufs: dict) -> str | None:
    """Feed stdin and collect output until the sandbox exits; returns why it must be stopped, or None."""
    sel = selectors.DefaultSelector()
    try:
        for f, tag in ((proc.stdout, "stdout"), (proc.stderr, "stderr"), (proc.stdin, "stdin")):
            os.set_blocking(f.fileno(), False)
            sel.register(f, selectors.EVENT_WRITE if tag == "stdin" else selectors.EVENT_READ, tag)
        pidfd = None
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ, "exit")
        except (AttributeError, OSError):
            pass
        view, sent, exited = memoryview(program), 0, False
        while True:
            if exited and not any(k.data in bufs for k in sel.get_map().values()):
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            events = sel.select(0 if exited else remaining if pidfd is not None else min(remaining, 0.05))
            if exited and not events:
                return None          # what still holds the pipes outlived the sandbox (plain backend)
            for key, _ in events:
                if key.data == "exit":
                    exited = True
                    sel.unregister(key.fileobj)
                elif key.data == "stdin":
                    try:
                        sent += os.write(key.fd, view[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:
                        sent = len(view)  # the sandbox closed stdin; its exit status will say why
                    if sent >= len(view):
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                else:
                    try:
                        data = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(key.fileobj)
                        continue
                    buf = bufs[key.data]
                    room = limit - len(buf)
                    buf += data[:room]
                    if len(data) > room:
                        return key.data
            if pidfd is None and not exited:
                exited = _has_exited(proc.pid)
    finally:
        sel.close()
        if pidfd is not None:
            os.close(pidfd)


def _has_exited(pid: int) -> bool:
    """Whether `pid` has exited, without reaping it (so its process group id stays valid)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _children(pid: int) -> list[int]:
    kids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return kids
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(name))
    return kids


def _stop(proc: subprocess.Popen, namespace: bool) -> None:
    """Kill the sandbox's whole process tree and reap it.

    In a PID namespace, killing its init (the child of bwrap/unshare) kills everything inside; the
    bwrap/unshare process exits once the kernel has reaped them all, so waiting for it waits for that.
    """
    if namespace:
        kids = _children(proc.pid)
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except OSError:
                pass
        if kids:
            try:
                proc.wait(timeout=_GRACE)
                return
            except subprocess.TimeoutExpired:
                pass
    _killpg(proc.pid)
    try:
        proc.wait(timeout=_GRACE)
    except subprocess.TimeoutExpired:
        log.warning("sandbox process %d did not exit after SIGKILL", proc.pid)


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


# ------------------------------------------------------------------------------ HumanEval harness helpers

def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval's harness runs: prompt + completion, the test suite, then check(entry)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def truncate_completion(text: str) -> str:
    """Keep the function body: stop at the first top-level statement after it (HumanEval's stop words)."""
    stops = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert "]
    cut = min([i for i in (text.find(s) for s in stops) if i >= 0], default=len(text))
    return text[:cut]


if __name__ == "__main__":  # python -m alignchat.sandbox FILE.py: run a file in the sandbox by hand
    logging.basicConfig()
    with open(sys.argv[1], encoding="utf-8") as fh:
        res = run_python(fh.read())
    print(json.dumps({**res.__dict__, "passed": res.passed}))
