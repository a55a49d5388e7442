"""The stage contract as a user meets it: every training verb's --help, and one precedence (the defaults, then
the --config file, then the command line) through the real CLI on tiny runs."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch

from alignchat.data.shards import write_shards

from conftest import TINY_CORPUS, alignchat_cmd

STAGES = ["tokenize", "pretrain", "sft", "rm", "ppo", "dpo"]


@pytest.mark.parametrize("verb", STAGES)
def test_every_stage_verb_shows_out_config_key_value_and_what_it_reads_and_writes(verb):
    proc = subprocess.run(alignchat_cmd() + [verb, "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert re.search(r"^\s+--out OUT\b", text, re.M), "no --out flag"
    assert "--out-dir" not in text
    assert "--config FILE" in text and "KEY=VALUE" in text
    assert re.search(r"^reads: ", text, re.M) and re.search(r"^writes: --out", text, re.M)
    if verb != "tokenize":
        assert re.search(r"--device DEVICE\s+auto \(cuda when available", text), "--device auto"
        assert "--resume" in text


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("cli_shards")
    write_shards([f"{i}. {TINY_CORPUS[i % 8]}" for i in range(80)], tiny_tokenizer, out, val_fraction=0.1)
    tiny_tokenizer.save(out)
    return out


def _main(argv: list[str], capsys) -> tuple[int, str]:
    from alignchat.cli import main
    capsys.readouterr()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main([str(a) for a in argv])
    finally:
        torch.set_num_threads(before)
    return rc, capsys.readouterr().err


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_precedence_defaults_then_file_then_command_line(tmp_path, shards, capsys):
    """pretrain: the preset's defaults, a TOML file over them, flags and KEY=VALUE over the file."""
    config = tmp_path / "run.toml"
    config.write_text('max_steps = 5\nwarmup_steps = 4\nsave_every = 1\n\n[train]\nlr = 0.002\nprogress = false\n'
                      'log_every = 1\neval_every = 0\nsample_every = 0\nseq_len = 32\nbatch_size = 4\n\n'
                      '[model]\ndim = 32\nn_layers = 1\nn_heads = 4\nn_kv_heads = 2\nhidden_dim = 64\n')
    out = tmp_path / "run"
    rc, err = _main(["pretrain", "--data", shards, "--out", out, "--config", config, "--max-steps", "2",
                     "warmup_steps=1"], capsys)
    assert rc == 0, err
    settings = json.loads((out / "run.json").read_text())["settings"]
    train = settings["train"]
    assert train["max_steps"] == 2 and train["warmup_steps"] == 1  # the command line beats the file
    assert train["lr"] == 0.002 and train["save_every"] == 1 and settings["model"]["dim"] == 32  # the file beats
    assert train["weight_decay"] == 0.1 and settings["preset"] == "tiny"  # the defaults stay where nothing is set
    steps = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    # warmup 1 (the command line's, not the file's 4): the first step already runs at the file's lr
    assert steps[0]["lr"] == pytest.approx(0.002)
    assert sorted(p.name for p in out.glob("step-*")) == ["step-000001", "step-000002"]  # save_every=1 held


def test_precedence_is_the_same_for_the_alignment_verbs(tmp_path, tiny_ckpt, capsys):
    """rm (whose file used to beat its flags): YAML file over the defaults, the command line over the file."""
    from alignchat.data.comparisons import Comparison, write_comparisons
    data = tmp_path / "cmp.jsonl"
    write_comparisons(data, [Comparison(prompt=[{"role": "user", "content": f"Question {i}?"}],
                                        responses=[f"yes {i}", f"no {i}"], ranking=[i % 2, 1 - i % 2])
                             for i in range(8)])
    config = tmp_path / "rm.yaml"
    config.write_text(f"data: [{data}]\nhhh: 'no'\nmax_steps: 5\nlr: 0.01\nrankings_per_batch: 2\n"
                      "train:\n  warmup_steps: 1\n  progress: false\n  eval_every: 0\n  save_every: 0\n")
    out = tmp_path / "rm"
    rc, err = _main(["rm", "--model", tiny_ckpt, "--config", config, "--out", out, "max_steps=2"], capsys)
    assert rc == 0, err
    settings = json.loads((out / "run.json").read_text())["settings"]
    assert settings["train"]["max_steps"] == 2 and settings["train"]["lr"] == 0.01
    assert settings["rankings_per_batch"] == 2 and settings["held_out"] == 0.1 and settings["hhh"] == "no"
    assert [r["step"] for r in _records(out) if "loss" in r] == [1, 2]
    assert _records(out)[0]["lr"] == pytest.approx(0.01)


def test_bad_settings_name_the_setting(tmp_path, shards, capsys):
    rc, err = _main(["pretrain", "--data", shards, "--out", tmp_path / "x", "lr=fast"], capsys)
    assert rc == 2 and "setting train.lr: expected a number, got 'fast'" in err
    rc, err = _main(["pretrain", "--data", shards, "--out", tmp_path / "x", "train.compile=maybe"], capsys)
    assert rc == 2 and "setting train.compile: expected true or false" in err
    rc, err = _main(["pretrain", "--data", shards, "--out", tmp_path / "x", "precision=fp8"], capsys)
    assert rc == 2 and "'fp8' is not one of auto, bf16, fp32" in err
    (tmp_path / "bad.toml").write_text("[train]\nlrr = 1\n")
    rc, err = _main(["pretrain", "--data", shards, "--out", tmp_path / "x", "--config", tmp_path / "bad.toml"], capsys)
    assert rc == 2 and "bad.toml: unknown setting 'train.lrr'" in err
    rc, err = _main(["dpo", "--model", tmp_path, "stray"], capsys)
    assert rc == 2 and "'stray' is not of the form KEY=VALUE" in err


# --- compare and eval: the same contract, subcommand by subcommand -------------------------------------------

COMPARE = ("sample", "judge", "synth-marker", "import-hhh", "import-feedback", "validate")
SUBCOMMANDS = [("compare", s) for s in COMPARE] + [("eval", s) for s in ("run", "report", "winrate", "elo", "tasks")]
RUNS_A_MODEL = {("compare", "sample"), ("compare", "judge"), ("eval", "run"), ("eval", "winrate")}


@pytest.mark.parametrize("verb,sub", SUBCOMMANDS)
def test_every_compare_and_eval_subcommand_shows_out_config_key_value_and_what_it_reads_and_writes(verb, sub, capsys):
    from alignchat.cli import main
    with pytest.raises(SystemExit) as done:
        main([verb, sub, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert re.search(r"^\s+--out OUT\b", text, re.M), "no --out flag"
    assert "--config FILE" in text and "KEY=VALUE" in text
    assert re.search(r"^reads: ", text, re.M) and re.search(r"^writes: .*--out", text, re.M)
    if (verb, sub) in RUNS_A_MODEL:
        assert re.search(r"--device DEVICE\s+auto \(CUDA when present", text), "--device auto"


def test_compare_sample_precedence_defaults_then_file_then_command_line(tmp_path, tiny_ckpt, capsys):
    """The file's temperature and max_tokens over the defaults; -k and seed=... on the command line over the
    file's; the responses are exactly those the sampler draws with the combined settings."""
    from alignchat.data.comparisons import read_comparisons
    from alignchat.train.compare import sample_responses
    prompts = tmp_path / "p.txt"
    prompts.write_text("Name a colour.\n说一个数字。\n", encoding="utf-8")
    config = tmp_path / "sample.toml"
    config.write_text("k = 3\ntemperature = 0.5\nmax_tokens = 4\nseed = 7\nquiet = true\ndevice = 'cpu'\n")
    out = tmp_path / "s.jsonl"
    rc, err = _main(["compare", "sample", "--model", tiny_ckpt, "--prompts", prompts, "--out", out, "--config", config,
                     "-k", "2", "seed=3"], capsys)
    assert rc == 0, err
    recs = read_comparisons(out)
    assert [len(r.responses) for r in recs] == [2, 2]  # the command line's k, not the file's 3
    assert {r.meta["temperature"] for r in recs} == {0.5}  # the file's, not the default 1.0
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = sample_responses(str(tiny_ckpt), [r.prompt for r in recs], 2, 4, 0.5, 1.0, seed=3, device="cpu",
                                    progress=False)
    finally:
        torch.set_num_threads(before)
    assert [r.responses for r in recs] == expected  # max_tokens 4 (file), seed 3 (command line), top_p 1.0 (default)


def test_eval_run_precedence_defaults_then_file_then_command_line(tmp_path, tiny_ckpt, capsys):
    """The file's tasks, seed and cpu_watts over the defaults; --limit on the command line over the file's."""
    config = tmp_path / "eval.json"
    config.write_text(json.dumps({"tasks": ["zh_homonym"], "limit": 3, "seed": 5, "cpu_watts": 50}))
    out = tmp_path / "run"
    rc, err = _main(["eval", "run", "--model", tiny_ckpt, "--device", "cpu", "--config", config, "--out", out,
                     "--limit", "2", "threads=1"], capsys)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["tasks"] == ["zh_homonym"] and res["config"]["seed"] == 5  # the file beats the defaults
    assert res["config"]["limit"] == 2 and res["tasks"]["zh_homonym"]["summary"]["n"] == 2  # the command line wins
    assert res["config"]["k_shot"] == 0 and res["config"]["suite"] == "lite"  # the defaults where nothing is set
    assert res["energy"]["assumptions"]["cpu_watts"] == 50
    # a bad value in the file names the setting, before any model is loaded
    config.write_text(json.dumps({"limit": "many"}))
    rc, err = _main(["eval", "run", "--model", tiny_ckpt, "--config", config, "--out", out], capsys)
    assert rc == 2 and "setting limit: " in err and "'many'" in err


# --- every verb: what it reads and writes ------------------------------------------------------------------


def _helps() -> list[tuple[str, ...]]:
    """`(verb,)` for each verb in `alignchat.cli.VERBS`, or `(verb, sub)` for each subcommand of a verb that has
    them, found in the verb's real parser (a subcommand added later is checked too)."""
    import argparse

    from alignchat.cli import VERBS, build_parser
    out: list[tuple[str, ...]] = []
    for verb in VERBS:
        top = build_parser(verb)
        verb_parser = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
        subs = [a for a in verb_parser._actions if isinstance(a, argparse._SubParsersAction)]
        out += [(verb, s) for s in subs[0].choices] if subs else [(verb,)]
    return out


HELPS = _helps()


def test_every_verb_of_the_table_is_checked():
    from alignchat.cli import VERBS
    assert {h[0] for h in HELPS} == set(VERBS)
    assert ("models", "pull") in HELPS and ("data", "instructions") in HELPS and ("library", "ask") in HELPS
    assert ("import",) in HELPS and ("serve",) in HELPS


@pytest.mark.parametrize("argv", HELPS, ids=" ".join)
def test_every_verb_and_subcommand_says_what_it_reads_and_writes(argv, capsys):
    from alignchat.cli import main
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert re.search(r"^reads: \S", text, re.M), f"alignchat {' '.join(argv)} --help has no reads: line"
    assert re.search(r"^writes: \S", text, re.M), f"alignchat {' '.join(argv)} --help has no writes: line"


def test_serve_device_defaults_to_auto(capsys):
    from alignchat.cli import main
    from alignchat.serve.runtime import ServeConfig
    assert ServeConfig().device == "auto"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert re.search(r"--device DEVICE\s+torch device for the model: auto \(cuda if available", capsys.readouterr().out)
