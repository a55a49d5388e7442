"""`alignchat dpo`: Direct Preference Optimisation on the same comparison data the reward model uses.

Notable choices:
- Loss (Rafailov et al. 2023): −log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]),
  with log π summed over response tokens only (the prompt is masked out), from `rl_math.dpo_loss`.
- A ranking of K responses gives all C(K,2) pairs and, as for the reward model, counts as one batch
  element (the mean of its pair losses), so large K does not over-weight one prompt.
- The reference is a frozen copy of the starting (SFT) model; its log-probabilities are computed under
  `no_grad` in the same batch.
- β is the strength of the implicit KL constraint: small β lets the policy move far from the reference.
- Runs in the shared loop (`Trainer`): progress, metrics.jsonl, checkpoints and resume. The result is an
  ordinary LM checkpoint (stage "dpo") that chat, serve and eval load directly.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from . import rl_math
from .loop import LossOutput, TrainConfig, Trainer
from .reward import (RankingBatches, add_train_arguments, apply_config_file, collate_rankings,
                     train_config_from_args)


@dataclass
class DPOConfig:
    model: str = ""  # the SFT checkpoint: both the starting policy and the frozen reference
    data: list[str] = field(default_factory=list)
    held_out: float = 0.1
    beta: float = 0.1
    rankings_per_batch: int = 8
    max_len: int = 512
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir="runs/dpo", max_steps=200, lr=5e-6, warmup_steps=10, eval_every=50, save_every=100,
        weight_decay=0.0))


def response_logprobs(model, batch) -> torch.Tensor:
    """log π(y|x) for every response in the batch, summed over its response tokens. -> (N,)"""
    logits = model(batch["input_ids"])
    return rl_math.sequence_logprob(logits, batch["input_ids"], batch["mask"])


def make_dpo_loss(reference, beta: float):
    def loss_fn(model, batch) -> LossOutput:
        policy = response_logprobs(model, batch)
        with torch.no_grad():
            ref = response_logprobs(reference, batch)
        losses, chosen_r, rejected_r, acc = [], [], [], []
        for g, ranking in enumerate(batch["rankings"]):
            idx = (batch["group"] == g).nonzero().squeeze(1)
            pairs = rl_math.ranking_pairs(ranking)
            w = idx[torch.tensor([p[0] for p in pairs])]
            l = idx[torch.tensor([p[1] for p in pairs])]
            out = rl_math.dpo_loss(policy[w], policy[l], ref[w], ref[l], beta)
            losses.append(out.loss)
            chosen_r.append(out.chosen_reward.mean())
            rejected_r.append(out.rejected_reward.mean())
            acc.append(out.accuracy)
        n = len(losses)
        return LossOutput(torch.stack(losses).sum(), n, tokens=int(batch["input_ids"].numel()),
                          metrics={"reward_chosen": float(torch.stack(chosen_r).mean()),
                                   "reward_rejected": float(torch.stack(rejected_r).mean()),
                                   "reward_acc": float(torch.stack(acc).mean())})
    return loss_fn


def train_dpo(cfg: DPOConfig, resume: bool = False) -> dict:
    from ..checkpoint import load_model
    from ..data import comparisons as C

    if not cfg.model or not cfg.data:
        raise UserError("--model (the SFT checkpoint) and --data (comparison JSONL) are required")
    comps = C.read_training_comparisons(cfg.data)
    train, held = C.split_comparisons(comps, cfg.held_out, seed=cfg.seed)
    if not train:
        raise UserError(f"{', '.join(cfg.data)}: no training comparisons left after holding out {cfg.held_out:.0%}")
    policy, tok, meta = load_model(cfg.model)
    cfg = dataclasses.replace(cfg, max_len=min(cfg.max_len, policy.cfg.max_seq_len))
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    policy.train()
    data = RankingBatches(train, tok, cfg.rankings_per_batch, cfg.max_len, seed=cfg.seed)
    val = None
    if held:
        def val():
            return (collate_rankings(held[i:i + cfg.rankings_per_batch], tok, cfg.max_len)
                    for i in range(0, len(held), cfg.rankings_per_batch))
    trainer = Trainer(policy, cfg.train, data, loss_fn=make_dpo_loss(reference, cfg.beta), val_batches=val,
                      tokenizer=tok, stage="dpo",
                      meta={"parent": str(meta.get("source", cfg.model)), "beta": cfg.beta},
                      run_info={"dpo": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "train"},
                                "train_rankings": len(train), "held_out_rankings": len(held)})
    reference.to(trainer.device)
    result = trainer.fit(resume=resume)
    final = trainer.save_final()
    return {"checkpoint": str(final), "last": {k: v for k, v in result.items() if k != "samples"}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DPOConfig()
    parser.description = ("Direct Preference Optimisation: fine-tune the SFT model on ranked comparisons with "
                          "loss -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - "
                          "log pi_ref(y_l|x))]) over every pair of a ranking; pi_ref is a frozen copy of the SFT "
                          "model. No reward model and no sampling: the lighter alternative to PPO.")
    parser.add_argument("--model", required=True, help="SFT checkpoint: starting policy and frozen reference")
    parser.add_argument("--data", nargs="+", required=True, help="comparison JSONL file(s)")
    parser.add_argument("--beta", type=float, default=d.beta,
                        help=f"beta: strength of the implicit KL penalty toward the reference (default {d.beta}); "
                             "smaller lets the policy drift further")
    parser.add_argument("--held-out", type=float, default=d.held_out, help="fraction of prompts held out")
    parser.add_argument("--rankings-per-batch", type=int, default=d.rankings_per_batch)
    parser.add_argument("--max-len", type=int, default=d.max_len)
    parser.add_argument("--seed", type=int, default=d.seed)
    add_train_arguments(parser, d.train)


def run(args) -> int:
    d = DPOConfig()
    cfg = DPOConfig(model=args.model, data=args.data, held_out=args.held_out, beta=args.beta,
                    rankings_per_batch=args.rankings_per_batch, max_len=args.max_len, seed=args.seed,
                    train=train_config_from_args(args, d.train))
    cfg = apply_config_file(cfg, args.config)
    out = train_dpo(cfg, resume=args.resume)
    print(json.dumps(out, indent=2, default=str))
    return 0
