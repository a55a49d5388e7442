"""Test helpers for the built-in tools: a tiny checkpoint fine-tuned (with the project's SFT) to call tools on
a few fixed questions, and the conversations it was trained on.

The model is honest about what it does: a random tiny transformer trained for 150 steps (seconds on one
CPU core) on three conversations, written in the project's one tools format (`Tokenizer.render_chat(tools=
...)`) with the registry's own tool definitions:
- offered `calculator`: "What is 37×43?" -> a `<tool_call>` to `calculator` with `{"expression": "37*43"}`
  -> the tool's answer -> "1591";
- offered `python`: "Run a loop forever." -> `python` with `while True: pass` -> "It timed out.";
- offered `python`: "Print ten megabytes." -> `python` printing 10 MB -> "Too much output.".
So when a server offers that tool and the question is asked, the model writes the call itself, and the
result comes from the real tool running the arguments the model generated.
"""
from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

QUESTION = "What is 37×43?"
EXPRESSION = "37*43"
ANSWER = "1591"


LOOP_QUESTION, LOOP_CODE, LOOP_ANSWER = "Run a loop forever.", "while True:\n    pass", "It timed out."
PRINT_QUESTION, PRINT_CODE, PRINT_ANSWER = "Print ten megabytes.", "print('x' * 10_000_000)", "Too much output."


def _conversation(question: str, tool: str, arguments: dict, result: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": tool, "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_0", "content": result},
            {"role": "assistant", "content": answer}]


def training_records() -> list[dict]:
    from alignchat.tools import tool_specs
    rows = [("calculator", _conversation(QUESTION, "calculator", {"expression": EXPRESSION}, ANSWER, ANSWER)),
            ("python", _conversation(LOOP_QUESTION, "python", {"code": LOOP_CODE}, "error: timed out after 2 s",
                                     LOOP_ANSWER)),
            ("python", _conversation(PRINT_QUESTION, "python", {"code": PRINT_CODE},
                                     "error: printed more than 64 KiB; stopped", PRINT_ANSWER))]
    return [{"id": f"tools-{i}", "messages": msgs, "tools": tool_specs([tool]), "source": "test"}
            for i, (tool, msgs) in enumerate(rows)]


@functools.lru_cache(maxsize=1)
def tools_ckpt() -> Path:
    """Train (once per test process) and return the checkpoint directory `.../run/final`."""
    from conftest import TINY_CORPUS, make_tiny_model

    from alignchat.checkpoint import save_checkpoint
    from alignchat.cli import main
    from alignchat.tokenizer import train_bpe
    from alignchat.tools_format import tools_block

    root = Path(tempfile.mkdtemp(prefix="alignchat-tools-"))
    records = training_records()
    # a tokenizer that has seen the tools blocks, so each whole conversation fits a short context
    texts = [t for r in records for t in (tools_block(r["tools"]), json.dumps(r, ensure_ascii=False))]
    tok = train_bpe(TINY_CORPUS + texts * 4, vocab_size=800, min_frequency=1)
    for r in records:
        n = len(tok.render_chat(r["messages"], tools=r["tools"]).ids)
        assert n < 480, n
    save_checkpoint(root / "base", make_tiny_model(tok.vocab_size, max_seq_len=512), tok, meta={"stage": "test"})
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for _ in range(8) for r in records),
                    encoding="utf-8")
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64-wide model gains nothing from more threads, and loses much on a busy machine
    try:
        rc = main(["sft", "--model", str(root / "base"), "--data", str(data), "--out", str(root / "run"),
                   "max_steps=150", "batch_size=2", "seq_len=512", "lr=3e-3", "warmup_steps=5", "eval_every=0",
                   "save_every=0", "progress=false", "val_fraction=0", "baseline_eval=false", "packing=false"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return root / "run" / "final"
