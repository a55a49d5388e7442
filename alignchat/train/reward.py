"""`alignchat rm`: train a reward model r(x, y) on ranked comparisons (InstructGPT's RM stage).

Notable choices:
- The reward model is the SFT model's backbone plus `alignchat.model.ScalarHead`, read at the last token
  of the response (its end-of-turn token). Its checkpoint is an ordinary checkpoint directory: the LM
  weights load anywhere, and the head is stored as `score_head.proj.{weight,bias}` beside them.
- Each ranking of K responses is one batch element: all K responses go through the model together and the
  loss is −1/C(K,2) Σ log σ(r_w − r_l) over the ranking's pairs (`rl_math.ranking_loss`).
- Conversations are rendered with the one chat template (`Tokenizer.render_chat`), exactly as SFT, PPO
  and serving render them. Over-long sequences lose tokens from the left, so the response end survives.
- Reports pairwise accuracy on held-out comparisons (split by prompt) and on BIG-bench `hhh_alignment`.
- Stores reward normalisation statistics (mean and std of r over the training responses) in meta.json,
  so PPO can use normalised rewards (InstructGPT normalises so that SFT outputs score 0 on average).
- Training runs in the shared loop (`alignchat.train.loop.Trainer`): progress bar, metrics.jsonl,
  step checkpoints and exact resume.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from ..errors import UserError
from ..model import ScalarHead, Transformer
from ..tokenizer import Tokenizer
from . import rl_math
from .loop import LossOutput, TrainConfig, Trainer


# --- the model -----------------------------------------------------------------------------------------

class ScoredTransformer(Transformer):
    """A Transformer with a scalar head: r(x, y) for a reward model, V(s) for PPO's critic.

    `forward(ids)` is still the language model. `forward(ids, score_index=idx)` returns the head's value at
    position idx[b] of each row (B,); `forward(ids, score_all=True)` returns it at every position (B, T).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.score_head = ScalarHead(cfg.dim)

    def forward(self, input_ids, *args, score_index: torch.Tensor | None = None, score_all: bool = False, **kw):
        if score_index is None and not score_all:
            return super().forward(input_ids, *args, **kw)
        hidden = super().forward(input_ids, *args, return_hidden=True, **kw)
        scores = self.score_head(hidden).float()
        if score_all:
            return scores
        return scores.gather(1, score_index.view(-1, 1)).squeeze(1)

    @classmethod
    def from_lm(cls, lm: Transformer, head_state: dict | None = None) -> "ScoredTransformer":
        model = cls(lm.cfg)
        model.load_state_dict(lm.state_dict(), strict=False)
        if head_state:
            model.score_head.load_state_dict(head_state)
        return model.to(next(lm.parameters()).device)


def load_scored_model(path: str, device="cpu", require_head: bool = True) -> tuple[ScoredTransformer, Tokenizer, dict]:
    """Load a checkpoint (or any model `load_model` accepts) as a ScoredTransformer.

    With `require_head`, the checkpoint must be a reward model (have `score_head.*` tensors); without it a
    plain LM gets a freshly initialised head."""
    from ..checkpoint import load_extra_tensors, load_model
    from ..hub import resolve_model
    resolved = resolve_model(str(path))
    head = {}
    if (resolved / "model.safetensors").exists():
        head = load_extra_tensors(resolved, "score_head.")
    if require_head and not head:
        raise UserError(f"{path}: not a reward model (no score_head tensors); train one with `alignchat rm`")
    lm, tok, meta = load_model(resolved)
    model = ScoredTransformer.from_lm(lm, head or None).to(device)
    del lm
    return model, tok, meta


# --- data ----------------------------------------------------------------------------------------------

def encode_response(tok: Tokenizer, prompt: list[dict], response: str, max_len: int) -> tuple[list[int], list[int]]:
    """Render prompt + one assistant response; return (ids, response_mask), cut from the left to max_len."""
    r = tok.render_chat(list(prompt) + [{"role": "assistant", "content": response}])
    ids, mask = r.ids, r.assistant_mask
    # only the final assistant turn is "the response"; earlier assistant turns are part of the prompt
    last_start = len(mask)
    while last_start > 0 and mask[last_start - 1] == 0:
        last_start -= 1
    end = last_start
    while last_start > 0 and mask[last_start - 1] == 1:
        last_start -= 1
    resp_mask = [0] * len(ids)
    resp_mask[last_start:end] = [1] * (end - last_start)
    ids, resp_mask = ids[:end], resp_mask[:end]  # drop template whitespace after the end-of-turn token
    if len(ids) > max_len:
        ids, resp_mask = ids[-max_len:], resp_mask[-max_len:]
    return ids, resp_mask


def pad_batch(seqs: Sequence[Sequence[int]], masks: Sequence[Sequence[int]], pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad (causal attention means pads at the end never affect real tokens).

    Returns (ids (B,T), mask (B,T), last_index (B,): the position of each row's last real token)."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    m = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, (s, mk) in enumerate(zip(seqs, masks)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        m[i, :len(mk)] = torch.tensor(mk, dtype=torch.long)
    last = torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long)
    return ids, m, last


class RankingBatches:
    """A resumable stream of reward-model micro-batches: `per_batch` rankings, shuffled every epoch."""

    def __init__(self, comparisons, tok: Tokenizer, per_batch: int, max_len: int, seed: int = 0):
        self.items = [c for c in comparisons if len(c.responses) >= 2]
        if not self.items:
            raise UserError("no comparisons with two or more responses to train on")
        self.tok, self.per_batch, self.max_len, self.seed = tok, per_batch, max_len, seed
        self.epoch, self.pos = 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1000003 + self.epoch).shuffle(order)
        return order

    def next_batch(self):
        chosen = []
        while len(chosen) < self.per_batch:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            chosen.append(self.items[self._order[self.pos]])
            self.pos += 1
        return collate_rankings(chosen, self.tok, self.max_len)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def collate_rankings(comparisons, tok: Tokenizer, max_len: int) -> dict:
    seqs, masks, group, rankings = [], [], [], []
    for g, c in enumerate(comparisons):
        for resp in c.responses:
            ids, m = encode_response(tok, c.prompt, resp, max_len)
            seqs.append(ids)
            masks.append(m)
            group.append(g)
        rankings.append(list(c.ranking))
    ids, mask, last = pad_batch(seqs, masks, tok.pad_id)
    return {"input_ids": ids, "mask": mask, "last": last, "group": torch.tensor(group), "rankings": rankings}


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


# --- scoring and evaluation ----------------------------------------------------------------------------

class RewardScorer:
    """Score (prompt, response) pairs with a reward model, optionally normalised with its stored stats."""

    def __init__(self, model: ScoredTransformer, tok: Tokenizer, max_len: int = 1024, batch_size: int = 16,
                 norm: dict | None = None):
        self.model, self.tok, self.batch_size, self.norm = model, tok, batch_size, norm
        self.max_len = min(max_len, model.cfg.max_seq_len)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score_ids(self, seqs: list[list[int]]) -> torch.Tensor:
        """Scores of already-tokenised sequences, each read at its last token."""
        out = []
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i:i + self.batch_size]
            ids, _, last = pad_batch(chunk, [[1] * len(s) for s in chunk], self.tok.pad_id)
            out.append(self.model(ids.to(self.device), score_index=last.to(self.device)).cpu())
        scores = torch.cat(out) if out else torch.zeros(0)
        if self.norm:
            scores = (scores - self.norm["mean"]) / max(self.norm["std"], 1e-6)
        return scores

    def score(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        seqs = [encode_response(self.tok, p, r, self.max_len)[0] for p, r in zip(prompts, responses)]
        return self.score_ids(seqs)

    def pairwise_accuracy(self, comparisons) -> dict:
        comps = [c for c in comparisons if len(c.responses) >= 2]
        flat_p = [c.prompt for c in comps for _ in c.responses]
        flat_r = [r for c in comps for r in c.responses]
        scores = self.score(flat_p, flat_r)
        correct = total = 0
        i = 0
        for c in comps:
            k = len(c.responses)
            ok, n = rl_math.pairwise_accuracy(scores[i:i + k], c.ranking)
            correct, total, i = correct + ok, total + n, i + k
        return {"pair_accuracy": correct / total if total else float("nan"), "pairs": total,
                "rankings": len(comps)}


# --- the stage -----------------------------------------------------------------------------------------

@dataclass
class RewardConfig:
    model: str = ""  # the SFT checkpoint the backbone starts from
    data: list[str] = field(default_factory=list)  # comparison JSONL files
    held_out: float = 0.1  # fraction of prompts kept out for the held-out pairwise accuracy
    eval_data: list[str] = field(default_factory=list)  # extra held-out comparison files
    hhh: str = "auto"  # evaluate on BIG-bench hhh_alignment: auto (if already fetched) | yes | no
    rankings_per_batch: int = 8
    max_len: int = 512
    seed: int = 0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        out_dir="runs/rm", max_steps=200, lr=1e-5, warmup_steps=10, eval_every=50, save_every=100,
        weight_decay=0.0))


def _hhh_comparisons(mode: str):
    from ..data import comparisons as C
    if mode == "no":
        return None
    if mode == "auto":
        d = C.alignchat_home() / "data" / "bigbench"
        if not all((d / m).exists() for m in C.HHH_ARTIFACT.members):
            return None
    return C.load_hhh()


def train_reward_model(cfg: RewardConfig, resume: bool = False) -> dict:
    from ..checkpoint import load_model
    from ..data import comparisons as C

    if not cfg.model:
        raise UserError("--model is required: the SFT checkpoint to start the reward model from")
    if not cfg.data:
        raise UserError("--data is required: one or more comparison JSONL files")
    comps = C.read_training_comparisons(cfg.data)
    train, held = C.split_comparisons(comps, cfg.held_out, seed=cfg.seed)
    held += [c for path in cfg.eval_data for c in C.read_comparisons(path, min_responses=2)]
    if not train:
        raise UserError(f"{', '.join(cfg.data)}: no training comparisons left after holding out {cfg.held_out:.0%}")
    lm, tok, meta = load_model(cfg.model)
    model = ScoredTransformer.from_lm(lm)
    del lm
    cfg = dataclasses.replace(cfg, max_len=min(cfg.max_len, model.cfg.max_seq_len))
    data = RankingBatches(train, tok, cfg.rankings_per_batch, cfg.max_len, seed=cfg.seed)
    val = None
    if held:
        def val():
            return (collate_rankings(held[i:i + cfg.rankings_per_batch], tok, cfg.max_len)
                    for i in range(0, len(held), cfg.rankings_per_batch))
    trainer = Trainer(model, cfg.train, data, loss_fn=reward_loss_fn, val_batches=val, tokenizer=tok,
                      stage="reward", meta={"parent": str(meta.get("source", cfg.model))},
                      run_info={"reward": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "train"},
                                "train_rankings": len(train), "held_out_rankings": len(held)})
    result = trainer.fit(resume=resume)

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

def add_train_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    g = parser.add_argument_group("optimisation (any TrainConfig field also via --set key=value)")
    g.add_argument("--out", default=defaults.out_dir, help=f"run directory (default {defaults.out_dir})")
    g.add_argument("--steps", type=int, default=defaults.max_steps, help=f"optimizer steps (default {defaults.max_steps})")
    g.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})")
    g.add_argument("--grad-accum", type=int, default=defaults.grad_accum, help="micro-batches per optimizer step")
    g.add_argument("--device", default=defaults.device, help="auto | cpu | cuda | cuda:N")
    g.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields")
    g.add_argument("--config", help="TOML/YAML/JSON file of overrides for this stage's config")
    g.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")


def train_config_from_args(args, defaults: TrainConfig) -> TrainConfig:
    from ..config import apply_overrides
    cfg = dataclasses.replace(defaults, out_dir=args.out, max_steps=args.steps, lr=args.lr,
                              grad_accum=args.grad_accum, device=args.device)
    try:
        return apply_overrides(cfg, args.set)
    except ValueError as e:
        raise UserError(f"--set: {e}") from None


def apply_config_file(cfg, path: str | None):
    if not path:
        return cfg
    from ..config import apply_overrides, load_config_file
    try:
        return apply_overrides(cfg, load_config_file(path))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: {e}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = RewardConfig()
    parser.description = ("Train a reward model r(x, y): the SFT model plus a scalar head, on ranked comparisons, "
                          "with InstructGPT's loss -1/C(K,2) sum log sigmoid(r(x,y_w) - r(x,y_l)) over every pair of "
                          "a ranking (each ranking of K responses is one batch element). Reports pairwise accuracy "
                          "on held-out comparisons and on BIG-bench hhh_alignment, and stores reward normalisation "
                          "statistics in the checkpoint's meta.json.")
    parser.add_argument("--model", required=True, help="SFT checkpoint (or registry name) to initialise from")
    parser.add_argument("--data", nargs="+", required=True, help="comparison JSONL file(s)")
    parser.add_argument("--eval-data", nargs="*", default=[], help="extra held-out comparison JSONL file(s)")
    parser.add_argument("--held-out", type=float, default=d.held_out,
                        help=f"fraction of prompts held out for evaluation (default {d.held_out})")
    parser.add_argument("--hhh", choices=["auto", "yes", "no"], default=d.hhh,
                        help="evaluate on BIG-bench hhh_alignment: auto = if already fetched; yes = fetch the "
                             "358 MB bigbench sdist once (cached); no = skip")
    parser.add_argument("--rankings-per-batch", type=int, default=d.rankings_per_batch,
                        help="rankings per micro-batch; each ranking's K responses are scored together")
    parser.add_argument("--max-len", type=int, default=d.max_len, help="tokens per prompt+response (cut from the left)")
    parser.add_argument("--seed", type=int, default=d.seed)
    add_train_arguments(parser, d.train)


def run(args) -> int:
    d = RewardConfig()
    cfg = RewardConfig(model=args.model, data=args.data, eval_data=args.eval_data, held_out=args.held_out,
                       hhh=args.hhh, rankings_per_batch=args.rankings_per_batch, max_len=args.max_len,
                       seed=args.seed, train=train_config_from_args(args, d.train))
    cfg = apply_config_file(cfg, args.config)
    out = train_reward_model(cfg, resume=args.resume)
    print(json.dumps({"checkpoint": out["checkpoint"], "reward_norm": out["reward_norm"], "eval": out["eval"]},
                     indent=2))
    return 0
