"""Chinese instruction data for the bilingual SFT: People's Daily reading comprehension, poem completion and
the evals tasks' train parts render valid SFT records through the builder's CLI, held-out tasks stay out
of train.jsonl, and nothing the Chinese evaluation family scores is trained on."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alignchat.data.chinese_sources import (CULTURE, EVAL_ONLY, NUMERALS_TO_ARABIC, PARABLE, SPLIT_CHARACTERS,
                                            chinese_tasks, evals_split, parse_tagged_line, read_evals)
from alignchat.data.instructions import DEFAULT_HELDOUT_TASKS, FORMATS
from alignchat.eval import tasks as T

REPO = Path(__file__).resolve().parents[1]
TASKS = {"zh_pd_reading", "zh_poetry_next_line", "zh_poetry_prev_line", "zh_evals_parable",
         "zh_evals_split_characters", "zh_evals_numerals"}
HAN5 = re.compile(r"[\u4e00-\u9fff]{5,}")


def read(path):
    return [json.loads(line) for line in Path(path).open(encoding="utf-8")]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("zh") / "instr"
    cmd = [sys.executable, "-m", "alignchat.cli", "data", "instructions", "--out", str(out), "--sources", "chinese",
           "--max-items-per-task", "60", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    return read(out / "train.jsonl"), read(out / "heldout.jsonl"), json.loads((out / "manifest.json").read_text())


def test_chinese_sources_render_valid_sft_records(built):
    train, held, manifest = built
    assert {r["task"] for r in train + held} == TASKS
    assert len({r["id"] for r in train + held}) == len(train) + len(held)
    for rec in train + held:
        assert set(rec) == {"id", "messages", "source", "task", "format", "meta"} and rec["format"] in FORMATS
        roles = [m["role"] for m in rec["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in rec["messages"])
        assert rec["meta"]["lang"] == "zh" and rec["meta"]["answer"]
        assert rec["meta"]["answer"] in rec["messages"][-1]["content"]  # the gold short answer is what is said
    assert manifest["lang"] == {"zh": len(train) + len(held)}


def test_held_out_tasks_never_appear_in_train(built):
    train, held, manifest = built
    assert "zh_evals_numerals" in DEFAULT_HELDOUT_TASKS
    assert {r["task"] for r in held} == {"zh_evals_numerals"} and len(held) == 60
    assert all(r["meta"]["split"] == "train" for r in train) and all(r["meta"]["split"] == "heldout" for r in held)
    assert not {r["task"] for r in train} & set(manifest["heldout_tasks"])


def test_nothing_the_chinese_eval_family_scores_is_trained_on(built):
    train, held, _ = built
    text = "\n".join(m["content"] for r in train + held for m in r["messages"])
    stories = [e.prompt.removesuffix("\n这个故事想表达的寓意是什么？") for e in T.load_task("zh_parable_moral")]
    assert stories and not any(s[:60] in text for s in stories)
    split_eval = {e.prompt for e in T.load_task("zh_split_characters")}
    split_train = {r["meta"]["answer"].split("=")[0] for r in train if r["task"] == "zh_evals_split_characters"}
    assert split_train and not split_train & split_eval
    numbers = {e.answers[0] for e in T.load_task("zh_numerals")}
    assert not any(n in text for n in numbers)
    quoted = {run for m in CULTURE for row in read_evals(m) for x in row["input"] for run in HAN5.findall(x["content"])}
    poems = [r for r in train if r["task"].startswith("zh_poetry")]
    assert poems and not any(run in r["messages"][1]["content"] or run in r["messages"][2]["content"]
                             for r in poems for run in quoted)
    assert not any("床前明月光" in r["messages"][1]["content"] for r in train)  # a fluency prompt's poem


def test_the_one_split_of_the_evals_files():
    for member in (PARABLE, SPLIT_CHARACTERS):
        sides = [evals_split(member, row) for row in read_evals(member)]
        assert 0.4 < sides.count("train") / len(sides) < 0.6  # halved by the builder hash
    for member in sorted(EVAL_ONLY):
        assert {evals_split(member, row) for row in read_evals(member)} == {"eval"}
    assert set(NUMERALS_TO_ARABIC) <= EVAL_ONLY


def test_peoples_daily_tags_and_reading_answers():
    text, found = parse_tagged_line("１２月/t  ３１日/t  ，/w  中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr  "
                                    "发表/v  [中央/n  人民/n  广播/vn  电台/n]nt  和/c  中国/ns  ，/w  邓/nr  小平/nr  同志/n")
    assert text == "１２月３１日，中共中央总书记、国家主席江泽民发表中央人民广播电台和中国，邓小平同志"
    assert found == {"nr": ["江泽民", "邓小平"], "ns": ["中国"], "nt": ["中共中央", "中央人民广播电台"]}
    tasks = {t.name: t for t in chinese_tasks(40, 0)}
    for item in tasks["zh_pd_reading"].items:  # every listed entity is in the passage, in that order
        names, passage, pos = item.gold.split("、"), item.fields["passage"], -1
        for name in names:
            assert passage.find(name, pos + 1) > pos
            pos = passage.find(name, pos + 1)
    for name in ("zh_poetry_next_line", "zh_poetry_prev_line"):
        for item in tasks[name].items:
            a, b = item.fields["first"], item.fields["second"]
            assert len(a) == len(b) in (5, 7) and item.gold == (b if name.endswith("next_line") else a)
    again = {t.name: [i.fields for i in t.items] for t in chinese_tasks(40, 0)}
    assert again == {n: [i.fields for i in t.items] for n, t in tasks.items()}  # deterministic for a seed
