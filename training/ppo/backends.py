"""PPO's rollout backends by name: the executor that `--backend` chooses (Ray itself is imported only
when its executor starts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym

from agents.networks import PolicyValueNet
from training.ppo.executors import Executor, InProcessExecutor, MultiprocessExecutor
from training.ppo.ray_executor import RayExecutor


def make_executor(
    backend: str, env_id: str, observation_space: gym.Space, action_space: gym.Space, policy: PolicyValueNet,
    num_envs: int, num_workers: int, num_steps: int, seed: int, worker_timeout: float = 300.0,
    ray_address: str | None = None, asynchronous: bool = False, env_kwargs: Mapping[str, Any] | None = None,
) -> Executor:  # fmt: skip
    """The executor of a backend ('inprocess', 'multiprocess', 'ray'); Ray is imported only for 'ray'.
    env_kwargs go to every env's constructor (see envs.factory.make_env)."""
    args = (env_id, observation_space, action_space, policy, num_envs, num_workers, num_steps, seed, env_kwargs)
    if backend == "inprocess":
        return InProcessExecutor(*args)
    if backend == "multiprocess":
        return MultiprocessExecutor(*args, worker_timeout=worker_timeout, asynchronous=asynchronous)
    if backend == "ray":
        return RayExecutor(*args, worker_timeout=worker_timeout, address=ray_address, asynchronous=asynchronous)
    raise ValueError(f"unknown backend {backend!r}")
