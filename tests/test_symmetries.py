import gymnasium as gym
import numpy as np
import pytest

from envs.symmetries import Symmetries, env_symmetries
from training.muzero.learner import apply_symmetries


@pytest.mark.parametrize(("env_id", "state_size"), [("CartPole-v1", 4), ("Acrobot-v1", 4)])
def test_a_mirrored_control_game_is_a_game_of_the_same_law(env_id, state_size):
    """From a state and its mirror, the mirrored actions lead to the mirrored observations, with the same
    rewards and ends, step after step (the physics stepped for real, from random states)."""
    symmetries = env_symmetries(env_id)
    assert len(symmetries) == 2 and symmetries.obs_perms[0].tolist() == list(range(symmetries.obs_perms.shape[1]))
    signs, inverse = symmetries.obs_signs[1], np.argsort(symmetries.action_perms[1])
    rng = np.random.default_rng(0)
    for trial in range(20):
        env, mirrored = gym.make(env_id).unwrapped, gym.make(env_id).unwrapped
        env.reset(seed=trial)
        mirrored.reset(seed=trial)
        state = rng.uniform(-0.2, 0.2, state_size)
        env.state, mirrored.state = state.copy(), -state.copy()  # both games keep their state as angles/positions
        for _ in range(50):
            action = int(rng.integers(env.action_space.n))
            obs, reward, terminated, _, _ = env.step(action)
            m_obs, m_reward, m_terminated, _, _ = mirrored.step(int(inverse[action]))
            np.testing.assert_allclose(m_obs, signs * obs, atol=1e-6)
            assert (m_reward, m_terminated) == (reward, terminated)
            if terminated:
                break


def test_games_without_symmetries_declare_none():
    assert env_symmetries("MountainCar-v0") is None and env_symmetries("MinAtar/Breakout-v0") is None


def test_a_mirrored_unroll_negates_the_observations_and_swaps_the_pushes():
    """CartPole's mirror by hand: the states negated (next observations too), the unrolled actions 0 <-> 1,
    the policy targets' two entries swapped; the identity leaves everything as it was."""
    mirror = env_symmetries("CartPole-v1")
    obs = np.array([[0.1, -0.2, 0.03, 0.4], [1.0, 2.0, 3.0, 4.0]], np.float32)
    actions = np.array([[0, 1, 1], [1, 1, 0]])
    policies = np.array([[[0.9, 0.1]] * 4, [[0.3, 0.7]] * 4])
    next_obs = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    only_mirror = Symmetries(mirror.obs_perms[[1]], mirror.obs_signs[[1]], mirror.action_perms[[1]])
    turned = apply_symmetries(only_mirror, np.random.default_rng(0), obs, actions, policies, next_obs)
    np.testing.assert_array_equal(turned[0], -obs)
    np.testing.assert_array_equal(turned[1], 1 - actions)
    np.testing.assert_array_equal(turned[2], policies[..., ::-1])
    np.testing.assert_array_equal(turned[3], -next_obs)
    only_identity = Symmetries(mirror.obs_perms[[0]], mirror.obs_signs[[0]], mirror.action_perms[[0]])
    same = apply_symmetries(only_identity, np.random.default_rng(0), obs, actions, policies, next_obs)
    for before, after in zip((obs, actions, policies, next_obs), same, strict=True):
        np.testing.assert_array_equal(before, after)
