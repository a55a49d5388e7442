"""`alignchat pretrain`: train a GPT from scratch on token shards (next-token prediction, left to right).

Notable choices:
- A run is a model preset (`tiny` for a CPU in minutes; `small`, `gpt2-124m`, … for GPUs) plus training
  defaults that suit it, and any field of either can be set, as a flag (`--lr 1e-3`), as `KEY=VALUE`
  (`lr=1e-3`, `model.dim=128`, `train.batch_size=4`) or in a `--config run.toml|yaml` file (flat or with
  `[model]`/`[train]` tables): the preset's defaults, then the file, then the command line.
- The vocabulary follows the tokenizer that made the shards (rounded up to a multiple of 64 for fast
  matmuls) unless `model.vocab_size` is set.
- `--resume` starts from `OUT/run.json`'s settings, applies any new ones (e.g. a larger `max_steps`) and
  continues from the last complete checkpoint: same weights, optimizer, data position and RNG.
- Under `torchrun --nproc_per_node=N` the same command runs DDP; add `fsdp=true` for FSDP2.
- The result is `OUT/final/`, a normal checkpoint directory (`alignchat chat OUT/final` works).
"""
from __future__ import annotations

import dataclasses
from itertools import islice

from ..config import PRESETS, ModelConfig, preset
from ..errors import UserError
from ..settings import setting
from .loop import TrainConfig, Trainer, add_stage_arguments, finish_run, init_distributed, stage_settings

# training defaults per model preset (everything else: TrainConfig's defaults)
TRAIN_DEFAULTS: dict[str, dict] = {
    "tiny": dict(max_steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30, eval_every=50,
                 eval_batches=8, save_every=100, sample_every=100, log_every=10),
    "small": dict(max_steps=5000, batch_size=32, seq_len=512, lr=1e-3, warmup_steps=200, eval_every=250,
                  save_every=500, sample_every=500, log_every=10),
    "gpt2-124m": dict(max_steps=19073, batch_size=16, grad_accum=32, seq_len=1024, lr=6e-4, warmup_steps=715,
                      weight_decay=0.1, eval_every=250, save_every=1000, sample_every=1000, log_every=10),
}
SAMPLE_PROMPTS = ["The ", "Once upon a time", "春天"]
OUT = "runs/pretrain"


def train_config_for(preset_name: str, out_dir: str = OUT) -> TrainConfig:
    defaults = TRAIN_DEFAULTS.get(preset_name, TRAIN_DEFAULTS["small"])
    return TrainConfig(out_dir=out_dir, **defaults)


@dataclasses.dataclass
class PretrainConfig:
    """`alignchat pretrain`'s settings."""

    data: str = setting("", "shard directory written by `alignchat tokenize` (required)")
    tokenizer: str = setting("", "tokenizer.json or a directory holding it (default: the shard directory)")
    preset: str = setting("tiny", "model size, with training defaults to match", choices=sorted(PRESETS))
    init: str = setting("", "start from this checkpoint's weights instead of random ones (continued pretraining)")
    model: ModelConfig = setting(help="the model's shape (defaults: the preset's)", factory=lambda: preset("tiny"))
    train: TrainConfig = setting(help="optimisation, schedule, logging and checkpoints (defaults: the preset's)",
                                 factory=lambda: train_config_for("tiny"))


def defaults_for(preset_name: str) -> PretrainConfig:
    if preset_name not in PRESETS:
        raise UserError(f"setting preset: unknown preset {preset_name!r}; known: {', '.join(sorted(PRESETS))}")
    return PretrainConfig(preset=preset_name, model=preset(preset_name), train=train_config_for(preset_name))


def add_arguments(parser) -> None:
    add_stage_arguments(
        parser, PretrainConfig(),
        reads="--data SHARD_DIR (from `alignchat tokenize`: train/val shards, manifest.json, the tokenizer); "
              "--init CKPT if given",
        writes="--out DIR: run.json, metrics.jsonl, step-N/ checkpoints + latest.json, final/ (a checkpoint "
               "directory that chat, generate, sft and eval load)")


def build_run(args) -> tuple[PretrainConfig, dict]:
    """The run's settings, and what the user set (`alignchat.settings.given_settings`)."""
    job, given = stage_settings(args, lambda given: defaults_for(str(given.get("preset", "tiny"))))
    if not job.data:
        raise UserError("--data SHARD_DIR is required (make one with `alignchat tokenize`)")
    return job, given


def run(args) -> int:
    import torch

    from ..hub import load_model
    from ..data.shards import TokenBatcher, TokenShards
    from ..model import Transformer
    from ..tokenizer import Tokenizer

    job, given = build_run(args)
    model_cfg, train_cfg = job.model, job.train
    train = TokenShards(job.data, "train")
    val = TokenShards(job.data, "val") if train.manifest["splits"]["val"]["tokens"] else None
    tok = Tokenizer.load(job.tokenizer or job.data)
    if "model.vocab_size" not in given and not args.resume and not job.init:
        model_cfg = dataclasses.replace(model_cfg, vocab_size=64 * ((tok.vocab_size + 63) // 64))
    if tok.vocab_size > model_cfg.vocab_size or train.vocab_size > model_cfg.vocab_size:
        raise UserError(f"the tokenizer has {tok.vocab_size} tokens but model.vocab_size is {model_cfg.vocab_size}")
    if train_cfg.seq_len > model_cfg.max_seq_len:
        model_cfg = dataclasses.replace(model_cfg, max_seq_len=train_cfg.seq_len)
    if tok.eos_id is not None and model_cfg.eos_token_id is None:
        model_cfg = dataclasses.replace(model_cfg, eos_token_id=tok.eos_id)

    dist_info = init_distributed(train_cfg.device)
    if job.init:
        model, _, _ = load_model(job.init)
        model_cfg = model.cfg
    else:
        torch.manual_seed(train_cfg.seed)
        model = Transformer(model_cfg).init_weights(seed=train_cfg.seed)

    data = TokenBatcher(train, train_cfg.batch_size, train_cfg.seq_len, rank=dist_info.rank,
                        world_size=dist_info.world_size, seed=train_cfg.seed)
    val_batches = None
    if val is not None and len(val) > train_cfg.seq_len:
        # the validation set is the first eval_batches global batches of windows (in order), so it is the same
        # whatever the split into processes and micro-batches
        global_rows = train_cfg.batch_size * dist_info.world_size
        available = (len(val) - 1) // train_cfg.seq_len // global_rows
        n_eval = min(train_cfg.eval_batches * train_cfg.grad_accum, available)
        per_rank = train_cfg.batch_size
        if n_eval == 0:  # a small validation split: fewer rows per batch
            per_rank, n_eval = max(1, (len(val) - 1) // train_cfg.seq_len // dist_info.world_size), 1

        def val_batches():
            return islice(TokenBatcher(val, per_rank, train_cfg.seq_len, rank=dist_info.rank,
                                       world_size=dist_info.world_size, shuffle=False), n_eval)

    def sample_fn(m, step):
        from ..engine import Engine, SamplingParams
        prompts = [tok.encode(p) for p in SAMPLE_PROMPTS]
        prompts = [p for p in prompts if p]
        eng = Engine(m, tok, max_batch=len(prompts),
                     max_seq_len=min(m.cfg.max_seq_len, max(map(len, prompts)) + train_cfg.sample_tokens + 1))
        outs = eng.generate(prompts, SamplingParams(max_tokens=train_cfg.sample_tokens, temperature=0.0))
        return [tok.decode(p) + o.text for p, o in zip(prompts, outs)]

    run_info = {"settings": dataclasses.asdict(dataclasses.replace(job, model=model_cfg, train=train_cfg))}
    trainer = Trainer(model, train_cfg, data, val_batches=val_batches, tokenizer=tok, stage="pretrain",
                      meta={"parent": job.init or None, "data": str(job.data)},
                      bytes_per_token=val.bytes_per_token if val is not None else None,
                      sample_fn=sample_fn if train_cfg.sample_every or dist_info.world_size == 1 else None,
                      dist_info=dist_info, run_info=run_info,
                      callbacks=getattr(args, "callbacks", ()))
    if dist_info.is_main:
        n = sum(p.numel() for p in model.parameters())
        print(f"pretrain: {n / 1e6:.2f}M parameters, {len(train):,} training tokens, "
              f"{train_cfg.batch_size * train_cfg.grad_accum * dist_info.world_size * train_cfg.seq_len:,} tokens/step, "
              f"{dist_info.world_size} process(es) on {dist_info.device}, out: {train_cfg.out_dir}")
    return finish_run(trainer, trainer.fit(resume=args.resume))
