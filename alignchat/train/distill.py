"""`alignchat distill`: knowledge distillation from a teacher model into a (smaller) student.

Subcommands:
- `white-box`: the student learns the teacher's token distributions. On every target token the loss is
  `alpha·T²·KL(p_teacher,T ‖ p_student,T) + (1 − alpha)·cross-entropy(data)` (Hinton et al. 2015: both
  distributions softened by the temperature T; T² keeps the gradient's scale as T changes). The data is
  either a shard directory from `alignchat tokenize` (a corpus: every token is a target) or SFT JSONL
  (conversations: assistant tokens only, through the one chat template, packed as in `alignchat sft`).
  Written on the shared training loop (`train.loop.Trainer`), so checkpoints, exact `--resume`, the
  metrics log, the progress bar and DDP/FSDP under torchrun are those of `sft` and `pretrain`.
- `black-box`: the teacher, one of our models or any OpenAI-compatible endpoint (the shared client layer,
  `alignchat.client`, flags `--teacher-model` | `--teacher-endpoint URL`), answers prompts; each answer
  becomes an SFT record (the project's schema, `data.comparisons.validate_sft_record`) with its provenance
  (`source: distill:<teacher>`, `meta.teacher`, `meta.sampling`), and `alignchat sft` trains on the file.

Notable choices:
- The student starts from the teacher cut to `--student-layers` (`15` keeps 15 of the blocks evenly spaced:
  every other one of 30, blocks 0, 2, …, 28; or a comma list of block indices), from another checkpoint
  (`--student`), or fresh from a shape (`--student-config`: a preset name or a config.json; vocabulary the
  teacher's). Embeddings, the final norm and the output layer are copied with the kept blocks.
- White-box needs the same tokenizer on both sides (the distributions are over the same token ids); a
  mismatch is a clear error that points to black-box distillation. A vocabulary padded past the tokenizer
  (pretraining rounds it up) takes part in the cross-entropy but not in the KL.
- The teacher runs in `no_grad`, in eval mode, frozen, on the student's device, and only at the positions
  that carry a target, where the output layer (a large part of a small model's cost) is applied.
- `val_loss` is the held-out cross-entropy of the data alone (the teacher is not run for validation), so
  a distilled student and one trained on the data alone are compared on the same measure; the training
  log has `kl` and `ce` per token beside the mixed `loss`.
- Black-box resumes: prompts already answered in `--out` are skipped, and answers are written as they come
  (every `chunk` prompts, atomically). An answer cut off by `max_tokens` is dropped unless `keep_truncated`,
  with `min_distinct_2` one that loops (character-bigram Distinct-2 below it), and with `drop_echoes` one
  that repeats the request instead of answering it (a base model behind a few-shot prefix sometimes writes
  the question again; trained on, such a record teaches the student to echo).
- Context distillation (`--context FILE`, Askell et al. 2021): a base model, which has no chat format, is
  the teacher through a few-shot prefix; it completes `prefix + prompt` as raw text, stopping where its next
  example would begin (a new line opening as the prompt's line does), and the record pairs the *plain*
  prompt with that answer, so SFT teaches the student to answer in the chat template as the base model does
  after the examples.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F

from ..client.sampling import SAMPLING_DEFAULTS
from ..errors import UserError
from ..settings import add_settings_arguments, setting, settings_from_args
from .loop import (IGNORE_INDEX, LossOutput, TrainConfig, Trainer, add_stage_arguments, finish_run, init_distributed,
                   is_sharded, stage_settings, unpack_batch)

DISTILL_TRAIN_DEFAULTS = dict(max_steps=300, batch_size=8, seq_len=256, lr=1e-4, min_lr_ratio=0.1,
                              warmup_steps=20, weight_decay=0.0, eval_every=100, eval_batches=20, save_every=100,
                              sample_every=0, log_every=5)


@dataclasses.dataclass
class WhiteBoxConfig:
    """`alignchat distill white-box`'s settings."""

    teacher_model: str = setting("", "the teacher: checkpoint dir, registry name, .gguf file or Hugging Face dir "
                                     "(required; the same tokenizer as the student)")
    student: str = setting("", "start the student from this model (default: the teacher, cut to --student-layers)")
    student_layers: str = setting("", "keep N of the teacher's blocks evenly spaced (15 of 30: blocks 0, 2, …, 28) "
                                      "or a comma list of block indices; empty: all of them")
    student_config: str = setting("", "a freshly initialised student of this shape instead: a preset name or a "
                                      "config.json (its vocabulary is the teacher's)")
    data: list[str] = setting(help="a shard directory from `alignchat tokenize` (corpus), or SFT JSONL file(s) "
                                   "(conversations; loss on assistant tokens) (required)", factory=list)
    val_data: str = setting("", "held-out SFT JSONL for the validation loss (default: val_fraction of --data; "
                                "a shard directory uses its own val split)")
    val_fraction: float = setting(0.05, "share of SFT --data held out by hash for the validation loss")
    temperature: float = setting(2.0, "softmax temperature T of both distributions in the KL term")
    alpha: float = setting(0.5, "weight of the distillation term: alpha·T²·KL + (1 − alpha)·cross-entropy; "
                                "0 = the data alone, 1 = the teacher alone")
    packing: bool = setting(True, "SFT data: pack several conversations per row (block-diagonal attention)")
    trainable: str = setting("all", "all, or last:N (train only the student's last N blocks and the final norm)")
    train: TrainConfig = setting(help="optimisation, schedule, logging and checkpoints",
                                 factory=lambda: TrainConfig(out_dir="runs/distill", **DISTILL_TRAIN_DEFAULTS))


@dataclasses.dataclass
class BlackBoxConfig:
    """`alignchat distill black-box`'s settings (the teacher: the shared model flags, `--teacher-model` or
    `--teacher-endpoint URL`)."""

    prompts: str = setting("", "prompts: JSONL ({\"prompt\": [messages]}, {\"messages\": [...]} or {\"prompt\": "
                               "\"text\"}) or a text file, one prompt a line (required)")
    out: str = setting("", "output SFT JSONL; prompts already answered in it are skipped (required)")
    system: str = setting("", "a system prompt put in front of every prompt (and kept in the record)")
    max_tokens: int = setting(SAMPLING_DEFAULTS.max_tokens, "maximum new tokens per answer")
    temperature: float = setting(SAMPLING_DEFAULTS.temperature, "sampling temperature (0 = greedy)")
    top_p: float = setting(SAMPLING_DEFAULTS.top_p, "nucleus sampling mass")
    seed: int = setting(0, "base seed: prompt i of the file is answered with seed + i, so a rerun draws the same")
    keep_truncated: bool = setting(False, "keep answers cut off at max_tokens (default: drop them)")
    context: str = setting("", "context distillation: a text file holding a few-shot prefix that ends in {prompt}; "
                               "the teacher completes it, with the prompt's one user turn put in, as raw text "
                               "(no chat template), so a base model answers as its examples do, and stops where "
                               "its next example would begin (a new line opening as the {prompt} line does); "
                               "the record keeps the plain conversation")
    repetition_penalty: float = setting(1.0, "the teacher's repetition penalty (>1 discourages repeated tokens)")
    min_distinct_2: float = setting(0.0, "drop answers whose character-bigram Distinct-2 is below this "
                                         "(degenerate repetition); 0 keeps all")
    drop_echoes: bool = setting(False, "drop answers that repeat the request instead of answering it (open with "
                                       "the whole request, or have most character pairs in it: eval.metrics.echoes)")
    teacher_name: str = setting("", "the teacher's name in the records' provenance (default: the client's name)")
    chunk: int = setting(16, "prompts per write (progress survives interruption)")
    quiet: bool = setting(False, "no progress bar")


# --------------------------------------------------------------------------------------------------------
# the student
# --------------------------------------------------------------------------------------------------------
def parse_layers(spec: str, n_layers: int) -> list[int]:
    """Block indices to keep: 'N' (N evenly spaced, the first block included) or 'i,j,k'."""
    spec = spec.strip()
    if not spec:
        return list(range(n_layers))
    try:
        if "," in spec:
            keep = [int(x) for x in spec.split(",") if x.strip()]
        else:
            n = int(spec)
            if not 1 <= n <= n_layers:
                raise UserError(f"student_layers: {n} is not between 1 and the teacher's {n_layers} blocks")
            keep = [i * n_layers // n for i in range(n)]
    except ValueError:
        raise UserError(f"student_layers must be a number or a comma list of block indices, not {spec!r}") from None
    if not keep or any(not 0 <= i < n_layers for i in keep) or len(set(keep)) != len(keep):
        raise UserError(f"student_layers {spec!r}: block indices must be distinct and in 0..{n_layers - 1}")
    return sorted(keep)


def keep_layers(model, keep: list[int]):
    """A new Transformer made of `model`'s embeddings, the blocks `keep` (in order) and its output layers."""
    from ..checkpoint import build_model
    cfg = dataclasses.replace(model.cfg, n_layers=len(keep))
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.layers."):
            _, _, idx, rest = name.split(".", 3)
            if int(idx) in keep:
                state[f"model.layers.{keep.index(int(idx))}.{rest}"] = tensor.detach().clone()
        else:
            state[name] = tensor.detach().clone()
    dtype = next(model.parameters()).dtype
    return build_model(cfg, state, Path("<student>"), dtype)


def fresh_student(spec: str, teacher_cfg, seed: int):
    from ..config import PRESETS, ModelConfig, preset
    from ..model import Transformer
    if spec in PRESETS:
        cfg = preset(spec)
    elif Path(spec).is_file():
        try:
            cfg = ModelConfig.load(spec)
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise UserError(f"student_config {spec}: not a model config ({e})") from None
    else:
        raise UserError(f"student_config {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file")
    cfg = dataclasses.replace(cfg, vocab_size=teacher_cfg.vocab_size, max_seq_len=teacher_cfg.max_seq_len,
                              bos_token_id=teacher_cfg.bos_token_id, eos_token_id=teacher_cfg.eos_token_id)
    torch.manual_seed(seed)
    return Transformer(cfg).init_weights(seed=seed)


def tokenizer_identity(tok) -> str:
    """What must agree for two tokenizers to give the same ids: the model (vocabulary, merges), the added
    tokens and the pre-tokenizer."""
    spec = json.loads(tok.hf.to_str())
    keep = {k: spec.get(k) for k in ("model", "added_tokens", "pre_tokenizer", "normalizer")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def check_same_tokenizer(teacher_tok, student_tok, teacher: str, student: str) -> None:
    if tokenizer_identity(teacher_tok) != tokenizer_identity(student_tok):
        raise UserError(
            f"the teacher ({teacher}, {teacher_tok.vocab_size} tokens) and the student ({student}, "
            f"{student_tok.vocab_size} tokens) have different tokenizers; white-box distillation compares "
            "their distributions over the same token ids, so it needs one tokenizer. For a teacher with "
            "another tokenizer, write its answers as SFT data with `alignchat distill black-box` and train "
            "on them with `alignchat sft`")


# --------------------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------------------
def distill_loss(teacher, temperature: float, alpha: float, vocab: int):
    """`loss_fn(model, batch)` for `Trainer`: alpha·T²·KL(teacher_T ‖ student_T) + (1 − alpha)·CE, summed
    over target tokens (KL over the first `vocab` ids). In eval mode: the cross-entropy alone."""
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, not {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"alpha must be between 0 and 1, not {alpha}")
    T = float(temperature)

    def loss_fn(model, batch) -> LossOutput:
        inputs, targets, kwargs = unpack_batch(batch)
        keep = targets != IGNORE_INDEX
        n = int(keep.sum())
        if is_sharded(model):  # a sharded output layer runs inside the module's forward
            logits = model(inputs, **kwargs)[keep].float()
        else:
            inner = getattr(model, "module", model)
            logits = inner.logits_from_hidden(model(inputs, return_hidden=True, **kwargs)[keep]).float()
        ce = F.cross_entropy(logits, targets[keep], reduction="sum")
        if not model.training or alpha == 0.0:
            return LossOutput(ce, n, tokens=inputs.numel(), metrics={"ce": float(ce.detach()) / max(n, 1)})
        with torch.no_grad():
            t_logits = teacher.logits_from_hidden(teacher(inputs, return_hidden=True, **kwargs)[keep]).float()
        log_s = F.log_softmax(logits[:, :vocab] / T, dim=-1)
        log_t = F.log_softmax(t_logits[:, :vocab] / T, dim=-1)
        kl = F.kl_div(log_s, log_t, log_target=True, reduction="sum")  # Σ_tokens KL(teacher ‖ student)
        loss = alpha * T * T * kl + (1.0 - alpha) * ce
        return LossOutput(loss, n, tokens=inputs.numel(),
                          metrics={"kl": float(kl.detach()) / max(n, 1), "ce": float(ce.detach()) / max(n, 1)})

    return loss_fn


# --------------------------------------------------------------------------------------------------------
# white-box
# --------------------------------------------------------------------------------------------------------
def _is_shards(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").exists()


def _corpus_data(job: WhiteBoxConfig, cfg: TrainConfig, dist_info):
    from ..data.shards import TokenBatcher, TokenShards
    if len(job.data) != 1:
        raise UserError("give one shard directory as --data (or SFT JSONL files)")
    train = TokenShards(job.data[0], "train")
    val = TokenShards(job.data[0], "val") if train.manifest["splits"]["val"]["tokens"] else None
    data = TokenBatcher(train, cfg.batch_size, cfg.seq_len, rank=dist_info.rank, world_size=dist_info.world_size,
                        seed=cfg.seed)
    val_fn = None
    if val is not None and (len(val) - 1) // cfg.seq_len >= dist_info.world_size:
        per_rank = min(cfg.batch_size, (len(val) - 1) // cfg.seq_len // dist_info.world_size)
        n_eval = min(cfg.eval_batches, (len(val) - 1) // cfg.seq_len // (per_rank * dist_info.world_size))

        def val_fn():  # the first windows of the val split, in order: the same set in every run
            return islice(TokenBatcher(val, per_rank, cfg.seq_len, rank=dist_info.rank,
                                       world_size=dist_info.world_size, shuffle=False), n_eval)
    return data, val_fn, {"kind": "corpus", "train_tokens": len(train), "val_tokens": len(val) if val else 0}, \
        (val.bytes_per_token if val is not None else None)


def _sft_data(job: WhiteBoxConfig, cfg: TrainConfig, tok, dist_info):
    from .sft import sft_batches
    b = sft_batches(job.data, tok, cfg, dist_info, val_data=job.val_data, val_fraction=job.val_fraction,
                    packing=job.packing)
    return b.data, b.val_fn, {"kind": "sft", "train": len(b.train_convs), "val": len(b.val_convs)}, None


def build_student(job: WhiteBoxConfig, teacher, teacher_tok, seed: int):
    """(student, what it was made from)."""
    from ..hub import load_model
    chosen = [n for n in ("student", "student_config") if getattr(job, n)]
    if len(chosen) > 1 or (chosen and job.student_layers):
        raise UserError("give one of --student, --student-config or --student-layers")
    if job.student:
        student, student_tok, _ = load_model(job.student)
        check_same_tokenizer(teacher_tok, student_tok, job.teacher_model, job.student)
        return student, {"from": job.student}
    if job.student_config:
        return fresh_student(job.student_config, teacher.cfg, seed), {"from": f"config:{job.student_config}"}
    keep = parse_layers(job.student_layers, teacher.cfg.n_layers)
    return keep_layers(teacher, keep), {"from": job.teacher_model, "layers": keep}


def run_white_box(args) -> int:
    from ..hub import load_model
    from .sft import apply_trainable

    job, _ = stage_settings(args, lambda given: WhiteBoxConfig())
    if not job.teacher_model:
        raise UserError("--teacher-model is required (the model whose distributions the student learns)")
    if not job.data:
        raise UserError("--data is required: a shard directory from `alignchat tokenize`, or SFT JSONL file(s)")
    cfg = job.train
    dist_info = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    teacher, tok, _ = load_model(job.teacher_model)
    student, made_from = build_student(job, teacher, tok, cfg.seed)
    if cfg.seq_len > min(student.cfg.max_seq_len, teacher.cfg.max_seq_len):
        raise UserError(f"seq_len {cfg.seq_len} exceeds the context of the teacher or the student")
    if student.cfg.vocab_size < tok.vocab_size:
        raise UserError(f"the student has {student.cfg.vocab_size} output ids, fewer than the tokenizer's "
                        f"{tok.vocab_size}")
    apply_trainable(student, job.trainable)
    teacher = teacher.to(dist_info.device).eval().requires_grad_(False)

    if len(job.data) == 1 and _is_shards(job.data[0]):
        data, val_fn, split, bytes_per_token = _corpus_data(job, cfg, dist_info)
    elif any(_is_shards(p) for p in job.data):
        raise UserError("--data: give either one shard directory or SFT JSONL files, not both")
    else:
        data, val_fn, split, bytes_per_token = _sft_data(job, cfg, tok, dist_info)

    loss_fn = distill_loss(teacher, job.temperature, job.alpha, tok.vocab_size)
    run_info = {"settings": dataclasses.asdict(job), "teacher": job.teacher_model, "student": made_from,
                "split": split}
    meta = {"parent": job.teacher_model, "teacher": job.teacher_model, "data": ",".join(job.data),
            "distill": {"temperature": job.temperature, "alpha": job.alpha, **made_from}}
    trainer = Trainer(student, cfg, data, loss_fn=loss_fn, val_batches=val_fn, tokenizer=tok, stage="distill",
                      meta=meta, bytes_per_token=bytes_per_token, dist_info=dist_info, run_info=run_info,
                      callbacks=getattr(args, "callbacks", ()))
    if dist_info.is_main:
        n_s, n_t = student.num_params(), teacher.num_params()
        print(f"distill white-box: {job.teacher_model} ({teacher.cfg.n_layers} blocks, {n_t / 1e6:.1f}M) → student "
              f"({student.cfg.n_layers} blocks, {n_s / 1e6:.1f}M) on {split['kind']} data; T={job.temperature}, "
              f"alpha={job.alpha}; {cfg.max_steps} steps on {dist_info.world_size} process(es) "
              f"({dist_info.device}) → {cfg.out_dir}")
    return finish_run(trainer, trainer.fit(resume=args.resume))


# --------------------------------------------------------------------------------------------------------
# black-box
# --------------------------------------------------------------------------------------------------------
def prompt_key(messages: list[dict]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def dropped_path(out: str) -> Path:
    """Where black-box keeps the prompts whose answers it dropped (so a rerun does not ask again)."""
    p = Path(out)
    return p.with_name(p.stem + ".dropped.jsonl")


def _consecutive_runs(items: list[tuple[int, str, list[dict]]]) -> list[list[tuple[int, str, list[dict]]]]:
    runs: list[list] = []
    for item in items:
        if runs and runs[-1][-1][0] + 1 == item[0]:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def read_context(path: str) -> str:
    """A context-distillation prefix: the file's text, which must hold `{prompt}` exactly once."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--context {path}: {e}") from e
    if text.count("{prompt}") != 1:
        raise UserError(f"--context {path}: the text must hold {{prompt}} exactly once, where the user's turn goes")
    return text


def context_stop(context: str) -> str:
    """Where the teacher's answer ends under a context: a new line that opens as the `{prompt}` line does
    ("\\nQ: " for a line "Q: {prompt}"), that is, the teacher beginning another example."""
    lead = context[:context.index("{prompt}")].rsplit("\n", 1)[-1]
    return "\n" + lead if lead.strip() else "\n\n"


def teacher_input(prompt: list[dict], context: str, where: str):
    """What the teacher is given for one prompt: the conversation itself, or with a context, the context's
    text with the conversation's one user turn in place of `{prompt}`."""
    if not context:
        return prompt
    if len(prompt) != 1 or prompt[0].get("role") != "user":
        raise UserError(f"{where}: with --context a prompt is one user turn (no system prompt or earlier turns)")
    return context.replace("{prompt}", prompt[0]["content"].strip())


def drop_reason(answer: str, finish_reason: str, cfg: BlackBoxConfig, request: str = "") -> str | None:
    """Why an answer to `request` (the last user turn) is not kept ('empty', 'length' without keep_truncated,
    'repetitive' under min_distinct_2, 'echo' with drop_echoes), or None to keep it."""
    from ..eval.metrics import char_distinct_2, echoes
    if not answer.strip():
        return "empty"
    if finish_reason == "length" and not cfg.keep_truncated:
        return "length"
    if cfg.min_distinct_2 and char_distinct_2(answer) < cfg.min_distinct_2:
        return "repetitive"
    if cfg.drop_echoes and echoes(answer, request):
        return "echo"
    return None


def answer_prompts(client, todo: list[tuple[int, str, list[dict]]], cfg: BlackBoxConfig, context: str = "") -> list:
    """The teacher's completions for (file index, where, prompt) items: prompt i of the file is sampled with
    seed cfg.seed + i whichever prompts were already answered, so a resumed run draws what one run would.
    Consecutive prompts go to the client as one batch (a batch gives prompt j the seed + j)."""
    from ..client import Sampling
    outs = []
    for run in _consecutive_runs(todo):
        sampling = Sampling(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed + run[0][0], stop=(context_stop(context),) if context else (),
                            repetition_penalty=cfg.repetition_penalty)
        outs += client.generate([teacher_input(p, context, w) for _, w, p in run], sampling)
    return outs


def sft_record(prompt: list[dict], answer: str, teacher: str, cfg: BlackBoxConfig, where: str,
               finish_reason: str, context_sha256: str = "") -> dict:
    """One SFT record in the project's schema, with the teacher, the sampling and any context as provenance."""
    from ..data.comparisons import validate_sft_record
    sampling = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens, "seed": cfg.seed}
    if cfg.repetition_penalty != 1.0:
        sampling["repetition_penalty"] = cfg.repetition_penalty
    meta = {"teacher": teacher, "prompt_from": where, "finish_reason": finish_reason, "sampling": sampling}
    if context_sha256:
        meta["context"] = {"file": cfg.context, "sha256": context_sha256}
    rec = {"messages": prompt + [{"role": "assistant", "content": answer}], "source": f"distill:{teacher}",
           "task": None, "format": "dialogue", "meta": meta}
    return validate_sft_record(rec, where)


def run_black_box(cfg: BlackBoxConfig, args) -> int:
    from ..client.cli import client_from_args
    from ..data.comparisons import iter_jsonl, write_jsonl
    from ..data.sft_data import read_sft_jsonl
    from .compare.prompts import read_prompts, with_system

    missing = [n for n in ("prompts", "out") if not getattr(cfg, n)]
    if missing:
        raise UserError(" and ".join(f"--{n}" for n in missing) + (" is" if len(missing) == 1 else " are")
                        + " required")
    if cfg.chunk < 1 or cfg.max_tokens < 1:
        raise UserError("chunk and max_tokens must be at least 1")
    if not 0.0 <= cfg.min_distinct_2 <= 1.0:
        raise UserError(f"min_distinct_2 must be in [0, 1], not {cfg.min_distinct_2}")
    if cfg.repetition_penalty <= 0:
        raise UserError(f"repetition_penalty must be > 0, not {cfg.repetition_penalty}")
    context = read_context(cfg.context) if cfg.context else ""
    context_sha = hashlib.sha256(context.encode("utf-8")).hexdigest() if context else ""
    prompts = [(where, with_system(p, cfg.system)) for where, p in read_prompts(cfg.prompts)]
    for where, p in prompts:  # a prompt the context cannot take is an error before the teacher loads
        teacher_input(p, context, where)
    records = read_sft_jsonl(cfg.out) if Path(cfg.out).exists() else []
    dropped = [obj for _, obj in iter_jsonl(dropped_path(cfg.out))] if dropped_path(cfg.out).exists() else []
    done = {prompt_key(r["messages"][:-1]) for r in records} | {prompt_key(d["prompt"]) for d in dropped}
    todo = [(i, w, p) for i, (w, p) in enumerate(prompts) if prompt_key(p) not in done]
    client = client_from_args(args, "teacher-") if todo else None
    if todo and client is None:
        raise UserError("give the teacher: --teacher-model NAME_OR_PATH or --teacher-endpoint URL")
    teacher = cfg.teacher_name or (client.name if client is not None else "")
    bar = None
    if todo and not cfg.quiet:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="distill black-box", dynamic_ncols=True, file=sys.stderr)
    new = cut = 0
    try:
        for start in range(0, len(todo), cfg.chunk):  # written as it goes: an interrupted run keeps its work
            chunk = todo[start:start + cfg.chunk]
            for (i, where, p), out in zip(chunk, answer_prompts(client, chunk, cfg, context)):
                answer = out.text.strip() if context else out.text
                request = next((m.get("content") or "" for m in reversed(p) if m.get("role") == "user"), "")
                why = drop_reason(answer, out.finish_reason, cfg, request)
                if why:
                    cut += 1
                    dropped.append({"prompt": p, "prompt_from": where, "finish_reason": out.finish_reason,
                                    "why": why})
                    continue
                records.append(sft_record(p, answer, teacher, cfg, where, out.finish_reason, context_sha))
                new += 1
            write_jsonl(cfg.out, records)
            if dropped:
                write_jsonl(dropped_path(cfg.out), dropped)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        if client is not None:
            client.close()
    print(json.dumps({"out": cfg.out, "new": new, "dropped": cut, "skipped_already_answered": len(prompts) - len(todo),
                      "records": len(records), "teacher": teacher}, ensure_ascii=False))
    return 0


# --------------------------------------------------------------------------------------------------------
# the verb
# --------------------------------------------------------------------------------------------------------
WHITE_READS = ("--teacher-model (a checkpoint, registry name, .gguf or Hugging Face dir), optionally --student or "
               "--student-config; --data: a shard directory from `alignchat tokenize` or SFT JSONL")
WHITE_WRITES = ("--out DIR: run.json, metrics.jsonl (loss, kl, ce, val_loss), step-N/ checkpoints + latest.json, "
                "final/ (the student: a checkpoint directory that chat, generate, sft and eval load)")
BLACK_READS = "--prompts (JSONL or text), and the teacher: --teacher-model or --teacher-endpoint URL"
BLACK_WRITES = ("--out FILE.jsonl: SFT records (messages + the teacher's answer; source distill:<teacher>, "
                "meta.teacher, meta.sampling) for `alignchat sft`; FILE.dropped.jsonl: prompts whose answers were "
                "cut off or empty")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..client.cli import add_client_args
    parser.description = ("Distil a teacher into a student: white-box (the teacher's token distributions) or "
                          "black-box (the teacher's answers as SFT data).")
    sub = parser.add_subparsers(dest="distill_cmd", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser("white-box", help="train a student on the teacher's token distributions (KL at a "
                                         "temperature, mixed with the data loss)")
    add_stage_arguments(p, WhiteBoxConfig(), reads=WHITE_READS, writes=WHITE_WRITES)
    p.set_defaults(distill_run=lambda args: run_white_box(args))
    p = sub.add_parser("black-box", help="the teacher (a local model or an OpenAI-compatible endpoint) answers "
                                         "prompts; the answers become SFT data")
    add_settings_arguments(p, BlackBoxConfig(), reads=BLACK_READS, writes=BLACK_WRITES,
                           notes="teacher flags: --teacher-model | --teacher-endpoint URL --teacher-endpoint-model "
                                 "NAME, --api-key-env VAR, --device, --dtype (the shared model flags)")
    add_client_args(p, prefix="teacher-", model_help="the teacher, one of our models (registry name, checkpoint, "
                                                     ".gguf or Hugging Face dir)")
    p.set_defaults(distill_run=lambda args: run_black_box(settings_from_args(args), args))


def run(args) -> int:
    return args.distill_run(args)
