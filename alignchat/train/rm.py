"""`alignchat rm`: train a reward model r(x, y) on ranked comparisons (InstructGPT's RM stage).

Notable choices:
- The model is the SFT model's backbone plus a scalar head (`model.ScoredTransformer`), read at the
  response's end-of-turn token; its checkpoint is an ordinary checkpoint directory with
  `score_head.proj.{weight,bias}` beside the LM weights.
- Each ranking of K responses is one batch element: all K responses go through the model together and the
  loss is −1/C(K,2) Σ log σ(r_w − r_l) over the ranking's pairs (`rl_math.ranking_loss`).
- Reports pairwise accuracy on held-out comparisons (split by prompt) and on BIG-bench `hhh_alignment`.
- Stores reward normalisation statistics (mean and std of r over the training responses) in meta.json,
  so PPO can use normalised rewards (InstructGPT normalises so that SFT outputs score 0 on average).
- Training runs in the shared loop (`alignchat.train.loop.Trainer`): progress bar, metrics.jsonl,
  step checkpoints, exact resume, and DDP under `torchrun` (`rankings_per_batch` is per process; rank 0
  alone scores the finished model and writes it).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..model import ScoredTransformer
from ..settings import setting
from . import rl_math
from .loop import (LossOutput, TrainConfig, Trainer, add_stage_arguments, end_distributed, init_distributed, share,
                   stage_settings)
from .reward import RankingBatches, RewardScorer, collate_rankings


def reward_loss_fn(model, batch) -> LossOutput:
    scores = model(batch["input_ids"], score_index=batch["last"])
    per_ranking = [scores[batch["group"] == g] for g in range(len(batch["rankings"]))]
    losses = [rl_math.ranking_loss(r, rk) for r, rk in zip(per_ranking, batch["rankings"])]
    correct = total = 0
    for r, rk in zip(per_ranking, batch["rankings"]):
        c, t = rl_math.pairwise_accuracy(r.detach(), rk)
        correct, total = correct + c, total + t
    n = len(losses)
    return LossOutput(torch.stack(losses).sum(), n, tokens=int(batch["input_ids"].numel()),
                      metrics={"train_pair_acc": correct / max(total, 1)})


# --- the stage -----------------------------------------------------------------------------------------

@dataclass
class RewardConfig:
    """`alignchat rm`'s settings."""

    model: str = setting("", "SFT checkpoint (or registry name) the reward model's backbone starts from (required)")
    data: list[str] = setting(help="comparison JSONL file(s) (required)", factory=list)
    held_out: float = setting(0.1, "fraction of prompts held out for the held-out pairwise accuracy")
    eval_data: list[str] = setting(help="extra held-out comparison JSONL file(s)", factory=list)
    hhh: str = setting("auto", "evaluate on BIG-bench hhh_alignment: auto (if already fetched), yes (fetch the "
                               "358 MB bigbench sdist once, cached) or no", choices=("auto", "yes", "no"))
    rankings_per_batch: int = setting(8, "rankings per micro-batch per process; each ranking's K responses are "
                                         "scored together")
    max_len: int = setting(512, "tokens per prompt + response (cut from the left)")
    train: TrainConfig = setting(help="optimisation, schedule, logging and checkpoints (seed: also the held-out "
                                      "split and the order of the rankings)",
                                 factory=lambda: TrainConfig(out_dir="runs/rm", max_steps=200, lr=1e-5, warmup_steps=10,
                                                             eval_every=50, save_every=100, weight_decay=0.0, seed=0))


def _hhh_comparisons(mode: str):
    from ..data import comparisons as C
    if mode == "no":
        return None
    if mode == "auto":
        if not C.hhh_fetched():
            return None
    return C.load_hhh()


def ranking_validation(held: list, tok, per_batch: int, max_len: int, dist_info):
    """A callable giving this rank's share of the held-out rankings as micro-batches (or None if none)."""
    if not held:
        return None
    mine = [held[i] for i in share(len(held), dist_info)]

    def val():
        return (collate_rankings(mine[i:i + per_batch], tok, max_len) for i in range(0, len(mine), per_batch))
    return val


def train_reward_model(cfg: RewardConfig, resume: bool = False) -> dict:
    from ..hub import load_model
    from ..data import comparisons as C

    if not cfg.model:
        raise UserError("--model is required: the SFT checkpoint to start the reward model from")
    if not cfg.data:
        raise UserError("--data is required: one or more comparison JSONL files")
    if cfg.train.fsdp:
        raise UserError("fsdp=true is for pretrain and sft; rm runs DDP under torchrun")
    seed = cfg.train.seed
    comps = C.read_training_comparisons(cfg.data)
    train, held = C.split_comparisons(comps, cfg.held_out, seed=seed)
    held += [c for path in cfg.eval_data for c in C.read_comparisons(path, min_responses=2)]
    if not train:
        raise UserError(f"{', '.join(cfg.data)}: no training comparisons left after holding out {cfg.held_out:.0%}")
    dist_info = init_distributed(cfg.train.device)
    lm, tok, meta = load_model(cfg.model)
    torch.manual_seed(seed)  # the head's initial weights
    model = ScoredTransformer.from_lm(lm).freeze_lm_head()
    del lm
    cfg = dataclasses.replace(cfg, max_len=min(cfg.max_len, model.cfg.max_seq_len))
    data = RankingBatches(train, tok, cfg.rankings_per_batch, cfg.max_len, seed=seed, rank=dist_info.rank,
                          world_size=dist_info.world_size)
    trainer = Trainer(model, cfg.train, data, loss_fn=reward_loss_fn,
                      val_batches=ranking_validation(held, tok, cfg.rankings_per_batch, cfg.max_len, dist_info),
                      tokenizer=tok, stage="reward", meta={"parent": str(meta.get("source", cfg.model))},
                      dist_info=dist_info,
                      run_info={"settings": dataclasses.asdict(cfg),
                                "train_rankings": len(train), "held_out_rankings": len(held)})
    result = trainer.fit(resume=resume)
    if not dist_info.is_main:  # rank 0 scores the finished model and writes it
        return {}

    model.eval()
    scorer = RewardScorer(model, tok, cfg.max_len)
    train_scores = scorer.score([c.prompt for c in train for _ in c.responses],
                                [r for c in train for r in c.responses])
    norm = {"mean": float(train_scores.mean()), "std": float(train_scores.std().clamp(min=1e-6)),
            "n": int(train_scores.numel())}
    report = {"train": scorer.pairwise_accuracy(train)}
    if held:
        report["held_out"] = scorer.pairwise_accuracy(held)
    hhh = _hhh_comparisons(cfg.hhh)
    if hhh:
        report["hhh"] = scorer.pairwise_accuracy(hhh)
        for subset in C.HHH_SUBSETS:
            report[f"hhh_{subset}"] = scorer.pairwise_accuracy([c for c in hhh if c.meta.get("subset") == subset])
    # the data paths let `alignchat ppo` keep its prompts apart from the reward model's
    trainer.meta.update({"reward_norm": norm, "eval": report, "max_len": cfg.max_len,
                         "data": [str(Path(p).resolve()) for p in cfg.data]})
    final = trainer.save_final()
    trainer.log({"step": trainer.step, "final": True, "reward_norm": norm, "eval": report})
    return {"checkpoint": str(final), "reward_norm": norm, "eval": report, "last": result}


# --- CLI -----------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.description = ("Train a reward model r(x, y): the SFT model plus a scalar head, on ranked comparisons, "
                          "with InstructGPT's loss -1/C(K,2) sum log sigmoid(r(x,y_w) - r(x,y_l)) over every pair of "
                          "a ranking (each ranking of K responses is one batch element). Reports pairwise accuracy "
                          "on held-out comparisons and on BIG-bench hhh_alignment, and stores reward normalisation "
                          "statistics in the checkpoint's meta.json.")
    add_stage_arguments(
        parser, RewardConfig(), own_section="reward",
        reads="--model (the SFT checkpoint), --data comparison JSONL (`alignchat compare`, `feedback export`), "
              "optional --eval-data; with --hhh yes/auto the BIG-bench hhh_alignment files",
        writes="--out DIR: run.json, metrics.jsonl (loss, train_pair_acc, val_loss, a final line with the "
               "accuracies), step-N/ checkpoints + latest.json, final/ (checkpoint + score_head, meta.json with "
               "reward_norm, eval and data)")


def run(args) -> int:
    cfg, _ = stage_settings(args, lambda given: RewardConfig())
    out = train_reward_model(cfg, resume=args.resume)
    if out:
        print(json.dumps({"checkpoint": out["checkpoint"], "reward_norm": out["reward_norm"], "eval": out["eval"]},
                         indent=2))
    end_distributed()
    return 0
