"""Rollout workers as Ray actors: the same RolloutWorker, on this machine or across a Ray cluster.

Per update the learner puts the weights into Ray's object store once (`ray.put`), and every actor's one
`collect` call takes that reference and returns its whole share of the rollout as numpy arrays: one call
per worker per rollout, never per step. Imported only for `--backend ray`, so the default install and
runs need no Ray.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.networks import PolicyValueNet
from training.ppo.executors import ReplacingExecutor, WorkerLost, _slice_arrays
from training.ppo.rollout import RolloutWorker, WorkerStats, allocate_rollout_arrays
from training.workers.processes import MIN_STARTUP_TIMEOUT
from training.workers.ray_cluster import _import_ray, connect_ray  # noqa: F401 - also importable from here


class RayRolloutWorker:
    """The actor: a RolloutWorker with its own arrays, taking new weights when their version changes."""

    def __init__(self, env_id: str, num_envs: int, seed: int, policy: PolicyValueNet, observation_space: gym.Space,
                 action_space: gym.Space, num_steps: int, env_kwargs: Mapping[str, Any] | None = None):  # fmt: skip
        torch.set_num_threads(1)  # the actors are the parallelism
        self.arrays = allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs)
        self.worker = RolloutWorker(env_id, num_envs, seed, policy, self.arrays, env_kwargs)
        self.version = None

    def pid(self) -> int:
        return os.getpid()

    def collect(self, weights: dict[str, torch.Tensor], version: int) -> tuple[dict[str, np.ndarray], WorkerStats]:
        if version != self.version:
            self.worker.set_weights(weights)
            self.version = version
        stats = self.worker.collect()
        return {k: v.numpy() for k, v in self.arrays.items()}, stats


class RayExecutor(ReplacingExecutor):
    """Workers as Ray actors. `address` None starts a Ray instance on this machine (and stops it on
    close); 'auto' or 'HOST:PORT' joins a running cluster (`ray start --head`)."""

    def __init__(
        self, env_id: str, observation_space: gym.Space, action_space: gym.Space, policy: PolicyValueNet,
        num_envs: int, num_workers: int, num_steps: int, seed: int, env_kwargs: Mapping[str, Any] | None = None,
        worker_timeout: float = 300.0, address: str | None = None, cpus_per_worker: float = 1.0,
        asynchronous: bool = False,
    ):  # fmt: skip
        super().__init__(num_steps, num_envs, num_workers, seed, worker_timeout, asynchronous)
        # Enough logical CPUs for every actor: with fewer, the extra actors would wait forever.
        cpus = max(os.cpu_count() or 1, int(np.ceil(num_workers * cpus_per_worker)))
        ray, self.started_ray = connect_ray(address, cpus)
        self.ray = ray
        # Process ids mean something here only when the actors run on this machine.
        self.local = self.started_ray and not address
        self.actor_class = ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(RayRolloutWorker)
        self.env_id, self.observation_space, self.action_space = env_id, observation_space, action_space
        self.env_kwargs = env_kwargs
        self.policy = copy.deepcopy(policy).cpu()
        self.buffers = [
            allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs)
            for _ in range(self.num_buffers)
        ]
        self.weights_ref = ray.put(self.policy.state_dict())
        self.actors: list = [None] * num_workers
        self.ready: list = [None] * num_workers
        self.pending: list = [None] * num_workers
        self.pids: list[int | None] = [None] * num_workers
        self._start_all()

    def _errors(self) -> tuple[type[BaseException], ...]:
        exceptions = self.ray.exceptions
        return (exceptions.RayActorError, exceptions.RayTaskError, exceptions.GetTimeoutError,
                exceptions.ObjectLostError, exceptions.WorkerCrashedError)  # fmt: skip

    def _get(self, ref, what: str, timeout: float):
        try:
            return self.ray.get(ref, timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise WorkerLost(f"hung ({what}: no reply within {timeout:g}s, --worker-timeout)") from None
        except self._errors() as e:
            raise WorkerLost(f"died or raised ({what}): {str(e).strip()[:2000]}") from None

    def _start(self, i: int) -> None:
        lo, hi = self.slices[i]
        self.actors[i] = self.actor_class.remote(
            self.env_id, hi - lo, self.worker_seed(i), self.policy, self.observation_space, self.action_space,
            self.num_steps, self.env_kwargs,
        )  # fmt: skip
        self.ready[i] = self.actors[i].pid.remote()

    def _wait_ready(self, i: int) -> None:
        self.pids[i] = self._get(self.ready[i], "starting", max(self.worker_timeout, MIN_STARTUP_TIMEOUT))

    def _request(self, i: int, buffer: int) -> None:
        self.pending[i] = self.actors[i].collect.remote(self.weights_ref, self.version)

    def _receive(self, i: int, buffer: int) -> WorkerStats:
        arrays, stats = self._get(self.pending[i], "collecting", self.worker_timeout)
        lo, hi = self.slices[i]
        for key, target in _slice_arrays(self.buffers[buffer], lo, hi).items():
            target.numpy()[...] = arrays[key]
        return stats

    def _stop(self, i: int) -> None:
        if self.actors[i] is not None:
            self.ray.kill(self.actors[i], no_restart=True)
            self.actors[i] = None

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        # Once per update into the object store; every actor's collect call takes the same reference.
        self.weights_ref = self.ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        self.version = version

    def worker_pids(self) -> list[int]:
        """Process ids of the actors when they run on this machine (a local Ray); none on a cluster."""
        return [pid for pid in self.pids if pid is not None] if self.local else []

    def close(self) -> None:
        for i in range(len(self.actors)):
            self._stop(i)
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
