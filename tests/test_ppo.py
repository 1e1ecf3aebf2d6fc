"""PPO math against hand computations."""

import copy
import math

import numpy as np
import pytest
import torch

from agents.ppo import PPOHyperparams, compute_gae, explained_variance, ppo_loss


def test_gae_matches_hand_computation_with_termination_and_truncation():
    # One env, 5 steps: step 1 terminates an episode, step 3 is cut by a time limit.
    gamma, lam = 0.9, 0.8
    rewards = np.array([[1.0], [2.0], [0.5], [1.0], [3.0]], np.float32)
    values = np.array([[0.5], [1.0], [2.0], [1.5], [0.2]], np.float32)
    terminated = np.array([[0], [1], [0], [0], [0]], bool)
    truncated = np.array([[0], [0], [0], [1], [0]], bool)
    bootstrap = np.array([[0], [0], [0], [4.0], [0]], np.float32)  # V(final obs) of the cut episode
    last_values = np.array([0.7], np.float32)

    adv, ret = compute_gae(rewards, values, terminated, truncated, bootstrap, last_values, gamma, lam)

    # By hand, backwards. Step 4: inside an episode, bootstraps from last_values.
    d4 = 3.0 + gamma * 0.7 - 0.2
    a4 = d4
    # Step 3: truncated -> bootstraps from V(final obs) = 4.0, and the recursion stops here.
    d3 = 1.0 + gamma * 4.0 - 1.5
    a3 = d3
    # Step 2: normal step into step 3.
    d2 = 0.5 + gamma * 1.5 - 2.0
    a2 = d2 + gamma * lam * a3
    # Step 1: terminated -> no bootstrap, recursion stops.
    d1 = 2.0 - 1.0
    a1 = d1
    # Step 0: normal step into step 1.
    d0 = 1.0 + gamma * 1.0 - 0.5
    a0 = d0 + gamma * lam * a1
    expected = np.array([[a0], [a1], [a2], [a3], [a4]], np.float32)
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    np.testing.assert_allclose(ret, expected + values, rtol=1e-6)


def test_gae_truncated_and_terminated_same_step_does_not_bootstrap():
    # A step that is both (the env terminated on the time limit's last step) is a real termination.
    adv, _ = compute_gae(
        np.array([[1.0]], np.float32), np.array([[0.5]], np.float32), np.array([[True]]), np.array([[True]]),
        np.array([[9.0]], np.float32), np.array([5.0], np.float32), 0.99, 0.95,
    )  # fmt: skip
    assert adv[0, 0] == pytest.approx(0.5)


def test_gae_lambda_one_gives_discounted_return_minus_value():
    rewards = np.ones((4, 2), np.float32)
    values = np.zeros((4, 2), np.float32)
    zeros = np.zeros((4, 2), bool)
    adv, ret = compute_gae(rewards, values, zeros, zeros, np.zeros((4, 2), np.float32), np.array([10.0, 0.0], np.float32), 0.5, 1.0)
    assert ret[0, 0] == pytest.approx(1 + 0.5 + 0.25 + 0.125 + 0.0625 * 10)
    assert ret[0, 1] == pytest.approx(1 + 0.5 + 0.25 + 0.125)


def test_ppo_loss_terms_on_tiny_batch():
    hp = PPOHyperparams(clip_coef=0.2, ent_coef=0.01, vf_coef=0.5, norm_adv=False, clip_vloss=True)
    old_lp = torch.log(torch.tensor([0.5, 0.5]))
    new_lp = torch.log(torch.tensor([0.75, 0.25]))  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0, 1.0])
    entropy = torch.tensor([0.6, 0.4])
    old_v, new_v, returns = torch.tensor([0.0, 1.0]), torch.tensor([0.5, 1.1]), torch.tensor([1.0, 1.0])
    loss, stats = ppo_loss(new_lp, old_lp, entropy, new_v, old_v, adv, returns, hp)

    # Clipped surrogate: sample 0 ratio 1.5 clipped to 1.2 -> -1.2; sample 1 ratio 0.5 -> min(0.5, 0.8) = 0.5.
    assert stats["policy_loss"].item() == pytest.approx(-(1.2 + 0.5) / 2)
    # Value clipping: sample 0 moves 0.5 > 0.2, clipped value 0.2 -> max(0.25, 0.64) = 0.64; sample 1: 0.01.
    assert stats["value_loss"].item() == pytest.approx(0.5 * (0.64 + 0.01) / 2)
    assert stats["entropy"].item() == pytest.approx(0.5)
    assert stats["clipfrac"].item() == pytest.approx(1.0)
    kl = ((1.5 - 1) - math.log(1.5) + (0.5 - 1) - math.log(0.5)) / 2
    assert stats["approx_kl"].item() == pytest.approx(kl, rel=1e-5)
    expected = stats["policy_loss"] - 0.01 * 0.5 + 0.5 * stats["value_loss"]
    assert loss.item() == pytest.approx(expected.item())


def test_ppo_loss_gradient_vanishes_outside_the_clip_range():
    hp = PPOHyperparams(norm_adv=False, ent_coef=0.0, vf_coef=0.0)
    new_lp = torch.log(torch.tensor([0.9])).requires_grad_()
    loss, _ = ppo_loss(new_lp, torch.log(torch.tensor([0.5])), torch.zeros(1), torch.zeros(1), torch.zeros(1),
                       torch.tensor([1.0]), torch.zeros(1), hp)  # fmt: skip
    loss.backward()
    assert new_lp.grad.item() == 0.0  # ratio 1.8 > 1.2 with a positive advantage: no incentive to go further


def test_explained_variance():
    r = np.array([1.0, 2.0, 3.0])
    assert explained_variance(r, r) == pytest.approx(1.0)
    assert explained_variance(np.full(3, 2.0), r) == pytest.approx(0.0)


def test_vtrace_without_lag_gives_the_gae_lambda_returns():
    from agents.ppo import compute_gae, compute_vtrace

    rng = np.random.default_rng(0)
    T, N = 7, 3
    rewards, values = rng.normal(size=(T, N)).astype(np.float32), rng.normal(size=(T, N)).astype(np.float32)
    terminated = np.zeros((T, N), bool)
    truncated = np.zeros((T, N), bool)
    terminated[2, 0], truncated[4, 1] = True, True
    bootstrap = np.where(truncated, 0.7, 0.0).astype(np.float32)
    last = rng.normal(size=N).astype(np.float32)
    _, gae_returns = compute_gae(rewards, values, terminated, truncated, bootstrap, last, 0.9, 0.8)
    _, vs = compute_vtrace(rewards, values, terminated, truncated, bootstrap, last, np.zeros((T, N)), 0.9, 0.8)
    np.testing.assert_allclose(vs, gae_returns, rtol=1e-5, atol=1e-6)


def test_vtrace_by_hand_on_one_env():
    from agents.ppo import compute_vtrace

    # Two steps, then the rollout ends (bootstrap from last_values = 2). gamma 0.5, lambda 1.
    # pi/mu = 2 at t=0 (clipped to 1 by rho_bar and c_bar), 0.5 at t=1.
    r, v = np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]])
    no = np.zeros((2, 1), bool)
    log_rhos = np.log(np.array([[2.0], [0.5]]))
    adv, vs = compute_vtrace(r, v, no, no, np.zeros((2, 1)), np.array([2.0]), log_rhos, 0.5)
    delta1 = 0.5 * (0.0 + 0.5 * 2.0 - 1.0)  # rho_1 = 0.5: 0
    vs1 = 1.0 + delta1
    delta0 = 1.0 * (1.0 + 0.5 * 1.0 - 0.0)  # rho_0 = min(1, 2) = 1: 1.5
    vs0 = 0.0 + delta0 + 0.5 * 1.0 * delta1  # c_0 = min(1, 2) = 1
    np.testing.assert_allclose(vs[:, 0], [vs0, vs1])
    np.testing.assert_allclose(adv[:, 0], [1.0 * (1.0 + 0.5 * vs1 - 0.0), 0.5 * (0.0 + 0.5 * 2.0 - 1.0)])


def _board_agent_and_batch(n: int = 32):
    import gymnasium as gym

    from agents.networks import ActorCritic

    torch.manual_seed(0)
    space = gym.spaces.Dict({"observation": gym.spaces.Box(-1, 1, (42,), np.float32),
                             "action_mask": gym.spaces.MultiBinary(7)})  # fmt: skip
    agent = ActorCritic(space, gym.spaces.Discrete(7), board_grid=(6, 7))
    obs = {"observation": torch.randint(-1, 2, (n, 42)).float(), "action_mask": torch.ones(n, 7)}
    return agent, obs


def test_under_a_bfloat16_autocast_only_the_board_trunk_rounds():
    agent, obs = _board_agent_and_batch()
    with torch.no_grad():
        dist32, value32, _ = agent(obs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dist16, value16, _ = agent(obs)
            features16 = agent.trunk(obs["observation"])
        # The heads read the bf16 trunk's features in float32: the same as running them by hand outside.
        by_hand, value_by_hand, _ = agent._heads(features16.float(), obs, None, None)
    assert features16.dtype == torch.bfloat16
    assert dist16.logits.dtype == value16.dtype == torch.float32
    assert torch.equal(dist16.logits, by_hand.logits) and torch.equal(value16, value_by_hand)
    # Rounded, not replaced: close to float32 (8-bit mantissa in the convolutions) but not equal.
    assert not torch.equal(value16, value32)
    assert torch.allclose(dist16.logits, dist32.logits, atol=0.05) and torch.allclose(value16, value32, atol=0.05)


def test_ppo_update_under_bfloat16_keeps_float32_weights_and_moves_them_like_float32():
    from agents.ppo import ppo_update

    agent, obs = _board_agent_and_batch(64)
    with torch.no_grad():
        dist, values, _ = agent(obs)
        actions = dist.sample()
        batch = {"obs": obs, "actions": actions, "log_probs": dist.log_prob(actions), "values": values,
                 "advantages": torch.randn(64, generator=torch.Generator().manual_seed(1)), "returns": values + 1}  # fmt: skip
    moved = {}
    for dtype in (None, torch.bfloat16):
        net = copy.deepcopy(agent)
        before = [p.detach().clone() for p in net.parameters()]
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        stats = ppo_update(net, optimizer, batch, PPOHyperparams(update_epochs=1, num_minibatches=1),
                           torch.Generator().manual_seed(0), autocast_dtype=dtype)  # fmt: skip
        assert all(p.dtype == torch.float32 for p in net.parameters())
        # One epoch on the rollout's own policy: the ratio is ~1 (bf16 rounding moves it by far less than the clip).
        assert stats["approx_kl"] < 1e-4 and stats["clipfrac"] == 0.0
        moved[dtype] = torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before, strict=True)])
    # Adam's first step moves each weight by ~lr * sign(gradient): bf16's gradients point the same way.
    agree = (moved[None].sign() == moved[torch.bfloat16].sign()).float().mean().item()
    assert agree > 0.9, agree
