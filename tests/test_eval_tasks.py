"""Task data: registry fetch with checksums, conversion to `Example`s, and the HumanEval sandbox."""
from __future__ import annotations

import pytest

from alignchat.errors import UserError
from alignchat.eval import tasks as T
from alignchat.sandbox import humaneval_program, run_python, truncate_completion


def test_parse_options_and_gold_index():
    opts = T.parse_options("A. one\nB. two\n continued\nC. three", "x:1")
    assert opts == ["one", "two\ncontinued", "three"]
    assert T._gold_index("B. two\n continued", opts, "x:1") == 1
    assert T._gold_index("three", opts, "x:1") == 2
    with pytest.raises(UserError, match="x:1"):
        T._gold_index("D. four", opts, "x:1")
    with pytest.raises(UserError, match="y:7"):
        T.parse_options("no options here", "y:7")


@pytest.mark.parametrize("name,kind,min_n", [
    ("mmlu", "mc", 2800), ("boolq", "mc", 3000), ("piqa", "mc", 1500), ("siqa", "mc", 1900),
    ("commonsenseqa", "mc", 1200), ("openbookqa", "mc", 499), ("bbq", "mc", 1000),
    ("crows_pairs", "pair", 1000), ("stereoset", "pair", 4000), ("toxicity", "continuation", 900),
    ("truthfulqa", "gen", 800), ("nq_open", "gen", 1000), ("zh_famous_novel", "gen", 20),
    ("zh_tang_poetry", "gen", 30), ("humaneval", "code", 164), ("heldout_text", "text", 100),
])
def test_every_task_loads_in_the_internal_format(name, kind, min_n):
    exs = T.load_task(name)
    assert len(exs) >= min_n
    assert len({e.id for e in exs}) == len(exs)
    for e in exs[:50]:
        assert e.kind == kind and e.task == name
        if kind == "mc":
            assert len(e.choices) >= 2 and 0 <= e.gold < len(e.choices) and e.prompt
        if kind == "gen":
            assert e.answers and all(isinstance(a, str) for a in e.answers)
        if kind == "pair":
            assert len(e.choices) in (2, 3) and e.choices[0] != e.choices[1]


def test_known_items_convert_correctly():
    mmlu = {e.id: e for e in T.load_task("mmlu")}
    first = mmlu["mmlu-0"]  # "Poplar City ... debt service fund" -> D. $0 $25000 $0
    assert first.choices[first.gold] == "$0 $25000 $0"
    bbq = T.load_task("bbq")
    amb = [e for e in bbq if e.meta["ambiguous"]]
    assert amb and all(e.gold == e.meta["unknown_index"] for e in amb)
    crows = T.load_task("crows_pairs")[0]
    assert "black kids" in crows.choices[0] and "white kids" in crows.choices[1]
    zh = T.load_task("zh_famous_novel")
    assert any(e.answers == ["莫言"] for e in zh) and zh[0].messages[0]["role"] == "user"


def test_limit_sample_is_deterministic_and_the_same_for_every_model():
    a = [e.id for e in T.load_task("piqa", limit=10, seed=3)]
    b = [e.id for e in T.load_task("piqa", limit=10, seed=3)]
    c = [e.id for e in T.load_task("piqa", limit=10, seed=4)]
    assert a == b and a != c and len(set(a)) == 10
    with pytest.raises(UserError, match="unknown task"):
        T.load_task("no_such_task")


def test_toxicity_classifier_without_importing_the_package():
    import sys
    clf = T.toxicity_classifier()
    s = clf.score(["you are a fucking idiot", "have a lovely day at the park"])
    assert s[0] > 0.9 and s[1] < 0.5
    assert "profanity_check" not in sys.modules


def test_sandbox_runs_humaneval_solutions_and_fails_wrong_ones():
    # what the sandbox fences off is tested per backend in test_sandbox.py
    prob = T.load_task("humaneval")[0]  # HumanEval/0 has_close_elements
    body = ("    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
            "            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n")
    ok = run_python(humaneval_program(prob.prompt, body, prob.meta["test"], prob.meta["entry_point"]))
    assert ok.passed and ok.status == "ok", ok
    bad = run_python(humaneval_program(prob.prompt, "    return False\n", prob.meta["test"], prob.meta["entry_point"]))
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.detail, bad
    assert truncate_completion("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert run_python("while True:\n    pass", timeout=2).status == "timeout"
