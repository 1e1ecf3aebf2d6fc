"""Initial weights are a function of the seed alone, whatever the intra-op thread count."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.initialization import orthogonal_
from agents.networks import ActorCritic

SPACES = {
    "vector": (gym.spaces.Box(-1, 1, (8,), np.float32), gym.spaces.Discrete(4)),
    "image": (gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), gym.spaces.Discrete(6)),
    "continuous": (gym.spaces.Box(-1, 1, (8,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32)),
}


def _weights(threads: int, observation_space: gym.Space, action_space: gym.Space) -> dict[str, torch.Tensor]:
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    return ActorCritic(observation_space, action_space).state_dict()


@pytest.mark.parametrize("kind", SPACES)
def test_same_seed_same_weights_for_any_thread_count(kind):
    reference = _weights(1, *SPACES[kind])
    for threads in (2, 3, 4):
        weights = _weights(threads, *SPACES[kind])
        for name, tensor in reference.items():
            assert torch.equal(tensor, weights[name]), f"{kind}: {name} differs with {threads} threads"
    assert torch.get_num_threads() == 4  # building a network leaves the caller's thread count as it was


def test_orthogonal_init_is_orthogonal_with_the_gain():
    torch.manual_seed(0)
    w = orthogonal_(torch.empty(64, 32), gain=2.0)
    np.testing.assert_allclose((w.T @ w).numpy(), 4.0 * np.eye(32), atol=1e-5)
