"""Pretraining: the shared loop end to end at tiny scale, and a SIGKILLed run that resumes exactly."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from alignchat.data.shards import write_shards
from alignchat.train.loop import TrainConfig, lr_at

from conftest import TINY_CORPUS


def _corpus() -> list[str]:
    # varied documents built from the shared bilingual corpus: enough tokens for a few dozen batches
    docs = []
    for i in range(240):
        a, b = TINY_CORPUS[i % 8], TINY_CORPUS[(i * 3 + 1) % 8]
        docs.append(f"{i}. {a} {b}")
    return docs


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("pt_shards")
    write_shards(_corpus(), tiny_tokenizer, out, val_fraction=0.1, shard_tokens=4096)
    tiny_tokenizer.save(out)
    return out


COMMON = ["max_steps=12", "batch_size=4", "seq_len=32", "warmup_steps=3", "lr=3e-3", "log_every=1",
          "eval_every=4", "eval_batches=2", "save_every=3", "sample_every=0", "sample_tokens=6",
          "keep_checkpoints=2", "progress=false", "model.dim=32", "model.n_layers=2", "model.n_heads=4",
          "model.n_kv_heads=2", "model.hidden_dim=64"]


def _pretrain(args: list[str], capsys) -> subprocess.CompletedProcess:
    """The real CLI entry point, in this process (a subprocess would pay torch's import each time)."""
    from alignchat.cli import main
    capsys.readouterr()
    rc = main(["pretrain"] + args)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def _losses(run_dir) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r.get("val_loss")) for r in rows if "loss" in r]


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


@pytest.fixture
def one_thread():
    """Both runs of a comparison must use the same thread count (reductions split by thread), and on a
    shared 2-core machine one thread is also the fastest for a model this small."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_kill_and_resume_gives_the_same_loss_sequence(tmp_path, shards, capsys, one_thread):
    full = tmp_path / "full"
    proc = _pretrain(["--data", str(shards), "--out", str(full)] + COMMON, capsys)
    assert proc.returncode == 0, proc.stderr
    reference = _losses(full)
    assert [s for s, _, _ in reference] == list(range(1, 13))
    assert reference[-1][1] < reference[0][1], "the loss should fall on this tiny corpus"

    # the same run in a child process, SIGKILLed by itself after step 8 (its last checkpoint is step 6) ...
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import torch
        torch.set_num_threads(1)
        from alignchat.cli import build_parser
        from alignchat.train import pretrain
        argv = ["pretrain", "--data", {str(shards)!r}, "--out", {str(killed)!r}] + {COMMON!r}
        args = build_parser("pretrain").parse_args(argv)
        def kill_at_8(trainer, step, record):
            if step == 8:
                os.kill(os.getpid(), signal.SIGKILL)
        args.callbacks = [kill_at_8]
        pretrain.run(args)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == -9, proc.stderr
    assert json.loads((killed / "latest.json").read_text())["step"] == 6
    assert not (killed / "final").exists()

    # ... then resumed from the command line with nothing but --resume
    proc = _pretrain(["--out", str(killed), "--resume"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout and "step 6" in proc.stdout
    resumed = _losses(killed)
    assert [s for s, _, _ in resumed] == list(range(1, 13))
    for (s, loss, val), (_, loss2, val2) in zip(reference, resumed):
        assert loss2 == pytest.approx(loss, rel=1e-6, abs=1e-7), f"step {s}"
        assert (val is None) == (val2 is None)
        if val is not None:
            assert val2 == pytest.approx(val, rel=1e-6)
    # keep_checkpoints=2: only the two newest step checkpoints stay
    assert sorted(p.name for p in killed.glob("step-*")) == ["step-000009", "step-000012"]


def test_pretrain_logs_metrics_and_writes_a_chat_loadable_checkpoint(tmp_path, shards, capsys, one_thread):
    out = tmp_path / "run"
    proc = _pretrain(["--data", str(shards), "--out", str(out), "max_steps=4", "eval_every=2", "save_every=0"]
                     + [c for c in COMMON if not c.startswith(("max_steps", "eval_every", "save_every"))], capsys)
    assert proc.returncode == 0, proc.stderr
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    for key in ("loss", "val_loss", "val_bpb", "tokens_per_s", "mfu", "lr", "grad_norm", "samples"):
        assert key in last, key
    assert last["tokens_seen"] == 4 * 4 * 32
    # bits per byte = nats per token / ln 2 / bytes per token
    manifest = json.loads((shards / "manifest.json").read_text())["splits"]["val"]
    assert last["val_bpb"] == pytest.approx(last["val_loss"] / math.log(2) / (manifest["bytes"] / manifest["tokens"]))

    from alignchat.hub import load_model
    from alignchat.engine import Engine, SamplingParams
    model, tok, meta = load_model(out / "final")
    assert meta["stage"] == "pretrain" and meta["step"] == 4
    assert model.cfg.dim == 32 and model.cfg.vocab_size % 64 == 0 and model.cfg.vocab_size >= tok.vocab_size
    gen = Engine(model, tok).generate([tok.encode("The")], SamplingParams(max_tokens=5, temperature=0))[0]
    assert len(gen.token_ids) >= 1


def test_bad_settings_are_clear_errors(tmp_path, shards, capsys):
    proc = _pretrain(["--data", str(shards), "--out", str(tmp_path / "x"), "lrr=3"], capsys)
    assert proc.returncode == 2 and "unknown setting 'lrr'" in proc.stderr
    proc = _pretrain(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], capsys)
    assert proc.returncode == 2 and "manifest" in proc.stderr
    proc = _pretrain(["--data", str(shards), "--out", str(tmp_path / "x"), "batch_size=4000"] + COMMON[2:], capsys)
    assert proc.returncode == 2 and "fewer than one global batch" in proc.stderr
