"""Token shards: round trip through memory-mapped files, deterministic split, exact resume, rank slicing."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from alignchat.data.shards import TokenBatcher, TokenShards, is_validation, read_manifest, write_shards
from alignchat.errors import UserError

from conftest import alignchat_cmd

DOCS = [f"Document number {i}: the cat sat on the mat {i % 7} times. 第{i}篇文章，猫坐在垫子上。" for i in range(300)]


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("shards")
    # small shards so reads cross file boundaries
    write_shards(DOCS, tiny_tokenizer, out, val_fraction=0.1, shard_tokens=997)
    return out


def test_round_trip_tokens_match_the_tokenizer(shard_dir, tiny_tokenizer):
    manifest = read_manifest(shard_dir)
    assert manifest["dtype"] == "uint16"
    train, val = TokenShards(shard_dir, "train"), TokenShards(shard_dir, "val")
    assert len(train.arrays) > 2, "the corpus should span several shard files"
    eos = tiny_tokenizer.eos_id
    expected = {"train": [], "val": []}
    for d in DOCS:
        expected["val" if is_validation(d, 0.1) else "train"] += tiny_tokenizer.encode(d) + [eos]
    assert train.read(0, len(train)).tolist() == expected["train"]
    assert val.read(0, len(val)).tolist() == expected["val"]
    # documents decode back to the text, split on the end-of-text token
    stream = train.read(0, len(train)).tolist()
    first_doc = stream[: stream.index(eos)]
    assert tiny_tokenizer.decode(first_doc) in DOCS
    assert manifest["splits"]["train"]["bytes"] == sum(len(d.encode()) for d in DOCS if not is_validation(d, 0.1))


def test_split_is_deterministic_and_order_independent(tmp_path, tiny_tokenizer):
    a = write_shards(DOCS, tiny_tokenizer, tmp_path / "a", val_fraction=0.1)
    b = write_shards(list(reversed(DOCS)), tiny_tokenizer, tmp_path / "b", val_fraction=0.1)
    assert a["splits"]["val"]["documents"] == b["splits"]["val"]["documents"] > 0
    va = TokenShards(tmp_path / "a", "val").read(0, a["splits"]["val"]["tokens"])
    vb = TokenShards(tmp_path / "b", "val").read(0, b["splits"]["val"]["tokens"])
    assert sorted(va.tolist()) == sorted(vb.tolist())  # same documents, other order
    assert 0.03 < a["splits"]["val"]["documents"] / len(DOCS) < 0.2


def test_batches_are_shifted_windows(shard_dir):
    train = TokenShards(shard_dir)
    b = TokenBatcher(train, batch_size=3, seq_len=16, seed=1)
    x, y = b.next_batch()
    assert x.shape == y.shape == (3, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_resume_continues_exactly(shard_dir):
    train = TokenShards(shard_dir)
    full = TokenBatcher(train, 8, 64, seed=3)
    reference = [full.next_batch()[0] for _ in range(50)]  # runs past one epoch
    assert full.epoch >= 1
    first = TokenBatcher(train, 8, 64, seed=3)
    got = [first.next_batch()[0] for _ in range(17)]
    state = json.loads(json.dumps(first.state_dict()))  # survives serialisation
    second = TokenBatcher(train, 8, 64, seed=3)
    second.load_state_dict(state)
    got += [second.next_batch()[0] for _ in range(33)]
    assert all(torch.equal(a, b) for a, b in zip(reference, got))
    with pytest.raises(UserError, match="global batch"):
        TokenBatcher(train, 4, 64, seed=3).load_state_dict(state)


def test_ranks_partition_the_single_process_batch(shard_dir):
    train = TokenShards(shard_dir)
    single = TokenBatcher(train, 4, 8, seed=5)
    ranks = [TokenBatcher(train, 2, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(10):
        x, _ = single.next_batch()
        parts = torch.cat([rk.next_batch()[0] for rk in ranks])
        assert torch.equal(x, parts)


def test_truncated_shard_and_missing_manifest_are_clear_errors(tmp_path, tiny_tokenizer):
    write_shards(DOCS[:50], tiny_tokenizer, tmp_path / "s", val_fraction=0.0)
    shard = next((tmp_path / "s").glob("train-*.bin"))
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        TokenShards(tmp_path / "s")
    with pytest.raises(UserError, match="manifest"):
        TokenShards(tmp_path)


def test_large_vocab_uses_uint32(tmp_path, tiny_tokenizer):
    class Wide:  # the real tokenizer, reporting a vocabulary beyond 16 bits
        vocab_size = 70000
        eos_id = tiny_tokenizer.eos_id
        encode = staticmethod(tiny_tokenizer.encode)

    m = write_shards(DOCS[:20], Wide(), tmp_path, val_fraction=0.0)
    assert m["dtype"] == "uint32"
    assert np.array_equal(TokenShards(tmp_path).read(0, 5), tiny_tokenizer.encode(DOCS[0])[:5])


def test_tokenize_cli_reads_files_and_reports_bad_records(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path / "tok")
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:100]), encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n".join([json.dumps({"text": d}) for d in DOCS[100:150]] +
                                                ["{broken", json.dumps({"body": "no text field"})]) + "\n")
    proc = subprocess.run(alignchat_cmd() + ["tokenize", str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"),
                                             "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "out"),
                                             "--val-fraction", "0.1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "b.jsonl:51" in proc.stderr and "b.jsonl:52" in proc.stderr
    m = read_manifest(tmp_path / "out")
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 150
    assert (tmp_path / "out" / "tokenizer.json").exists()
