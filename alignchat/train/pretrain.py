"""`alignchat pretrain`: train a GPT from scratch on token shards (next-token prediction, left to right).

Notable choices:
- A run is a model preset (`tiny` for a CPU in minutes; `small`, `gpt2-124m`, … for GPUs) plus training
  defaults that suit it, and any field of either can be overridden: `lr=1e-3`, `model.dim=128`,
  `train.batch_size=4`, or a `--config run.toml|yaml` file with `[model]`/`[train]` sections.
- The vocabulary follows the tokenizer that made the shards (rounded up to a multiple of 64 for fast
  matmuls) unless `model.vocab_size` is set.
- `--resume` reads `OUT/run.json`, applies any new overrides (e.g. a larger `max_steps`) and continues
  from the last complete checkpoint: same weights, optimizer, data position and RNG.
- Under `torchrun --nproc_per_node=N` the same command runs DDP; add `fsdp=true` for FSDP2.
- The result is `OUT/final/`, a normal checkpoint directory (`alignchat chat OUT/final` works).
"""
from __future__ import annotations

import dataclasses
import json
from itertools import islice
from pathlib import Path

from ..config import PRESETS, ModelConfig, preset
from ..errors import UserError
from .loop import (TrainConfig, Trainer, apply_routed, gather_overrides, init_distributed, route_overrides)

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


@dataclasses.dataclass
class PretrainConfig:
    data: str = ""  # shard directory written by `alignchat tokenize`
    tokenizer: str = ""  # tokenizer.json or a directory holding it; default: the shard directory
    preset: str = "tiny"
    init: str = ""  # start from this checkpoint's weights instead of random ones (continued pretraining)


def train_config_for(preset_name: str, out_dir: str) -> TrainConfig:
    defaults = TRAIN_DEFAULTS.get(preset_name, TRAIN_DEFAULTS["small"])
    return TrainConfig(out_dir=out_dir, **defaults)


def add_arguments(parser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override any setting: lr=1e-3, max_steps=500, model.dim=128, train.batch_size=4, "
                             "fsdp=true, compile=true (see docs/training.md for the full list)")
    parser.add_argument("--data", help="shard directory from `alignchat tokenize` (required unless --resume)")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="model size and matching training defaults (default: tiny)")
    parser.add_argument("--out", default="runs/pretrain", help="run directory (default: runs/pretrain)")
    parser.add_argument("--tokenizer", help="tokenizer.json or a directory with it (default: the shard directory)")
    parser.add_argument("--init", help="checkpoint to start from instead of random weights")
    parser.add_argument("--config", help="TOML/YAML/JSON file of settings ([model] and [train] sections or flat)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (exactly: optimizer, data, RNG)")


def build_run(args) -> tuple[PretrainConfig, ModelConfig, TrainConfig, dict]:
    out = Path(args.out)
    flat = gather_overrides(list(args.overrides or []), args.config)
    if args.resume and (out / "run.json").exists():
        saved = json.loads((out / "run.json").read_text())
        job = PretrainConfig(**saved["job"])
        model_cfg = ModelConfig.from_dict(saved["model"])
        train_cfg = TrainConfig(**saved["train"])
    else:
        job = PretrainConfig(preset=args.preset or "tiny")
        model_cfg = preset(job.preset)
        train_cfg = train_config_for(job.preset, str(out))
    for name in ("data", "tokenizer", "init"):
        if getattr(args, name, None):
            setattr(job, name, getattr(args, name))
    routed = route_overrides(flat, {"train": train_cfg, "model": model_cfg, "job": job})
    train_cfg = apply_routed(train_cfg, routed["train"])
    model_cfg = apply_routed(model_cfg, routed["model"])
    job = apply_routed(job, routed["job"])
    train_cfg = dataclasses.replace(train_cfg, out_dir=str(out))
    if not job.data:
        raise UserError("--data SHARD_DIR is required (make one with `alignchat tokenize`)")
    return job, model_cfg, train_cfg, routed["model"]


def run(args) -> int:
    import torch

    from ..checkpoint import load_model
    from ..data.shards import TokenBatcher, TokenShards
    from ..model import Transformer
    from ..tokenizer import Tokenizer

    job, model_cfg, train_cfg, model_overrides = build_run(args)
    train = TokenShards(job.data, "train")
    val = TokenShards(job.data, "val") if train.manifest["splits"]["val"]["tokens"] else None
    tok = Tokenizer.load(job.tokenizer or job.data)
    if "vocab_size" not in model_overrides and not args.resume and not job.init:
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

    run_info = {"job": dataclasses.asdict(job), "model": model_cfg.to_dict()}
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
    result = trainer.fit(resume=args.resume)
    final = trainer.save_final()
    if dist_info.is_main:
        summary = {k: round(v, 4) for k, v in result.items() if isinstance(v, float)}
        print(f"done: {final}  {json.dumps(summary)}")
    if dist_info.enabled:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0
