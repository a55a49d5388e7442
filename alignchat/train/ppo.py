"""`alignchat ppo`: reinforcement learning from human feedback with PPO, as in InstructGPT.

Four models (all the one `Transformer` family):
- the actor π, initialised from the SFT model and trained;
- the reference π_SFT, a frozen copy of the SFT model;
- the critic V, initialised from the reward model (backbone + scalar head) and trained;
- the reward model r, frozen.

One iteration:
1. Roll out: sample one response per prompt from the actor through the shared KV-cache engine
   (`alignchat.engine.Engine`, the same one that serves users), `--batch-prompts` prompts at a time.
2. Score: r(x, y) from the reward model at the last response token (normalised with the statistics stored
   in the reward model's meta.json), and a per-token KL(π‖π_SFT) estimate. Per-token reward:
   R_t = −β·KL_t, plus r(x, y) on the last token. β adapts to keep KL near `--kl-target` (Ziegler et al.).
3. GAE(γ, λ) advantages (whitened) and returns from the critic's values.
4. `--ppo-epochs` passes over the rollouts in minibatches: clipped policy loss (clip range ε), clipped value
   loss, and PPO-ptx: γ_ptx × the language-model loss (`loop.lm_loss`) on a batch of `--ptx-data`
   (pretraining/SFT text), which keeps the actor's performance on the original distribution
   (InstructGPT's "PPO-ptx"). With `--target-update-kl`, the epochs stop early once the policy has moved
   that far (per-token KL(π_old‖π)) from the one that sampled the rollouts, so one iteration cannot
   overshoot the KL target before β has had a chance to react.
Prompt tokens never enter a loss: every term is a masked mean over response tokens (see rl_math).

Notable choices:
- The run directory is the shared `loop.RunDir`: metrics.jsonl (reward, KL, β, clip fraction, value loss,
  entropy, response length, lr), `step-N/{actor,critic,train_state.pt}` + latest.json that resume exactly,
  run.json, the progress bar, Ctrl-C, and the learning-rate schedule (warmup, then cosine to
  `min_lr_ratio`; the default is a constant rate) applied to the actor's and the critic's rates alike.
- Under `torchrun` every rank samples, scores and evaluates its share of the prompts; the rollouts are
  gathered so every rank holds the whole batch (advantages are whitened over it and β reacts to its KL),
  and each minibatch is split across the ranks, whose DDP-averaged gradients are those of one process
  with the whole minibatch: each rank's loss is its tokens' sum over the minibatch's global token count.
  `--batch-prompts`, `--minibatch` and `--ptx-batch` are global.
- The end-of-turn token the policy learns to emit, and the reward model is read at, is the stop token
  (`Tokenizer.stop_token_ids`) that the chat template closes an assistant turn with.
- The PPO prompts must be new: prompts that appear in the reward model's training data (recorded in its
  meta.json) or in `--exclude-prompts` files are dropped and counted.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..fetch import atomic_write_text
from ..hub import load_scored_model
from ..settings import setting
from . import rl_math
from .loop import (IGNORE_INDEX, LRSchedule, RunDir, add_stage_arguments, all_reduce_sum, end_distributed, gather,
                   init_distributed, lm_loss, load_weights_into, seed_everything, share, stage_settings, wrap_ddp)
from .reward import pad_batch


@dataclass
class PPOConfig:
    """`alignchat ppo`'s settings."""

    policy: str = setting("", "SFT checkpoint: the actor starts here, and a frozen copy is the reference π_SFT of "
                              "the KL penalty (required)")
    reward_model: str = setting("", "reward-model checkpoint from `alignchat rm`: frozen r(x, y), and the critic's "
                                    "initialisation (required)")
    prompts: str = setting("", "PPO prompts (JSONL {\"prompt\": [messages]} or text, one a line); prompts used by "
                               "SFT/RM are dropped (required)")
    eval_prompts: str = setting("", "held-out prompts for before/after evaluation (default: hold out "
                                    "--eval-fraction of --prompts)")
    eval_fraction: float = setting(0.1, "fraction of --prompts held out for evaluation when --eval-prompts is not "
                                        "given")
    exclude_prompts: list[str] = setting(help="SFT/comparison files whose prompts PPO must not train on (the RM's "
                                              "data is excluded automatically)", factory=list)
    ptx_data: str = setting("", "PPO-ptx corpus: JSONL with \"text\" or \"messages\", or plain text (paragraphs)")
    out_dir: str = setting("runs/ppo", "run directory: run.json, metrics.jsonl, samples_before/after.jsonl, step-N/ "
                                       "checkpoints, final/", flag="out")
    # rollouts
    iterations: int = setting(100, "PPO iterations (each: one batch of rollouts, then --ppo-epochs of updates)")
    batch_prompts: int = setting(16, "rollouts per iteration, over all processes (prompts sampled once each "
                                     "through the KV-cache engine)")
    max_new_tokens: int = setting(64, "maximum response length in tokens")
    temperature: float = setting(1.0, "sampling temperature of rollouts (1.0 = the policy's own distribution, as "
                                      "PPO assumes)")
    top_p: float = setting(1.0, "nucleus sampling for rollouts (1.0 = off, keeps PPO on-policy)")
    max_len: int = setting(512, "prompt tokens kept (from the right) so prompt + response fits")
    # PPO
    ppo_epochs: int = setting(4, "passes over each batch of rollouts")
    minibatch: int = setting(8, "rollouts per gradient step, over all processes")
    clip_range: float = setting(0.2, "clip range ε: the ratio π/π_old is clipped to [1−ε, 1+ε] in the policy "
                                     "objective (PPO paper: 0.2)")
    clip_range_value: float = setting(0.2, "the critic's new values may move at most this far from the rollout's "
                                           "values")
    gamma: float = setting(1.0, "discount γ of GAE (1.0: the whole response is one episode)")
    lam: float = setting(0.95, "λ of GAE: bias/variance trade-off of the advantage estimate")
    vf_coef: float = setting(0.5, "weight of the value loss")
    whiten_advantages: bool = setting(True, "normalise advantages to mean 0, std 1 over each batch's response "
                                            "tokens")
    # KL penalty (β) and its controller
    init_beta: float = setting(0.05, "β: weight of the per-token KL(π‖π_SFT) penalty; reward = r(x,y) − β·KL "
                                     "(InstructGPT: 0.02)")
    kl_target: float | None = setting(6.0, "target KL per response (nats) of the adaptive β controller (Ziegler "
                                           "et al.); none or 0 = a fixed β")
    kl_horizon: int = setting(10000, "horizon of the adaptive β controller, in rollouts: larger adapts β more "
                                     "slowly")
    kl_estimator: str = setting("k1", "per-token KL estimate: k1 = log π − log π_ref (InstructGPT), k2, or k3 "
                                      "(never negative)", choices=("k1", "k2", "k3"))
    # per-iteration trust region (as `target_kl` in Spinning Up / Stable-Baselines3 PPO)
    target_update_kl: float = setting(0.0, "trust region per iteration: stop the remaining PPO epochs once the "
                                           "mean per-token KL(π_old‖π) exceeds 1.5× this (0 = off; 0.01–0.05 is "
                                           "usual)")
    normalize_reward: bool = setting(True, "normalise r(x, y) with the mean/std stored by `alignchat rm`")
    # PPO-ptx
    ptx_coef: float = setting(0.0, "γ_ptx of PPO-ptx: weight of the pretraining LM loss mixed into the policy "
                                   "loss (0 = plain PPO; InstructGPT used 27.8 with its own scaling)")
    ptx_batch: int = setting(4, "sequences of --ptx-data per PPO minibatch, over all processes")
    # optimisation
    lr: float = setting(1e-6, "actor learning rate")
    critic_lr: float = setting(5e-6, "critic learning rate")
    warmup_steps: int = setting(0, "iterations of linear learning-rate warmup (actor and critic)")
    min_lr_ratio: float = setting(1.0, "after warmup the rates decay by a cosine to this fraction at the last "
                                       "iteration (1.0: constant)")
    grad_clip: float = setting(1.0, "global gradient-norm clip (0 = off)")
    # bookkeeping
    eval_every: int = setting(0, "evaluate on the held-out prompts every N iterations (0: only before and after)")
    save_every: int = setting(20, "checkpoint every N iterations (and always at the end)")
    keep_checkpoints: int = setting(2, "step checkpoints kept")
    property_regex: str = setting("", "optional regex: also report the rate of responses matching it (a "
                                      "measurable preference)")
    seed: int = setting(0, "random seed (rollout seeds derive from it, so a resumed run repeats the same samples)")
    device: str = setting("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    progress: bool = setting(True, "show a progress bar")


# --- prompt and corpus data ----------------------------------------------------------------------------

def _prompt_key(messages: list[dict]) -> str:
    return json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)


def prompts_of_file(path: str) -> set[str]:
    """Prompt keys found in a comparison, SFT or prompt file (for keeping PPO prompts separate)."""
    from .compare.prompts import read_prompts
    from ..data import comparisons as C
    keys = set()
    p = Path(path)
    if not p.exists():
        return keys
    if p.suffix == ".jsonl":
        for where, obj in C.iter_jsonl(p):
            msgs = obj.get("prompt", obj.get("messages")) if isinstance(obj, dict) else None
            if isinstance(msgs, str):
                msgs = [{"role": "user", "content": msgs}]
            if isinstance(msgs, list):
                msgs = C.validate_messages(msgs, where)
                while msgs and msgs[-1]["role"] == "assistant":
                    msgs = msgs[:-1]
                # every user-ending prefix of an SFT conversation counts as one of its prompts
                for i, m in enumerate(msgs):
                    if m["role"] == "user":
                        keys.add(_prompt_key(msgs[:i + 1]))
        return keys
    return {_prompt_key(m) for _, m in read_prompts(path)}


class PtxBatches:
    """Batches of pretraining/SFT text for PPO-ptx, cycling with a resumable position."""

    def __init__(self, path: str, tok, batch: int, max_len: int, seed: int):
        from ..data import comparisons as C
        self.items: list[tuple[list[int], list[int]]] = []
        p = Path(path)
        if not p.exists():
            raise UserError(f"{path}: no such file (--ptx-data)")
        if p.suffix == ".jsonl":
            for where, obj in C.iter_jsonl(p):
                if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                    ids = tok.encode(obj["text"])
                    self.items.append((ids, [1] * len(ids)))
                elif isinstance(obj, dict) and "messages" in obj:
                    r = tok.render_chat(C.validate_messages(obj["messages"], where, "messages"))
                    self.items.append((r.ids, r.assistant_mask))
                else:
                    raise UserError(f"{where}: a --ptx-data line needs \"text\" or \"messages\"")
        else:
            for para in re.split(r"\n\s*\n", p.read_text(encoding="utf-8")):
                if para.strip():
                    ids = tok.encode(para.strip())
                    self.items.append((ids, [1] * len(ids)))
        self.items = [(i[:max_len], m[:max_len]) for i, m in self.items if len(i) >= 2 and sum(m[1:max_len])]
        if not self.items:
            raise UserError(f"{path}: no usable text for PPO-ptx")
        self.batch, self.tok, self.seed, self.pos, self.epoch = batch, tok, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self):
        order = list(range(len(self.items)))
        random.Random(self.seed + 7919 * self.epoch).shuffle(order)
        return order

    def next_batch(self):
        rows = []
        for _ in range(self.batch):
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            rows.append(self.items[self._order[self.pos]])
            self.pos += 1
        ids, mask, _ = pad_batch([r[0] for r in rows], [r[1] for r in rows], self.tok.pad_id)
        return ids, mask

    def state_dict(self):
        return {"pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, s):
        self.pos, self.epoch = s["pos"], s["epoch"]
        self._order = self._shuffle()


# --- rollouts ------------------------------------------------------------------------------------------

@dataclass
class Rollouts:
    ids: torch.Tensor  # (B, T) prompt + response, right-padded
    mask: torch.Tensor  # (B, T-1) 1 where token t+1 is a response token (aligned with token_logprobs)
    old_logp: torch.Tensor  # (B, T-1)
    ref_logp: torch.Tensor
    values: torch.Tensor  # (B, T-1) V(s_t) before each action
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # (B,) reward-model score used (normalised if configured)
    raw_scores: torch.Tensor
    kl: torch.Tensor  # (B, T-1) per-token KL estimates
    texts: list[str]


def end_of_turn_id(tok) -> int | None:
    """The stop token (`Tokenizer.stop_token_ids`) that the chat template closes an assistant turn with: what
    the policy emits to end its answer, and where the reward model was trained to read r(x, y)."""
    stops = tok.stop_token_ids
    turn = tok.render_chat([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    closing = [t for t, m in zip(turn.ids, turn.assistant_mask) if m and t in stops]
    return closing[-1] if closing else (stops[0] if stops else None)


class PPOTrainer:
    def __init__(self, cfg: PPOConfig):
        from ..hub import load_model
        from ..engine import Engine
        from .compare.prompts import read_prompts

        for name in ("policy", "reward_model", "prompts"):
            if not getattr(cfg, name):
                raise UserError(f"--{name.replace('_', '-')} is required")
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.device = self.dist.device
        world = self.dist.world_size
        if world > 1 and (cfg.batch_prompts % cfg.minibatch or cfg.minibatch % world or cfg.ptx_batch % world):
            raise UserError(f"under {world} processes, batch_prompts ({cfg.batch_prompts}) must be a multiple of "
                            f"minibatch ({cfg.minibatch}), and minibatch and ptx_batch ({cfg.ptx_batch}) multiples "
                            f"of {world}")
        self.run = RunDir(cfg.out_dir, self.dist, keep_checkpoints=cfg.keep_checkpoints, progress=cfg.progress,
                          desc="ppo")
        self.out_dir = self.run.path
        seed_everything(cfg.seed)

        self.actor, self.tok, sft_meta = load_model(cfg.policy)
        self.actor.to(self.device).train()
        self.policy_source = str(sft_meta.get("source", cfg.policy))
        self.reference = copy.deepcopy(self.actor).eval().requires_grad_(False)
        self.reward_model, rm_tok, rm_meta = load_scored_model(cfg.reward_model, device=self.device)
        self.reward_model.eval().requires_grad_(False)
        if rm_tok.vocab_size != self.tok.vocab_size:
            raise UserError(f"{cfg.reward_model}: its tokenizer ({rm_tok.vocab_size} tokens) differs from the "
                            f"policy's ({self.tok.vocab_size}); train the reward model from the same SFT model")
        self.critic = copy.deepcopy(self.reward_model).train().requires_grad_(True).freeze_lm_head()
        self.actor_ddp, self.critic_ddp = wrap_ddp(self.actor, self.dist), wrap_ddp(self.critic, self.dist)
        self.reward_norm = rm_meta.get("reward_norm") if cfg.normalize_reward else None
        self.max_total = min(self.actor.cfg.max_seq_len, cfg.max_len + cfg.max_new_tokens)
        self.engine = Engine(self.actor, self.tok, max_batch=max(1, -(-cfg.batch_prompts // world)),
                             max_seq_len=self.max_total)
        self.end_id = end_of_turn_id(self.tok)

        # prompts: drop any the SFT/RM stages used, then split off the evaluation set
        excluded = set()
        for path in list(cfg.exclude_prompts) + list(rm_meta.get("data", [])):
            excluded |= prompts_of_file(path)
        all_prompts = [m for _, m in read_prompts(cfg.prompts)]
        kept = [m for m in all_prompts if _prompt_key(m) not in excluded]
        self.dropped_prompts = len(all_prompts) - len(kept)
        if cfg.eval_prompts:
            self.eval_prompts = [m for _, m in read_prompts(cfg.eval_prompts)]
            self.train_prompts = kept
        else:
            rng = random.Random(cfg.seed)
            order = list(range(len(kept)))
            rng.shuffle(order)
            n_eval = max(1, int(round(cfg.eval_fraction * len(kept)))) if len(kept) > 1 else 0
            self.eval_prompts = [kept[i] for i in order[:n_eval]]
            self.train_prompts = [kept[i] for i in order[n_eval:]]
        if not self.train_prompts:
            raise UserError(f"{cfg.prompts}: no PPO prompts left ({self.dropped_prompts} were used by SFT/RM data)")
        self.ptx = PtxBatches(cfg.ptx_data, self.tok, cfg.ptx_batch, self.max_total, cfg.seed) \
            if cfg.ptx_data and cfg.ptx_coef > 0 else None
        if cfg.ptx_coef > 0 and self.ptx is None:
            raise UserError("--ptx-coef > 0 needs --ptx-data (pretraining or SFT text)")

        self.actor_opt = torch.optim.AdamW([p for p in self.actor.parameters() if p.requires_grad], lr=cfg.lr,
                                           betas=(0.9, 0.95), weight_decay=0.0)
        self.critic_opt = torch.optim.AdamW([p for p in self.critic.parameters() if p.requires_grad],
                                            lr=cfg.critic_lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.schedule = LRSchedule(cfg.warmup_steps, cfg.iterations, cfg.min_lr_ratio,
                                   [(self.actor_opt, cfg.lr), (self.critic_opt, cfg.critic_lr)])
        self.kl_ctl = rl_math.AdaptiveKLController(cfg.init_beta, cfg.kl_target or None, cfg.kl_horizon)
        self.step = 0
        self.prompt_pos, self.prompt_epoch = 0, 0
        self.property = re.compile(cfg.property_regex) if cfg.property_regex else None

    def normalise(self, raw_scores: torch.Tensor) -> torch.Tensor:
        """r(x, y) in units of the reward model's training distribution (mean 0, std 1), if configured."""
        n = self.reward_norm
        return (raw_scores - n["mean"]) / max(n["std"], 1e-6) if n else raw_scores

    # --- prompts ---------------------------------------------------------------------------------
    def _prompt_order(self) -> list[int]:
        order = list(range(len(self.train_prompts)))
        random.Random(self.cfg.seed * 31 + self.prompt_epoch).shuffle(order)
        return order

    def next_prompts(self) -> list[list[dict]]:
        """The iteration's prompts (the same on every rank)."""
        order = self._prompt_order()
        out = []
        while len(out) < self.cfg.batch_prompts:
            if self.prompt_pos >= len(order):
                self.prompt_epoch, self.prompt_pos = self.prompt_epoch + 1, 0
                order = self._prompt_order()
            out.append(self.train_prompts[order[self.prompt_pos]])
            self.prompt_pos += 1
        return out

    # --- generation ------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: list[dict]) -> list[int]:
        ids = self.tok.render_chat(prompt, add_generation_prompt=True).ids
        # keep the prompt's end, leaving room for the response inside the engine's context
        keep = min(self.cfg.max_len, max(self.max_total - self.cfg.max_new_tokens, self.max_total // 2))
        return ids[-keep:]

    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], seed: int, first: int = 0, temperature: float | None = None):
        """Sample one response per prompt; prompt i is the (first + i)-th of the global batch, whose index
        seeds its sampler, so the samples do not depend on how the batch is split across processes."""
        from ..engine import SamplingParams
        cfg = self.cfg
        t = cfg.temperature if temperature is None else temperature
        prompt_ids = [self._prompt_ids(p) for p in prompts]
        params = [SamplingParams(max_tokens=cfg.max_new_tokens, temperature=t, top_p=cfg.top_p,
                                 seed=seed * 100_003 + first + i) for i in range(len(prompts))]
        self.actor.eval()
        gens = self.engine.generate(prompt_ids, params) if prompt_ids else []
        self.actor.train()
        seqs, masks = [], []
        for p, g in zip(prompt_ids, gens):
            resp = list(g.token_ids)
            if g.finish_reason == "stop" and self.end_id is not None:
                resp.append(self.end_id)  # the end-of-turn token is an action too: the policy learns to stop
            if not resp:
                resp = [self.end_id if self.end_id is not None else self.tok.pad_id]
            seqs.append(p + resp)
            masks.append([0] * len(p) + [1] * len(resp))
        return seqs, masks, [g.text.strip() for g in gens]

    @torch.no_grad()
    def reward_scores(self, seqs: list[list[int]]) -> torch.Tensor:
        """Raw r(x, y), read where the reward model was trained to read it: at the end-of-turn token.

        A response cut off by --max-new-tokens has none, so it is scored as if it ended there (without the
        closing token the reward model would be read at an arbitrary position, far off its training data)."""
        if not seqs:
            return torch.zeros(0, device=self.device)
        end = self.end_id
        closed = [s if end is None or s[-1] == end else s + [end] for s in seqs]
        ids, _, last = pad_batch(closed, [[1] * len(s) for s in closed], self.tok.pad_id)
        return self.reward_model(ids.to(self.device), score_index=last.to(self.device))

    @torch.no_grad()
    def _sample_and_score(self, prompts: list[list[dict]], seed: int) -> list[dict]:
        """Every rank samples and scores its share of `prompts`; returns all of them, in order, on every rank:
        per rollout the token ids, response mask, text, raw reward and, per token, log π, log π_SFT, V."""
        mine = share(len(prompts), self.dist)
        seqs, masks, texts = self.generate([prompts[i] for i in mine], seed, first=mine.start)
        rows = []
        if seqs:
            ids, _, _ = pad_batch(seqs, masks, self.tok.pad_id)
            ids = ids.to(self.device)
            logp = rl_math.token_logprobs(self.actor(ids), ids).cpu()
            ref_logp = rl_math.token_logprobs(self.reference(ids), ids).cpu()
            values = self.critic(ids, score_all=True)[:, :-1].float().cpu()
            raw = self.reward_scores(seqs).float().cpu()
            for i, s in enumerate(seqs):
                n = len(s) - 1
                rows.append({"ids": s, "mask": masks[i], "text": texts[i], "raw": float(raw[i]),
                             "logp": logp[i, :n], "ref_logp": ref_logp[i, :n], "values": values[i, :n]})
        return gather(rows, self.dist)

    def _stack(self, rows: list[dict], key: str, width: int) -> torch.Tensor:
        out = torch.zeros(len(rows), width)
        for i, r in enumerate(rows):
            out[i, :len(r[key])] = r[key]
        return out.to(self.device)

    # --- one iteration ---------------------------------------------------------------------------
    @torch.no_grad()
    def make_rollouts(self, prompts) -> Rollouts:
        cfg = self.cfg
        rows = self._sample_and_score(prompts, seed=cfg.seed * 7 + self.step)
        ids, tok_mask, _ = pad_batch([r["ids"] for r in rows], [r["mask"] for r in rows], self.tok.pad_id)
        ids, mask = ids.to(self.device), tok_mask[:, 1:].float().to(self.device)
        width = ids.shape[1] - 1
        old_logp, ref_logp = self._stack(rows, "logp", width), self._stack(rows, "ref_logp", width)
        values = self._stack(rows, "values", width)
        raw = torch.tensor([r["raw"] for r in rows], device=self.device)
        scores = self.normalise(raw)
        rewards, kl = rl_math.shaped_rewards(scores, old_logp, ref_logp, mask, self.kl_ctl.beta, cfg.kl_estimator)
        adv, ret = rl_math.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = rl_math.masked_whiten(adv, mask)
        return Rollouts(ids, mask, old_logp, ref_logp, values * mask, adv, ret, scores, raw, kl,
                        [r["text"] for r in rows])

    def _ptx_share(self) -> tuple[tuple[torch.Tensor, torch.Tensor], float]:
        """This rank's share of the next PPO-ptx batch as (inputs, targets), and the batch's target count."""
        ids, mask = self.ptx.next_batch()
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        rows = share(len(ids), self.dist)
        n_targets = float((targets != IGNORE_INDEX).sum())
        inputs, targets = ids[rows.start:rows.stop, :-1], targets[rows.start:rows.stop]
        return (inputs.to(self.device), targets.to(self.device)), n_targets

    def ppo_update(self, ro: Rollouts) -> dict:
        cfg, world = self.cfg, self.dist.world_size
        B = ro.ids.shape[0]
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_frac", "value_clip_frac",
                                                          "entropy", "approx_kl", "update_kl", "ptx_loss")}
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        stopped, steps_done = False, 0
        for _ in range(cfg.ppo_epochs):
            if stopped:
                break
            for minibatch in torch.randperm(B, generator=gen).split(cfg.minibatch):
                minibatch = minibatch.to(self.device)
                n_all = float(ro.mask[minibatch].sum())  # response tokens of the whole minibatch, all ranks
                mine = share(len(minibatch), self.dist)
                idx = minibatch[mine.start:mine.stop]
                T = int(ro.mask[idx].nonzero()[:, 1].max()) + 2 if ro.mask[idx].any() else ro.ids.shape[1]
                ids, mask = ro.ids[idx, :T], ro.mask[idx, :T - 1]
                n_mine = float(mask.sum())
                # each rank's masked mean, weighted by its share of the minibatch's tokens; DDP averages over
                # the ranks, so the gradient is that of the mean over the whole minibatch
                weight = n_mine / n_all * world
                logits = self.actor_ddp(ids)
                logp = rl_math.token_logprobs(logits, ids)
                pg_loss, clip_frac = rl_math.ppo_policy_loss(logp, ro.old_logp[idx, :T - 1], ro.advantages[idx, :T - 1],
                                                             mask, cfg.clip_range)
                with torch.no_grad():
                    entropy = rl_math.masked_mean(rl_math.entropy_from_logits(logits[:, :-1]), mask)
                    approx_kl = rl_math.masked_mean(ro.old_logp[idx, :T - 1] - logp, mask)
                    update_kl = rl_math.masked_mean(rl_math.kl_per_token(ro.old_logp[idx, :T - 1], logp, "k3"), mask)
                local = [float(x) * n_mine for x in (pg_loss.detach(), clip_frac, entropy, approx_kl, update_kl)]
                pg, clip, ent, akl, ukl = (v / n_all for v in all_reduce_sum(local, self.dist))
                stats["update_kl"].append(ukl)
                if cfg.target_update_kl > 0 and ukl > 1.5 * cfg.target_update_kl:
                    stopped = True  # this minibatch's step is not taken: the policy has moved far enough
                    break
                steps_done += 1
                loss = pg_loss * weight
                if self.ptx is not None:
                    batch, n_targets = self._ptx_share()
                    out = lm_loss(self.actor_ddp, batch)
                    loss = loss + cfg.ptx_coef * out.loss_sum * (world / n_targets)
                    stats["ptx_loss"].append(all_reduce_sum([float(out.loss_sum.detach())], self.dist)[0] / n_targets)
                self.actor_opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
                self.actor_opt.step()

                values = self.critic_ddp(ids, score_all=True)[:, :-1]
                vf_loss, vf_clip = rl_math.ppo_value_loss(values, ro.values[idx, :T - 1], ro.returns[idx, :T - 1],
                                                          mask, cfg.clip_range_value)
                self.critic_opt.zero_grad(set_to_none=True)
                (cfg.vf_coef * vf_loss * weight).backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
                self.critic_opt.step()
                vf, vclip = (v / n_all for v in all_reduce_sum([float(vf_loss.detach()) * n_mine,
                                                                 float(vf_clip) * n_mine], self.dist))
                for k, v in (("policy_loss", pg), ("value_loss", vf), ("clip_frac", clip), ("value_clip_frac", vclip),
                             ("entropy", ent), ("approx_kl", akl)):
                    stats[k].append(v)
        out = {k: sum(v) / len(v) for k, v in stats.items() if v}
        out.update(update_kl_max=max(stats["update_kl"], default=0.0), updates=steps_done, early_stop=stopped)
        return out

    def iteration(self) -> dict:
        t0 = time.perf_counter()
        prompts = self.next_prompts()
        ro = self.make_rollouts(prompts)
        t_roll = time.perf_counter() - t0
        kl_per_response = float((ro.kl * ro.mask).sum(1).mean())
        beta_used = self.kl_ctl.beta
        lr = float(self.actor_opt.param_groups[0]["lr"])
        upd = self.ppo_update(ro)
        self.kl_ctl.update(kl_per_response, n_steps=len(prompts))
        self.step += 1
        record = {"step": self.step, "reward": float(ro.scores.mean()), "reward_raw": float(ro.raw_scores.mean()),
                  "kl": kl_per_response, "beta": beta_used, "beta_next": self.kl_ctl.beta,
                  "response_len": float(ro.mask.sum(1).mean()), "lr": lr, **upd,
                  "rollout_s": t_roll, "step_time_s": time.perf_counter() - t0}
        if self.property is not None:
            record["property_rate"] = sum(bool(self.property.search(t)) for t in ro.texts) / len(ro.texts)
        return record

    # --- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, tag: str) -> dict:
        """Mean reward, KL to the reference and property rate on the held-out prompts (sampled as in PPO)."""
        if not self.eval_prompts:
            return {}
        rows = self._sample_and_score(self.eval_prompts, seed=10_000_019)
        raw = torch.tensor([r["raw"] for r in rows])
        scores = self.normalise(raw)
        kl = torch.tensor([float((rl_math.kl_per_token(r["logp"], r["ref_logp"], self.cfg.kl_estimator)
                                  * torch.tensor(r["mask"][1:], dtype=torch.float32)).sum()) for r in rows])
        lengths = torch.tensor([float(sum(r["mask"][1:])) for r in rows])
        texts = [r["text"] for r in rows]
        out = {f"{tag}_reward": float(scores.mean()), f"{tag}_reward_raw": float(raw.mean()),
               f"{tag}_kl": float(kl.mean()), f"{tag}_response_len": float(lengths.mean())}
        if self.property is not None:
            out[f"{tag}_property_rate"] = sum(bool(self.property.search(t)) for t in texts) / len(texts)
        if self.run.is_main:
            samples = [{"prompt": p, "response": t, "reward": float(s)}
                       for p, t, s in zip(self.eval_prompts, texts, scores)]
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / f"samples_{tag}.jsonl",
                              "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        return out

    # --- checkpoints -----------------------------------------------------------------------------
    def save(self) -> Path | None:
        from ..checkpoint import save_checkpoint
        meta = self.meta()

        def write(d: Path) -> None:
            save_checkpoint(d / "actor", self.actor, self.tok, meta=meta)
            save_checkpoint(d / "critic", self.critic, self.tok, meta={**meta, "stage": "ppo-critic"})
        return self.run.save(self.step, write, {
            "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
            "kl_ctl": self.kl_ctl.state_dict(), "prompt_pos": self.prompt_pos, "prompt_epoch": self.prompt_epoch,
            "ptx": self.ptx.state_dict() if self.ptx else None})

    def resume(self) -> bool:
        found = self.run.resume()
        if found is None:
            return False
        ckpt, state = found
        load_weights_into(self.actor, ckpt / "actor")
        load_weights_into(self.critic, ckpt / "critic")
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.prompt_pos, self.prompt_epoch = state["prompt_pos"], state["prompt_epoch"]
        if self.ptx and state.get("ptx"):
            self.ptx.load_state_dict(state["ptx"])
        self.step = int(state["step"])
        return True

    def meta(self) -> dict:
        c = self.cfg
        return {"stage": "ppo", "parent": self.policy_source, "reward_model": c.reward_model, "step": self.step,
                "ppo": {k: getattr(c, k) for k in ("init_beta", "kl_target", "clip_range", "gamma", "lam",
                                                    "ptx_coef", "batch_prompts", "ppo_epochs", "lr",
                                                    "target_update_kl")},
                "beta": self.kl_ctl.beta}

    def log(self, record: dict) -> None:
        self.run.log(record)

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        from ..checkpoint import save_checkpoint
        cfg = self.cfg
        resumed = resume and self.resume()
        self.run.write_info({"stage": "ppo", "settings": dataclasses.asdict(cfg),
                             "train_prompts": len(self.train_prompts), "eval_prompts": len(self.eval_prompts),
                             "dropped_prompts_seen_by_sft_or_rm": self.dropped_prompts})
        before = {}
        if not resumed:
            before = self.evaluate("before")
            self.log({"step": 0, **before})

        def one_iteration() -> dict:
            record = self.iteration()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.iterations:
                record.update(self.evaluate("eval"))
            self.log(record)
            return record

        def postfix(record: dict) -> dict:
            post = {"reward": f"{record['reward']:.3f}", "kl": f"{record['kl']:.2f}", "beta": f"{record['beta']:.3f}"}
            if "property_rate" in record:
                post["prop"] = f"{record['property_rate']:.2f}"
            return post

        record = self.run.loop(cfg.iterations, one_iteration, step_of=lambda: self.step, save_fn=self.save,
                               save_every=cfg.save_every, schedule=self.schedule, postfix=postfix)
        after = self.evaluate("after")
        self.log({"step": self.step, "final": True, **after})
        final = None
        if self.run.is_main:
            final = save_checkpoint(self.out_dir / "final", self.actor, self.tok, meta={**self.meta(), "eval": after})
        return {"checkpoint": str(final), "before": before, "after": after,
                "last": {k: v for k, v in record.items()}, "dropped_prompts": self.dropped_prompts}


# --- CLI -----------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.description = (
        "RLHF with PPO (InstructGPT): actor from SFT, frozen SFT reference, critic from the reward model, frozen "
        "reward model. Per-token reward = r(x,y) on the last token - beta * KL(pi || pi_SFT); adaptive beta; GAE; "
        "clipped policy and value losses; PPO-ptx mixes gamma_ptx * the pretraining loss into the policy loss. "
        "K (responses ranked per prompt) belongs to the comparison data: see `alignchat compare sample -k`.")
    add_stage_arguments(
        parser, PPOConfig(), own_section="ppo",
        reads="--policy (the SFT checkpoint), --reward-model (from `alignchat rm`; its meta.json names its data, "
              "whose prompts are dropped), --prompts, optional --eval-prompts, --exclude-prompts and --ptx-data",
        writes="--out DIR: run.json, metrics.jsonl (per iteration, plus before_*/after_* evaluations), "
               "samples_before/after.jsonl, step-N/{actor,critic,train_state.pt} + latest.json, final/ (the actor)")


def run(args) -> int:
    cfg, _ = stage_settings(args, lambda given: PPOConfig())
    trainer = PPOTrainer(cfg)
    out = trainer.fit(resume=args.resume)
    if trainer.dist.is_main:
        print(json.dumps({k: out[k] for k in ("checkpoint", "before", "after", "dropped_prompts")}, indent=2))
    end_distributed()
    return 0
