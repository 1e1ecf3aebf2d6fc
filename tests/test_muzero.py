"""MuZero's n-step targets (hand-computed, with episode ends inside the unroll) and its unrolled loss."""

import numpy as np
import pytest
import torch

from agents.muzero.loss import make_targets, muzero_loss
from agents.muzero.networks import MuZeroMLP

REWARDS = np.array([1.0, 0.0, 2.0, 3.0])
POLICIES = np.eye(4)[[0, 1, 2, 3]] * 0.5 + 0.125
ACTIONS = np.array([3, 2, 1, 0])


def _targets(final_value, terminated, **kw):
    root_values = np.array([10.0, 20.0, 30.0, 40.0, final_value])
    args = dict(start=2, unroll_steps=3, td_steps=2, discount=0.5, rng=np.random.default_rng(0))
    return make_targets(REWARDS, root_values, POLICIES, ACTIONS, terminated, **{**args, **kw})


def test_n_step_targets_across_a_real_end():
    t = _targets(0.0, terminated=True)
    # k=0 (position 2): r2 + 0.5 r3 + 0.25 * 0; k=1: r3 + 0.5 * 0; k=2 (after the last move): 0; k=3: absorbing.
    np.testing.assert_allclose(t.value, [3.5, 3.0, 0.0, 0.0])
    np.testing.assert_allclose(t.value_mask, [1, 1, 1, 1])
    np.testing.assert_allclose(t.reward, [0.0, 2.0, 3.0, 0.0])
    np.testing.assert_allclose(t.reward_mask, [0, 1, 1, 1])
    np.testing.assert_allclose(t.policy_mask, [1, 1, 0, 0])
    np.testing.assert_allclose(t.policy[:2], POLICIES[2:4])
    assert t.actions[:2].tolist() == [1, 0] and 0 <= t.actions[2] < 4


def test_n_step_targets_across_a_time_limit_bootstrap_and_mask():
    t = _targets(8.0, terminated=False)
    np.testing.assert_allclose(t.value[:3], [3.5 + 0.25 * 8, 3.0 + 0.5 * 8, 8.0])
    np.testing.assert_allclose(t.value_mask, [1, 1, 1, 0])
    np.testing.assert_allclose(t.reward_mask, [0, 1, 1, 0])


def test_n_step_targets_in_the_middle_bootstrap_from_the_root_value():
    t = _targets(0.0, terminated=True, start=0, unroll_steps=1)
    np.testing.assert_allclose(t.value, [1.0 + 0.0 + 0.25 * 30.0, 0.0 + 0.5 * 2.0 + 0.25 * 40.0])


def test_two_player_targets_alternate_sign():
    # Three moves, the third wins: good for the players who moved at 0 and 2, bad for the one at 1.
    t = make_targets(np.array([0.0, 0.0, 1.0]), np.zeros(4), np.full((3, 9), 1 / 9), np.array([4, 0, 8]), True,
                     start=0, unroll_steps=2, td_steps=9, discount=1.0, rng=np.random.default_rng(0), two_player=True)  # fmt: skip
    np.testing.assert_allclose(t.value, [1.0, -1.0, 1.0])


def test_root_value_mix_blends_the_return_with_the_search_value_of_each_position():
    # A real end: z = [3.5, 3.0, 0, 0] (above), v_{2..4} = 30, 40, 0. lambda = 0.25: 0.75 z + 0.25 v inside the
    # game and at the state after the last move (both 0 there); the absorbing step past the end stays 0.
    t = _targets(0.0, terminated=True, root_value_mix=0.25)
    np.testing.assert_allclose(t.value, [0.75 * 3.5 + 0.25 * 30.0, 0.75 * 3.0 + 0.25 * 40.0, 0.0, 0.0])
    # Two players, outcome targets: the winner's positions' z = +1 and the loser's -1 meet their own root values.
    t = make_targets(np.array([0.0, 0.0, 1.0]), np.array([0.2, -0.6, 0.8, 0.0]), np.full((3, 9), 1 / 9),
                     np.array([4, 0, 8]), True, start=0, unroll_steps=2, td_steps=9, discount=1.0,
                     rng=np.random.default_rng(0), two_player=True, root_value_mix=0.5)  # fmt: skip
    np.testing.assert_allclose(t.value, [0.5 * 1.0 + 0.5 * 0.2, 0.5 * -1.0 + 0.5 * -0.6, 0.5 * 1.0 + 0.5 * 0.8])


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    ts = [_targets(0.0, True), _targets(8.0, False, start=1)]
    fields = {k: torch.as_tensor(np.stack([getattr(t, k) for t in ts])) for k in
              ("actions", "value", "reward", "policy", "value_mask", "reward_mask", "policy_mask")}  # fmt: skip
    fields = {k: v.float() if v.dtype == torch.float64 else v for k, v in fields.items()}
    return torch.as_tensor(rng.normal(size=(2, 4)), dtype=torch.float32), fields


def test_masked_targets_do_not_change_the_loss():
    torch.manual_seed(0)
    model = MuZeroMLP(4, 4)
    obs, targets = _batch()
    loss, stats, priorities = muzero_loss(model, obs, targets, torch.ones(2))
    padded = {k: v.clone() for k, v in targets.items()}
    padded["policy"][padded["policy_mask"] == 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    padded["value"][padded["value_mask"] == 0] = 123.0
    padded["reward"][padded["reward_mask"] == 0] = -7.0
    loss2, _, _ = muzero_loss(model, obs, padded, torch.ones(2))
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    assert priorities.shape == (2,) and (priorities >= 0).all() and set(stats) == {"value_loss", "reward_loss", "policy_loss"}


def test_the_unrolled_loss_trains_the_model():
    torch.manual_seed(0)
    model = MuZeroMLP(4, 4)
    obs, targets = _batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, _, _ = muzero_loss(model, obs, targets, torch.ones(2))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first


def test_reanalyse_recomputes_the_bootstrap_values_with_the_latest_model():
    from agents.muzero.loss import unroll_windows
    from agents.muzero.networks import MuZeroMLP, root_inference
    from training.muzero.config import MuZeroConfig
    from training.muzero.learner import reanalysed_values
    from training.muzero.replay import Game

    torch.manual_seed(0)
    model = MuZeroMLP(obs_dim=3, num_actions=2, support_size=10, reward_support_size=10)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    rng = np.random.default_rng(0)
    T = 12
    game = Game(observations=rng.normal(size=(T + 1, 3)).astype(np.float32), actions=np.zeros(T, np.int64),
                rewards=np.ones(T), policies=np.full((T, 2), 0.5), root_values=np.full(T + 1, 7.0), terminated=True)  # fmt: skip
    game.root_values[-1] = 0.0
    cut = Game(game.observations, game.actions, game.rewards, game.policies, np.full(T + 1, 7.0), terminated=False)
    cfg = MuZeroConfig(unroll_steps=2, td_steps=3, reanalyse_fraction=1.0)
    fresh = root_inference(model, game.observations)[2]
    samples = [(game, 1), (game, 8), (cut, 8)]
    windows = unroll_windows([g for g, _ in samples], [t for _, t in samples], 2, 3)
    values = reanalysed_values(model, samples, windows, cfg, rng)
    # Start 1: steps k = 0, 1, 2 bootstrap from positions 4, 5, 6 (window offsets 3, 4, 5); nothing else changes.
    np.testing.assert_allclose(values[0, 3:6], fresh[4:7])
    assert (values[0, :3] == 7.0).all()
    # Start 8 of 12 moves: k = 0 bootstraps from position 11, k = 1 and 2 from the end (offset 4): after a
    # real end that stays 0; after a cut (a time limit) the model values the last state.
    np.testing.assert_allclose(values[1, 3], fresh[11])
    assert values[1, 4] == 0.0 and (values[1, :3] == 7.0).all()
    np.testing.assert_allclose(values[2, 3:5], fresh[11:13])
    assert (game.root_values[:-1] == 7.0).all() and (windows.root_values[0] == 7.0).all()  # inputs unchanged
    untouched = reanalysed_values(model, samples, windows, MuZeroConfig(reanalyse_fraction=0.0), rng)
    np.testing.assert_array_equal(untouched, windows.root_values)


def test_reanalyse_searches_the_unrolls_positions_again_with_the_latest_model():
    """The policy half of Reanalyse on TicTacToe self-play games: the unroll's positions get new search
    policies over their legal moves (the only legal move, alone, when one is left), steps past the end
    and the stored games keep theirs."""
    from agents.muzero.loss import unroll_windows
    from training.muzero.config import MuZeroConfig, build_model
    from training.muzero.learner import reanalysed_policies
    from training.muzero.self_play import SelfPlayWorker

    cfg = MuZeroConfig(env_id="rlgames/TicTacToe-v0", num_simulations=8, unroll_steps=2, reanalyse_policy_fraction=1.0)
    torch.manual_seed(0)
    model = build_model(cfg)
    games = SelfPlayWorker(cfg, model, num_envs=4, seed=0).play(moves=20, temperature=1.0).games
    game = next(g for g in games if len(g) == 9)  # a full board: one legal move left at position 8
    np.testing.assert_array_equal(game.legal_actions, game.observations[:-1] == 0)
    for p in model.parameters():  # the latest model differs from the one that played
        torch.nn.init.normal_(p, std=0.3)
    stored = game.policies.copy()
    samples = [(game, 0), (game, 7)]
    windows = unroll_windows([game, game], [0, 7], 2, cfg.td_steps)
    early, late = reanalysed_policies(model, samples, windows, cfg, np.random.default_rng(0))
    assert not np.allclose(early, stored[:3])  # positions 0 .. K searched again
    np.testing.assert_allclose(early.sum(-1), 1.0)
    assert (early[~game.legal_actions[:3]] == 0).all()  # no visits to illegal moves
    assert late[1].tolist() == game.legal_actions[8].astype(float).tolist()
    assert (late[2] == windows.policies[1, 2]).all()  # past the end: untouched (masked out of the loss)
    assert (game.policies == stored).all()  # the stored game is not changed
    untouched = reanalysed_policies(model, samples, windows, MuZeroConfig(), np.random.default_rng(0))
    np.testing.assert_array_equal(untouched, windows.policies)


def test_batched_targets_equal_the_targets_of_each_unroll():
    """make_batch_targets over unrolls that start in the middle, near a real end and near a time limit
    equals make_targets, the one-unroll view, row by row (random actions past the end aside)."""
    from agents.muzero.loss import make_batch_targets, unroll_windows
    from training.muzero.replay import Game

    rng = np.random.default_rng(3)
    games = []
    for T, terminated in ((9, True), (4, False), (15, True), (2, False)):
        values = rng.normal(size=T + 1) * 5
        values[-1] = 0.0 if terminated else values[-1]
        games.append(Game(np.zeros((T + 1, 1)), rng.integers(3, size=T), rng.normal(size=T),
                          rng.dirichlet(np.ones(3), size=T), values, terminated))  # fmt: skip
    starts = [0, 3, 7, 8, 1, 3, 14, 0, 1]
    picked = [games[0], games[1], games[0], games[0], games[2], games[2], games[2], games[3], games[3]]
    for two_player in (False, True):
        batch = make_batch_targets(unroll_windows(picked, starts, 3, 4), 4, 0.9, rng, two_player)
        for b, (g, t) in enumerate(zip(picked, starts, strict=True)):
            one = make_targets(g.rewards, g.root_values, g.policies, g.actions, g.terminated, t, 3, 4, 0.9, rng,
                               two_player)  # fmt: skip
            for name in ("value", "reward", "policy", "value_mask", "reward_mask", "policy_mask"):
                np.testing.assert_allclose(getattr(batch, name)[b], getattr(one, name), err_msg=f"{name} of row {b}")
            inside = min(3, len(g) - t)
            np.testing.assert_array_equal(batch.actions[b, :inside], g.actions[t : t + inside])


def test_the_consistency_loss_compares_the_dynamics_with_the_reached_observations():
    torch.manual_seed(0)
    model = MuZeroMLP(4, 4)
    obs, targets = _batch()
    K = targets["actions"].shape[1]
    next_obs = torch.randn(2, K, 4)
    mask = torch.ones(2, K)
    mask[1, 1:] = 0.0  # the second game ended after one move
    base, _, _ = muzero_loss(model, obs, targets, torch.ones(2))
    loss, stats, _ = muzero_loss(model, obs, targets, torch.ones(2), next_obs=next_obs, next_obs_mask=mask,
                                 consistency_coef=2.0)  # fmt: skip
    # By hand: -(1/K) sum_k mask * cos(dynamics state after k actions, representation of next_obs[k]).
    with torch.no_grad():
        state = model.initial_inference(obs)[0]
        expected = torch.zeros(2)
        for k in range(K):
            state = model.recurrent_inference(state, targets["actions"][:, k])[0]
            reached = model.initial_inference(next_obs[:, k])[0]
            expected -= mask[:, k] * torch.nn.functional.cosine_similarity(state, reached, dim=-1) / K
    assert stats["consistency_loss"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert loss.item() == pytest.approx(base.item() + 2.0 * expected.mean().item(), rel=1e-5)
    # Masked steps count for nothing, whatever observation stands there.
    next_obs[1, 1:] = 100.0
    again, _, _ = muzero_loss(model, obs, targets, torch.ones(2), next_obs=next_obs, next_obs_mask=mask,
                              consistency_coef=2.0)  # fmt: skip
    assert again.item() == pytest.approx(loss.item(), rel=1e-6)


def test_a_bfloat16_update_keeps_float32_weights_and_moves_them_like_float32():
    import copy

    from agents.muzero.networks import MuZeroResNet
    from agents.precision import reduced_precision

    torch.manual_seed(0)
    model = MuZeroResNet((4, 10, 10), num_actions=3, channels=16, blocks=1, support_size=10, reward_support_size=5)
    for head in (model.prediction_policy, model.prediction_value, model.dynamics_reward):  # not the neutral start
        torch.nn.init.normal_(head[-1].weight, std=0.1)
    B, K = 32, 3
    g = torch.Generator().manual_seed(1)
    obs = torch.rand(B, 400, generator=g)
    targets = {"actions": torch.randint(3, (B, K), generator=g), "value": 5 * torch.rand(B, K + 1, generator=g),
               "reward": torch.rand(B, K + 1, generator=g), "policy": torch.softmax(torch.randn(B, K + 1, 3, generator=g), -1),
               **{name: torch.ones(B, K + 1) for name in ("value_mask", "reward_mask", "policy_mask")}}  # fmt: skip
    moved, losses = {}, {}
    for dtype in (None, torch.bfloat16):
        net = copy.deepcopy(model)
        before = [p.detach().clone() for p in net.parameters()]
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        with reduced_precision(torch.device("cpu"), dtype):
            loss, _, priorities = muzero_loss(net, obs, targets, torch.ones(B))
        loss.backward()
        optimizer.step()
        assert loss.dtype == priorities.dtype == torch.float32
        assert all(p.dtype == torch.float32 for p in net.parameters())
        losses[dtype] = loss.item()
        moved[dtype] = torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before, strict=True)])
    assert losses[None] != losses[torch.bfloat16] and abs(losses[None] - losses[torch.bfloat16]) < 0.01 * losses[None]
    # Adam's first step moves each weight by ~lr * sign(gradient): bf16's gradients point the same way.
    agree = (moved[None].sign() == moved[torch.bfloat16].sign()).float().mean().item()
    assert agree > 0.9, agree
