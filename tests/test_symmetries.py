import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils import seeding

from envs.symmetries import Symmetries, env_symmetries, games_with_symmetries
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


class _MirroredLunarDraws:
    """The draws of a LunarLander game's generator, mirrored about the helipad: the terrain's chunk heights
    in reverse order (the last of the 12, which only wraps around into the first chunk's smoothing, stays),
    the start's sideways push negated, and in every step the dispersion's sideways part (its second draw)
    negated. Follows the order in which gymnasium's LunarLander draws: reset draws the heights, then the
    push's x and y; each step draws the dispersion's two numbers."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.draws = rng, 0

    def uniform(self, low=0.0, high=1.0, size=None):
        x = self.rng.uniform(low, high, size)
        self.draws += 1
        if self.draws == 1:
            return np.concatenate([x[:-1][::-1], x[-1:]])
        if self.draws == 2 or (self.draws > 3 and self.draws % 2 == 1):  # draws 4, 5 are the first step's
            return -x
        return x

    def __getattr__(self, name):
        return getattr(self.rng, name)


def test_lunar_landers_mirror_maps_its_random_law_onto_itself():
    """LunarLander's terrain, push and engine dispersion are random; a game whose draws are mirrored
    (above), played with the mirrored actions, gives the mirrored observations and the same rewards while
    the lander flies, and ends at the same step with the same return in nearly every game. Box2D solves
    the two legs' joints in turn, so in flight the games agree to ~1e-2 (the angular rate, once the legs
    hit their limits), and contacts with the ground can split them (2 of 30 games here). The legs'
    contact flags trade places (43 of 43 steps with a leg down here; 0 without the swap)."""
    symmetries = env_symmetries("LunarLander-v3")
    perm, signs, inverse = symmetries.obs_perms[1], symmetries.obs_signs[1], np.argsort(symmetries.action_perms[1])
    games_alike, steps_with_a_leg_down, legs_swapped = 0, 0, 0
    for seed in range(30):
        env, mirrored = gym.make("LunarLander-v3").unwrapped, gym.make("LunarLander-v3").unwrapped
        obs, _ = env.reset(seed=seed)
        mirrored._np_random = _MirroredLunarDraws(seeding.np_random(seed)[0])
        m_obs, _ = mirrored.reset()
        np.testing.assert_allclose(m_obs, signs * obs[perm], atol=1e-4)
        rng = np.random.default_rng(seed)
        returns, landed = np.zeros(2), False
        for _ in range(1000):
            action = int(rng.integers(4)) if rng.random() < 0.7 else 2  # some main engine: longer flights
            obs, reward, terminated, _, _ = env.step(action)
            m_obs, m_reward, m_terminated, _, _ = mirrored.step(int(inverse[action]))
            returns += reward, m_reward
            landed = landed or obs[6:].any() or m_obs[6:].any() or terminated or m_terminated
            if not landed:
                np.testing.assert_allclose(m_obs, signs * obs[perm], atol=0.02)
                assert m_reward == pytest.approx(reward, abs=0.2)
            if obs[6:].any() or m_obs[6:].any():
                steps_with_a_leg_down += 1
                legs_swapped += (m_obs[6:] == obs[[7, 6]]).all()
            if terminated or m_terminated:
                break
        games_alike += terminated == m_terminated and abs(returns[0] - returns[1]) < 1
    assert games_alike >= 25 and steps_with_a_leg_down >= 20 and legs_swapped >= 0.9 * steps_with_a_leg_down


def test_games_without_symmetries_declare_none():
    assert env_symmetries("MountainCar-v0") is None and env_symmetries("MinAtar/Breakout-v0") is None


def test_the_games_named_for_messages_are_the_ones_that_declare_symmetries():
    assert games_with_symmetries() == ["rlgames/TicTacToe-v0", "rlgames/ConnectFour-v0", "CartPole", "Acrobot", "LunarLander"]
    assert all(env_symmetries(game if "/" in game else f"{game}-v1") is not None for game in games_with_symmetries())


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
