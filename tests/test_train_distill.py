"""Distillation: the white-box loss (KL at a temperature mixed with the data loss), a student cut from the
teacher's blocks, a tiny run end to end that learns the teacher and resumes exactly after a SIGKILL, the
tokenizer check, and black-box SFT data from an engine teacher and from a real HTTP endpoint."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
import torch
import torch.nn.functional as F

from alignchat.data.sft_data import collate, encode_conversation, one_per_row, read_sft_jsonl
from alignchat.train.loop import lm_loss

from conftest import TINY_CORPUS, make_tiny_model
from serve_support import ROOT, ServerProcess


@pytest.fixture(autouse=True)
def one_thread():
    """Both runs of a comparison use the same thread count (reductions split by thread), and a tiny model
    is fastest on one thread of the shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cli(args: list[str], capsys) -> subprocess.CompletedProcess:
    from alignchat.cli import main
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


CONV = [{"role": "user", "content": "What is the capital of France? 法国的首都是哪里？"},
        {"role": "assistant", "content": "The capital of France is Paris. 巴黎。"}]


def test_the_loss_is_the_kl_at_temperature_mixed_with_the_data_loss(tiny_tokenizer):
    from alignchat.train.distill import distill_loss

    tok = tiny_tokenizer
    teacher = make_tiny_model(tok.vocab_size, seed=1)
    student = make_tiny_model(tok.vocab_size, seed=2, n_layers=1).train()
    batch = collate(one_per_row([encode_conversation(tok, CONV, 128)]), tok.pad_id)
    keep = batch["targets"] != -100
    assert 0 < int(keep.sum()) < keep.numel()  # assistant tokens only
    T, alpha = 2.0, 0.3
    out = distill_loss(teacher, T, alpha, tok.vocab_size)(student, batch)
    with torch.no_grad():
        kw = dict(positions=batch["positions"], attn_mask=batch["attn_mask"])
        s = student(batch["input_ids"], **kw)[keep]
        t = teacher(batch["input_ids"], **kw)[keep]
    p_t = F.softmax(t / T, -1)
    kl = (p_t * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum()
    ce = F.cross_entropy(s, batch["targets"][keep], reduction="sum")
    assert out.weight == int(keep.sum()) == lm_loss(student, batch).weight
    assert float(out.loss_sum.detach()) == pytest.approx(float(alpha * T * T * kl + (1 - alpha) * ce), rel=1e-5)
    assert out.metrics["kl"] == pytest.approx(float(kl) / out.weight, rel=1e-5)
    # alpha = 0 is the data loss alone; a student equal to the teacher has nothing to learn from it
    assert float(distill_loss(teacher, T, 0.0, tok.vocab_size)(student, batch).loss_sum.detach()) == pytest.approx(
        float(lm_loss(student, batch).loss_sum.detach()), rel=1e-6)
    teacher.train()
    same = distill_loss(teacher, T, 1.0, tok.vocab_size)(teacher, batch)
    assert abs(float(same.loss_sum.detach())) < 1e-4 and same.metrics["kl"] < 1e-6
    # validation (eval mode) measures the data loss alone, the same measure with or without a teacher
    student.eval()
    assert float(out.loss_sum.detach()) != float(distill_loss(teacher, T, alpha, tok.vocab_size)(student, batch).loss_sum.detach())
    assert float(distill_loss(teacher, T, alpha, tok.vocab_size)(student, batch).loss_sum.detach()) == pytest.approx(
        float(lm_loss(student, batch).loss_sum.detach()), rel=1e-6)


def test_a_student_keeps_the_chosen_blocks_of_the_teacher(tiny_tokenizer):
    from alignchat.errors import UserError
    from alignchat.train.distill import keep_layers, parse_layers

    assert parse_layers("15", 30) == list(range(0, 30, 2))  # every other block
    assert parse_layers("1", 2) == [0] and parse_layers("0,1", 2) == [0, 1] and parse_layers("", 3) == [0, 1, 2]
    for bad in ("0", "3", "a", "1,1", "5,0"):
        with pytest.raises(UserError, match="student_layers"):
            parse_layers(bad, 2)
    teacher = make_tiny_model(tiny_tokenizer.vocab_size, seed=3, n_layers=3)
    student = keep_layers(teacher, [0, 2])
    assert student.cfg.n_layers == 2 and teacher.cfg.n_layers == 3
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["model.layers.1.mlp.up_proj.weight"], t["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(s["model.layers.0.self_attn.q_proj.weight"], t["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(s["lm_head.weight"], t["lm_head.weight"]) and torch.equal(s["model.norm.weight"],
                                                                               t["model.norm.weight"])
    # the kept blocks are copies: training the student leaves the teacher as it was
    with torch.no_grad():
        student.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert not torch.equal(student.state_dict()["model.layers.0.mlp.up_proj.weight"],
                           teacher.state_dict()["model.layers.0.mlp.up_proj.weight"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    from alignchat.data.shards import write_shards
    out = tmp_path_factory.mktemp("distill_shards")
    docs = [f"{i}. {TINY_CORPUS[i % 8]} {TINY_CORPUS[(i * 3 + 1) % 8]}" for i in range(200)]
    write_shards(docs, tiny_tokenizer, out, val_fraction=0.1, shard_tokens=4096)
    tiny_tokenizer.save(out)
    return out


def _kl(teacher, student, ids) -> float:
    """Mean KL(teacher ‖ student) per token over a batch, at temperature 1."""
    with torch.no_grad():
        lt, ls = teacher(ids).log_softmax(-1), student(ids).log_softmax(-1)
    return float((lt.exp() * (lt - ls)).sum(-1).mean())


COMMON = ["student_layers=1", "max_steps=10", "batch_size=4", "seq_len=32", "warmup_steps=2", "lr=3e-3",
          "log_every=1", "eval_every=5", "eval_batches=2", "save_every=3", "keep_checkpoints=2", "progress=false",
          "temperature=2.0", "alpha=1.0"]


def test_white_box_learns_the_teacher_and_resumes_exactly_after_a_kill(tmp_path, tiny_ckpt, shards, capsys):
    from alignchat.data.shards import TokenBatcher, TokenShards
    from alignchat.hub import load_model
    from alignchat.train.distill import keep_layers

    full = tmp_path / "full"
    base = ["distill", "white-box", "--teacher-model", tiny_ckpt, "--data", shards]
    proc = _cli(base + ["--out", full] + COMMON, capsys)
    assert proc.returncode == 0, proc.stderr
    ref = [r for r in _metrics(full) if "loss" in r]
    assert [r["step"] for r in ref] == list(range(1, 11))
    assert all(r["kl"] > 0 and r["ce"] > 0 for r in ref)
    vals = [r["val_loss"] for r in _metrics(full) if "val_loss" in r]
    assert len(vals) == 2
    student, tok, meta = load_model(full / "final")  # what chat, generate, sft and eval load
    assert student.cfg.n_layers == 1 and meta["stage"] == "distill" and meta["teacher"] == str(tiny_ckpt)
    # on held-out text the student is closer to the teacher than the cut-down teacher it started as
    teacher = load_model(tiny_ckpt)[0]
    x, _ = TokenBatcher(TokenShards(shards, "val"), 4, 32, shuffle=False).next_batch()
    assert _kl(teacher, student, x) < 0.8 * _kl(teacher, keep_layers(teacher, [0]), x)
    assert meta["distill"]["layers"] == [0]
    info = json.loads((full / "run.json").read_text())
    assert info["student"] == {"from": str(tiny_ckpt), "layers": [0]} and info["split"]["kind"] == "corpus"

    # the same run in a child process, SIGKILLed by itself after step 7 (its last checkpoint is step 6) ...
    killed = tmp_path / "killed"
    argv = [str(a) for a in base + ["--out", killed] + COMMON]
    script = textwrap.dedent(f"""
        import os, signal
        import torch
        torch.set_num_threads(1)
        from alignchat.cli import build_parser
        from alignchat.train import distill
        args = build_parser("distill").parse_args({argv!r})
        def kill_at_7(trainer, step, record):
            if step == 7:
                os.kill(os.getpid(), signal.SIGKILL)
        args.callbacks = [kill_at_7]
        distill.run(args)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((killed / "latest.json").read_text())["step"] == 6 and not (killed / "final").exists()

    # ... then resumed with nothing but --resume: the same losses, and the same student, bit for bit
    proc = _cli(["distill", "white-box", "--out", killed, "--resume"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "step 6" in proc.stdout
    again = [r for r in _metrics(killed) if "loss" in r]
    assert [r["step"] for r in again] == list(range(1, 11))
    for a, b in zip(ref, again):
        assert (a["loss"], a["kl"], a["ce"], a.get("val_loss")) == (b["loss"], b["kl"], b["ce"], b.get("val_loss")), \
            a["step"]
    x, y = load_model(full / "final")[0].state_dict(), load_model(killed / "final")[0].state_dict()
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _sft_file(path, n: int) -> None:
    words = "the quick brown fox jumps over lazy dog 北京 中国 首都 天气".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            msgs = [{"role": "user", "content": " ".join(words[(i + j) % len(words)] for j in range(2 + i % 5))},
                    {"role": "assistant", "content": f"OK {words[i % len(words)]}"}]
            f.write(json.dumps({"id": f"r{i}", "messages": msgs, "source": "test"}, ensure_ascii=False) + "\n")


def test_white_box_on_sft_conversations_and_a_mismatched_tokenizer(tmp_path, tiny_ckpt, tiny_tokenizer, capsys):
    from alignchat.checkpoint import save_checkpoint
    from alignchat.hub import load_model
    from alignchat.tokenizer import train_bpe

    data = tmp_path / "sft.jsonl"
    _sft_file(data, 40)
    out = tmp_path / "sft-run"
    proc = _cli(["distill", "white-box", "--teacher-model", tiny_ckpt, "--data", data, "--out", out,
                 "student_layers=1", "max_steps=4", "batch_size=2", "seq_len=64", "eval_every=2", "save_every=0", "log_every=1",
                 "progress=false", "val_fraction=0.2"], capsys)
    assert proc.returncode == 0, proc.stderr
    rows = _metrics(out)
    assert json.loads((out / "run.json").read_text())["split"]["kind"] == "sft"
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(r["kl"] >= 0 and r["ce"] > 0 for r in rows if "loss" in r)
    assert sum("val_loss" in r for r in rows) == 2
    assert load_model(out / "final")[0].cfg.n_layers == 1

    # a teacher whose tokenizer differs from the student's: a clear error before any training
    other_tok = train_bpe(TINY_CORPUS[::-1], vocab_size=350, min_frequency=1)
    other = tmp_path / "other"
    save_checkpoint(other, make_tiny_model(other_tok.vocab_size, n_layers=1), other_tok, meta={"stage": "test"})
    proc = _cli(["distill", "white-box", "--teacher-model", tiny_ckpt, "--student", other, "--data", data,
                 "--out", tmp_path / "bad", "max_steps=1", "progress=false"], capsys)
    assert proc.returncode == 2
    assert "different tokenizers" in proc.stderr and "black-box" in proc.stderr
    assert not (tmp_path / "bad").exists()
    proc = _cli(["distill", "white-box", "--data", data, "--out", tmp_path / "bad"], capsys)
    assert proc.returncode == 2 and "--teacher-model is required" in proc.stderr


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, tiny_tokenizer):
    """A tiny random teacher with sharp output distributions (its output layer scaled up), so its greedy
    answers have clear margins and do not hinge on how prompts are batched; its context fits the server's
    defaults."""
    from alignchat.checkpoint import save_checkpoint
    model = make_tiny_model(tiny_tokenizer.vocab_size, seed=7, max_seq_len=1024)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("teacher") / "teacher"
    save_checkpoint(path, model, tiny_tokenizer, meta={"stage": "test"})
    return path


PROMPTS = ["What is the capital of France?", "用一句话介绍你自己。", "Name a colour.", "2 + 2 = ?", "Say hi."]


def _prompt_file(path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in PROMPTS:
            f.write(json.dumps({"prompt": [{"role": "user", "content": p}]}, ensure_ascii=False) + "\n")


def _greedy_answers(ckpt, system: str) -> list[str]:
    from alignchat.engine import Engine, SamplingParams
    from alignchat.hub import load_model
    model, tok, _ = load_model(ckpt)
    eng = Engine(model, tok)
    return [eng.chat([{"role": "system", "content": system}, {"role": "user", "content": p}],
                     SamplingParams(max_tokens=8, temperature=0)).text for p in PROMPTS]


def _check_records(path, expected: list[str], teacher: str, system: str) -> list[dict]:
    errors: list = []
    recs = read_sft_jsonl(path, errors)
    assert not errors and len(recs) == len(PROMPTS)
    for rec, prompt, answer in zip(recs, PROMPTS, expected):
        assert rec["messages"] == [{"role": "system", "content": system}, {"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer}]
        assert rec["source"] == f"distill:{teacher}" and rec["meta"]["teacher"] == teacher
        assert rec["meta"]["sampling"] == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 0}
    return recs


BLACK = ["temperature=0", "top_p=1", "max_tokens=8", "keep_truncated=true", "quiet=true", "chunk=2"]


def test_black_box_writes_sft_data_from_an_engine_teacher_that_sft_trains_on(tmp_path, teacher_ckpt, capsys):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "teacher.jsonl"
    _prompt_file(prompts)
    system = "You are concise."
    args = ["distill", "black-box", "--teacher-model", teacher_ckpt, "--prompts", prompts, "--out", out,
            "--system", system, "--device", "cpu"] + BLACK
    proc = _cli(args, capsys)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["new"] == len(PROMPTS) and summary["dropped"] == 0
    expected = _greedy_answers(teacher_ckpt, system)
    assert any(a.strip() for a in expected)
    _check_records(out, expected, str(teacher_ckpt), system)
    # a rerun finds every prompt answered and asks the teacher nothing
    before = out.read_text()
    proc = _cli(args, capsys)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["skipped_already_answered"] == len(PROMPTS)
    assert out.read_text() == before
    # without keep_truncated, answers cut off at max_tokens (a random model never ends its turn) are dropped
    strict = tmp_path / "strict.jsonl"
    proc = _cli([a if a != out else strict for a in args if a != "keep_truncated=true"], capsys)
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["new"] + s["dropped"] == len(PROMPTS) and s["dropped"] >= 1
    assert len((tmp_path / "strict.dropped.jsonl").read_text().splitlines()) == s["dropped"]

    # the file is SFT data as `alignchat sft` reads it
    proc = _cli(["sft", "--model", teacher_ckpt, "--data", out, "--out", tmp_path / "sft", "max_steps=2",
                 "batch_size=2", "seq_len=64", "progress=false", "val_fraction=0", "baseline_eval=false"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sft" / "final" / "model.safetensors").exists()


def test_black_box_through_a_real_openai_endpoint(tmp_path, teacher_ckpt):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "remote.jsonl"
    _prompt_file(prompts)
    system = "Answer briefly."
    srv = ServerProcess(teacher_ckpt, tmp_path / "teacher.db", "--no-embeddings", "--max-batch", "2").wait_ready()
    try:
        proc = subprocess.run([sys.executable, "-m", "alignchat.cli", "distill", "black-box", "--teacher-endpoint",
                               srv.url + "/v1", "--prompts", str(prompts), "--out", str(out), "--system", system,
                               "teacher_name=remote-teacher"] + BLACK,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout.strip().splitlines()[-1])["new"] == len(PROMPTS)
        # the records hold the endpoint's own greedy answers to the same requests
        direct = [httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
            "model": "teacher", "temperature": 0, "top_p": 1, "max_tokens": 8, "seed": i,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": p}]}
        ).json()["choices"][0]["message"]["content"] for i, p in enumerate(PROMPTS)]
    finally:
        srv.stop()
    assert any(a.strip() for a in direct)
    _check_records(out, direct, "remote-teacher", system)


def test_black_box_context_distillation_answers_through_a_few_shot_prefix(tmp_path, teacher_ckpt, capsys):
    """With --context the teacher completes the prefix with the prompt put in, as raw text: the record pairs
    the plain user turn with that completion (stripped, cut at the stop string), and says which context."""
    import hashlib

    from alignchat.engine import Engine, SamplingParams
    from alignchat.hub import load_model

    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "ctx.jsonl"
    _prompt_file(prompts)
    context = "问：你好\n答：你好！\n\nQ: {prompt}\nA:"
    (tmp_path / "ctx.txt").write_text(context, encoding="utf-8")
    args = ["distill", "black-box", "--teacher-model", teacher_ckpt, "--prompts", prompts, "--out", out,
            "--context", tmp_path / "ctx.txt", "--device", "cpu"] + BLACK
    proc = _cli(args, capsys)
    assert proc.returncode == 0, proc.stderr
    model, tok, _ = load_model(teacher_ckpt)
    eng = Engine(model, tok)
    raw = [eng.generate([tok.encode(context.replace("{prompt}", p))],
                        SamplingParams(max_tokens=8, temperature=0, stop=["\nQ: "], seed=i))[0].text
           for i, p in enumerate(PROMPTS)]
    recs = read_sft_jsonl(out)
    assert len(recs) == len(PROMPTS) and any(r.strip() for r in raw)
    chat = [eng.chat([{"role": "user", "content": p}], SamplingParams(max_tokens=8, temperature=0)).text
            for p in PROMPTS]
    assert [r.strip() for r in raw] != [c.strip() for c in chat]  # the prefix changes what the teacher says
    for rec, prompt, answer in zip(recs, PROMPTS, raw):
        assert rec["messages"] == [{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answer.strip()}]
        assert rec["meta"]["context"] == {"file": str(tmp_path / "ctx.txt"),
                                          "sha256": hashlib.sha256(context.encode()).hexdigest()}

    # min_distinct_2: answers that repeat a character pair are dropped, and say why
    loops = tmp_path / "loops.jsonl"
    proc = _cli([a if a != out else loops for a in args] + ["min_distinct_2=1.0"], capsys)
    assert proc.returncode == 0, proc.stderr
    from alignchat.eval.metrics import char_distinct_2
    kept = [r.strip() for r in raw if r.strip() and char_distinct_2(r.strip()) >= 1.0]
    assert [r["messages"][-1]["content"] for r in read_sft_jsonl(loops)] == kept
    dropped = [json.loads(x) for x in (tmp_path / "loops.dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == len(PROMPTS) - len(kept) and all(d["why"] in ("repetitive", "empty") for d in dropped)
    assert char_distinct_2("好好好好好好") < 0.5 < char_distinct_2("今天天气很好，我们去公园。")
    from alignchat.train.distill import context_stop
    assert context_stop(context) == "\nQ: " and context_stop("问：你好\n答：你好！\n\n问：{prompt}\n答：") == "\n问："
    assert context_stop("Example.\n\n{prompt}") == "\n\n"


def test_black_box_context_errors_come_before_the_teacher_loads(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    _prompt_file(prompts)
    (tmp_path / "no_slot.txt").write_text("Q: hello\nA:", encoding="utf-8")
    base = ["distill", "black-box", "--teacher-model", tmp_path / "missing-model", "--prompts", prompts,
            "--out", tmp_path / "o.jsonl"]
    proc = _cli(base + ["--context", tmp_path / "no_slot.txt"], capsys)
    assert proc.returncode == 2 and "{prompt} exactly once" in proc.stderr
    proc = _cli(base + ["--context", tmp_path / "absent.txt"], capsys)
    assert proc.returncode == 2 and "--context" in proc.stderr
    (tmp_path / "ok.txt").write_text("Q: {prompt}\nA:", encoding="utf-8")
    proc = _cli(base + ["--context", tmp_path / "ok.txt", "--system", "Be brief."], capsys)
    assert proc.returncode == 2 and "one user turn" in proc.stderr
    proc = _cli(base + ["min_distinct_2=1.5"], capsys)
    assert proc.returncode == 2 and "min_distinct_2" in proc.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_black_box_drops_an_answer_that_repeats_the_request_with_drop_echoes():
    """The base model behind the Chinese prefix sometimes writes the question again instead of answering it
    (a real record: "春节期间人们通常会做些什么？" answered with itself); with drop_echoes such an answer is
    dropped as 'echo', whole or nearly whole, or opening the answer, while an answer that reuses the
    question's words is kept."""
    from alignchat.eval.metrics import echo_share, echoes
    from alignchat.train.distill import BlackBoxConfig, drop_reason

    on, off = BlackBoxConfig(drop_echoes=True), BlackBoxConfig()
    q = "春节期间人们通常会做些什么？"
    for answer in (q, "春节期间人们通常会做些什么", q + "春节期间人们会贴春联、吃年夜饭。", "人们通常会做些什么？"):
        assert drop_reason(answer, "stop", on, q) == "echo", answer
        assert drop_reason(answer, "stop", off, q) is None
    answer = "春节期间，人们会贴春联、放鞭炮、吃年夜饭，还会走亲访友，互相拜年。"
    assert drop_reason(answer, "stop", on, q) is None and 0 < echo_share(answer, q) < 0.5
    assert not echoes(answer, q) and not echoes(q, "")  # no request: nothing to echo
    # the other reasons come first, as before
    assert drop_reason("  ", "stop", on, q) == "empty" and drop_reason(q, "length", on, q) == "length"
