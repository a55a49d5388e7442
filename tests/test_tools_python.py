"""The python tool: code runs in the sandbox, and every way it can go wrong is a clear tool error text."""
from __future__ import annotations

import pytest

from alignchat.tools import ToolContext, run_tool

# a generous deadline for programs that finish (a busy machine starts interpreters slowly), a short one
# for programs that never do
LIMITS = ToolContext(python_timeout=60.0, python_memory_mb=256, python_output_limit=64 * 1024)
SHORT = ToolContext(python_timeout=2.0, python_memory_mb=256, python_output_limit=64 * 1024)


def py(code: str, context: ToolContext = LIMITS):
    return run_tool("python", {"code": code}, context)


def test_prints_come_back_as_the_result():
    res = py("print(sum(range(10)))\nprint('你好')")
    assert (res.text, res.error) == ("45\n你好\n", False)


def test_a_program_that_loops_forever_is_a_timeout_error():
    res = py("while True:\n    pass", SHORT)
    assert res.error and res.text == "error: timed out after 2 s"


def test_printing_10_mb_is_stopped_at_the_output_cap():
    res = py("import sys\nsys.stdout.write('x' * (10 * 1024 * 1024))")
    assert res.error and res.text == "error: printed more than 64 KiB; stopped"


def test_a_fork_bomb_ends_with_an_error_and_nothing_left_running():
    res = py("import os\nwhile True:\n    os.fork()", SHORT)
    assert res.error and (res.text.startswith("error: timed out") or res.text.startswith("error: exited"))


def test_there_is_no_network():
    res = py("import socket\ns = socket.create_connection(('1.1.1.1', 80), timeout=1)\nprint('connected')")
    assert res.error and "connected" not in res.text
    assert res.text.startswith("error: exited with status 1") and "Error" in res.text


def test_an_exception_gives_its_traceback_tail():
    res = py("raise ValueError('bad value')")
    assert res.error and res.text.endswith("ValueError: bad value")


@pytest.mark.parametrize("args", [{}, {"code": ""}, {"code": 3}, {"code": "x" * 20_001}])
def test_bad_arguments_are_tool_errors(args):
    res = run_tool("python", args, LIMITS)
    assert res.error and res.text.startswith("error: ")
