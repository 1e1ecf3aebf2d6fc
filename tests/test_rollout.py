"""Rollout workers and executors: the data contract, truncation bootstrap, determinism across executors."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.networks import ActorCritic
from envs import probe_spaces
from training.ppo.executors import InProcessExecutor, MultiprocessExecutor


def _executor(cls, env_id, num_envs=4, num_workers=2, num_steps=64, seed=3, kernels=False):
    obs_space, act_space = probe_spaces(env_id)
    torch.manual_seed(0)
    agent = ActorCritic(obs_space, act_space)
    agent.kernels = kernels  # act through agents.ppo_kernel (--mlp-kernel auto) or through torch
    return agent, cls(env_id, obs_space, act_space, agent, num_envs, num_workers, num_steps, seed)


def test_rollout_layout_and_episode_stats():
    _, ex = _executor(InProcessExecutor, "CartPole-v1", num_envs=4, num_workers=2, num_steps=64)
    with ex:
        r = ex.collect()
    assert r.obs["obs"].shape == (64, 4, 4) and r.actions.shape == (64, 4)
    assert r.num_steps == 256 and r.last_values.shape == (4,)
    # A random policy ends CartPole episodes in ~20 steps: every ended episode is reported.
    assert len(r.episode_returns) == int(r.terminated.sum() + r.truncated.sum()) > 0
    assert (r.episode_returns == r.episode_lengths).all()  # CartPole pays 1 per step


@pytest.mark.parametrize("kernels", [False, True])
def test_multiprocess_workers_give_the_same_data_as_in_process(kernels):
    agent_a, a = _executor(InProcessExecutor, "CartPole-v1", kernels=kernels)
    agent_b, b = _executor(MultiprocessExecutor, "CartPole-v1", kernels=kernels)
    with a, b:
        for version in range(2):
            ra, rb = a.collect(), b.collect()
            for name in ("actions", "log_probs", "values", "rewards", "terminated", "truncated", "last_values"):
                np.testing.assert_array_equal(getattr(ra, name), getattr(rb, name), err_msg=name)
            np.testing.assert_array_equal(ra.obs["obs"], rb.obs["obs"])
            np.testing.assert_array_equal(ra.episode_returns, rb.episode_returns)
            with torch.no_grad():  # the workers acted with the weights they were sent last (torch's V(s) here)
                expected = agent_a.get_value({"obs": torch.from_numpy(ra.obs["obs"].reshape(-1, 4))})
            np.testing.assert_allclose(ra.values.reshape(-1), expected.numpy(), rtol=1e-5, atol=1e-5)
            # New weights reach both kinds of worker (the kernel's flat buffer included).
            with torch.no_grad():
                for p in agent_a.parameters():
                    p.add_(0.1)
            a.set_weights(agent_a.state_dict(), version + 1)
            b.set_weights(agent_a.state_dict(), version + 1)


def test_truncated_steps_bootstrap_from_the_value_of_the_final_observation():
    # Pendulum-v1 is always cut by its 200-step time limit, never terminated.
    agent, ex = _executor(InProcessExecutor, "Pendulum-v1", num_envs=1, num_workers=1, num_steps=210, seed=5)
    with ex:
        r = ex.collect()
    assert r.truncated[199, 0] == 1 and r.truncated.sum() == 1 and r.terminated.sum() == 0
    assert np.count_nonzero(r.bootstrap_values) == 1
    # Replay the same actions in a fresh env to find the final observation, and value it ourselves.
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=5)
    for t in range(200):
        np.testing.assert_allclose(obs, r.obs["obs"][t, 0], rtol=1e-6)
        obs, *_ = env.step(np.clip(r.actions[t, 0], -2.0, 2.0))
    with torch.no_grad():
        expected = agent.get_value({"obs": torch.from_numpy(obs[None])}).item()
    assert r.bootstrap_values[199, 0] == np.float32(expected)
    # The step after the cut starts a new episode.
    assert not np.allclose(r.obs["obs"][200, 0], obs)


def test_masked_actions_never_reach_the_env():
    # MaskedChoiceEnv (tests/conftest.py) raises if a masked action is taken.
    _, ex = _executor(InProcessExecutor, "tests/MaskedChoice-v0", num_envs=4, num_workers=1, num_steps=200)
    with ex:
        r = ex.collect()
    mask = r.obs["action_mask"].astype(bool)
    assert mask[np.arange(200)[:, None], np.arange(4)[None, :], r.actions].all()


def _check_async_versions(ex, agent):
    """collect_next hands out the rollout collected while the learner worked: the first two were acted
    by version 0, then each by the version before the learner's, never by half-copied weights."""
    from copy import deepcopy

    snapshots = {}
    versions = []
    for version in range(4):
        snapshots[version] = deepcopy(agent.state_dict())
        ex.set_weights(agent.state_dict(), version)
        rollout = ex.collect_next()
        versions.append(rollout.policy_version)
        # Recompute the log-probs under the weights the rollout says acted: they must match exactly.
        acting = deepcopy(agent)
        acting.load_state_dict(snapshots[rollout.policy_version])
        with torch.no_grad():
            dist, _, _ = acting({"obs": torch.as_tensor(rollout.obs["obs"]).reshape(-1, 4)})
            log_probs = dist.log_prob(torch.as_tensor(rollout.actions).reshape(-1))
        np.testing.assert_allclose(log_probs.numpy(), rollout.log_probs.reshape(-1), rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # the learner's update
            agent.policy_head.linear.weight.add_(0.3)
    assert versions == [0, 0, 1, 2]


def test_async_collection_lags_one_version_and_acts_with_whole_weights():
    obs_space, act_space = probe_spaces("CartPole-v1")
    torch.manual_seed(0)
    agent = ActorCritic(obs_space, act_space)
    with MultiprocessExecutor("CartPole-v1", obs_space, act_space, agent, 4, 2, 64, 3, asynchronous=True) as ex:
        _check_async_versions(ex, agent)
