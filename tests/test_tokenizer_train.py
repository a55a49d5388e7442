"""`alignchat tokenizer train`: a byte-level BPE on a Chinese+English mixture with the chat special tokens,
reporting tokens per character per language. The corpus is the chatterbot-corpus small talk (en + zh),
fetched from PyPI, plus the builder's synthetic arithmetic problems, so it runs in seconds."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignchat.data import sources
from alignchat.data.instructions import make_arithmetic_tasks
from alignchat.data.tokenizer_cli import language_of
from alignchat.tokenizer import CHAT_SPECIAL_TOKENS, Tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    import yaml
    d = tmp_path_factory.mktemp("corpus")
    files = sources.CARRIERS["chatterbot"].fetch(quiet=True)
    lines = []
    for member, path in sorted(files.items()):
        for conv in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
            text = "\n".join(str(t) for t in conv if t)
            if text.strip():
                lines.append(json.dumps({"text": text}, ensure_ascii=False))
    for task in make_arithmetic_tasks(400, seed=0):
        lines += [json.dumps({"text": f"{it.fields['question']} {it.rationale}"}, ensure_ascii=False)
                  for it in task.items]
    corpus = d / "mix.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return corpus


def test_language_of():
    assert language_of("床前看月光，疑是地上霜。") == "zh"
    assert language_of("To be, or not to be") == "en"
    assert language_of("小明有5个苹果 and 3 pears") == "zh"
    assert language_of("1234 !!!") == "other"


def test_train_cli_reports_tokens_per_char(mixed_corpus, tmp_path):
    out = tmp_path / "tok"
    r = subprocess.run([sys.executable, "-m", "alignchat.cli", "tokenizer", "train", str(mixed_corpus),
                        "--out", str(out), "--vocab-size", "1000", "--no-progress"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "tokenizer_report.json").read_text())
    tpc = report["tokens_per_char"]
    # merges learned on both languages: well below raw UTF-8 bytes (1 for English, 3 for Chinese)
    assert 0 < tpc["en"] < 0.6 and 0 < tpc["zh"] < 2.0
    assert report["train_chars"]["zh"] > 0 and report["train_chars"]["en"] > 0
    assert json.loads(r.stdout.splitlines()[-1])["tokens_per_char"] == tpc

    tok = Tokenizer.load(out)
    assert tok.vocab_size == 1000
    for special in CHAT_SPECIAL_TOKENS:
        assert tok.token_to_id(special) is not None
        assert tok.encode(special) == [tok.token_to_id(special)]  # one token, never split
    for text in ("小明有12个苹果，又买了3盒。", "How many apples does Tom have now?", "表情😀 and ünïcödé"):
        assert tok.decode(tok.encode(text)) == text  # byte-level: lossless on anything
    rendered = tok.render_chat([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}])
    assert tok.token_to_id("<|im_end|>") in rendered.ids and any(rendered.assistant_mask)


def test_train_rejects_empty_input(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": 1}\n')
    r = subprocess.run([sys.executable, "-m", "alignchat.cli", "tokenizer", "train", str(empty), "--out",
                        str(tmp_path / "t"), "--no-progress"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "no text found" in r.stderr and "empty.jsonl:1" in r.stderr
