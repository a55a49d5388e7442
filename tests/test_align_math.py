"""The RLHF/DPO formulas of alignchat.train.rl_math against values worked out by hand."""
import math

import pytest
import torch

from alignchat.train import rl_math as M
from alignchat.train.loop import IGNORE_INDEX, lm_loss


def nlogsig(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_gae_short_trajectory_by_hand():
    # r = (0, 0, 1), V = (0.5, 0.4, 0.3), γ = 0.9, λ = 0.8; episode ends after the third token
    # δ2 = 1 − 0.3 = 0.7                     A2 = 0.7
    # δ1 = 0.9·0.3 − 0.4 = −0.13             A1 = −0.13 + 0.72·0.7 = 0.374
    # δ0 = 0.9·0.4 − 0.5 = −0.14             A0 = −0.14 + 0.72·0.374 = 0.12928
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the 4th position is padding with junk values
    values = torch.tensor([[0.5, 0.4, 0.3, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = M.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, torch.tensor([[0.12928, 0.374, 0.7, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.62928, 0.774, 1.0, 0.0]]))


def test_gae_lambda_one_gives_discounted_return_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3]])
    values = torch.tensor([[0.2, 0.1, -0.4]])
    adv, ret = M.gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=1.0)
    g2 = 0.3
    g1 = -0.2 + 0.5 * g2
    g0 = 0.1 + 0.5 * g1
    torch.testing.assert_close(ret, torch.tensor([[g0, g1, g2]]))


def test_clipped_policy_objective_inside_and_outside_clip_range():
    eps = 0.2
    # (advantage, ratio) -> per-token loss −min(ρA, clip(ρ)A)
    cases = [(+1.0, 1.1, -1.1, False),  # inside the range: plain ratio·A
             (+1.0, 1.5, -1.2, True),   # positive advantage, ratio above 1+ε: gain capped at 1.2
             (-1.0, 1.5, +1.5, False),  # negative advantage, ratio above: the pessimistic unclipped term wins
             (-1.0, 0.5, +0.8, True),   # negative advantage, ratio below 1−ε: clipped at 0.8
             (+1.0, 0.5, -0.5, False)]  # positive advantage, ratio below: unclipped (pessimistic) term
    for adv, ratio, expected, clipped in cases:
        old = torch.tensor([[-1.0]])
        new = old + math.log(ratio)
        loss, frac = M.ppo_policy_loss(new, old, torch.tensor([[adv]]), torch.ones(1, 1), eps)
        assert loss.item() == pytest.approx(expected, abs=1e-6), (adv, ratio)
        assert frac.item() == (1.0 if clipped else 0.0), (adv, ratio)
    # all five as one batch: the mean of the five, 2 of 5 clipped
    adv = torch.tensor([[c[0] for c in cases]])
    old = torch.zeros(1, 5)
    new = torch.log(torch.tensor([[c[1] for c in cases]]))
    loss, frac = M.ppo_policy_loss(new, old, adv, torch.ones(1, 5), eps)
    assert loss.item() == pytest.approx(sum(c[2] for c in cases) / 5, abs=1e-6)
    assert frac.item() == pytest.approx(0.4)


def test_policy_gradient_is_zero_where_clipped():
    new = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _ = M.ppo_policy_loss(new, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2)
    loss.backward()
    assert new.grad.item() == 0.0
    new = torch.tensor([[math.log(1.1)]], requires_grad=True)
    loss, _ = M.ppo_policy_loss(new, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2)
    loss.backward()
    assert new.grad.item() == pytest.approx(-1.1)  # d(−ρA)/d log π = −ρA


def test_clipped_value_loss_by_hand():
    # V_old 0.5, V 1.0, R 0.8, ε 0.2: unclipped (0.2)² = 0.04, clipped V 0.7 → 0.01; max → ½·0.04
    loss, frac = M.ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[0.8]]),
                                  torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.02)
    assert frac.item() == 0.0
    # V_old 0.5, V 0.0, R 0.0: unclipped 0, clipped V 0.3 → 0.09; max → ½·0.09, counted as clipped
    loss, frac = M.ppo_value_loss(torch.tensor([[0.0]]), torch.tensor([[0.5]]), torch.tensor([[0.0]]),
                                  torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.045)
    assert frac.item() == 1.0


def test_k_way_reward_loss_equals_mean_of_pairwise_losses():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    ranking = [2, 0, 1]  # pairs (2,0) d=1, (2,1) d=2, (0,1) d=1
    expected = (nlogsig(1.0) + nlogsig(2.0) + nlogsig(1.0)) / 3
    assert M.ranking_loss(rewards, ranking).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.2511505, rel=1e-6)

    g = torch.Generator().manual_seed(0)
    for k in range(2, 10):
        r = torch.randn(k, generator=g)
        rk = torch.randperm(k, generator=g).tolist()
        pair_losses = [nlogsig((r[rk[i]] - r[rk[j]]).item()) for i in range(k) for j in range(i + 1, k)]
        assert len(pair_losses) == math.comb(k, 2)
        assert M.ranking_loss(r, rk).item() == pytest.approx(sum(pair_losses) / len(pair_losses), rel=1e-5)


def test_each_ranking_is_one_batch_element():
    a, b = torch.tensor([0.3, -0.1]), torch.tensor([0.5, 0.1, -0.2, 0.9])
    ra, rb = [0, 1], [3, 0, 1, 2]
    batch = M.reward_model_loss([a, b], [ra, rb])
    # a 4-way ranking (6 pairs) weighs the same as a 2-way one (1 pair)
    assert batch.item() == pytest.approx((M.ranking_loss(a, ra) + M.ranking_loss(b, rb)).item() / 2, rel=1e-6)
    assert M.pairwise_accuracy(b, rb) == (6, 6)
    assert M.pairwise_accuracy(b, [2, 1, 0, 3]) == (0, 6)


def test_kl_estimates_by_hand_and_in_expectation():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert M.kl_per_token(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert M.kl_per_token(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert M.kl_per_token(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    # under tokens drawn from π, k1 and k3 average to the exact KL(π‖π_ref); weight by π instead of sampling
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.25, 0.25, 0.5])
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    for est in ("k1", "k3"):
        expectation = (p * M.kl_per_token(p.log(), q.log(), est)).sum().item()
        assert expectation == pytest.approx(exact, rel=1e-5)
    assert (M.kl_per_token(p.log(), q.log(), "k3") >= 0).all()


def test_shaped_rewards_put_score_on_last_response_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -0.1]])
    mask = torch.tensor([[1, 1, 1, 0]])
    rewards, kl = M.shaped_rewards(torch.tensor([2.0]), logp, ref, mask, beta=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0, 0.0]]))


def test_adaptive_kl_controller_ziegler():
    c = M.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(9.0, n_steps=256) == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))  # error clipped at +0.2
    c = M.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert c.update(5.4, n_steps=100) == pytest.approx(0.1 * (1 - 0.1 * 100 / 10000))
    fixed = M.AdaptiveKLController(0.1, target=None)
    assert fixed.update(100.0, 256) == 0.1


def test_dpo_loss_by_hand():
    out = M.dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.1)
    assert out.chosen_reward.item() == pytest.approx(0.05)
    assert out.rejected_reward.item() == pytest.approx(-0.05)
    assert out.loss.item() == pytest.approx(nlogsig(0.1))
    assert out.accuracy.item() == 1.0


def test_prompt_tokens_never_enter_any_loss():
    """Change everything at prompt (mask 0) positions: no loss moves. Change a response position: it moves."""
    g = torch.Generator().manual_seed(1)
    B, T, V = 2, 7, 11
    ids = torch.randint(0, V, (B, T), generator=g)
    # prompt is the first 3 tokens of row 0 and the first 4 of row 1; row 1 also has one pad at the end
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0]])
    logits = torch.randn(B, T, V, generator=g)
    tok_mask = mask[:, 1:]  # aligned with token_logprobs
    x = {n: torch.randn(B, T - 1, generator=g) for n in ("logp", "old", "ref", "adv", "v", "v_old", "ret")}

    def all_losses(logits, x):
        seq = M.sequence_logprob(logits, ids, mask)
        rewards, kl = M.shaped_rewards(torch.tensor([1.0, -1.0]), x["logp"], x["ref"], tok_mask, 0.1)
        adv, ret = M.gae(rewards, x["v"], tok_mask, 1.0, 0.95)
        return torch.stack([
            # the one next-token loss (the loop's; PPO-ptx uses it too), with the mask marking its targets
            lm_loss(lambda inputs: logits[:, :-1], (ids[:, :-1], ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX))
                    ).loss_sum, seq.sum(),
            M.ppo_policy_loss(x["logp"], x["old"], x["adv"], tok_mask, 0.2)[0],
            M.ppo_value_loss(x["v"], x["v_old"], x["ret"], tok_mask, 0.2)[0],
            M.masked_mean(kl, tok_mask), adv.sum(), ret.sum(),
            M.masked_whiten(x["adv"], tok_mask).sum(),
            M.dpo_loss(seq[:1], seq[1:], seq[:1] * 0.5, seq[1:] * 0.5, 0.1).loss])

    base = all_losses(logits, x)
    prompt_pos = tok_mask == 0
    noisy_logits = logits.clone()
    # logits at position t predict token t+1: perturb every position whose target is a prompt/pad token
    noisy_logits[:, :-1][prompt_pos] += 100 * torch.randn(int(prompt_pos.sum()), V, generator=g)
    noisy = {n: torch.where(prompt_pos, t + 1000 * torch.randn(t.shape, generator=g), t) for n, t in x.items()}
    torch.testing.assert_close(all_losses(noisy_logits, noisy), base)

    moved = {n: t.clone() for n, t in x.items()}
    for n in ("logp", "adv", "v"):  # the policy's and critic's outputs at one response token
        moved[n][0, 3] += 0.7
    moved_logits = logits.clone()
    moved_logits[0, 3] += torch.randn(V, generator=g)
    changed = all_losses(moved_logits, moved) != base
    assert changed[[0, 1, 2, 3, 4, 5, 6, 8]].all()
