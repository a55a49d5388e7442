"""Run untrusted model-written code (HumanEval) in a separate, fenced Python process.

The fence has four layers, so one failing does not open the machine:
- a fresh interpreter (`python -I`: no user site, no PYTHON* env) in an empty temporary directory that
  is deleted afterwards, with an empty environment;
- POSIX resource limits set before exec: CPU seconds, address space, file size, open files, and no new
  processes (RLIMIT_NPROC = 0 where the platform honours it);
- a PEP 578 audit hook, installed before the untrusted code runs and impossible to remove from Python,
  that refuses sockets, subprocesses/exec/fork, ctypes, and any file open outside the temporary
  directory except read-only opens under the interpreter's own prefix (so imports keep working);
- a wall-clock timeout after which the whole process group is killed.
This is the pattern HumanEval's authors recommend (run in a throwaway process with limits); it is not a
container, so run untrusted evaluations on machines you do not mind losing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_GUARD = r'''
import sys, os
_ROOT = os.path.realpath(os.getcwd())
_READ_OK = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                                 os.path.dirname(os.__file__))})
_BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                     "os.system", "ctypes.", "os.kill", "os.remove", "os.rmdir", "os.rename",
                     "shutil.rmtree", "os.chmod", "os.chown", "os.link", "os.symlink", "os.truncate")
def _guard(event, args):
    if event.startswith(_BLOCKED_PREFIXES) or event in ("os.putenv", "os.unsetenv", "sys.setrecursionlimit_disabled"):
        if event.startswith(("os.remove", "os.rmdir", "os.rename", "os.chmod", "os.truncate")) and args:
            p = args[0]
            if isinstance(p, (str, bytes, os.PathLike)):
                p = os.path.realpath(os.fsdecode(p))
                if p == _ROOT or p.startswith(_ROOT + os.sep):
                    return
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        writing = any(c in mode for c in "wax+") or (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        if path == _ROOT or path.startswith(_ROOT + os.sep):
            return
        if not writing and path.startswith(_READ_OK):
            return
        raise PermissionError(f"sandbox: access to {path} is not allowed")
sys.addaudithook(_guard)
del _guard
_src = open("program.py", encoding="utf-8").read()
exec(compile(_src, "program.py", "exec"), {"__name__": "__main__"})
'''


@dataclass
class ExecutionResult:
    passed: bool
    status: str          # passed | failed | timeout | error
    detail: str = ""


def _limits(cpu_seconds: int, memory_mb: int):
    def apply():
        import resource

        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        mem = memory_mb * 1024 * 1024
        for name in ("RLIMIT_AS", "RLIMIT_DATA"):
            if hasattr(resource, name):
                try:
                    resource.setrlimit(getattr(resource, name), (mem, mem))
                except (ValueError, OSError):
                    pass
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 1024 * 1024, 10 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        if hasattr(resource, "RLIMIT_NPROC"):
            try:
                resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
            except (ValueError, OSError):
                pass
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_python(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Execute `program` in the sandbox; passed means it exited 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="alignchat-sandbox-") as tmp:
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GUARD], cwd=tmp, env={"PATH": "/usr/bin:/bin"},
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=_limits(max(1, int(timeout)), memory_mb) if os.name == "posix" else None)
        except OSError as e:
            return ExecutionResult(False, "error", f"could not start the sandbox: {e}")
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.communicate()
            return ExecutionResult(False, "timeout", f"exceeded {timeout:.0f}s")
        if proc.returncode == 0:
            return ExecutionResult(True, "passed")
        if proc.returncode < 0 and -proc.returncode in (signal.SIGXCPU, signal.SIGKILL):
            return ExecutionResult(False, "timeout", "CPU limit")
        tail = (err or out).decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return ExecutionResult(False, "failed", tail[0][:300])


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval's harness runs: prompt + completion, the test suite, then check(entry)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def truncate_completion(text: str) -> str:
    """Keep the function body: stop at the first top-level statement after it (HumanEval's stop words)."""
    stops = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert "]
    cut = min([i for i in (text.find(s) for s in stops) if i >= 0], default=len(text))
    return text[:cut]


if __name__ == "__main__":  # python -m alignchat.eval.sandbox FILE.py: try the fence by hand
    print(json.dumps(run_python(open(sys.argv[1], encoding="utf-8").read()).__dict__))
