"""The command line as a user runs it: generate, chat, models pull/list, import/export, and its errors."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import alignchat_cmd


def run_cli(*args, input=None, env=None, timeout=300):
    return subprocess.run(alignchat_cmd() + list(args), input=input, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_generate_with_default_model_says_paris(smollm2):
    r = run_cli("generate", "--model", "smollm2-135m-instruct", "--prompt", "What is the capital of France?",
                "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_chat_is_multi_turn_with_reset(smollm2):
    script = "My name is Ada.\nWhat is my name?\n/reset\nWhat is the capital of France?\n/exit\n"
    r = run_cli("chat", "--model", "smollm2-135m-instruct", "--temperature", "0", "--max-tokens", "40", input=script)
    assert r.returncode == 0, r.stderr
    assert "Ada" in r.stdout  # remembered across turns
    assert "Paris" in r.stdout
    assert "conversation cleared" in r.stdout


def test_models_pull_is_idempotent_and_list_shows_it(smollm2):
    r = run_cli("models", "pull", "smollm2-135m-instruct")
    assert r.returncode == 0, r.stderr
    assert "already present" in r.stdout and "fetching" not in r.stderr
    r = run_cli("models", "list")
    assert "smollm2-135m-instruct" in r.stdout and "pulled" in r.stdout


def test_models_pull_offline_says_what_to_do(tmp_path):
    offline = {"ALIGNCHAT_HOME": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
               "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "", "PIP_RETRIES": "0",
               "PIP_DEFAULT_TIMEOUT": "2", "PIP_CONFIG_FILE": os.devnull}
    r = run_cli("models", "pull", "smollm2-135m-instruct", env=offline, timeout=120)
    assert r.returncode == 2
    assert "cannot pull smollm2-135m-instruct" in r.stderr and "--from-file" in r.stderr
    assert "Traceback" not in r.stderr


def test_import_export_and_corrupt_checkpoint(tmp_path, tiny_ckpt):
    out = tmp_path / "exported"
    r = run_cli("export", str(tiny_ckpt), "--format", "hf", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    r = run_cli("import", str(out), "--out", str(tmp_path / "reimported"))
    assert r.returncode == 0, r.stderr
    r = run_cli("generate", "--model", str(tmp_path / "reimported"), "--prompt", "hi", "--max-tokens", "5")
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 10)
    r = run_cli("generate", "--model", str(broken), "--prompt", "hi")
    assert r.returncode == 2
    assert "model.safetensors" in r.stderr and "Traceback" not in r.stderr


def test_unknown_model_is_a_clear_error():
    r = run_cli("generate", "--model", "no-such-model", "--prompt", "hi")
    assert r.returncode == 2 and "no-such-model" in r.stderr
