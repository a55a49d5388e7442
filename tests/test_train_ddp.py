"""Distributed training: two gloo CPU processes under torchrun give the same losses as one process with
the same global batch, for every training stage (pretrain and SFT, and FSDP2 behind `fsdp=true`; the
reward model, DPO and PPO); gradient accumulation does too."""
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
    assert json.loads((out / "run.json").read_text())["processes"] == 2
    return _records(out)


def _one_process(argv: list[str]) -> None:
    from alignchat.cli import main
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun gives each worker one thread; match it
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(before)


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
    from alignchat.hub import load_model
    model, _, meta = load_model(tmp_path / "ddp" / "final")
    assert meta["step"] == 6


def test_gradient_accumulation_matches_a_large_batch(tmp_path, shards, single_run):
    accum = _single(tmp_path / "accum", shards, ["batch_size=4", "grad_accum=2"])
    _assert_same(single_run, accum)


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process(tmp_path, shards, single_run):
    fsdp = _torchrun(tmp_path / "fsdp", shards, ["batch_size=4", "fsdp=true"])
    _assert_same(single_run, fsdp)
    from alignchat.hub import load_model
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


# --- the alignment stages ------------------------------------------------------------------------------

def _comparisons(path: Path, n: int = 16, k: int = 3) -> Path:
    from alignchat.data.comparisons import Comparison, write_comparisons
    import random
    rng = random.Random(1)
    words = "the quick brown fox 北京 首都 天气 hello yes no".split()
    comps = []
    for i in range(n):
        responses = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) + f" {i}.{j}" for j in range(k)]
        ranking = list(range(k))
        rng.shuffle(ranking)
        comps.append(Comparison(prompt=[{"role": "user", "content": f"Question {i}: {rng.choice(words)}?"}],
                                responses=responses, ranking=ranking, labeller="ai:test"))
    write_comparisons(path, comps)
    return path


RANKING_SETTINGS = ["max_steps=4", "lr=1e-3", "warmup_steps=1", "eval_every=2", "save_every=0", "progress=false"]


@pytest.fixture(scope="module")
def reward_model_one(tmp_path_factory, tiny_ckpt):
    """The reward model trained by one process (4 rankings per step), and its comparison data."""
    work = tmp_path_factory.mktemp("rm_one")
    data = _comparisons(work / "cmp.jsonl")
    _one_process(["rm", "--model", str(tiny_ckpt), "--data", str(data), "--out", str(work / "rm"), "--hhh", "no",
                  "--held-out", "0.25", "rankings_per_batch=4"] + RANKING_SETTINGS)
    return work / "rm", data


def test_ddp_reward_model_matches_one_process(tmp_path, tiny_ckpt, reward_model_one):
    one_dir, data = reward_model_one
    two_dir = tmp_path / "rm"
    two = _torchrun(two_dir, tmp_path, [], ["rm", "--model", str(tiny_ckpt), "--data", str(data), "--out",
                                            str(two_dir), "--hhh", "no", "--held-out", "0.25",
                                            "rankings_per_batch=2"] + RANKING_SETTINGS)
    one = _records(one_dir)
    _assert_same([r for r in one if "loss" in r], [r for r in two if "loss" in r], steps=4, same_tokens=False)
    assert sum("val_loss" in r for r in two) == 2
    # rank 0 alone scored the trained model and wrote it: the model one process trains (to float noise, which
    # Adam's per-weight scaling amplifies a little in the last update)
    meta = [json.loads((d / "final" / "meta.json").read_text()) for d in (one_dir, two_dir)]
    assert meta[1]["reward_norm"]["mean"] == pytest.approx(meta[0]["reward_norm"]["mean"], rel=2e-3)
    assert meta[1]["reward_norm"]["n"] == meta[0]["reward_norm"]["n"]
    assert meta[1]["eval"]["held_out"] == meta[0]["eval"]["held_out"]


def test_ddp_dpo_matches_one_process(tmp_path, tiny_ckpt, reward_model_one):
    _, data = reward_model_one
    common = ["dpo", "--model", str(tiny_ckpt), "--data", str(data), "--beta", "0.1"]
    _one_process(common + ["--out", str(tmp_path / "one"), "rankings_per_batch=4"] + RANKING_SETTINGS)
    two = _torchrun(tmp_path / "two", tmp_path, [], common + ["--out", str(tmp_path / "two"), "rankings_per_batch=2"]
                    + RANKING_SETTINGS)
    one = _records(tmp_path / "one")
    _assert_same([r for r in one if "loss" in r], [r for r in two if "loss" in r], steps=4, same_tokens=False)
    assert one[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # the first step starts at the reference
    assert len({round(r["loss"], 4) for r in one if "loss" in r}) > 1  # and the policy moves from there


def test_ddp_ppo_matches_one_process(tmp_path, tiny_ckpt, reward_model_one):
    """Rollouts split over the ranks and gathered, minibatches split over the ranks, PPO-ptx, the trust-region
    statistics and a learning-rate schedule: two processes log what one does, iteration by iteration."""
    rm_dir, _ = reward_model_one
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Tell me about {w}."}]}) + "\n"
                               for w in ("cats", "北京", "rain", "the sea", "music", "天气", "bread", "stars")))
    ptx = tmp_path / "ptx.txt"
    ptx.write_text("The quick brown fox.\n\n北京是中国的首都。\n\nHello! How can I help you today?\n\nA cat.",
                   encoding="utf-8")
    common = ["ppo", "--policy", str(tiny_ckpt), "--reward-model", str(rm_dir / "final"), "--prompts", str(prompts),
              "--batch-prompts", "4", "--minibatch", "2", "--ppo-epochs", "2", "--max-new-tokens", "6",
              "--iterations", "3", "--lr", "1e-3", "--critic-lr", "1e-3", "--ptx-data", str(ptx), "--ptx-coef", "0.5",
              "--ptx-batch", "2", "--eval-fraction", "0.25", "--save-every", "2", "--no-progress",
              "--warmup-steps", "1", "--min-lr-ratio", "0.5"]
    _one_process(common + ["--out", str(tmp_path / "one")])
    two = _torchrun(tmp_path / "two", tmp_path, [], common + ["--out", str(tmp_path / "two")])
    one = _records(tmp_path / "one")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [0, 1, 2, 3, 3]
    for a, b in zip(one, two):
        assert set(a) == set(b)
        for key, value in a.items():
            if key in ("rollout_s", "step_time_s"):
                continue
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (a["step"], key)
            else:
                assert b[key] == value, (a["step"], key)
    iters = [r for r in one if "kl" in r]
    # one iteration of warmup, then a cosine from 1e-3 towards 5e-4 at iteration 3 (halfway at iteration 2)
    assert [r["lr"] for r in iters] == pytest.approx([1e-3, 1e-3, 7.5e-4])
    assert all(r["ptx_loss"] > 0 and r["updates"] == 4 for r in iters)
    # the same held-out responses and rewards, sampled half on each rank
    samples = [[json.loads(line) for line in (tmp_path / d / "samples_after.jsonl").read_text().splitlines()]
               for d in ("one", "two")]
    assert len(samples[0]) == 2 and [s["response"] for s in samples[0]] == [s["response"] for s in samples[1]]
    assert [s["reward"] for s in samples[1]] == pytest.approx([s["reward"] for s in samples[0]], rel=1e-4)
