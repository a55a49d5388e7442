"""SFT data: demonstration JSONL → token ids with an assistant-only loss mask → packed or padded batches.

Notable choices:
- Every conversation goes through `Tokenizer.render_chat`, the one chat template serving also uses, so
  training and serving see identical token sequences. Its assistant mask selects the loss: the model is
  trained on every assistant turn (content and end-of-turn token), never on system or user text.
- Packing puts several conversations in one row without letting them see each other: the attention mask
  is block-diagonal (causal inside each conversation) and positions restart at 0 for each one, so a packed
  row computes exactly what the conversations would compute alone. Padding mode puts one conversation
  per row; pad tokens attend only to pad tokens and carry no loss.
- A bad line (invalid JSON, wrong schema) is reported with its file and line number and skipped; the rest
  of the file still loads.
- `SFTBatcher` has the same exactly-resumable, rank-aware position as `alignchat.data.shards.TokenBatcher`.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import UserError
from .comparisons import validate_sft_record
from .readers import BadRecord  # one 'file:line: reason' record for every reader

IGNORE_INDEX = -100


def _check_record(rec) -> str | None:
    """Why `rec` is not a valid SFT record (the shared schema, `comparisons.validate_sft_record`), or None."""
    try:
        validate_sft_record(rec, "")
    except UserError as e:
        return str(e).removeprefix(": ")
    return None


def read_sft_jsonl(path: str | Path, errors: list[BadRecord] | None = None,
                   warn: Callable[[str], None] | None = None) -> list[dict]:
    """Read SFT records; bad lines are appended to `errors`, passed to `warn` (default: stderr) and skipped."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    records = []
    with open(path, encoding="utf-8", errors="strict") as f:
        lineno = 0
        while True:
            lineno += 1
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                bad = BadRecord(str(path), lineno, f"not UTF-8 ({e.reason})")
                if errors is not None:
                    errors.append(bad)
                warn(str(bad))
                break
            if not line:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                reason = _check_record(rec)
            except json.JSONDecodeError as e:
                reason = f"invalid JSON ({e.msg} at column {e.colno})"
            if reason:
                bad = BadRecord(str(path), lineno, reason)
                if errors is not None:
                    errors.append(bad)
                warn(str(bad))
                continue
            rec.setdefault("id", f"{path.name}:{lineno}")
            rec["_where"] = f"{path}:{lineno}"
            records.append(rec)
    return records


@dataclass
class EncodedConversation:
    """input_ids[t] predicts targets[t]; targets are IGNORE_INDEX outside assistant tokens."""

    id: str
    input_ids: list[int]
    targets: list[int]

    @property
    def num_targets(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


def encode_conversation(tokenizer, messages: list[dict], max_len: int, id: str = "",
                        tools: list[dict] | None = None) -> EncodedConversation | None:
    """Render with the chat template (and the record's `tools`, as serving renders them) and shift by one;
    truncate to `max_len` inputs. None if no targets left."""
    r = tokenizer.render_chat(messages, tools=tools)
    ids, mask = r.ids[: max_len + 1], r.assistant_mask[: max_len + 1]
    if len(ids) < 2:
        return None
    targets = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    enc = EncodedConversation(id=id, input_ids=ids[:-1], targets=targets)
    return enc if enc.num_targets else None


def encode_records(records: Iterable[dict], tokenizer, max_len: int, errors: list[BadRecord] | None = None,
                   warn: Callable[[str], None] | None = None, show: int = 3) -> list[EncodedConversation]:
    """Encode records; a record the template rejects is reported (file:line) and skipped. Conversations
    whose assistant turns all lie beyond `max_len` are skipped too, reported as one summary line."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    out, too_long = [], []
    for rec in records:
        where = str(rec.get("_where", rec.get("id", "?")))
        path, _, line = where.rpartition(":")
        try:
            enc = encode_conversation(tokenizer, rec["messages"], max_len, id=str(rec.get("id", "")),
                                      tools=rec.get("tools"))
        except UserError as e:
            bad = BadRecord(path or where, int(line) if line.isdigit() else 0, str(e))
            if errors is not None:
                errors.append(bad)
            warn(str(bad))
            continue
        if enc is None:
            too_long.append(where)
            continue
        out.append(enc)
    if too_long:
        warn(f"skipped {len(too_long)} conversation(s) with no assistant token within the first {max_len} "
             f"tokens (raise seq_len to keep them), e.g. {', '.join(too_long[:show])}")
    return out


@dataclass
class Row:
    """One training row: several conversations (packing) or one (padding)."""

    input_ids: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    doc_ids: list[int] = field(default_factory=list)
    conv_ids: list[str] = field(default_factory=list)  # which conversations, in row order

    def add(self, conv: EncodedConversation) -> None:
        doc = (max(self.doc_ids) + 1) if self.doc_ids else 0
        n = len(conv.input_ids)
        self.input_ids += conv.input_ids
        self.targets += conv.targets
        self.positions += list(range(n))
        self.doc_ids += [doc] * n
        self.conv_ids.append(conv.id)

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(conversations: list[EncodedConversation], seq_len: int, lookback: int = 64) -> list[Row]:
    """First-fit packing into rows of at most `seq_len` tokens (deterministic, order-preserving-ish)."""
    rows: list[Row] = []
    for conv in conversations:
        n = len(conv.input_ids)
        for row in rows[-lookback:]:
            if len(row) + n <= seq_len:
                row.add(conv)
                break
        else:
            row = Row()
            row.add(conv)
            rows.append(row)
    return rows


def one_per_row(conversations: list[EncodedConversation]) -> list[Row]:
    rows = []
    for conv in conversations:
        row = Row()
        row.add(conv)
        rows.append(row)
    return rows


def collate(rows: list[Row], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Stack rows into tensors, padding to `length` (default: the longest row).

    attn_mask[b, 0, i, j] is True when token i may attend token j: same conversation and j <= i.
    Pad tokens form their own block, so every query has at least one key and no pad is ever attended
    by a real token.
    """
    T = length or max(len(r) for r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    tgt = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    doc = torch.full((B, T), -1, dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r)
        ids[b, :n] = torch.tensor(r.input_ids)
        tgt[b, :n] = torch.tensor(r.targets)
        pos[b, :n] = torch.tensor(r.positions)
        doc[b, :n] = torch.tensor(r.doc_ids)
        if n < T:
            pos[b, n:] = torch.arange(T - n)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    same_doc = doc[:, :, None] == doc[:, None, :]
    mask = (same_doc & causal).unsqueeze(1)
    return {"input_ids": ids, "targets": tgt, "positions": pos, "attn_mask": mask}


class SFTBatcher:
    """Resumable, rank-aware batches of rows: rank r of W takes slice r of each global batch."""

    def __init__(self, rows: list[Row], batch_size: int, pad_id: int, *, seq_len: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True, where: str = "SFT data"):
        self.rows, self.batch_size, self.pad_id, self.seq_len = rows, batch_size, pad_id, seq_len
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.global_batch = batch_size * world_size
        if len(rows) < self.global_batch:
            raise UserError(f"{where}: {len(rows)} training rows, fewer than one global batch "
                            f"({batch_size} × {world_size} processes); lower batch_size or add data")
        self.batches_per_epoch = len(rows) // self.global_batch
        self.epoch, self.index = 0, 0
        self._order, self._order_epoch = None, -1

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "global_batch": self.global_batch,
                "rows": len(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("global_batch") != self.global_batch or state.get("rows") != len(self.rows):
            raise UserError("cannot resume: the SFT data or the global batch size changed since the checkpoint")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])

    def _row_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            n = len(self.rows)
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle \
                else np.arange(n)
            self._order_epoch = self.epoch
        return self._order

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        order = self._row_order()
        first = self.index * self.global_batch + self.rank * self.batch_size
        picked = [self.rows[int(i)] for i in order[first:first + self.batch_size]]
        self.index += 1
        return collate(picked, self.pad_id, self.seq_len)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()


def eval_batches(rows: list[Row], batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1,
                 limit: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Every validation row once, in order, split across ranks (for held-out loss)."""
    mine = rows[rank::world_size]
    if limit:
        mine = mine[: limit * batch_size]
    for i in range(0, len(mine), batch_size):
        yield collate(mine[i:i + batch_size], pad_id)
