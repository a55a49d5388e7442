"""SFT: assistant-only loss, packing without cross-example attention, bad lines, and a tiny run end to end."""
from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from alignchat.data.sft_data import (IGNORE_INDEX, collate, encode_conversation, one_per_row, pack,
                                     read_sft_jsonl)
from alignchat.train.loop import lm_loss

from conftest import make_tiny_model

@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the shared 2-core machine is not oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CONV = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "和德国呢？"},
        {"role": "assistant", "content": "德国的首都是柏林。"}]


def test_loss_is_on_every_assistant_turn_and_nothing_else(tiny_tokenizer):
    tok = tiny_tokenizer
    enc = encode_conversation(tok, CONV, max_len=512)
    ids = enc.input_ids + [None]
    full = tok.render_chat(CONV).ids
    assert enc.input_ids == full[:-1]
    trained = [t for t in enc.targets if t != IGNORE_INDEX]
    text = tok.decode(trained, skip_special=False)
    end = "<|im_end|>"
    assert text == "The capital of France is Paris." + end + "德国的首都是柏林。" + end
    # the positions right after each assistant turn's end (newline, next user turn) carry no loss
    untrained = tok.decode([full[i + 1] for i, t in enumerate(enc.targets) if t == IGNORE_INDEX], skip_special=False)
    assert "What is the capital" in untrained and "和德国呢" in untrained and "helpful assistant" in untrained
    assert len(ids) - 1 == len(enc.targets)


def test_truncation_keeps_the_start_and_drops_conversations_without_targets(tiny_tokenizer):
    first_assistant = tiny_tokenizer.render_chat(CONV).assistant_mask.index(1)
    short = encode_conversation(tiny_tokenizer, CONV, max_len=first_assistant - 1)
    assert short is None  # only system/user tokens fit: nothing to learn
    enc = encode_conversation(tiny_tokenizer, CONV, max_len=first_assistant + 5)
    assert len(enc.input_ids) == first_assistant + 5 and enc.num_targets == 6


def _convs(tok, n: int, seed: int = 0):
    rng = random.Random(seed)
    words = "cat dog sun moon 猫 狗 太阳 月亮 river tree".split()
    out = []
    for i in range(n):
        msgs = [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))},
                {"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(rng.randint(1, 6)))}]
        if i % 3 == 0:
            msgs += [{"role": "user", "content": "more"}, {"role": "assistant", "content": rng.choice(words)}]
        out.append(encode_conversation(tok, msgs, 256, id=str(i)))
    return out


def test_packing_does_not_leak_attention_across_conversations(tiny_tokenizer):
    torch.manual_seed(0)
    model = make_tiny_model(tiny_tokenizer.vocab_size, seed=3)
    convs = _convs(tiny_tokenizer, 7)
    rows = pack(convs, seq_len=200)
    assert any(len(set(r.doc_ids)) >= 3 for r in rows), "several conversations should share a row"
    batch = collate(rows, tiny_tokenizer.pad_id)
    with torch.no_grad():
        packed = model(batch["input_ids"], positions=batch["positions"], attn_mask=batch["attn_mask"])
        alone = {c.id: model(torch.tensor([c.input_ids]))[0] for c in convs}
    # every conversation's logits inside a packed row equal its logits computed alone
    by_id = {c.id: c for c in convs}
    assert sorted(i for r in rows for i in r.conv_ids) == sorted(by_id)
    for b, row in enumerate(rows):
        start = 0
        for conv_id in row.conv_ids:
            conv = by_id[conv_id]
            n = len(conv.input_ids)
            torch.testing.assert_close(packed[b, start:start + n], alone[conv.id], atol=2e-5, rtol=1e-4)
            start += n
    # so the packed loss is exactly the sum of the conversations' own losses
    with torch.no_grad():
        out = lm_loss(model, batch)
        own = sum(F.cross_entropy(alone[c.id], torch.tensor(c.targets), ignore_index=IGNORE_INDEX, reduction="sum")
                  for c in convs)
    assert out.weight == sum(c.num_targets for c in convs)
    assert float(out.loss_sum) == pytest.approx(float(own), rel=1e-5)


def test_padding_mode_matches_unpadded_logits(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer.vocab_size, seed=4)
    convs = _convs(tiny_tokenizer, 4, seed=1)
    batch = collate(one_per_row(convs), tiny_tokenizer.pad_id)
    assert (batch["input_ids"] == tiny_tokenizer.pad_id).any()
    with torch.no_grad():
        padded = model(batch["input_ids"], positions=batch["positions"], attn_mask=batch["attn_mask"])
        for b, c in enumerate(convs):
            alone = model(torch.tensor([c.input_ids]))[0]
            torch.testing.assert_close(padded[b, :len(c.input_ids)], alone, atol=2e-5, rtol=1e-4)
            assert (batch["targets"][b, len(c.input_ids):] == IGNORE_INDEX).all()


def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path):
    good = {"id": "a", "messages": CONV, "source": "test", "task": None, "format": "dialogue", "meta": {}}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": [{"role": "robot", "content": "x"}]}),
             "", json.dumps({"messages": [{"role": "user", "content": "no answer"}]}), json.dumps(good)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    errors, warnings = [], []
    recs = read_sft_jsonl(path, errors, warn=warnings.append)
    assert len(recs) == 2
    assert [e.line for e in errors] == [2, 3, 5]
    assert errors[0].reason.startswith("invalid JSON") and "role 'robot'" in errors[1].reason
    assert "assistant message" in errors[2].reason
    assert all(str(path) in w for w in warnings) and "d.jsonl:3" in warnings[1] and "robot" in warnings[1]


def _task_file(path, n: int, seed: int) -> None:
    """A task a tiny model learns in a few dozen steps: whatever the user says, answer "OK"."""
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog 北京 中国 首都 天气".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            msgs = [{"role": "system", "content": "Reply OK."},
                    {"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(2, 7)))},
                    {"role": "assistant", "content": "OK"}]
            f.write(json.dumps({"id": f"ok-{seed}-{i}", "messages": msgs, "source": "test", "task": "ok",
                                "format": "zero-shot", "meta": {"answer": "OK"}}, ensure_ascii=False) + "\n")


def test_tiny_sft_end_to_end_learns_to_answer_and_end_its_turn(tmp_path, tiny_ckpt, capsys):
    from alignchat.hub import load_model
    from alignchat.cli import main
    from alignchat.engine import Engine, SamplingParams

    _task_file(tmp_path / "train.jsonl", 120, seed=1)
    _task_file(tmp_path / "heldout.jsonl", 12, seed=2)
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write("{this line is broken\n")
    rc = main(["sft", "--model", str(tiny_ckpt), "--data", str(tmp_path / "train.jsonl"),
                   "--eval-data", str(tmp_path / "heldout.jsonl"), "--out", str(tmp_path / "run"),
                   "max_steps=40", "batch_size=4", "seq_len=128", "lr=3e-3", "warmup_steps=4", "eval_every=20",
                   "save_every=20", "progress=false", "eval_max_tokens=8", "val_fraction=0.1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "train.jsonl:121" in err  # the broken line was reported, the rest trained
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0]
    em = {r["phase"]: r for r in records if "phase" in r}
    assert em["before"]["exact_match"] == 0.0 and em["after"]["exact_match"] == 1.0
    assert em["after"]["ended_turn"] == 1.0
    # per-item results of the same held-out items, before and after, for paired comparisons
    items = {phase: [json.loads(line) for line in (tmp_path / "run" / f"exact_match_{phase}.jsonl").open()]
             for phase in ("before", "after")}
    assert [it["id"] for it in items["before"]] == [it["id"] for it in items["after"]]
    assert len(items["after"]) == 12 and all(it["correct"] and it["answer"] == "OK" for it in items["after"])
    assert not any(it["correct"] for it in items["before"])

    model, tok, meta = load_model(tmp_path / "run" / "final")  # what `alignchat chat` loads
    assert meta["stage"] == "sft" and meta["metrics"]["exact_match"] == 1.0
    reply = Engine(model, tok).chat([{"role": "system", "content": "Reply OK."},
                                     {"role": "user", "content": "天气 quick fox"}],
                                    SamplingParams(max_tokens=10, temperature=0))
    assert reply.text == "OK" and reply.finish_reason == "stop"


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(tmp_path, capsys):
    """docs/training.md's CPU recipe at a smaller size: registry corpus → clean → BPE → shards → pretrain →
    builder data → SFT → a model that answers as the assistant and ends its turn."""
    from alignchat.hub import load_model
    from alignchat.cli import main
    from alignchat.engine import Engine, SamplingParams

    def cli(*argv):
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert rc == 0, err[-3000:]
        return out

    cli("data", "fetch", "shakespeare", "peoples-daily", "--out", tmp_path / "corpora", "--limit", "600")
    cli("data", "clean", *sorted((tmp_path / "corpora").glob("*.jsonl")), "--out", tmp_path / "clean.jsonl",
        "--no-progress")
    cli("tokenizer", "train", tmp_path / "clean.jsonl", "--out", tmp_path / "tok", "--vocab-size", "2048",
        "--max-chars", "1000000", "--no-progress")
    cli("tokenize", tmp_path / "clean.jsonl", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "shards",
        "--val-fraction", "0.03")
    cli("pretrain", "--data", tmp_path / "shards", "--out", tmp_path / "pt", "--preset", "tiny", "max_steps=150",
        "batch_size=8", "warmup_steps=15", "eval_every=75", "save_every=75", "progress=false")
    cli("data", "instructions", "--out", tmp_path / "instr", "--sources", "arithmetic,chatterbot", "--no-progress")
    cli("sft", "--model", tmp_path / "pt" / "final", "--data", tmp_path / "instr" / "train.jsonl",
        "--eval-data", tmp_path / "instr" / "heldout.jsonl", "--out", tmp_path / "sft", "max_steps=200",
        "batch_size=8", "seq_len=256", "lr=2e-3", "warmup_steps=20", "eval_every=100", "save_every=100",
        "eval_limit=20", "eval_max_tokens=32", "progress=false")

    pt = [json.loads(x) for x in (tmp_path / "pt" / "metrics.jsonl").read_text().splitlines()]
    bpb = [r["val_bpb"] for r in pt if "val_bpb" in r]
    assert bpb[-1] < bpb[0]
    model, tok, meta = load_model(tmp_path / "sft" / "final")
    assert meta["stage"] == "sft" and meta["metrics"]["ended_turn"] >= 0.5
    im_start = tok.token_to_id("<|im_start|>")
    eng = Engine(model, tok)
    for question in ["Hello, how are you?", "你好，你叫什么名字？"]:
        reply = eng.chat([{"role": "system", "content": "You are a helpful, honest and harmless assistant."},
                          {"role": "user", "content": question}], SamplingParams(max_tokens=40, temperature=0))
        assert reply.text.strip() and im_start not in reply.token_ids  # speaks as the assistant only
        assert reply.finish_reason == "stop"  # and ends its turn with <|im_end|>
