"""The env factory: autoreset mode, Atari preprocessing, and each action-space family through train()."""

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.networks import ActorCritic
from envs import make_vector_env, probe_spaces
from envs.factory import make_env
from training.ppo.config import PPOConfig, apply_preset
from training.ppo.train import train


def test_vector_env_uses_same_step_autoreset():
    envs = make_vector_env("CartPole-v1", 2, seed=0)
    envs.reset(seed=[0, 1])
    for _ in range(100):
        obs, _, terminated, truncated, info = envs.step(np.zeros(2, dtype=np.int64))
        if terminated.any():
            i = int(np.flatnonzero(terminated)[0])
            # SAME_STEP: the final observation is in info and the returned one already starts a new episode.
            assert info["_final_obs"][i]
            assert abs(info["final_obs"][i][2]) > 0.2  # the pole fell
            assert abs(obs[i][2]) <= 0.05  # a fresh start
            assert info["final_info"]["episode"]["l"][i] > 0
            return
    pytest.fail("no episode ended")


def test_atari_preprocessing_and_cnn():
    pytest.importorskip("ale_py")
    obs_space, act_space = probe_spaces("ALE/Breakout-v5")
    assert obs_space.shape == (4, 84, 84) and obs_space.dtype == np.uint8
    agent = ActorCritic(obs_space, act_space)
    assert agent.is_image
    envs = make_vector_env("ALE/Breakout-v5", 2, seed=0)
    obs, _ = envs.reset(seed=[0, 1])
    action, log_prob, value, _ = agent.act({"obs": torch.from_numpy(obs)}, torch.Generator().manual_seed(0))
    assert action.shape == (2,) and torch.isfinite(log_prob).all() and value.shape == (2,)
    _, reward, *_ = envs.step(action.numpy())
    assert set(np.unique(reward)) <= {-1.0, 0.0, 1.0}  # rewards clipped to their sign


def _short_run(tmp_path, env_id, **overrides):
    cfg = apply_preset(PPOConfig(env_id=env_id))
    cfg = dataclasses.replace(cfg, runs_dir=str(tmp_path), progress=False, stop_when_solved=False, **overrides)
    return train(cfg)


def test_box_actions_with_observation_and_reward_normalisation(tmp_path):
    result = _short_run(tmp_path, "Pendulum-v1", total_timesteps=4096, num_steps=512, num_minibatches=8, update_epochs=2)
    assert result.global_step == 4096 and math.isfinite(result.mean_return)
    payload = torch.load(result.checkpoint, weights_only=True)
    assert payload["learner"]["reward_scaler"]["stats"][2] > 4000  # the count of returns seen
    assert payload["learner"]["model"]["obs_normalizer.count"] > 4000


def test_masked_discrete_env_trains_without_taking_a_masked_action(tmp_path):
    # MaskedChoiceEnv raises inside step() if a masked action reaches it; the policy learns its reward.
    result = _short_run(tmp_path, "tests/MaskedChoice-v0", total_timesteps=20_000, num_envs=8, num_steps=64,
                        learning_rate=3e-3, update_epochs=4, num_minibatches=4)  # fmt: skip
    assert result.mean_return > 8.0  # 10 steps an episode, reward 1 for the best allowed action


def test_multidiscrete_actions(tmp_path):
    import gymnasium as gym

    if "tests/MultiDiscrete-v0" not in gym.registry:
        gym.register(
            "tests/MultiDiscrete-v0",
            entry_point=lambda: gym.wrappers.TimeLimit(_MultiDiscreteMatch(), max_episode_steps=16),
        )
    result = _short_run(tmp_path, "tests/MultiDiscrete-v0", total_timesteps=2048, num_envs=4, num_steps=128)
    assert result.global_step == 2048


class _MultiDiscreteMatch:
    """Reward 1 per dimension whose action matches the observation's target."""

    def __new__(cls):
        import gymnasium as gym

        class Env(gym.Env):
            observation_space = gym.spaces.Box(0, 2, (2,), np.float32)
            action_space = gym.spaces.MultiDiscrete([3, 3])

            def reset(self, seed=None, options=None):
                super().reset(seed=seed)
                self.target = self.np_random.integers(0, 3, 2)
                return self.target.astype(np.float32), {}

            def step(self, action):
                reward = float((np.asarray(action) == self.target).sum())
                self.target = self.np_random.integers(0, 3, 2)
                return self.target.astype(np.float32), reward, False, False, {}

        return Env()


def test_the_atari_env_rebuilds_from_its_spec_with_every_wrapper():
    """gymnasium's check_env and gym.make(spec) rebuild an env from its spec: each wrapper must record its
    constructor's arguments (the FIRE-at-reset wrapper once did not)."""
    pytest.importorskip("ale_py")
    import gymnasium as gym

    env = make_env("ALE/Breakout-v5", seed=0)()
    rebuilt = gym.make(env.spec)
    names = [w.name for w in env.spec.additional_wrappers]
    assert "NoopsThenFire" in names and [w.name for w in rebuilt.spec.additional_wrappers] == names
    obs, _ = rebuilt.reset(seed=0)
    assert obs.shape == env.observation_space.shape
    env.close()
    rebuilt.close()


def test_the_solved_threshold_comes_from_one_place():
    from envs import solved_return

    assert solved_return("CartPole-v1") == 475.0 and solved_return("CartPole-v1", 100.0) == 100.0
    assert solved_return("rlgames/TicTacToe-v0") == 0.0  # never losing to the perfect player
    assert solved_return("rlgames/ConnectFour-v0") is None  # its lookahead opponent can be beaten
    assert solved_return("ALE/Breakout-v5") is None and solved_return("ALE/Breakout-v5", 30.0) == 30.0


class _ResetCounting(gym.Env):
    resets = 0

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        type(self).resets += 1
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_a_rollout_worker_resets_each_env_once():
    """One reset per env at start (a StarCraft II env launches its game at each first reset)."""
    from agents.networks import ActorCritic
    from training.ppo.rollout import RolloutWorker, allocate_rollout_arrays

    if "tests/ResetCounting-v0" not in gym.registry:
        gym.register("tests/ResetCounting-v0", entry_point=_ResetCounting)
    obs_space, act_space = probe_spaces("tests/ResetCounting-v0")
    _ResetCounting.resets = 0
    arrays = allocate_rollout_arrays(obs_space, act_space, 4, 3)
    worker = RolloutWorker("tests/ResetCounting-v0", 3, 0, ActorCritic(obs_space, act_space), arrays)
    assert _ResetCounting.resets == 3
    worker.close()
