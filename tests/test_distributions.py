"""Action distributions: log-probs and entropies against torch.distributions, masks never sampled."""

import gymnasium as gym
import torch

from agents.distributions import ActionHead, Categorical, DiagGaussian, MultiCategorical


def test_categorical_matches_torch():
    logits = torch.randn(5, 4)
    ours, ref = Categorical(logits), torch.distributions.Categorical(logits=logits)
    a = torch.tensor([0, 1, 2, 3, 1])
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(ours.entropy(), ref.entropy())


def test_categorical_sampling_frequencies():
    probs = torch.tensor([0.1, 0.2, 0.7])
    dist = Categorical(probs.log().expand(200_000, 3))
    counts = torch.bincount(dist.sample(torch.Generator().manual_seed(0)), minlength=3).float() / 200_000
    torch.testing.assert_close(counts, probs, atol=5e-3, rtol=0)


def test_masked_actions_are_never_sampled_and_have_zero_probability():
    logits = torch.tensor([[5.0, 0.0, 3.0, -1.0]]).expand(10_000, 4)
    mask = torch.tensor([[False, True, False, True]]).expand(10_000, 4)
    dist = Categorical(logits, mask)
    samples = dist.sample(torch.Generator().manual_seed(0))
    assert set(samples.unique().tolist()) == {1, 3}
    assert set(dist.mode().unique().tolist()) == {1}
    ref = torch.distributions.Categorical(logits=torch.tensor([0.0, -1.0]))
    torch.testing.assert_close(dist.log_prob(torch.ones(10_000, dtype=torch.long))[0], ref.log_prob(torch.tensor(0)))
    torch.testing.assert_close(dist.entropy()[0], ref.entropy())
    assert dist.log_prob(torch.zeros(1, dtype=torch.long))[0] < -1e30


def test_masked_entropy_has_finite_gradients():
    logits = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([[True, False, True, False]] * 3)
    Categorical(logits, mask).entropy().sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[:, [1, 3]] == 0).all()


def test_multicategorical_sums_parts():
    nvec = [3, 2]
    logits = torch.randn(4, 5)
    dist = MultiCategorical(logits, nvec)
    a = torch.tensor([[0, 1], [2, 0], [1, 1], [2, 1]])
    r1, r2 = torch.distributions.Categorical(logits=logits[:, :3]), torch.distributions.Categorical(logits=logits[:, 3:])
    torch.testing.assert_close(dist.log_prob(a), r1.log_prob(a[:, 0]) + r2.log_prob(a[:, 1]))
    torch.testing.assert_close(dist.entropy(), r1.entropy() + r2.entropy())
    assert dist.sample(torch.Generator().manual_seed(0)).shape == (4, 2)


def test_diag_gaussian_matches_torch():
    mean, log_std = torch.randn(6, 2), torch.randn(2) * 0.3
    ours = DiagGaussian(mean, log_std)
    ref = torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)
    a = torch.randn(6, 2)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(ours.entropy(), ref.entropy())


def test_action_head_builds_each_space():
    feats = torch.randn(3, 8)
    assert isinstance(ActionHead(8, gym.spaces.Discrete(4))(feats), Categorical)
    assert isinstance(ActionHead(8, gym.spaces.MultiDiscrete([2, 3]))(feats), MultiCategorical)
    assert isinstance(ActionHead(8, gym.spaces.Box(-1, 1, (2,)))(feats), DiagGaussian)
