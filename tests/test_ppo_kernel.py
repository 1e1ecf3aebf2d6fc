"""The compiled PPO kernel (agents.ppo_kernel) against torch: acting, one update's gradients and Adam steps,
whole multi-epoch updates, Adam's state shared with torch, non-finite updates, copies of the module."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.networks import ActorCritic
from agents.ppo import NonFiniteUpdate, PPOHyperparams, ppo_update
from agents.ppo_kernel import _tanh, flat_parameters, kernel_act, ppo_kernel_update

OBS = gym.spaces.Box(-5.0, 5.0, (6,), np.float32)


def _pair(activation: str = "tanh", hidden: tuple[int, ...] = (32, 16), actions: int = 3, lr: float = 3e-3,
          eps: float = 1e-5, normalize_obs: bool = False):  # fmt: skip
    """Two identical agents and their optimizers: one for torch, one for the kernel."""
    torch.manual_seed(0)
    agent = ActorCritic(OBS, gym.spaces.Discrete(actions), hidden, activation, normalize_obs)
    if normalize_obs:  # statistics of their own, with a clipped feature
        agent.obs_normalizer.update(torch.randn(500, 6) * torch.tensor([1.0, 2, 3, 0.1, 5, 1]) + 0.5)
    twin = copy.deepcopy(agent)
    twin.kernels = True
    optimizers = [torch.optim.Adam(a.parameters(), lr=lr, eps=eps, fused=True) for a in (agent, twin)]
    return agent, twin, *optimizers


def _batch(n: int, actions: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": {"obs": torch.randn(n, 6, generator=g)},
        "actions": torch.randint(0, actions, (n,), generator=g),
        "log_probs": torch.randn(n, generator=g) * 0.2 - 1.1,
        "values": torch.randn(n, generator=g),
        "advantages": torch.randn(n, generator=g) * 2,
        "returns": torch.randn(n, generator=g) * 3,
    }


def _max_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("clip_vloss", [True, False])
def test_one_minibatch_step_equals_autograd_and_torch_adam(activation, clip_vloss):
    # One Adam step on one minibatch: the hand-written gradient, the norm clip and Adam against torch's.
    agent, twin, opt, twin_opt = _pair(activation)
    batch = _batch(64)
    hp = PPOHyperparams(clip_vloss=clip_vloss, update_epochs=1, num_minibatches=1, max_grad_norm=0.5)
    expected = ppo_update(agent, opt, batch, hp, torch.Generator())
    got = ppo_kernel_update(twin, twin_opt, batch, hp, torch.Generator())
    assert _max_difference(agent, twin) < 2e-6
    for name in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "grad_norm", "epochs"):
        assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name


def test_whole_update_follows_the_same_minibatch_order_and_target_kl_stop():
    # 6 epochs x 4 minibatches from the same generator, a target KL that stops it early: the same epochs,
    # parameters, Adam moments and generator state afterwards.
    agent, twin, opt, twin_opt = _pair(lr=1e-2)
    batch = _batch(256)
    with torch.no_grad():  # the acting policy's own log-probabilities, so the KL starts at 0 and grows
        batch["log_probs"] = agent(batch["obs"])[0].log_prob(batch["actions"])
    hp = PPOHyperparams(update_epochs=6, num_minibatches=4, target_kl=0.01)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = ppo_update(agent, opt, batch, hp, g1)
    got = ppo_kernel_update(twin, twin_opt, batch, hp, g2)
    assert 1 < expected["epochs"] < 6, "the test needs an early stop"
    assert got["epochs"] == expected["epochs"]
    assert torch.equal(g1.get_state(), g2.get_state())
    assert _max_difference(agent, twin) < 1e-5
    for p, q in zip(agent.parameters(), twin.parameters(), strict=True):
        assert float(opt.state[p]["step"]) == float(twin_opt.state[q]["step"]) == 4 * expected["epochs"]
        torch.testing.assert_close(opt.state[p]["exp_avg_sq"], twin_opt.state[q]["exp_avg_sq"], rtol=1e-4, atol=1e-9)


def test_torch_continues_from_the_kernels_adam_state_and_back():
    # The parameters and Adam's moments are torch's own tensors: torch -> kernel -> torch, or a state saved
    # and loaded in between, lands where torch alone does. (Over several steps Adam turns rounding-sized
    # gradients into steps of +-lr whose sign is a coin toss, unless eps dwarfs them: hence eps here.)
    agent, twin, opt, twin_opt = _pair(eps=1e-3)
    hp = PPOHyperparams(update_epochs=2, num_minibatches=2)
    for i, batch in enumerate(_batch(128, seed=s) for s in (1, 2, 3)):
        ppo_update(agent, opt, batch, hp, torch.Generator().manual_seed(i))
        step = ppo_kernel_update if i == 1 else ppo_update
        step(twin, twin_opt, batch, hp, torch.Generator().manual_seed(i))
        if i == 1:  # a checkpoint round trip: the optimizer's tensors are replaced, the kernel must follow
            saved = copy.deepcopy(twin_opt.state_dict())
            twin_opt.load_state_dict(saved)
    ppo_kernel_update(twin, twin_opt, batch, hp, torch.Generator().manual_seed(9))
    ppo_update(agent, opt, batch, hp, torch.Generator().manual_seed(9))
    assert _max_difference(agent, twin) < 1e-5
    assert float(next(iter(twin_opt.state.values()))["step"]) == 4 * 4


def test_non_finite_update_raises_before_stepping():
    agent, twin, opt, twin_opt = _pair()
    batch = _batch(32)
    batch["returns"][7] = float("nan")
    before = copy.deepcopy(twin.state_dict())
    with pytest.raises(NonFiniteUpdate):
        ppo_kernel_update(twin, twin_opt, batch, PPOHyperparams(update_epochs=1, num_minibatches=1), torch.Generator())
    for name, value in twin.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("normalize_obs", [False, True])
def test_acting_matches_the_torch_policy_with_the_same_noise(normalize_obs):
    agent, twin, *_ = _pair(actions=4, normalize_obs=normalize_obs)
    obs = {"obs": torch.randn(256, 6, generator=torch.Generator().manual_seed(3)) * 2}
    obs["obs"][0, 3] = 50.0  # beyond the normaliser's clip
    expected = agent.act(obs, torch.Generator().manual_seed(11))
    got = twin.act(obs, torch.Generator().manual_seed(11))
    assert torch.equal(got.action, expected.action)
    torch.testing.assert_close(got.log_prob, expected.log_prob, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.value, expected.value, rtol=1e-5, atol=1e-6)
    assert got.memory is None
    greedy = twin.act(obs, deterministic=True)
    assert torch.equal(greedy.action, agent.act(obs, deterministic=True).action)


def test_copies_of_the_module_keep_their_own_parameters():
    # The kernel's flat buffer is remembered on the module: a deep copy (a worker's policy, a league
    # snapshot) or a pickled one must read its own weights, and loading a state_dict must be seen.
    _, twin, _, twin_opt = _pair()
    obs = {"obs": torch.randn(8, 6)}
    before = kernel_act(twin, obs, None, True)[2]
    copied = copy.deepcopy(twin)
    ppo_kernel_update(twin, twin_opt, _batch(64), PPOHyperparams(update_epochs=3, num_minibatches=1), torch.Generator())
    assert not torch.allclose(kernel_act(twin, obs, None, True)[2], before)
    torch.testing.assert_close(kernel_act(copied, obs, None, True)[2], before)
    copied.load_state_dict(twin.state_dict())
    torch.testing.assert_close(kernel_act(copied, obs, None, True)[2], kernel_act(twin, obs, None, True)[2])
    flat, layout, actor_layers = flat_parameters(copied)
    assert flat.size == sum(p.numel() for p in copied.parameters())
    assert actor_layers == 3 and layout[:, 1].tolist() == [32, 16, 3, 32, 16, 1]


def test_kernel_is_offered_only_where_it_computes_the_same_net():
    discrete = ActorCritic(OBS, gym.spaces.Discrete(2))
    assert discrete.kernel_compatible
    masked = gym.spaces.Dict({"obs": OBS, "action_mask": gym.spaces.MultiBinary(2)})
    for net in (
        ActorCritic(OBS, gym.spaces.Box(-1, 1, (2,))),
        ActorCritic(OBS, gym.spaces.MultiDiscrete([2, 3])),
        ActorCritic(masked, gym.spaces.Discrete(2)),
        ActorCritic(OBS, gym.spaces.Discrete(2), lstm_size=8),
        ActorCritic(gym.spaces.Box(0, 1, (2, 10, 10), np.float32), gym.spaces.Discrete(2)),
    ):
        assert not net.kernel_compatible


def test_rational_tanh_is_within_float32_rounding():
    z = np.concatenate([np.linspace(-12, 12, 20001), [0.0, 1e-6, -1e-6, 7.9, -7.9]]).astype(np.float32)
    out = np.empty_like(z)
    _tanh(z, out)
    np.testing.assert_allclose(out, np.tanh(z.astype(np.float64)), rtol=0, atol=3e-7)
