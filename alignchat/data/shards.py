"""Tokenized, memory-mapped token shards with a manifest, and a resumable, rank-aware batch reader.

Notable choices:
- A shard is a flat binary file of token ids (uint16 when the vocabulary fits, else uint32), read with
  `numpy.memmap`, so a corpus far larger than memory streams from disk and many processes share pages.
- Documents are joined with the end-of-text token between them (as GPT-2 training data is), so the model
  learns where a text ends.
- The train/validation split is decided per document from a hash of its text, so it is deterministic,
  independent of input order and of how the corpus is chunked: the same document always lands in the same
  split, and duplicates never straddle it.
- `manifest.json` is written last (atomically), so a directory with a manifest is always complete.
  It records the byte count of each split, which turns a loss in nats/token into bits per byte.
- `TokenBatcher` cuts the token stream into windows of `seq_len + 1`, shuffles window order per epoch with
  a seeded permutation, and hands rank r of W the r-th slice of each global batch. Its whole position is
  `(epoch, index)`, so `state_dict()` / `load_state_dict()` resume exactly, and one process with batch
  B·W sees exactly the same sequences as W processes with batch B.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import UserError
from ..fetch import atomic_write_text

MANIFEST = "manifest.json"
FORMAT = "alignchat-shards"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def is_validation(text: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic per-document split: a keyed hash of the text below the fraction → validation."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


@dataclass
class ShardWriterStats:
    documents: int = 0
    tokens: int = 0
    bytes: int = 0


class _SplitWriter:
    """Appends token ids to numbered shard files of at most `shard_tokens` tokens each."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.stats = ShardWriterStats()
        self._buf: list[np.ndarray] = []
        self._buf_tokens = 0

    def add(self, ids: list[int], nbytes: int) -> None:
        arr = np.asarray(ids, dtype=self.dtype)
        self._buf.append(arr)
        self._buf_tokens += len(arr)
        self.stats.documents += 1
        self.stats.tokens += len(arr)
        self.stats.bytes += nbytes
        while self._buf_tokens >= self.shard_tokens:
            flat = np.concatenate(self._buf)
            self._write(flat[: self.shard_tokens])
            rest = flat[self.shard_tokens:]
            self._buf, self._buf_tokens = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self._buf_tokens:
            self._write(np.concatenate(self._buf))
        self._buf, self._buf_tokens = [], 0

    def _write(self, arr: np.ndarray) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        path = self.out_dir / name
        tmp = path.with_name(f".{name}.tmp")
        with open(tmp, "wb") as f:
            f.write(arr.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.shards.append({"file": name, "tokens": int(len(arr))})


def write_shards(documents: Iterable[str], tokenizer, out_dir: str | Path, *, val_fraction: float = 0.01,
                 shard_tokens: int = 100_000_000, split_seed: int = 0, batch_docs: int = 256,
                 progress=None, source: str = "") -> dict:
    """Tokenize `documents` into `out_dir`/{train,val}-NNNNN.bin plus manifest.json; return the manifest.

    Each document is followed by the tokenizer's end-of-text id. `progress`, if given, is called with the
    number of documents done after each batch (e.g. a tqdm's `update`).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)  # the directory is incomplete until we finish
    for old in out_dir.glob("*.bin"):
        old.unlink()
    dtype = token_dtype(tokenizer.vocab_size)
    eos = tokenizer.eos_id
    if eos is None:
        raise UserError("the tokenizer has no end-of-text token; shards need one to separate documents")
    writers = {s: _SplitWriter(out_dir, s, dtype, shard_tokens) for s in SPLITS}
    encode_batch = getattr(tokenizer, "encode_batch", None)

    def flush(batch: list[str]) -> None:
        encoded = encode_batch(batch) if encode_batch else [tokenizer.encode(t) for t in batch]
        for text, ids in zip(batch, encoded):
            split = "val" if is_validation(text, val_fraction, split_seed) else "train"
            writers[split].add(list(ids) + [eos], len(text.encode("utf-8")))
        if progress:
            progress(len(batch))

    batch: list[str] = []
    for doc in documents:
        if not doc:
            continue
        batch.append(doc)
        if len(batch) >= batch_docs:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    for w in writers.values():
        w.close()
    manifest = {
        "format": FORMAT,
        "version": 1,
        "dtype": dtype.name,
        "vocab_size": int(tokenizer.vocab_size),
        "eos_id": int(eos),
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "source": source,
        "splits": {s: {"documents": w.stats.documents, "tokens": w.stats.tokens, "bytes": w.stats.bytes,
                       "shards": w.shards} for s, w in writers.items()},
    }
    atomic_write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.exists():
        raise UserError(f"{path}: no shard manifest (run `alignchat tokenize` first, or it was interrupted)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not an alignchat shard manifest")
    return manifest


class TokenShards:
    """One split of a shard directory as a single virtual array of tokens (memory-mapped)."""

    def __init__(self, shard_dir: str | Path, split: str = "train"):
        self.dir = Path(shard_dir)
        self.manifest = read_manifest(self.dir)
        if split not in self.manifest["splits"]:
            raise UserError(f"{self.dir / MANIFEST}: no split {split!r}")
        info = self.manifest["splits"][split]
        self.split = split
        self.dtype = np.dtype(self.manifest["dtype"])
        self.arrays: list[np.ndarray] = []
        for shard in info["shards"]:
            path = self.dir / shard["file"]
            expected = shard["tokens"] * self.dtype.itemsize
            if not path.exists() or path.stat().st_size != expected:
                raise UserError(f"{path}: missing or truncated shard (expected {expected} bytes)")
            self.arrays.append(np.memmap(path, dtype=self.dtype, mode="r"))
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.num_tokens = int(self.offsets[-1])
        self.num_bytes = int(info["bytes"])
        self.vocab_size = int(self.manifest["vocab_size"])

    @property
    def bytes_per_token(self) -> float:
        return self.num_bytes / max(1, self.num_tokens)

    def __len__(self) -> int:
        return self.num_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64, spanning shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos = start
        while filled < length:
            local = pos - int(self.offsets[shard])
            take = min(length - filled, len(self.arrays[shard]) - local)
            out[filled:filled + take] = self.arrays[shard][local:local + take]
            filled += take
            pos += take
            shard += 1
        return out


class TokenBatcher:
    """Yields `(inputs, targets)` int64 tensors of shape (batch_size, seq_len) for one rank.

    The stream is cut into windows of seq_len+1 tokens with stride seq_len. A global batch is
    batch_size·world_size windows; rank r takes slice r. With `shuffle`, window order is a permutation
    seeded by (seed, epoch); otherwise windows run in order (validation). Epochs roll over automatically.
    """

    def __init__(self, shards: TokenShards, batch_size: int, seq_len: int, *, rank: int = 0,
                 world_size: int = 1, seed: int = 0, shuffle: bool = True):
        self.shards, self.batch_size, self.seq_len = shards, batch_size, seq_len
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.num_windows = (len(shards) - 1) // seq_len
        self.global_batch = batch_size * world_size
        if self.num_windows < self.global_batch:
            raise UserError(
                f"{shards.dir}: the {shards.split} split has {len(shards)} tokens, fewer than one global batch "
                f"({self.global_batch} × {seq_len + 1}); use more data or a smaller batch/seq_len")
        self.batches_per_epoch = self.num_windows // self.global_batch
        self.epoch, self.index = 0, 0  # index: global batches consumed in this epoch
        self._order: np.ndarray | None = None
        self._order_epoch = -1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "seq_len": self.seq_len,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("global_batch", self.global_batch) != self.global_batch or \
                state.get("seq_len", self.seq_len) != self.seq_len:
            raise UserError("cannot resume: the global batch size or seq_len differs from the saved run "
                            f"(saved {state.get('global_batch')}×{state.get('seq_len')}, "
                            f"now {self.global_batch}×{self.seq_len})")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _window_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.num_windows)
            else:
                self._order = np.arange(self.num_windows)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self):
        import torch

        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        order = self._window_order()
        first = self.index * self.global_batch + self.rank * self.batch_size
        windows = order[first:first + self.batch_size]
        rows = np.stack([self.shards.read(int(w) * self.seq_len, self.seq_len + 1) for w in windows])
        self.index += 1
        t = torch.from_numpy(rows)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def __iter__(self) -> Iterator:
        while True:
            yield self.next_batch()
