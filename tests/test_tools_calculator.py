"""The calculator tool: exact results on parsed arithmetic, and clear, fast errors on hostile input."""
from __future__ import annotations

import time

import pytest

from alignchat.tools import ToolError, run_tool
from alignchat.tools.calculator import evaluate


@pytest.mark.parametrize("expr, want", [
    ("37×43", "1591"), ("37*43", "1591"), ("３７＊４３", "1591"), ("（1＋2）×3", "9"), ("12÷4", "3"),
    ("2^10", "1024"), ("2**100", "1267650600228229401496703205376"), ("0.1+0.2", "0.3"), ("1.5e3", "1500"),
    ("7//2", "3"), ("-7 % 3", "2"), ("-(2-5)", "3"), ("10**-3", "0.001"), ("3/4", "0.75"), ("4**0.5", "2"),
    ("(8/27)**(2/3)", "0.444444444444… (4/9)"), ("1/3", "0.333333333333… (1/3)"), ("37 × 43 =", "1591"),
    ("123456789123456789*987654321987654321", "121932631356500531347203169112635269"),
    ("2 − 5", "-3"), ("(" * 150 + "2" + ")" * 150, "2"), ("-" * 100 + "1", "1"),
])
def test_results_are_exact(expr, want):
    assert evaluate(expr) == want


@pytest.mark.parametrize("expr, says", [
    ("9**9**9", "too large"),
    ("10**100000", "too large"),
    ("(2**9999)*(2**9999)", "too large"),
    ("1e999999", "exponent"),
    ("9" * 1001, "longer than"),
    ("(" * 250 + "1" + ")" * 250, "cannot parse"),   # Python's parser refuses the nesting
    ("+".join(["1"] * 300), "too long"),
    ("1/0", "division by zero"), ("5 % 0", "division by zero"), ("0**-1", "division by zero"),
    ("2**0.5", "irrational"), ("(-8)**(1/3)", "not a real number"),
    ("__import__('os').system('id')", "not arithmetic"), ("x+1", "not arithmetic"),
    ("[1]*10**9", "not arithmetic"), ("'a'*10", "only real numbers"), ("1j*1j", "only real numbers"),
    ("1 < 2", "not arithmetic"), ("1,000", "not arithmetic"), ("", "empty"), ("2 +", "cannot parse"),
    ("True+1", "only real numbers"),
])
def test_hostile_or_bad_input_is_a_clear_tool_error(expr, says):
    with pytest.raises(ToolError) as e:
        evaluate(expr)
    assert says in str(e.value)


def test_the_hostile_cases_fail_fast_together():
    # each case alone is instant; all of them together still finish long before anything would hang
    start = time.process_time()
    for expr in ["9**9**9", "2**2**2**2**2**2", "(10**1000)**(10**1000)", "99999**99999", "7**-99999"]:
        with pytest.raises(ToolError):
            evaluate(expr)
    assert time.process_time() - start < 5  # CPU seconds of this process: not a wall-clock race


def test_run_tool_turns_errors_into_error_results_and_checks_arguments():
    ok = run_tool("calculator", '{"expression": "6*7"}')
    assert (ok.text, ok.error) == ("42", False)
    bad = run_tool("calculator", '{"expression": "9**9**9"}')
    assert bad.error and bad.text.startswith("error: the result is too large")
    assert run_tool("calculator", "{not json").text == "error: the arguments are not valid JSON"
    assert run_tool("calculator", "{}").error
    off = run_tool("calculator", '{"expression": "1"}', enabled={"python"})
    assert off.error and "not available" in off.text
