"""Distributed training: two gloo CPU processes under torchrun give the same losses as one process with
the same global batch (DDP, and FSDP2 behind `fsdp=true`); gradient accumulation does too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignchat.data.shards import write_shards

from conftest import TINY_CORPUS

SETTINGS = ["max_steps=6", "seq_len=32", "warmup_steps=2", "lr=3e-3", "progress=false", "sample_every=0",
            "eval_every=3", "eval_batches=2", "save_every=3", "log_every=1", "model.dim=32", "model.n_layers=2",
            "model.n_heads=4", "model.n_kv_heads=2", "model.hidden_dim=64"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("ddp_shards")
    docs = [f"{i}. {TINY_CORPUS[i % 8]} {TINY_CORPUS[(i * 5 + 3) % 8]}" for i in range(240)]
    write_shards(docs, tiny_tokenizer, out, val_fraction=0.1)
    tiny_tokenizer.save(out)
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _single(out: Path, shards: Path, extra: list[str]) -> list[dict]:
    from alignchat.cli import main
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun gives each worker one thread; match it
    try:
        assert main(["pretrain", "--data", str(shards), "--out", str(out)] + SETTINGS + extra) == 0
    finally:
        torch.set_num_threads(before)
    return _records(out)


def _torchrun(out: Path, shards: Path, extra: list[str], argv: list[str] | None = None) -> list[dict]:
    torchrun = Path(sys.executable).parent / "torchrun"
    argv = argv or (["pretrain", "--data", str(shards), "--out", str(out)] + SETTINGS + extra)
    cmd = ([str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--standalone", "--nproc_per_node=2", "-m", "alignchat.cli"] + argv
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 process(es)" in proc.stdout
    return _records(out)


def _assert_same(a: list[dict], b: list[dict], steps: int = 6, same_tokens: bool = True) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b):
        # same data, same math; only the order of floating-point sums differs
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5), ra["step"]
        if same_tokens:  # (padded SFT rows: each process pads its rows to its own longest)
            assert rb["tokens"] == ra["tokens"]
        if "val_loss" in ra:
            assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, shards):
    return _single(tmp_path_factory.mktemp("single") / "run", shards, ["batch_size=8"])


def test_ddp_two_processes_match_one_process(tmp_path, shards, single_run):
    ddp = _torchrun(tmp_path / "ddp", shards, ["batch_size=4"])
    _assert_same(single_run, ddp)
    assert single_run[-1]["loss"] < single_run[0]["loss"]
    # rank 0 alone writes the checkpoint, and it loads
    from alignchat.checkpoint import load_model
    model, _, meta = load_model(tmp_path / "ddp" / "final")
    assert meta["step"] == 6


def test_gradient_accumulation_matches_a_large_batch(tmp_path, shards, single_run):
    accum = _single(tmp_path / "accum", shards, ["batch_size=4", "grad_accum=2"])
    _assert_same(single_run, accum)


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process(tmp_path, shards, single_run):
    fsdp = _torchrun(tmp_path / "fsdp", shards, ["batch_size=4", "fsdp=true"])
    _assert_same(single_run, fsdp)
    from alignchat.checkpoint import load_model
    model, _, _ = load_model(tmp_path / "fsdp" / "final")  # gathered from shards into one file
    assert model.cfg.dim == 32


def test_ddp_sft_with_uneven_target_counts_matches_one_process(tmp_path, tiny_ckpt):
    """Packed SFT rows hold different numbers of assistant tokens on each rank; the loss is still the
    mean over the global batch's target tokens, so two processes match one."""
    import random
    rng = random.Random(0)
    words = "the quick brown fox 北京 首都 天气 hello".split()
    with open(tmp_path / "sft.jsonl", "w", encoding="utf-8") as f:
        for i in range(64):
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            msgs = [{"role": "user", "content": " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))},
                    {"role": "assistant", "content": answer}]
            f.write(json.dumps({"id": str(i), "messages": msgs, "source": "test", "task": None,
                                "format": "dialogue", "meta": {}}, ensure_ascii=False) + "\n")
    common = ["--model", str(tiny_ckpt), "--data", str(tmp_path / "sft.jsonl"), "max_steps=4", "seq_len=96",
              "lr=3e-3", "warmup_steps=1", "progress=false", "eval_every=2", "save_every=0", "log_every=1",
              "baseline_eval=false", "val_fraction=0.2"]
    from alignchat.cli import main
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["sft", "--out", str(tmp_path / "one")] + common + ["batch_size=4"]) == 0
    finally:
        torch.set_num_threads(before)
    one = [r for r in _records(tmp_path / "one") if "loss" in r]
    two = [r for r in _torchrun(tmp_path / "two", tmp_path, [], ["sft", "--out", str(tmp_path / "two")] + common
                                + ["batch_size=2"]) if "loss" in r]
    _assert_same(one, two, steps=4, same_tokens=False)
