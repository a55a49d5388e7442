"""`alignchat dpo`: Direct Preference Optimisation on the same comparison data the reward model uses.

Notable choices:
- Loss (Rafailov et al. 2023): −log σ(β·[(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]),
  with log π summed over response tokens only (the prompt is masked out), from `rl_math.dpo_loss`.
- A ranking of K responses gives all C(K,2) pairs and, as for the reward model, counts as one batch
  element (the mean of its pair losses), so large K does not over-weight one prompt.
- The reference is a frozen copy of the starting (SFT) model; its log-probabilities are computed under
  `no_grad` in the same batch.
- β is the strength of the implicit KL constraint: small β lets the policy move far from the reference.
- `nll_weight=α` adds α times the best response's mean per-token negative log-likelihood to each ranking's loss
  (the "RPO" objective of Pang et al. 2024, TRL's `rpo_alpha`): plain DPO can lower the log-probability of
  both sides as long as the gap grows, so with an off-policy chosen side (a written refusal, a human answer)
  the model need not learn to produce it; the NLL term makes it. 0 (the default) is plain DPO.
- `trainable=last:N` trains only the policy's last N blocks and final norm (as `alignchat sft`): the frozen
  blocks below skip the backward pass, much cheaper on a CPU; the reference is the whole starting model.
- Runs in the shared loop (`Trainer`): progress, metrics.jsonl, checkpoints, resume, and DDP under
  `torchrun` (`rankings_per_batch` is per process). The result is an ordinary LM checkpoint (stage "dpo")
  that chat, serve and eval load directly.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..settings import setting
from . import rl_math
from .loop import (LossOutput, TrainConfig, Trainer, add_stage_arguments, end_distributed, init_distributed,
                   stage_settings)
from .reward import RankingBatches
from .rm import ranking_validation
from .sft import apply_trainable


@dataclass
class DPOConfig:
    """`alignchat dpo`'s settings."""

    model: str = setting("", "SFT checkpoint: the starting policy and the frozen reference (required)")
    data: list[str] = setting(help="comparison JSONL file(s) (required)", factory=list)
    held_out: float = setting(0.1, "fraction of prompts held out for the validation loss")
    beta: float = setting(0.1, "β: strength of the implicit KL penalty toward the reference; smaller lets the "
                               "policy drift further")
    rankings_per_batch: int = setting(8, "rankings per micro-batch per process")
    nll_weight: float = setting(0.0, "α: weight of the best response's mean per-token NLL added to the DPO loss "
                                     "(RPO); 0 = plain DPO")
    max_len: int = setting(512, "tokens per prompt + response (cut from the left)")
    trainable: str = setting("all", "all, or last:N (train only the policy's last N blocks and the final norm)")
    train: TrainConfig = setting(help="optimisation, schedule, logging and checkpoints (seed: also the held-out "
                                      "split and the order of the rankings)",
                                 factory=lambda: TrainConfig(out_dir="runs/dpo", max_steps=200, lr=5e-6,
                                                             warmup_steps=10, eval_every=50, save_every=100,
                                                             weight_decay=0.0, seed=0))


def response_logprobs(model, batch) -> torch.Tensor:
    """log π(y|x) for every response in the batch, summed over its response tokens. -> (N,)"""
    logits = model(batch["input_ids"])
    return rl_math.sequence_logprob(logits, batch["input_ids"], batch["mask"])


def make_dpo_loss(reference, beta: float, nll_weight: float = 0.0):
    def loss_fn(model, batch) -> LossOutput:
        policy = response_logprobs(model, batch)
        with torch.no_grad():
            ref = response_logprobs(reference, batch)
        tokens = batch["mask"][:, 1:].sum(1).clamp(min=1)
        losses, chosen_r, rejected_r, acc, nll = [], [], [], [], []
        for g, ranking in enumerate(batch["rankings"]):
            idx = (batch["group"] == g).nonzero().squeeze(1)
            pairs = rl_math.ranking_pairs(ranking)
            w = idx[torch.tensor([p[0] for p in pairs])]
            l = idx[torch.tensor([p[1] for p in pairs])]
            out = rl_math.dpo_loss(policy[w], policy[l], ref[w], ref[l], beta)
            best = idx[ranking[0]]
            nll.append(-policy[best] / tokens[best])
            losses.append(out.loss + nll_weight * nll[-1] if nll_weight else out.loss)
            chosen_r.append(out.chosen_reward.mean())
            rejected_r.append(out.rejected_reward.mean())
            acc.append(out.accuracy)
        n = len(losses)
        return LossOutput(torch.stack(losses).sum(), n, tokens=int(batch["input_ids"].numel()),
                          metrics={"reward_chosen": float(torch.stack(chosen_r).mean()),
                                   "nll_chosen": float(torch.stack(nll).detach().mean()),
                                   "reward_rejected": float(torch.stack(rejected_r).mean()),
                                   "reward_acc": float(torch.stack(acc).mean())})
    return loss_fn


def train_dpo(cfg: DPOConfig, resume: bool = False) -> dict:
    from ..hub import load_model
    from ..data import comparisons as C

    if not cfg.model or not cfg.data:
        raise UserError("--model (the SFT checkpoint) and --data (comparison JSONL) are required")
    if cfg.train.fsdp:
        raise UserError("fsdp=true is for pretrain and sft; dpo runs DDP under torchrun")
    comps = C.read_training_comparisons(cfg.data)
    train, held = C.split_comparisons(comps, cfg.held_out, seed=cfg.train.seed)
    if not train:
        raise UserError(f"{', '.join(cfg.data)}: no training comparisons left after holding out {cfg.held_out:.0%}")
    dist_info = init_distributed(cfg.train.device)
    policy, tok, meta = load_model(cfg.model)
    cfg = dataclasses.replace(cfg, max_len=min(cfg.max_len, policy.cfg.max_seq_len))
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    apply_trainable(policy, cfg.trainable)
    policy.train()
    data = RankingBatches(train, tok, cfg.rankings_per_batch, cfg.max_len, seed=cfg.train.seed, rank=dist_info.rank,
                          world_size=dist_info.world_size)
    trainer = Trainer(policy, cfg.train, data, loss_fn=make_dpo_loss(reference, cfg.beta, cfg.nll_weight),
                      val_batches=ranking_validation(held, tok, cfg.rankings_per_batch, cfg.max_len, dist_info),
                      tokenizer=tok, stage="dpo", dist_info=dist_info,
                      meta={"parent": str(meta.get("source", cfg.model)), "beta": cfg.beta,
                            "nll_weight": cfg.nll_weight},
                      run_info={"settings": dataclasses.asdict(cfg),
                                "train_rankings": len(train), "held_out_rankings": len(held)})
    reference.to(trainer.device)
    result = trainer.fit(resume=resume)
    final = trainer.save_final()
    if not dist_info.is_main:
        return {}
    return {"checkpoint": str(final), "last": {k: v for k, v in result.items() if k != "samples"}}


def add_arguments(parser) -> None:
    parser.description = ("Direct Preference Optimisation: fine-tune the SFT model on ranked comparisons with "
                          "loss -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - "
                          "log pi_ref(y_l|x))]) over every pair of a ranking; pi_ref is a frozen copy of the SFT "
                          "model. No reward model and no sampling: the lighter alternative to PPO.")
    add_stage_arguments(
        parser, DPOConfig(), own_section="dpo",
        reads="--model (the SFT checkpoint), --data comparison JSONL (`alignchat compare`, `feedback export`)",
        writes="--out DIR: run.json, metrics.jsonl (loss, reward_chosen, reward_rejected, reward_acc, nll_chosen, "
               "val_loss), "
               "step-N/ checkpoints + latest.json, final/ (an LM checkpoint, stage dpo)")


def run(args) -> int:
    cfg, _ = stage_settings(args, lambda given: DPOConfig())
    out = train_dpo(cfg, resume=args.resume)
    if out:
        print(json.dumps(out, indent=2, default=str))
    end_distributed()
    return 0
