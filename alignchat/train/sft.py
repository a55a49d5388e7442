"""`alignchat sft`: supervised fine-tuning on conversations — the second stage of the InstructGPT recipe.

Notable choices:
- Starts from anything `load_model` takes: our pretrained checkpoint (`runs/pretrain/final`), a registry
  model (`smollm2-135m-instruct`), a GGUF file or a Hugging Face directory. The result is a normal
  checkpoint directory, `OUT/final/`, that `alignchat chat` and `alignchat generate` load.
- Conversations are rendered by the model's own chat template (`Tokenizer.render_chat`), the same one
  serving uses; the loss is on assistant tokens only (every assistant turn of a multi-turn dialogue).
- Packing (default) fills rows with several conversations behind a block-diagonal attention mask and
  per-conversation positions, so nothing attends across examples; `packing=false` pads instead.
- Held-out loss on a validation split (a separate file, or a hash-chosen share of the training file), and
  exact match on held-out tasks: for each record of `eval_data`, the model answers the conversation up to
  its last assistant turn through the serving engine (greedy), and the answer is compared with the gold
  answer (the builder's `meta.answer`/`meta.aliases`, else that last turn). It is measured before
  training (the baseline) and after, so the gain is in the same log.
- `trainable=last:N` trains only the last N blocks (and the final norm): much cheaper on a CPU.
- `train_rows=template` trains the embedding rows of the chat template's control tokens (and `roles`: its
  role words) while every other row of the embedding (tied: the LM head) stays frozen, for a base model
  that has never seen its chat markers: a gradient mask on the embedding, no weight decay on it (so the
  frozen rows stay byte-identical under AdamW), and its own rate (`rows_lr`, a multiple of `lr`). The
  backward pass then runs through every block, frozen or not, to reach the embedding.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from ..errors import UserError
from ..eval.metrics import exact_match as answer_matches
from ..settings import setting
from .loop import TrainConfig, Trainer, add_stage_arguments, finish_run, init_distributed, stage_settings

SAMPLE_CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "用一句话介绍你自己。"}],
]


SFT_TRAIN_DEFAULTS = dict(max_steps=200, batch_size=8, seq_len=512, lr=5e-5, min_lr_ratio=0.1, warmup_steps=10,
                          weight_decay=0.0, eval_every=50, eval_batches=20, save_every=100, sample_every=0,
                          log_every=5)


@dataclasses.dataclass
class SFTConfig:
    """`alignchat sft`'s settings."""

    model: str = setting("smollm2-135m-instruct", "model to fine-tune: checkpoint dir, registry name, .gguf file "
                                                  "or Hugging Face dir")
    data: list[str] = setting(help="SFT JSONL file(s) (required)", factory=list)
    val_data: str = setting("", "held-out conversations for the validation loss (default: val_fraction of --data)")
    val_fraction: float = setting(0.05, "share of --data held out by hash for the validation loss, when no --val-data")
    eval_data: str = setting("", "held-out task items (SFT JSONL) for exact match (last assistant turn = reference)")
    eval_limit: int = setting(100, "at most this many exact-match items")
    eval_max_tokens: int = setting(48, "tokens generated per exact-match answer")
    eval_batch: int = setting(8, "exact-match prompts decoded together (larger: faster on a CPU, more memory)")
    baseline_eval: bool = setting(True, "measure exact match before training too")
    packing: bool = setting(True, "pack several conversations per row (block-diagonal attention); false: pad")
    epochs: float = setting(0.0, "> 0: set max_steps to this many passes over the data")
    trainable: str = setting("all", "all, or last:N (train only the last N blocks and the final norm)")
    train_rows: str = setting("", "train only these rows of the embedding (tied: the LM head), the others frozen: "
                                  "comma-separated 'template' (the chat template's control tokens, e.g. "
                                  "<start_of_turn>, <end_of_turn>), 'roles' (its role words' tokens) or literal "
                                  "tokens; empty: the embedding as --trainable says")
    rows_lr: float = setting(1.0, "learning rate of the --train-rows rows as a multiple of lr (never weight-decayed)")
    train: TrainConfig = setting(help="optimisation, schedule, logging and checkpoints",
                                 factory=lambda: TrainConfig(out_dir="runs/sft", **SFT_TRAIN_DEFAULTS))


def add_arguments(parser) -> None:
    add_stage_arguments(
        parser, SFTConfig(), own_section="sft",
        reads="--model (a checkpoint, registry name, .gguf or Hugging Face dir), --data SFT JSONL, optional "
              "--val-data and --eval-data",
        writes="--out DIR: run.json, metrics.jsonl (loss, val_loss, exact_match before/after), "
               "exact_match_before/after.jsonl, step-N/ checkpoints + latest.json, final/ (a checkpoint directory)")


def build_run(args) -> tuple[SFTConfig, TrainConfig]:
    job, _ = stage_settings(args, lambda given: SFTConfig())
    if not job.data:
        raise UserError("--data FILE.jsonl is required (SFT conversations; see docs/training.md for the schema)")
    return job, job.train


def _held_out(rec: dict, fraction: float) -> bool:
    key = str(rec.get("id") or json.dumps(rec["messages"], ensure_ascii=False))
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2**64
    return h < fraction


class SFTBatches(NamedTuple):
    """SFT training batches, the validation batches and what they were made of."""

    data: Any  # an `SFTBatcher` over the training rows
    val_fn: Callable[[], Iterable[dict]] | None  # fresh held-out batches for this rank; None: no held-out data
    train_convs: list  # encoded training conversations
    val_convs: list  # encoded held-out conversations
    rows: list  # training rows (packed or padded)


def sft_batches(paths: list[str], tok, cfg: TrainConfig, dist_info, *, val_data: str = "",
                val_fraction: float = 0.05, packing: bool = True) -> SFTBatches:
    """The conversations of the SFT JSONL `paths` through the chat template, held out by hash
    (`val_fraction`) unless `val_data` is given, packed (or padded) into rows of `cfg.seq_len` and batched
    for this rank; the validation batches are at most `cfg.eval_batches` of the held-out rows."""
    from ..data.sft_data import SFTBatcher, encode_records, eval_batches, one_per_row, pack, read_sft_jsonl

    records: list[dict] = []
    for path in paths:
        records += read_sft_jsonl(path)
    if val_data:
        train_recs, val_recs = records, read_sft_jsonl(val_data)
    else:
        train_recs = [r for r in records if not _held_out(r, val_fraction)]
        val_recs = [r for r in records if _held_out(r, val_fraction)]
    train_convs = encode_records(train_recs, tok, cfg.seq_len)
    val_convs = encode_records(val_recs, tok, cfg.seq_len)
    if not train_convs:
        raise UserError(f"{', '.join(paths)}: no usable training conversations")
    rows = pack(train_convs, cfg.seq_len) if packing else one_per_row(train_convs)
    val_rows = pack(val_convs, cfg.seq_len) if packing else one_per_row(val_convs)
    data = SFTBatcher(rows, cfg.batch_size, tok.pad_id, rank=dist_info.rank, world_size=dist_info.world_size,
                      seed=cfg.seed, where=", ".join(paths))

    def val_fn():
        return eval_batches(val_rows, cfg.batch_size, tok.pad_id, dist_info.rank, dist_info.world_size,
                            limit=cfg.eval_batches)
    return SFTBatches(data, val_fn if val_rows else None, train_convs, val_convs, rows)


def split_for_eval(messages: list[dict]) -> tuple[list[dict], str]:
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def gold_answers(rec: dict) -> list[str]:
    """Accepted answers: the builder's short `meta.answer` + `meta.aliases`, else the last assistant turn."""
    meta = rec.get("meta") or {}
    if isinstance(meta.get("answer"), str) and meta["answer"].strip():
        return [meta["answer"]] + [a for a in meta.get("aliases") or [] if isinstance(a, str)]
    return [split_for_eval(rec["messages"])[1]]


_ANSWER_MARKERS = re.compile(r"(?:the answer is|answer:|答案是|答案：)\s*(.+)", re.IGNORECASE)


def answer_candidates(text: str) -> list[str]:
    """Readings of a response to compare with the gold answer: all of it, its first line, what follows
    the last "the answer is"/"答案是", and a leading option letter ("B. Paris" → "B")."""
    text = text.strip()
    cands = [text, text.split("\n", 1)[0]]
    found = _ANSWER_MARKERS.findall(text)
    if found:
        cands.append(re.split(r"[。.\n]", found[-1].strip(), maxsplit=1)[0])
    m = re.match(r"^\(?([A-Ea-e])[).:\s]", text + " ")
    if m:
        cands.append(m.group(1))
    return cands


def is_correct(response: str, golds: list[str]) -> bool:
    return any(answer_matches(c, golds) for c in answer_candidates(response))


def exact_match(model, tok, records: list[dict], max_tokens: int = 48, batch: int = 8,
                show: int = 3) -> dict:
    """Greedy answers through the serving engine, scored against each record's gold answer(s).

    `items` in the result has one entry per scored record (id, task, format, gold, answer, correct,
    ended_turn), so two runs on the same records can be compared item by item."""
    from ..engine import Engine, SamplingParams

    prompts, golds, scored, too_long = [], [], [], 0
    for rec in records:
        ctx, _ = split_for_eval(rec["messages"])
        if not ctx:
            continue
        ids = tok.render_chat(ctx, add_generation_prompt=True).ids
        if len(ids) + max_tokens > model.cfg.max_seq_len:
            too_long += 1  # does not fit the model's context with room for the answer
            continue
        prompts.append(ids)
        golds.append(gold_answers(rec))
        scored.append(rec)
    if not prompts:
        return {"exact_match": float("nan"), "n": 0, "ended_turn": float("nan"), "examples": [], "items": [],
                "skipped_too_long": too_long}
    was_training = model.training
    longest = max(map(len, prompts))
    eng = Engine(model, tok, max_batch=min(batch, len(prompts)),
                 max_seq_len=min(model.cfg.max_seq_len, longest + max_tokens + 1))
    outs = eng.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0), progress=False)
    model.train(was_training)
    hits = [is_correct(o.text, g) for o, g in zip(outs, golds)]
    ended = [o.finish_reason == "stop" for o in outs]
    return {"exact_match": sum(hits) / len(hits), "n": len(hits), "ended_turn": sum(ended) / len(ended),
            "skipped_too_long": too_long,
            "examples": [{"gold": g[0], "answer": o.text, "correct": h}
                         for o, g, h in list(zip(outs, golds, hits))[:show]],
            "items": [{"id": r.get("id"), "task": r.get("task"), "format": r.get("format"), "gold": g[0],
                       "answer": o.text, "correct": h, "ended_turn": e}
                      for r, o, g, h, e in zip(scored, outs, golds, hits, ended)]}


def write_eval_items(path: Path, result: dict) -> None:
    """Per-item exact-match results as JSONL (written atomically), for paired before/after comparisons."""
    from ..fetch import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in result["items"]))


def embedding_rows(tok, spec: str) -> list[int]:
    """The token ids a `train_rows` spec names, sorted: 'template' = the control tokens the chat template
    writes around turns (the bos token excluded), 'roles' = the other non-blank tokens it writes (its role
    words), anything else = a literal token of the vocabulary."""
    convo = [{"role": r, "content": ""} for r in ("system", "user", "assistant")]
    written = tok.render_chat(convo, add_generation_prompt=True).ids
    rows: set[int] = set()
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        if item == "template":
            rows |= {i for i in written if i in tok.special_ids and i != tok.bos_id}
        elif item == "roles":
            rows |= {i for i in written if i not in tok.special_ids and tok.decode([i], skip_special=False).strip()}
        elif (i := tok.token_to_id(item)) is not None:
            rows.add(i)
        else:
            raise UserError(f"train_rows: {item!r} is not 'template', 'roles' or a token of the vocabulary")
    if spec.strip() and not rows:
        raise UserError(f"train_rows={spec!r} names no token of this model's tokenizer")
    return sorted(rows)


def apply_trainable(model, spec: str, rows: Iterable[int] = (), rows_lr: float = 1.0) -> None:
    """Freeze what `spec` does not train ('all', or 'last:N': the last N blocks and the final norm); with
    `rows`, the embedding (and an untied LM head) trains those rows only: a gradient hook zeroes the
    others, and `no_decay`/`lr_scale` on the weight tell `train.loop.build_optimizer` to put it in a group
    without weight decay at `rows_lr` × the rate, so AdamW leaves the frozen rows byte-identical."""
    m = re.fullmatch(r"all|last:(\d+)", spec)
    if not m:
        raise UserError(f"trainable must be 'all' or 'last:N', not {spec!r}")
    if m.group(1) is not None:
        n = int(m.group(1))
        for p in model.parameters():
            p.requires_grad_(False)
        for block in list(model.model.layers)[-n:] if n else []:
            for p in block.parameters():
                p.requires_grad_(True)
        for p in model.model.norm.parameters():
            p.requires_grad_(True)
    rows = sorted(set(rows))
    if not rows:
        return
    import torch
    if rows_lr <= 0:
        raise UserError(f"rows_lr must be > 0, not {rows_lr}")
    for weight in {id(w): w for w in (model.model.embed_tokens.weight, getattr(model.lm_head, "weight", None))
                   if w is not None}.values():
        if rows[-1] >= weight.shape[0]:
            raise UserError(f"train_rows: token id {rows[-1]} is outside the embedding's {weight.shape[0]} rows")
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
        mask[rows] = 1
        weight.requires_grad_(True)
        weight.register_hook(lambda g, mask=mask: g * mask.to(g.device, g.dtype))
        weight.no_decay, weight.lr_scale = True, rows_lr


def run(args) -> int:
    import torch

    from ..hub import load_model
    from ..data.sft_data import read_sft_jsonl

    job, train_cfg = build_run(args)
    dist_info = init_distributed(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    out = Path(train_cfg.out_dir)
    resuming = args.resume and (out / "latest.json").exists()
    model, tok, parent_meta = load_model(job.model)
    apply_trainable(model, job.trainable, embedding_rows(tok, job.train_rows), job.rows_lr)
    if train_cfg.seq_len > model.cfg.max_seq_len:
        raise UserError(f"seq_len {train_cfg.seq_len} exceeds the model's context {model.cfg.max_seq_len}")

    data, val_fn, train_convs, val_convs, rows = sft_batches(
        job.data, tok, train_cfg, dist_info, val_data=job.val_data, val_fraction=job.val_fraction,
        packing=job.packing)
    eval_recs = read_sft_jsonl(job.eval_data)[: job.eval_limit] if job.eval_data else []
    if job.epochs > 0:
        train_cfg = dataclasses.replace(
            train_cfg, max_steps=max(1, math.ceil(job.epochs * data.batches_per_epoch / train_cfg.grad_accum)))

    def sample_fn(m, step):
        from ..engine import Engine, SamplingParams
        eng = Engine(m, tok, max_batch=len(SAMPLE_CHATS), max_seq_len=min(m.cfg.max_seq_len, 256))
        return [eng.chat(c, SamplingParams(max_tokens=train_cfg.sample_tokens, temperature=0.0)).text
                for c in SAMPLE_CHATS]

    n_targets = sum(c.num_targets for c in train_convs)
    if dist_info.is_main:
        print(f"sft: {job.model} → {out}; {len(train_convs)} train / {len(val_convs)} held-out conversations, "
              f"{len(eval_recs)} exact-match items; {len(rows)} {'packed' if job.packing else 'padded'} rows, "
              f"{n_targets:,} assistant target tokens; {train_cfg.max_steps} steps on "
              f"{dist_info.world_size} process(es) ({dist_info.device})")
    metrics: dict = {}
    if eval_recs and job.baseline_eval and not resuming and dist_info.is_main and not train_cfg.fsdp:
        base = exact_match(model, tok, eval_recs, job.eval_max_tokens, batch=job.eval_batch)
        out.mkdir(parents=True, exist_ok=True)
        write_eval_items(out / "exact_match_before.jsonl", base)
        metrics["exact_match_before"] = base["exact_match"]
        metrics["ended_turn_before"] = base["ended_turn"]
        print(f"exact match before SFT: {base['exact_match']:.3f} on {base['n']} held-out items"
              + (f" ({base['skipped_too_long']} longer than the context skipped)" if base["skipped_too_long"] else ""))

    run_info = {"settings": dataclasses.asdict(dataclasses.replace(job, train=train_cfg)),
                "parent": parent_meta.get("source", job.model),
                "split": {"train": len(train_convs), "val": len(val_convs), "eval": len(eval_recs)}}
    trainer = Trainer(model, train_cfg, data, val_batches=val_fn, tokenizer=tok, stage="sft",
                      meta={"parent": str(job.model), "data": ",".join(job.data)},
                      sample_fn=sample_fn if dist_info.world_size == 1 else None, dist_info=dist_info,
                      run_info=run_info, callbacks=getattr(args, "callbacks", ()))
    if "exact_match_before" in metrics:
        trainer.log({"step": trainer.step, "exact_match": metrics["exact_match_before"],
                     "ended_turn": metrics["ended_turn_before"], "phase": "before"})
    result = trainer.fit(resume=args.resume)
    if eval_recs and dist_info.is_main and not train_cfg.fsdp:  # a sharded model can't generate on one rank
        after = exact_match(trainer.raw_model, tok, eval_recs, job.eval_max_tokens, batch=job.eval_batch)
        write_eval_items(out / "exact_match_after.jsonl", after)
        metrics.update(exact_match=after["exact_match"], ended_turn=after["ended_turn"], eval_items=after["n"],
                       eval_skipped_too_long=after["skipped_too_long"])
        trainer.log({"step": trainer.step, "exact_match": after["exact_match"], "ended_turn": after["ended_turn"],
                     "phase": "after", "examples": after["examples"]})
        print(f"exact match after SFT: {after['exact_match']:.3f} on {after['n']} held-out items "
              f"(ended turn: {after['ended_turn']:.2f})")
    trainer.last_val = {**trainer.last_val, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    return finish_run(trainer, {**result, **metrics})
