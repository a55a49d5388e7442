"""The mathematics of RLHF and DPO, in plain PyTorch, one function per formula.

Read alongside InstructGPT (Ouyang et al. 2022), Ziegler et al. 2019, PPO (Schulman et al. 2017), GAE
(Schulman et al. 2016) and DPO (Rafailov et al. 2023). Notable choices:
- Every per-token quantity comes with a `mask` (1 on response tokens, 0 on prompt and padding), and every
  loss is a *masked* mean, so prompt tokens never contribute to any loss or statistic.
- Token log-probabilities follow the shift convention of a causal LM: `token_logprobs(logits, ids)[:, t]`
  is log p(ids[t+1] | ids[:t+1]), so a mask over `ids` is aligned with `mask[:, 1:]`.
- The reward-model loss treats one ranking of K responses as one batch element and averages over its
  C(K,2) pairs, as InstructGPT does (this keeps the K² pairs of one prompt from being over-weighted).
- The KL penalty is per token: reward_t = −β·KL_t, plus the reward model's score r(x, y) on the last
  response token. β adapts with Ziegler et al.'s proportional controller.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# --- masked statistics ---------------------------------------------------------------------------------

def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (0 where the mask is empty, never NaN)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise x to zero mean and unit variance over the masked positions (advantage normalisation)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# --- log-probabilities and entropy ---------------------------------------------------------------------

def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T, V) logits of a causal LM over ids (B, T) -> (B, T-1): log p(ids[:, t+1] | ids[:, :t+1])."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sequence_logprob(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p over the masked tokens of each sequence: log π(y|x) when mask marks y. -> (B,)."""
    return masked_sum(token_logprobs(logits, ids), mask[:, 1:], dim=1)


# --- reward model --------------------------------------------------------------------------------------

def ranking_pairs(ranking: list[int]) -> list[tuple[int, int]]:
    """All C(K,2) (winner, loser) index pairs implied by a best-first ranking."""
    return [(ranking[i], ranking[j]) for i, j in itertools.combinations(range(len(ranking)), 2)]


def ranking_loss(rewards: torch.Tensor, ranking: list[int]) -> torch.Tensor:
    """InstructGPT's loss for one ranking: −1/C(K,2) · Σ_{(w,l)} log σ(r_w − r_l).

    rewards: (K,) scalar rewards r(x, y_k) in response order; ranking: response indices, best first.
    """
    pairs = ranking_pairs(ranking)
    if not pairs:
        raise ValueError("a ranking needs at least two responses")
    w = torch.tensor([p[0] for p in pairs], device=rewards.device)
    l = torch.tensor([p[1] for p in pairs], device=rewards.device)
    return -F.logsigmoid(rewards[w] - rewards[l]).sum() / math.comb(len(ranking), 2)


def reward_model_loss(rewards_per_ranking: list[torch.Tensor], rankings: list[list[int]]) -> torch.Tensor:
    """Batch loss: the mean of `ranking_loss` over rankings, each ranking one batch element."""
    losses = [ranking_loss(r, rk) for r, rk in zip(rewards_per_ranking, rankings)]
    return torch.stack(losses).mean()


def pairwise_accuracy(rewards: torch.Tensor, ranking: list[int]) -> tuple[int, int]:
    """(correctly ordered pairs, pairs) of one ranking; ties count as wrong."""
    pairs = ranking_pairs(ranking)
    correct = sum(bool(rewards[w] > rewards[l]) for w, l in pairs)
    return correct, len(pairs)


# --- KL ------------------------------------------------------------------------------------------------

def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from log-probs of tokens sampled from π.

    k1 = log π − log π_ref (unbiased, the InstructGPT penalty; can be negative per token);
    k2 = ½ (log π − log π_ref)² ; k3 = (π_ref/π) − 1 − log(π_ref/π) (unbiased and never negative).
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio ** 2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2, k3)")


def shaped_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                   beta: float, estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: −β·KL_t on every response token, plus r(x, y) on the last one.

    score: (B,) reward-model scores; logp/ref_logp/mask: (B, T) over response tokens (mask 1 = token).
    Returns (rewards (B, T), kl (B, T)), both zero outside the mask.
    """
    mask = mask.to(logp.dtype)
    kl = kl_per_token(logp, ref_logp, estimator) * mask
    rewards = -beta * kl
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & (mask > 0)  # the final response token
    rewards = rewards + last.to(rewards.dtype) * score[:, None]
    return rewards, kl


class AdaptiveKLController:
    """Ziegler et al. 2019: β ← β · (1 + clip(KL/KL_target − 1, −0.2, 0.2) · n_steps / horizon)."""

    def __init__(self, init_beta: float, target: float | None, horizon: int = 10000):
        self.beta, self.target, self.horizon = float(init_beta), target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target:  # a fixed β when no target is given
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n_steps / self.horizon
        return self.beta

    def state_dict(self) -> dict:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.target, self.horizon = state["beta"], state["target"], state["horizon"]


# --- GAE and PPO ---------------------------------------------------------------------------------------

def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (right-padded).

    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1}; V and A are 0 after the last token (the episode
    ends there). Returns (advantages, returns = A + V), both zero outside the mask.
    """
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=values.dtype, device=values.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        # padding passes nothing back, so the last real token sees V_{t+1} = A_{t+1} = 0
        next_adv = adv_t * mask[:, t]
        next_value = values[:, t] * mask[:, t]
        advantages[:, t] = next_adv
    returns = (advantages + values) * mask
    return advantages, returns


def ppo_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: L = −E[min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)], ρ = π/π_old. Returns (loss, clip fraction)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    return loss, clip_frac


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   clip_range_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ½·E[max((V−R)², (V_old + clip(V−V_old, ±ε_v) − R)²)]. Returns (loss, clip fraction)."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clip_frac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask)
    return loss, clip_frac


# --- DPO -----------------------------------------------------------------------------------------------

@dataclass
class DPOOutput:
    loss: torch.Tensor
    chosen_reward: torch.Tensor  # β·(log π(y_w|x) − log π_ref(y_w|x)), the implicit reward, per pair
    rejected_reward: torch.Tensor
    accuracy: torch.Tensor  # fraction of pairs whose implicit reward orders them correctly


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> DPOOutput:
    """Rafailov et al.: −log σ(β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]).

    Inputs are per-pair sequence log-probabilities summed over response tokens only.
    """
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(chosen - rejected).mean()
    return DPOOutput(loss, chosen.detach(), rejected.detach(), (chosen > rejected).float().mean().detach())
