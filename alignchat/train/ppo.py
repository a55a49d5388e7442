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
   loss, and PPO-ptx: γ_ptx × the language-model loss on a batch of `--ptx-data` (pretraining/SFT text),
   which keeps the actor's performance on the original distribution (InstructGPT's "PPO-ptx").
   With `--target-update-kl`, the epochs stop early once the policy has moved that far (per-token
   KL(π_old‖π)) from the one that sampled the rollouts, so one iteration cannot overshoot the KL target
   before β has had a chance to react.
Prompt tokens never enter a loss: every term is a masked mean over response tokens (see rl_math).
Logs per iteration (metrics.jsonl + progress bar): reward, KL, β, clip fraction, value loss, entropy,
response length. Checkpoints (`step-N/{actor,critic,train_state.pt}` + latest.json) resume exactly.
The PPO prompts must be new: prompts that appear in the reward model's training data (recorded in its
meta.json) or in `--exclude-prompts` files are dropped and counted.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..fetch import atomic_write_text
from . import rl_math
from .loop import LATEST, TRAIN_STATE, latest_checkpoint, resolve_device, rng_state, seed_everything, set_rng_state
from .reward import load_scored_model, pad_batch


@dataclass
class PPOConfig:
    policy: str = ""  # SFT checkpoint: the actor's start and the frozen reference
    reward_model: str = ""  # reward-model checkpoint: frozen r(x, y), and the critic's start
    prompts: str = ""  # PPO prompts (JSONL or text), never seen by SFT or the reward model
    eval_prompts: str = ""  # held-out prompts for before/after evaluation ("" = hold out `eval_fraction`)
    eval_fraction: float = 0.1
    exclude_prompts: list[str] = field(default_factory=list)  # SFT/RM files whose prompts PPO must not use
    ptx_data: str = ""  # pretraining/SFT text for PPO-ptx (JSONL with "text" or "messages", or plain text)
    out_dir: str = "runs/ppo"
    # rollouts
    iterations: int = 100
    batch_prompts: int = 16  # rollouts per iteration
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    max_len: int = 512  # prompt tokens kept (from the right) so prompt + response fits
    # PPO
    ppo_epochs: int = 4
    minibatch: int = 8
    clip_range: float = 0.2  # ε: the policy ratio π/π_old is clipped to [1−ε, 1+ε]
    clip_range_value: float = 0.2  # value predictions move at most this far from the rollout's values
    gamma: float = 1.0  # discount γ of GAE (1.0: the episode is one response)
    lam: float = 0.95  # GAE λ
    vf_coef: float = 0.5
    whiten_advantages: bool = True
    # KL penalty (β) and its controller
    init_beta: float = 0.05  # β: weight of the per-token KL(π‖π_SFT) penalty in the reward
    kl_target: float | None = 6.0  # target KL per response in nats; None = keep β fixed
    kl_horizon: int = 10000  # controller horizon (in rollouts)
    kl_estimator: str = "k1"
    # per-iteration trust region: stop this iteration's epochs once the policy has moved this far (mean per-token
    # KL(π_old‖π), k3 estimate) from the rollout policy; 0 = off. Keeps KL(π‖π_SFT) from overshooting between
    # two β adjustments (as `target_kl` in Spinning Up / Stable-Baselines3 PPO).
    target_update_kl: float = 0.0
    normalize_reward: bool = True  # use the reward model's stored mean/std
    # PPO-ptx
    ptx_coef: float = 0.0  # γ_ptx: weight of the pretraining loss (InstructGPT used 27.8 with its own scaling)
    ptx_batch: int = 4
    # optimisation
    lr: float = 1e-6
    critic_lr: float = 5e-6
    grad_clip: float = 1.0
    # bookkeeping
    eval_every: int = 0  # 0: evaluate only before and after
    save_every: int = 20
    keep_checkpoints: int = 2
    property_regex: str = ""  # optional: also report the rate of responses matching this regex
    seed: int = 0
    device: str = "auto"
    progress: bool = True


# --- prompt and corpus data ----------------------------------------------------------------------------

def _prompt_key(messages: list[dict]) -> str:
    return json.dumps([[m["role"], m["content"].strip()] for m in messages], ensure_ascii=False)


def prompts_of_file(path: str) -> set[str]:
    """Prompt keys found in a comparison, SFT or prompt file (for keeping PPO prompts separate)."""
    from .compare_cli import read_prompts
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


def _end_of_turn_id(tok) -> int | None:
    for t in ("<|im_end|>", tok.eos_token):
        if t and tok.token_to_id(t) is not None:
            return tok.token_to_id(t)
    return None


class PPOTrainer:
    def __init__(self, cfg: PPOConfig):
        from ..checkpoint import load_model
        from ..engine import Engine
        from .compare_cli import read_prompts

        for name in ("policy", "reward_model", "prompts"):
            if not getattr(cfg, name):
                raise UserError(f"--{name.replace('_', '-')} is required")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.out_dir = Path(cfg.out_dir)
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
        self.critic = copy.deepcopy(self.reward_model).train().requires_grad_(True)
        self.reward_norm = rm_meta.get("reward_norm") if cfg.normalize_reward else None
        self.max_total = min(self.actor.cfg.max_seq_len, cfg.max_len + cfg.max_new_tokens)
        self.engine = Engine(self.actor, self.tok, max_batch=cfg.batch_prompts, max_seq_len=self.max_total)
        self.end_id = _end_of_turn_id(self.tok)

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
        self.kl_ctl = rl_math.AdaptiveKLController(cfg.init_beta, cfg.kl_target, cfg.kl_horizon)
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
    def generate(self, prompts: list[list[dict]], seed: int, temperature: float | None = None):
        from ..engine import SamplingParams
        cfg = self.cfg
        t = cfg.temperature if temperature is None else temperature
        prompt_ids = [self._prompt_ids(p) for p in prompts]
        params = [SamplingParams(max_tokens=cfg.max_new_tokens, temperature=t, top_p=cfg.top_p,
                                 seed=seed * 100_003 + i) for i in range(len(prompts))]
        self.actor.eval()
        gens = self.engine.generate(prompt_ids, params)
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
        end = self.end_id
        closed = [s if end is None or s[-1] == end else s + [end] for s in seqs]
        ids, _, last = pad_batch(closed, [[1] * len(s) for s in closed], self.tok.pad_id)
        return self.reward_model(ids.to(self.device), score_index=last.to(self.device))

    # --- one iteration ---------------------------------------------------------------------------
    @torch.no_grad()
    def make_rollouts(self, prompts) -> Rollouts:
        cfg = self.cfg
        seqs, masks, texts = self.generate(prompts, seed=cfg.seed * 7 + self.step)
        ids, tok_mask, _ = pad_batch(seqs, masks, self.tok.pad_id)
        ids, tok_mask = ids.to(self.device), tok_mask.to(self.device)
        mask = tok_mask[:, 1:].float()
        old_logp = rl_math.token_logprobs(self.actor(ids), ids)
        ref_logp = rl_math.token_logprobs(self.reference(ids), ids)
        values = self.critic(ids, score_all=True)[:, :-1]
        raw = self.reward_scores(seqs)
        scores = self.normalise(raw)
        rewards, kl = rl_math.shaped_rewards(scores, old_logp, ref_logp, mask, self.kl_ctl.beta, cfg.kl_estimator)
        adv, ret = rl_math.gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = rl_math.masked_whiten(adv, mask)
        return Rollouts(ids, mask, old_logp, ref_logp, values * mask, adv, ret, scores, raw, kl, texts)

    def ppo_update(self, ro: Rollouts) -> dict:
        cfg = self.cfg
        B = ro.ids.shape[0]
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clip_frac", "value_clip_frac",
                                                          "entropy", "approx_kl", "update_kl", "ptx_loss")}
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        stopped, steps_done = False, 0
        for _ in range(cfg.ppo_epochs):
            if stopped:
                break
            for idx in torch.randperm(B, generator=gen).split(cfg.minibatch):
                idx = idx.to(self.device)
                T = int(ro.mask[idx].nonzero()[:, 1].max()) + 2 if ro.mask[idx].any() else ro.ids.shape[1]
                ids, mask = ro.ids[idx, :T], ro.mask[idx, :T - 1]
                logits = self.actor(ids)
                logp = rl_math.token_logprobs(logits, ids)
                pg_loss, clip_frac = rl_math.ppo_policy_loss(logp, ro.old_logp[idx, :T - 1], ro.advantages[idx, :T - 1],
                                                             mask, cfg.clip_range)
                with torch.no_grad():
                    entropy = rl_math.masked_mean(rl_math.entropy_from_logits(logits[:, :-1]), mask)
                    approx_kl = rl_math.masked_mean(ro.old_logp[idx, :T - 1] - logp, mask)
                    update_kl = rl_math.masked_mean(rl_math.kl_per_token(ro.old_logp[idx, :T - 1], logp, "k3"), mask)
                stats["update_kl"].append(float(update_kl))
                if cfg.target_update_kl > 0 and float(update_kl) > 1.5 * cfg.target_update_kl:
                    stopped = True  # this minibatch's step is not taken: the policy has moved far enough
                    break
                steps_done += 1
                loss = pg_loss
                if self.ptx is not None:
                    ptx_ids, ptx_mask = (t.to(self.device) for t in self.ptx.next_batch())
                    ptx_loss = rl_math.lm_loss(self.actor(ptx_ids), ptx_ids, ptx_mask)
                    loss = loss + cfg.ptx_coef * ptx_loss
                    stats["ptx_loss"].append(float(ptx_loss.detach()))
                self.actor_opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.grad_clip)
                self.actor_opt.step()

                values = self.critic(ids, score_all=True)[:, :-1]
                vf_loss, vf_clip = rl_math.ppo_value_loss(values, ro.values[idx, :T - 1], ro.returns[idx, :T - 1],
                                                          mask, cfg.clip_range_value)
                self.critic_opt.zero_grad(set_to_none=True)
                (cfg.vf_coef * vf_loss).backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.grad_clip)
                self.critic_opt.step()
                for k, v in (("policy_loss", pg_loss), ("value_loss", vf_loss), ("clip_frac", clip_frac),
                             ("value_clip_frac", vf_clip), ("entropy", entropy), ("approx_kl", approx_kl)):
                    stats[k].append(float(v.detach()))
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
        upd = self.ppo_update(ro)
        self.kl_ctl.update(kl_per_response, n_steps=len(prompts))
        self.step += 1
        record = {"step": self.step, "reward": float(ro.scores.mean()), "reward_raw": float(ro.raw_scores.mean()),
                  "kl": kl_per_response, "beta": beta_used, "beta_next": self.kl_ctl.beta,
                  "response_len": float(ro.mask.sum(1).mean()), **upd,
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
        seqs, masks, texts = self.generate(self.eval_prompts, seed=10_000_019)
        ids, tok_mask, _ = pad_batch(seqs, masks, self.tok.pad_id)
        ids, tok_mask = ids.to(self.device), tok_mask.to(self.device)
        mask = tok_mask[:, 1:].float()
        logp = rl_math.token_logprobs(self.actor(ids), ids)
        ref_logp = rl_math.token_logprobs(self.reference(ids), ids)
        kl = (rl_math.kl_per_token(logp, ref_logp, self.cfg.kl_estimator) * mask).sum(1)
        raw = self.reward_scores(seqs)
        scores = self.normalise(raw)
        out = {f"{tag}_reward": float(scores.mean()), f"{tag}_reward_raw": float(raw.mean()),
               f"{tag}_kl": float(kl.mean()), f"{tag}_response_len": float(mask.sum(1).mean())}
        if self.property is not None:
            out[f"{tag}_property_rate"] = sum(bool(self.property.search(t)) for t in texts) / len(texts)
        samples = [{"prompt": p, "response": t, "reward": float(s)} for p, t, s in zip(self.eval_prompts, texts, scores)]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / f"samples_{tag}.jsonl",
                          "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
        return out

    # --- checkpoints -----------------------------------------------------------------------------
    def save(self) -> Path:
        from ..checkpoint import save_checkpoint
        name = f"step-{self.step:06d}"
        target = self.out_dir / name
        tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        meta = self.meta()
        save_checkpoint(tmp / "actor", self.actor, self.tok, meta=meta)
        save_checkpoint(tmp / "critic", self.critic, self.tok, meta={**meta, "stage": "ppo-critic"})
        torch.save({"step": self.step, "actor_opt": self.actor_opt.state_dict(),
                    "critic_opt": self.critic_opt.state_dict(), "kl_ctl": self.kl_ctl.state_dict(),
                    "prompt_pos": self.prompt_pos, "prompt_epoch": self.prompt_epoch,
                    "ptx": self.ptx.state_dict() if self.ptx else None, "rng": rng_state()}, tmp / TRAIN_STATE)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        atomic_write_text(self.out_dir / LATEST, json.dumps({"step": self.step, "dir": name}) + "\n")
        older = sorted(p for p in self.out_dir.glob("step-*") if p.is_dir() and p.name != name)
        for old in older[:max(0, len(older) + 1 - max(1, self.cfg.keep_checkpoints))]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def resume(self) -> bool:
        from .loop import load_weights_into
        ckpt = latest_checkpoint(self.out_dir)
        if ckpt is None:
            return False
        load_weights_into(self.actor, ckpt / "actor")
        load_weights_into(self.critic, ckpt / "critic")
        state = torch.load(ckpt / TRAIN_STATE, map_location="cpu", weights_only=False)
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.prompt_pos, self.prompt_epoch = state["prompt_pos"], state["prompt_epoch"]
        if self.ptx and state.get("ptx"):
            self.ptx.load_state_dict(state["ptx"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        metrics = self.out_dir / "metrics.jsonl"
        if metrics.exists():  # drop lines written after the checkpoint, so the log reads as one run
            kept = [ln for ln in metrics.read_text().splitlines()
                    if ln.strip() and _line_step(ln) <= self.step and '"final": true' not in ln]
            atomic_write_text(metrics, "".join(ln + "\n" for ln in kept))
        return True

    def meta(self) -> dict:
        c = self.cfg
        return {"stage": "ppo", "parent": self.policy_source, "reward_model": c.reward_model, "step": self.step,
                "ppo": {k: getattr(c, k) for k in ("init_beta", "kl_target", "clip_range", "gamma", "lam",
                                                    "ptx_coef", "batch_prompts", "ppo_epochs", "lr",
                                                    "target_update_kl")},
                "beta": self.kl_ctl.beta}

    def log(self, record: dict) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    # --- the loop --------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict:
        from ..checkpoint import save_checkpoint
        from tqdm.auto import tqdm
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.resume()
        atomic_write_text(self.out_dir / "run.json", json.dumps(
            {"stage": "ppo", "config": dataclasses.asdict(cfg), "train_prompts": len(self.train_prompts),
             "eval_prompts": len(self.eval_prompts), "dropped_prompts_seen_by_sft_or_rm": self.dropped_prompts},
            indent=2, default=str) + "\n")
        before = {}
        if not resumed:
            before = self.evaluate("before")
            self.log({"step": 0, **before})
        bar = tqdm(total=cfg.iterations, initial=self.step, desc="ppo", dynamic_ncols=True, disable=not cfg.progress)
        record: dict = {}
        try:
            while self.step < cfg.iterations:
                record = self.iteration()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.iterations:
                    record.update(self.evaluate("eval"))
                self.log(record)
                bar.update(1)
                post = {"reward": f"{record['reward']:.3f}", "kl": f"{record['kl']:.2f}", "beta": f"{record['beta']:.3f}"}
                if "property_rate" in record:
                    post["prop"] = f"{record['property_rate']:.2f}"
                bar.set_postfix(post, refresh=False)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.iterations:
                    self.save()
        except KeyboardInterrupt:
            bar.write(f"interrupted at iteration {self.step}; saving a checkpoint to resume from")
            if self.step > 0:
                self.save()
            raise
        finally:
            bar.close()
        self.save()
        after = self.evaluate("after")
        self.log({"step": self.step, "final": True, **after})
        final = save_checkpoint(self.out_dir / "final", self.actor, self.tok, meta={**self.meta(), "eval": after})
        return {"checkpoint": str(final), "before": before, "after": after,
                "last": {k: v for k, v in record.items()}, "dropped_prompts": self.dropped_prompts}


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError):
        return 1 << 60  # a line cut short by a kill: dropped


# --- CLI -----------------------------------------------------------------------------------------------

HELP = {
    "policy": "SFT checkpoint: the actor starts here, and a frozen copy is the reference π_SFT of the KL penalty",
    "reward_model": "reward-model checkpoint from `alignchat rm`: frozen r(x, y), and the critic's initialisation",
    "prompts": "PPO prompts (JSONL {\"prompt\": [messages]} or text, one a line); prompts used by SFT/RM are dropped",
    "eval_prompts": "held-out prompts for before/after evaluation (default: hold out --eval-fraction of --prompts)",
    "eval_fraction": "fraction of --prompts held out for evaluation when --eval-prompts is not given",
    "exclude_prompts": "SFT/comparison files whose prompts PPO must not train on (the RM's data is excluded automatically)",
    "ptx_data": "PPO-ptx corpus: JSONL with \"text\" or \"messages\", or plain text (paragraphs)",
    "out_dir": "run directory: metrics.jsonl, samples_before/after.jsonl, step-N/ checkpoints, final/",
    "iterations": "PPO iterations (each: one batch of rollouts, then --ppo-epochs of updates)",
    "batch_prompts": "rollouts per iteration (prompts sampled once each through the KV-cache engine)",
    "max_new_tokens": "maximum response length in tokens",
    "temperature": "sampling temperature of rollouts (1.0 = the policy's own distribution, as PPO assumes)",
    "top_p": "nucleus sampling for rollouts (1.0 = off, keeps PPO on-policy)",
    "max_len": "prompt tokens kept (from the right)",
    "ppo_epochs": "passes over each batch of rollouts",
    "minibatch": "rollouts per gradient step",
    "clip_range": "clip range ε: the ratio π/π_old is clipped to [1−ε, 1+ε] in the policy objective (PPO paper: 0.2)",
    "clip_range_value": "the critic's new values may move at most this far from the rollout's values",
    "gamma": "discount γ of GAE (1.0: the whole response is one episode)",
    "lam": "λ of GAE: bias/variance trade-off of the advantage estimate",
    "vf_coef": "weight of the value loss",
    "whiten_advantages": "normalise advantages to mean 0, std 1 over each batch's response tokens",
    "init_beta": "β: weight of the per-token KL(π‖π_SFT) penalty; reward = r(x,y) − β·KL (InstructGPT: 0.02)",
    "kl_target": "target KL per response (nats) of the adaptive β controller (Ziegler et al.); 'none' = fixed β",
    "kl_horizon": "horizon of the adaptive β controller, in rollouts: larger adapts β more slowly",
    "kl_estimator": "per-token KL estimate: k1 = log π − log π_ref (InstructGPT), k2, or k3 (never negative)",
    "target_update_kl": "trust region per iteration: stop the remaining PPO epochs once the mean per-token "
                        "KL(π_old‖π) exceeds 1.5× this (0 = off; 0.01–0.05 is usual)",
    "normalize_reward": "normalise r(x, y) with the mean/std stored by `alignchat rm`",
    "ptx_coef": "γ_ptx of PPO-ptx: weight of the pretraining LM loss mixed into the policy loss (0 = plain PPO)",
    "ptx_batch": "sequences of --ptx-data per PPO minibatch",
    "lr": "actor learning rate",
    "critic_lr": "critic learning rate",
    "grad_clip": "global gradient-norm clip (0 = off)",
    "eval_every": "evaluate on the held-out prompts every N iterations (0: only before and after)",
    "save_every": "checkpoint every N iterations (and always at the end)",
    "keep_checkpoints": "step checkpoints kept",
    "property_regex": "optional regex: also report the rate of responses matching it (a measurable preference)",
    "seed": "random seed (rollout seeds derive from it, so a resumed run repeats the same samples)",
    "device": "auto | cpu | cuda | cuda:N",
    "progress": "show a progress bar",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "RLHF with PPO (InstructGPT): actor from SFT, frozen SFT reference, critic from the reward model, frozen "
        "reward model. Per-token reward = r(x,y) on the last token - beta * KL(pi || pi_SFT); adaptive beta; GAE; "
        "clipped policy and value losses; PPO-ptx mixes gamma_ptx * the pretraining loss into the policy loss. "
        "K (responses ranked per prompt) belongs to the comparison data: see `alignchat compare sample -k`.")
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    d = PPOConfig()
    for f in dataclasses.fields(PPOConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        kw: dict = {"help": HELP[f.name], "default": default}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kw["nargs"] = "*"
        elif f.name == "kl_target":
            kw["type"] = lambda s: None if s.lower() in ("none", "0", "off") else float(s)
        else:
            kw["type"] = type(default)
        parser.add_argument(flag, **kw)
    parser.add_argument("--config", help="TOML/YAML/JSON file of PPOConfig overrides")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")


def run(args) -> int:
    from .reward import apply_config_file
    cfg = PPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PPOConfig)})
    cfg = apply_config_file(cfg, args.config)
    out = PPOTrainer(cfg).fit(resume=args.resume)
    print(json.dumps({k: out[k] for k in ("checkpoint", "before", "after", "dropped_prompts")}, indent=2))
    return 0
