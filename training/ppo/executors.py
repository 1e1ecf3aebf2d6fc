"""Executors run PPO's rollout workers in the shared worker pool; the learner sees only this interface.

    executor.set_weights(state_dict, version)   # after each update
    rollout = executor.collect()                 # T steps of every env, one Rollout

The backend is the pool's (training.workers): in the learner's process (fastest for cheap envs such as
CartPole, where a process round trip costs more than the simulator, and easiest to debug), one process
per worker (observations, actions and the rest are written straight into shared-memory rollout buffers,
the weights come through shared memory too, and the pipe carries only a call and a few statistics per
rollout), or Ray actors (each returns its share of the rollout as arrays). Whatever the backend, the
same seed gives bit-identical rollouts. A worker outside the learner's process that dies or hangs is
replaced by the pool (new env seeds) and collects its share of the rollout again; training goes on,
and the replacements are counted.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from agents.networks import PolicyValueNet
from training.ppo.rollout import Rollout, RolloutWorker, WorkerStats, allocate_rollout_arrays, is_per_env
from training.seeds import Reseed, reseeded
from training.workers.backends import make_backend
from training.workers.pool import WorkerFactory, WorkerPool

if TYPE_CHECKING:
    from training.league import LeagueOpponents


def env_slices(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) env index ranges, one per worker (num_envs divisible by num_workers)."""
    per = num_envs // num_workers
    return [(w * per, (w + 1) * per) for w in range(num_workers)]


def slice_arrays(arrays: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    """Envs lo..hi of rollout arrays ([T, N, ...]; the per-env ones [N, ...])."""
    return {k: (v[lo:hi] if is_per_env(k) else v[:, lo:hi]) for k, v in arrays.items()}


class BufferedRolloutWorker:
    """A RolloutWorker that writes each rollout into the buffer it is asked for (one, or two for
    asynchronous collection: the workers fill one while the learner reads the other)."""

    def __init__(self, env_id: str, num_envs: int, seed: int, policy: PolicyValueNet,
                 buffers: list[dict[str, torch.Tensor]], env_kwargs: Mapping[str, Any] | None = None,
                 opponents: LeagueOpponents | None = None):  # fmt: skip
        self.views = [{k: v.numpy() for k, v in arrays.items()} for arrays in buffers]
        self.worker = RolloutWorker(env_id, num_envs, seed, policy, buffers[0], env_kwargs, opponents)

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.worker.set_weights(state_dict)

    def collect(self, buffer: int, opponents: LeagueOpponents | None = None) -> WorkerStats:
        self.worker.retarget(self.views[buffer])
        return self.worker.collect(opponents)

    def close(self) -> None:
        self.worker.close()


class ArrayRolloutWorker:
    """A RolloutWorker with arrays of its own that hands each rollout back as numpy arrays (for Ray actors,
    which share no memory with the learner)."""

    def __init__(self, env_id: str, num_envs: int, seed: int, policy: PolicyValueNet, observation_space: gym.Space,
                 action_space: gym.Space, num_steps: int, env_kwargs: Mapping[str, Any] | None = None,
                 opponents: LeagueOpponents | None = None):  # fmt: skip
        self.arrays = allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs,
                                              memory_size=policy.memory_size)  # fmt: skip
        self.worker = RolloutWorker(env_id, num_envs, seed, policy, self.arrays, env_kwargs, opponents)

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.worker.set_weights(state_dict)

    def collect(self, buffer: int, opponents: LeagueOpponents | None = None) -> tuple[dict[str, np.ndarray], WorkerStats]:
        stats = self.worker.collect(opponents)
        return {k: v.numpy() for k, v in self.arrays.items()}, stats

    def close(self) -> None:
        self.worker.close()


class RolloutExecutor:
    """num_envs envs in num_workers rollout workers of the pool backend `backend` ('inprocess',
    'multiprocess', 'ray'); worker i steps envs slices[i], seeded from seed + its first env index.
    With `opponents` (a two-player game's league, training.league) the workers' envs answer each move
    with a league opponent's; `set_opponents` brings the league's changes to the workers with their next
    call (only the snapshots a worker lacks travel), and a worker that starts gets the whole league."""

    def __init__(
        self, backend: str, env_id: str, observation_space: gym.Space, action_space: gym.Space,
        policy: PolicyValueNet, num_envs: int, num_workers: int, num_steps: int, seed: int,
        env_kwargs: Mapping[str, Any] | None = None, worker_timeout: float = 300.0, ray_address: str | None = None,
        asynchronous: bool = False, opponents: LeagueOpponents | None = None,
    ):  # fmt: skip
        self.opponents = opponents
        self.opponents_update: LeagueOpponents | None = None  # what the workers have not been sent yet
        self.num_envs, self.num_steps = num_envs, num_steps
        self.backend_name, self.env_id, self.env_kwargs = backend, env_id, env_kwargs
        self.observation_space, self.action_space = observation_space, action_space
        self.slices = env_slices(num_envs, num_workers)
        self.base_seed = seed
        self.version = 0
        self.policy = copy.deepcopy(policy).cpu()
        # Rollout buffers: one, or two for asynchronous collection. Worker processes write into shared ones.
        self.num_buffers = 2 if asynchronous and backend != "inprocess" else 1
        self.buffers = [
            allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs,
                                    shared=backend == "multiprocess", memory_size=policy.memory_size)
            for _ in range(self.num_buffers)
        ]  # fmt: skip
        self.buffer_versions = [0] * self.num_buffers
        self.in_flight: int | None = None
        pool_backend = make_backend(backend, num_workers, self.num_buffers, ray_address, "rollout-worker")
        self.pool = WorkerPool(pool_backend, self._worker_factory, [hi - lo for lo, hi in self.slices],
                               worker_timeout, "rollout worker")  # fmt: skip

    def worker_seed(self, i: int, restarts: int | None = None) -> int:
        """The first env seed of worker i (replacements start on seeds of their own: training.seeds)."""
        restarts = self.pool.restarts[i] if restarts is None else restarts
        return reseeded(self.base_seed + self.slices[i][0], Reseed.WORKER_REPLACED, restarts)

    def _worker_factory(self, i: int, restarts: int) -> WorkerFactory:
        lo, hi = self.slices[i]
        seed, policy = self.worker_seed(i, restarts), copy.deepcopy(self.policy)
        if self.backend_name == "ray":
            return functools.partial(ArrayRolloutWorker, self.env_id, hi - lo, seed, policy, self.observation_space,
                                     self.action_space, self.num_steps, self.env_kwargs, self.opponents)  # fmt: skip
        buffers = [slice_arrays(arrays, lo, hi) for arrays in self.buffers]
        return functools.partial(BufferedRolloutWorker, self.env_id, hi - lo, seed, policy, buffers, self.env_kwargs,
                                 self.opponents)  # fmt: skip

    @property
    def worker_restarts(self) -> int:
        """workers replaced so far"""
        return self.pool.worker_restarts

    @property
    def dropped_episodes(self) -> int:
        """episodes lost with the replaced workers"""
        return self.pool.dropped_episodes

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.pool.set_weights(state_dict, version)
        self.version = version

    def set_opponents(self, opponents: LeagueOpponents) -> None:
        """The league as it is now; the workers get what changed with their next call."""
        assert self.opponents is not None, "set_opponents on an executor without a league"
        pending = {} if self.opponents_update is None else self.opponents_update.weights
        new = {i: w for i, w in opponents.weights.items() if i in pending or i not in self.opponents.weights}
        self.opponents_update = dataclasses.replace(opponents, weights=new)
        self.opponents = opponents

    def collect(self) -> Rollout:
        """T steps of all envs. The arrays are reused by the next collect(): consume them first."""
        self._request(0)
        return self._receive(0)

    def collect_next(self) -> Rollout:
        """Asynchronous collection: the rollout that was collected while the learner updated, having
        asked for the next one already (with the weights set so far), so that the workers never wait
        for the learner. The rollout's policy_version says which weights acted; the learner's version
        is at most one ahead. Without workers of their own (in-process) it collects synchronously."""
        if self.num_buffers < 2:
            return self.collect()
        if self.in_flight is None:
            self._request(0)
        buffer = self.in_flight
        rollout = self._receive(buffer)
        self._request(1 - buffer)
        return rollout

    def _request(self, buffer: int) -> None:
        self.in_flight, self.buffer_versions[buffer] = buffer, self.version
        update, self.opponents_update = self.opponents_update, None
        self.pool.request_all("collect", lambda i: (buffer, update), weights_slot=buffer)

    def _receive(self, buffer: int) -> Rollout:
        results = self.pool.receive_all()
        self.in_flight = None
        if self.backend_name == "ray":  # the actors' arrays into this buffer
            for (lo, hi), (arrays, _) in zip(self.slices, results, strict=True):
                for key, target in slice_arrays(self.buffers[buffer], lo, hi).items():
                    target.numpy()[...] = arrays[key]
            results = [stats for _, stats in results]
        return Rollout.from_arrays(self.buffers[buffer], self.buffer_versions[buffer], results)

    def worker_pids(self) -> list[int]:
        """Process ids of workers outside the learner's process on this machine (for memory figures)."""
        return self.pool.worker_pids()

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> RolloutExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(RolloutExecutor):
    def __init__(self, *args, **kwargs):
        super().__init__("inprocess", *args, **kwargs)


class MultiprocessExecutor(RolloutExecutor):
    def __init__(self, *args, **kwargs):
        super().__init__("multiprocess", *args, **kwargs)
