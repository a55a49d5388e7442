"""The Chinese evaluation family: every task loads from the artifact store with valid answer keys, the
family runs end to end on the tiny checkpoint into the report card, and the fluency check is right on
hand-made replies."""
from __future__ import annotations

import json
import re

import pytest

from alignchat.client import make_client
from alignchat.eval import chinese as C
from alignchat.eval import tasks as T
from alignchat.eval.config import LOCAL_OPTIONS, EvalConfig
from alignchat.eval.report import write_report
from alignchat.eval.runner import run_suite
from alignchat.eval.suites import SECTIONS, SUITES

HAN = re.compile(r"[\u4e00-\u9fff]")
NUMERALS = set("零一二三四五六七八九十百千万亿壹贰叁肆伍陆柒捌玖拾佰仟萬")


@pytest.mark.parametrize("name,kind,min_n", [
    ("zh_parable_moral", "mc", 900), ("zh_numerals", "gen", 320), ("zh_split_characters", "gen", 450),
    ("zh_culture", "gen", 300),
    pytest.param("zh_multiemo", "mc", 8000, marks=pytest.mark.slow),  # the 358 MB BIG-bench sdist
])
def test_each_chinese_task_loads_with_valid_answer_keys(name, kind, min_n):
    exs = T.load_task(name)
    assert len(exs) >= min_n and T.TASKS[name].language == "zh" and name in SUITES["chinese"]
    assert len({e.id for e in exs}) == len(exs)
    for e in exs:
        assert e.kind == kind and e.task == name
        assert HAN.search(e.prompt if kind == "mc" else json.dumps(e.messages, ensure_ascii=False)), e.id
        if kind == "mc":
            assert len(e.choices) >= 4 and len(set(e.choices)) == len(e.choices)
            assert 0 <= e.gold < len(e.choices) and all(HAN.search(c) for c in e.choices)
        else:
            assert e.answers and all(isinstance(a, str) and a.strip() for a in e.answers)
            assert e.messages and e.messages[-1]["role"] == "user"
    if kind == "mc":  # every answer position occurs as the gold one: the key is not constant
        assert len({e.gold for e in exs}) == len(exs[0].choices)


def test_known_items_and_answer_formats():
    numerals = T.load_task("zh_numerals")
    for e in numerals:  # Chinese numerals in, Arabic digits out, after the source's own few-shot turns
        assert set(e.prompt) <= NUMERALS and e.answers[0].isdigit()
        assert [m["role"] for m in e.messages[:3]] == ["system", "user", "assistant"]
    split = {e.prompt: e.answers for e in T.load_task("zh_split_characters")}
    assert all(all(a.startswith(ch + "=") for a in answers) for ch, answers in split.items())
    culture = T.load_task("zh_culture")
    assert any(e.answers == ["莫言"] for e in culture)  # 中国名著作者
    riddles = [e for e in culture if e.meta["source"].startswith("Chinese_character_riddles/")]
    assert len(riddles) == 100 and all(re.fullmatch(r"\[.\]", e.answers[0]) for e in riddles)
    assert all("直接给出" in e.messages[0]["content"] for e in riddles)
    parable = T.load_task("zh_parable_moral")
    assert all(len(e.choices) == 5 and e.prompt.endswith("这个故事想表达的寓意是什么？") for e in parable)


def test_fluency_metric_on_hand_made_replies():
    prose = ("长城是中国古代修建的军事防御工程，东起山海关，西至嘉峪关，全长两万多公里。"
             "它见证了两千多年的历史，如今是世界著名的文化遗产。")
    code_mixed = "可以先用 ps aux | grep 进程名 找到进程号，然后执行 kill -9 PID 强制结束它；如果还不行，就重启系统。"
    poem = "床前明月光的下一句是“疑是地上霜”，出自李白的《静夜思》。"
    for reply in (prose, code_mixed, poem):
        assert C.fluency(reply)["fluent"], (reply, C.fluency(reply))
    cases = {
        "The Great Wall is a series of fortifications built across northern China over many centuries.": "not_chinese",
        "美丽的" * 30: "repetitive",
        "我不知道。我不知道。我不知道。我不知道。我不知道。我不知道。": "repetitive",
        "": "empty",
        "   \n ": "empty",
        "好的。": "too_short",
        "你可以这样表达感谢：\n\n1. 父母表达感谢" + "；" * 30: "repetitive",  # a punctuation loop
        "我是一个宝宝，是一个宝宝，是一个宝宝，是一个宝宝，是一个宝宝。": "repetitive",
    }
    for reply, reason in cases.items():
        got = C.fluency(reply)
        assert not got["fluent"] and got["reason"] == reason, (reply, got)
    assert C.fluency(prose)["han_share"] == 1.0 and C.fluency("abc")["han_share"] == 0.0
    # an echo of the prompt is cut off: what follows it decides
    prompt = "你好！今天心情不太好，能陪我聊聊吗？"
    assert C.fluency(prompt + "\n\n" + "👩" * 20, prompt)["reason"] == "not_chinese"
    assert C.fluency(prompt + "\n\n" + prose, prompt)["fluent"]


def test_wilson_interval():
    lo, hi = C.wilson_interval(0, 50)
    assert lo == 0.0 and hi == pytest.approx(0.0714, abs=1e-4)
    lo, hi = C.wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    lo, hi = C.wilson_interval(200, 200)
    assert hi == 1.0 and 0.98 < lo < 1.0


def test_fluency_prompts_are_varied_chinese_requests():
    prompts = C.fluency_prompts()
    assert len(prompts) >= 50 and len(set(prompts)) == len(prompts)
    assert "床前明月光，下一句是什么？" in prompts and "如何在 Linux 上杀死一个卡住的进程？" in prompts
    assert all(C.fluency(p)["han_chars"] >= 5 for p in prompts)  # every prompt is a Chinese request


@pytest.fixture(scope="module")
def backend(tiny_ckpt):
    return make_client(model=str(tiny_ckpt), device="cpu", **LOCAL_OPTIONS)


def test_chinese_family_end_to_end_on_the_tiny_checkpoint_and_report(backend, tmp_path):
    names = ["zh_parable_moral", "zh_numerals", "zh_split_characters", "zh_culture", "@zh_fluency"]
    s = run_suite(backend, EvalConfig(tasks=names, limit=3), tmp_path / "run", progress=False)
    t = s["tasks"]
    for name in names[:4]:
        summ = t[name]["summary"]
        metric = summ.get("accuracy", summ.get("em"))
        assert summ["n"] == 3 and 0.0 <= metric <= 1.0, (name, summ)
        assert t[name]["language"] == "zh"
    flu = t["@zh_fluency"]["summary"]
    assert flu["n"] == 3 and 0.0 <= flu["fluency_rate"] <= 1.0
    lo, hi = flu["fluency_ci95"]
    assert 0.0 <= lo <= flu["fluency_rate"] <= hi <= 1.0
    rec = json.loads((tmp_path / "run" / "tasks" / "zh_fluency.json").read_text(encoding="utf-8"))
    assert len(rec["records"]) == 3 and all("output" in r and "reason" in r for r in rec["records"])
    text = write_report([tmp_path / "run"], tmp_path / "report").read_text(encoding="utf-8")
    section = text[text.index("## Chinese"):]
    for name in names[:4]:
        assert re.search(rf"\| {name} \| [^|]+ \| [0-9.]+ \[[0-9.]+, [0-9.]+\] \(n = 3\) \|", section), name
    assert re.search(r"\| fluency \(@zh_fluency\) \| [^|]+ \| [0-9.]+ \[[0-9.]+, [0-9.]+\] \(n = 3\) \|", section)


@pytest.mark.slow
def test_multiemo_end_to_end_on_the_tiny_checkpoint(backend, tmp_path):
    s = run_suite(backend, EvalConfig(tasks=["zh_multiemo"], limit=4), tmp_path / "run", progress=False)
    summ = s["tasks"]["zh_multiemo"]["summary"]
    assert summ["n"] == 4 and 0.0 <= summ["accuracy"] <= 1.0 and 0.0 <= summ["ece"] <= 1.0


def test_suite_and_section_are_registered():
    assert "@zh_fluency" in SECTIONS and "@zh_fluency" in SUITES["full"]
    assert all(n in T.TASKS or n in SECTIONS for n in SUITES["chinese"])
