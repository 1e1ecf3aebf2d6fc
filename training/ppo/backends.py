"""PPO's rollout executor for a `--backend` name (Ray itself is imported only when its backend starts)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from agents.networks import PolicyValueNet
from training.ppo.executors import RolloutExecutor

if TYPE_CHECKING:
    from training.league import LeagueOpponents


def make_executor(
    backend: str, env_id: str, observation_space: gym.Space, action_space: gym.Space, policy: PolicyValueNet,
    num_envs: int, num_workers: int, num_steps: int, seed: int, worker_timeout: float = 300.0,
    ray_address: str | None = None, asynchronous: bool = False, env_kwargs: Mapping[str, Any] | None = None,
    opponents: LeagueOpponents | None = None,
) -> RolloutExecutor:  # fmt: skip
    """The executor of a backend ('inprocess', 'multiprocess', 'ray'); env_kwargs go to every env's
    constructor (see envs.factory.make_env); opponents: a two-player game's league (training.league)."""
    if backend not in ("inprocess", "multiprocess", "ray"):
        raise ValueError(f"unknown backend {backend!r}")
    return RolloutExecutor(backend, env_id, observation_space, action_space, policy, num_envs, num_workers, num_steps,
                           seed, env_kwargs, worker_timeout, ray_address, asynchronous, opponents)  # fmt: skip
