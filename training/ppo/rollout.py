"""The rollout data contract and the worker that fills it.

A `RolloutWorker` owns a vectorised env and a CPU copy of the policy. It writes T steps into arrays it
is handed (plain numpy, or views of shared memory when it runs in another process) and returns only
small statistics; the executor wraps the arrays as a `Rollout` for the learner.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from agents.networks import PolicyValueNet, obs_spaces
from envs.factory import episode_stats_from_info, make_vector_env
from training.interrupts import beat
from training.seeds import Reseed, reseeded

if TYPE_CHECKING:
    from training.league import LeagueOpponents

# Per-step fields of a rollout, each [T, N]; observations are stored under "obs/<key>".
STEP_FIELDS = ("log_probs", "values", "rewards", "terminated", "truncated", "bootstrap_values")
# Fields with one row per env ([N, ...]) rather than one per step and env; the observations after the
# rollout's last step are stored under "last_obs/<key>", per env too.
PER_ENV_FIELDS = ("last_values", "memory")


def is_per_env(name: str) -> bool:
    """Whether the rollout array called name has one row per env rather than one per step and env."""
    return name in PER_ENV_FIELDS or name.startswith("last_obs/")


def allocate_rollout_arrays(
    observation_space: gym.Space, action_space: gym.Space, num_steps: int, num_envs: int, shared: bool = False,
    memory_size: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Zeroed tensors for one rollout (with a policy's memory of memory_size floats per env, its fields too);
    `shared=True` puts them in shared memory for worker processes."""
    arrays: dict[str, torch.Tensor] = {}
    for key, space in obs_spaces(observation_space).items():
        dtype = torch.from_numpy(np.zeros(0, dtype=space.dtype)).dtype
        arrays[f"obs/{key}"] = torch.zeros((num_steps, num_envs, *space.shape), dtype=dtype)
        arrays[f"last_obs/{key}"] = torch.zeros((num_envs, *space.shape), dtype=dtype)
    if isinstance(action_space, gym.spaces.Box):
        arrays["actions"] = torch.zeros((num_steps, num_envs, *action_space.shape), dtype=torch.float32)
    else:
        arrays["actions"] = torch.zeros((num_steps, num_envs, *action_space.shape), dtype=torch.int64)
    for name in STEP_FIELDS:
        arrays[name] = torch.zeros((num_steps, num_envs), dtype=torch.float32)
    arrays["last_values"] = torch.zeros(num_envs, dtype=torch.float32)
    if memory_size:
        arrays["episode_starts"] = torch.zeros((num_steps, num_envs), dtype=torch.float32)
        arrays["memory"] = torch.zeros((num_envs, memory_size), dtype=torch.float32)
    if shared:
        for t in arrays.values():
            t.share_memory_()
    return arrays


# Envs that fail this many steps in a row, each time rebuilt, are broken rather than unlucky.
MAX_ENV_FAILURES_IN_A_ROW = 3


@dataclass
class WorkerStats:
    """What a worker sends back besides the arrays: a few numbers, never per-step data."""

    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    seconds: float
    env_restarts: int = 0
    """times an env raised and this worker's envs were rebuilt, during this rollout"""
    dropped_episodes: int = 0
    """episodes cut short by those rebuilds (their statistics are not reported)"""
    episode_opponents: np.ndarray | None = None
    """league self-play: the opponent id of each episode (training.league)"""


@dataclass
class Rollout:
    """T steps of N envs as plain arrays (picklable, no env objects). See agents.ppo.compute_gae for
    how terminated / truncated / bootstrap_values are used."""

    obs: dict[str, np.ndarray]  # [T, N, ...]
    actions: np.ndarray  # [T, N, ...]
    log_probs: np.ndarray  # [T, N]
    values: np.ndarray  # [T, N]  V(s_t) by the acting policy
    rewards: np.ndarray  # [T, N]
    terminated: np.ndarray  # [T, N]  1.0 where the episode ended for real
    truncated: np.ndarray  # [T, N]  1.0 where a time limit cut it
    bootstrap_values: np.ndarray  # [T, N]  V(final obs) where truncated, else 0
    last_values: np.ndarray  # [N]  V(s_T)
    policy_version: int
    last_obs: dict[str, np.ndarray] | None = None  # [N, ...]  s_T, the observations after the last step
    episode_starts: np.ndarray | None = None  # [T, N]  1.0 where step t began an episode (memory only)
    memory: np.ndarray | None = None  # [N, S]  each env's memory before step 0, prior to any reset (memory only)
    episode_returns: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    episode_lengths: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    episode_opponents: np.ndarray | None = None  # league self-play: each episode's opponent id
    env_restarts: int = 0
    dropped_episodes: int = 0

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0] * self.rewards.shape[1]

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, torch.Tensor], version: int, stats: list[WorkerStats]
    ) -> Rollout:
        np_arrays = {k: v.numpy() for k, v in arrays.items()}
        return cls(
            obs={k[4:]: v for k, v in np_arrays.items() if k.startswith("obs/")},
            last_obs={k[9:]: v for k, v in np_arrays.items() if k.startswith("last_obs/")},
            actions=np_arrays["actions"],
            last_values=np_arrays["last_values"],
            policy_version=version,
            episode_starts=np_arrays.get("episode_starts"),
            memory=np_arrays.get("memory"),
            episode_returns=np.concatenate([s.episode_returns for s in stats]),
            episode_lengths=np.concatenate([s.episode_lengths for s in stats]),
            episode_opponents=(None if stats[0].episode_opponents is None
                               else np.concatenate([s.episode_opponents for s in stats])),  # fmt: skip
            env_restarts=sum(s.env_restarts for s in stats),
            dropped_episodes=sum(s.dropped_episodes for s in stats),
            **{name: np_arrays[name] for name in STEP_FIELDS},
        )


def _stack_obs(items: list) -> dict[str, np.ndarray]:
    if isinstance(items[0], dict):
        return {k: np.stack([o[k] for o in items]) for k in items[0]}
    return {"obs": np.stack(items)}


def _as_dict(obs) -> dict[str, np.ndarray]:
    return obs if isinstance(obs, dict) else {"obs": obs}


class RolloutWorker:
    """Steps `num_envs` envs (seeds seed .. seed+num_envs-1) with a CPU policy copy.

    The same class runs in the learner's process, in a worker process and inside a Ray actor (the
    worker pool's backends, training.ppo.executors). An env that raises in `step` gets all
    of this worker's envs rebuilt; the episodes in progress are dropped (see collect).

    For a two-player game, `opponents` (the league's, training.league) answer the policy's moves: the envs
    are an OpponentVectorEnv, and `collect(opponents=...)` brings the league's changes.

    A policy with memory carries each env's state from step to step and rollout to rollout; a step that
    begins an episode (the first after a reset, whether the last one terminated or was truncated) starts
    from a zeroed state, which the policy does itself from the episode_starts it is given.
    """

    def __init__(
        self, env_id: str, num_envs: int, seed: int, policy: PolicyValueNet, arrays: dict[str, torch.Tensor],
        env_kwargs: Mapping[str, Any] | None = None, opponents: LeagueOpponents | None = None,
    ):  # fmt: skip
        self.env_id, self.num_envs, self.seed, self.env_kwargs = env_id, num_envs, seed, env_kwargs
        self.env_restarts = 0
        self.policy = policy
        self.opponents = opponents
        self._start_envs(seed)
        self.memory = policy.initial_memory(num_envs)
        # Sampling noise depends on this worker's seed alone, so any executor reproduces the same data.
        self.generator = torch.Generator().manual_seed(seed)
        self.arrays = {k: v.numpy() for k, v in arrays.items()}
        self.num_steps = self.arrays["rewards"].shape[0]
        space = self.envs.single_action_space
        self.clip_actions = (space.low, space.high) if isinstance(space, gym.spaces.Box) else None

    def _start_envs(self, seed: int) -> None:
        if self.opponents is not None:
            # Imported here: the league's imports would cost every worker ~0.15 s.
            from training.league import OpponentVectorEnv

            self.envs = OpponentVectorEnv(self.env_id, self.num_envs, seed, self.policy, self.opponents)
        else:
            self.envs = make_vector_env(self.env_id, self.num_envs, seed, self.env_kwargs)
        obs, _ = self.envs.reset(seed=[seed + i for i in range(self.num_envs)])
        self.obs = _as_dict(obs)
        # Every env begins an episode at its next step.
        self.episode_starts = torch.ones(self.num_envs)

    def _restart_envs(self) -> None:
        with contextlib.suppress(Exception):
            self.envs.close()
        self.env_restarts += 1
        self._start_envs(reseeded(self.seed, Reseed.ENV_REBUILT, self.env_restarts))

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(state_dict)

    def set_opponents(self, update: LeagueOpponents) -> None:
        """The league's changes: new probabilities, the weights of new snapshots."""
        assert self.opponents is not None, "opponents for a worker that plays no two-player game"
        weights = {**self.opponents.weights, **update.weights}
        kept = {i: w for i, w in weights.items() if i in update.probabilities}
        self.opponents = dataclasses.replace(update, weights=kept)
        self.envs.update_opponents(update)

    def retarget(self, arrays: dict[str, np.ndarray]) -> None:
        """Write the next rollouts into other arrays (the double buffers of asynchronous collection)."""
        self.arrays = arrays

    def collect(self, opponents: LeagueOpponents | None = None) -> WorkerStats:
        start = time.perf_counter()
        if opponents is not None:
            self.set_opponents(opponents)
        a, policy = self.arrays, self.policy
        returns, lengths, episode_opponents = [], [], []
        restarts = failures_in_a_row = 0
        if self.memory is not None:
            a["memory"][:] = self.memory.numpy()
        t = 0
        while t < self.num_steps:
            obs_t = {k: torch.from_numpy(v) for k, v in self.obs.items()}
            action, log_prob, value, memory = policy.act(obs_t, self.generator, False, self.memory, self.episode_starts)
            action_np = action.numpy()
            for k, v in self.obs.items():
                a[f"obs/{k}"][t] = v
            a["actions"][t] = action_np
            a["log_probs"][t] = log_prob.numpy()
            a["values"][t] = value.numpy()
            if memory is not None:
                a["episode_starts"][t] = self.episode_starts.numpy()

            env_action = np.clip(action_np, *self.clip_actions) if self.clip_actions else action_np
            try:
                next_obs, reward, terminated, truncated, info = self.envs.step(env_action)
            except Exception:
                failures_in_a_row += 1
                if failures_in_a_row >= MAX_ENV_FAILURES_IN_A_ROW:
                    raise
                self._restart_envs()  # every env begins a new episode: its memory restarts
                restarts += 1
                if t > 0:
                    # The interrupted episodes end at s_t as if a time limit had cut them there: the
                    # previous step bootstraps from V(s_t), already in values[t]. Step t is then redone
                    # from the rebuilt envs' first observations, so no made-up transition enters the data.
                    cut = (a["terminated"][t - 1] == 0) & (a["truncated"][t - 1] == 0)
                    a["truncated"][t - 1, cut] = 1.0
                    a["bootstrap_values"][t - 1, cut] = a["values"][t, cut]
                continue
            failures_in_a_row = 0
            self.memory = memory
            beat()  # progress, for the watchdog of in-process runs
            a["rewards"][t] = reward
            a["terminated"][t] = terminated
            a["truncated"][t] = truncated
            a["bootstrap_values"][t] = 0.0
            if "final_obs" in info:
                ep_returns, ep_lengths = episode_stats_from_info(info)
                returns.append(ep_returns)
                lengths.append(ep_lengths)
                if "opponent" in info["final_info"]:
                    episode_opponents.append(info["final_info"]["opponent"][info["final_info"]["_opponent"]])
                cut = np.flatnonzero(truncated & ~terminated)
                if cut.size:
                    final = _stack_obs(list(info["final_obs"][cut]))
                    # V(final obs) one step on from the episode's last state, as if it had gone on.
                    episode_memory = None if memory is None else memory[cut]
                    with torch.inference_mode():
                        v = policy.get_value({k: torch.from_numpy(x) for k, x in final.items()}, episode_memory)
                    a["bootstrap_values"][t, cut] = v.numpy()
            self.obs = _as_dict(next_obs)
            if memory is not None:  # only a policy with memory reads them
                self.episode_starts = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            t += 1

        for k, v in self.obs.items():
            a[f"last_obs/{k}"][:] = v
        with torch.inference_mode():
            obs_t = {k: torch.from_numpy(v) for k, v in self.obs.items()}
            a["last_values"][:] = policy.get_value(obs_t, self.memory, self.episode_starts).numpy()
        return WorkerStats(
            episode_returns=np.concatenate(returns) if returns else np.empty(0, np.float32),
            episode_lengths=np.concatenate(lengths) if lengths else np.empty(0, np.int64),
            seconds=time.perf_counter() - start,
            env_restarts=restarts,
            dropped_episodes=restarts * self.num_envs,
            episode_opponents=None if self.opponents is None else np.concatenate([np.empty(0, np.int64), *episode_opponents]),
        )

    def close(self) -> None:
        self.envs.close()
