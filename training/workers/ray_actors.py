"""The pool's Ray backend: each worker inside a Ray actor, on this machine or across a Ray cluster.

Per weights version the learner puts the weights into Ray's object store once (`ray.put`); every call
carries that reference (wrapped, so Ray does not fetch it) and its version, and an actor fetches the
weights only when the version changed. One remote call per worker per round, never per step. Ray is
imported only when this backend starts, so the default install and runs need no Ray.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np
import torch

from training.workers.pool import Call, PoolBackend, WorkerFactory, WorkerLost
from training.workers.ray_cluster import connect_ray


class RayWorkerHost:
    """The actor: builds its worker from the factory and calls its methods by name."""

    def __init__(self, factory: WorkerFactory):
        torch.set_num_threads(1)  # the actors are the parallelism
        self.worker = factory()
        self.version: int | None = None

    def pid(self) -> int:
        return os.getpid()

    def call(self, method: str, args: tuple, weights: list, version: int | None) -> Any:
        if version is not None and version != self.version:
            import ray  # inside an actor: Ray is there

            self.worker.set_weights(ray.get(weights[0]))
            self.version = version
        return getattr(self.worker, method)(*args)


class RayBackend(PoolBackend):
    """Workers as Ray actors. `address` None starts a Ray instance on this machine (and stops it on close);
    'auto' or 'HOST:PORT' joins a running cluster (`ray start --head`)."""

    def __init__(self, num_workers: int, address: str | None = None, cpus_per_worker: float = 1.0):
        # Enough logical CPUs for every actor: with fewer, the extra actors would wait forever.
        cpus = max(os.cpu_count() or 1, int(np.ceil(num_workers * cpus_per_worker)))
        self.ray, self.started_ray = connect_ray(address, cpus)
        # Process ids mean something here only when the actors run on this machine.
        self.local = self.started_ray and not address
        self.actor_class = self.ray.remote(num_cpus=cpus_per_worker, max_restarts=0)(RayWorkerHost)
        self.weights: list = [None]
        self.version: int | None = None
        self.actors: list = [None] * num_workers
        self.ready: list = [None] * num_workers
        self.pending: list = [None] * num_workers
        self.pids: list[int | None] = [None] * num_workers

    def _errors(self) -> tuple[type[BaseException], ...]:
        exceptions = self.ray.exceptions
        return (exceptions.RayActorError, exceptions.RayTaskError, exceptions.ObjectLostError,
                exceptions.WorkerCrashedError)  # fmt: skip

    def _get(self, ref, what: str, timeout: float) -> Any:
        try:
            return self.ray.get(ref, timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise WorkerLost(f"hung ({what}: no reply within {timeout:g}s, --worker-timeout)") from None
        except self._errors() as e:
            raise WorkerLost(f"died or raised ({what}): {str(e).strip()[:2000]}") from None

    def start(self, i: int, factory: WorkerFactory) -> None:
        self.actors[i] = self.actor_class.remote(factory)
        self.ready[i] = self.actors[i].pid.remote()

    def wait_ready(self, i: int, timeout: float) -> None:
        self.pids[i] = self._get(self.ready[i], "starting", timeout)

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        # Once per version into the object store; every actor's calls take the same reference.
        self.weights = [self.ray.put({k: v.detach().cpu() for k, v in state_dict.items()})]
        self.version = version

    def publish(self, slot: int) -> None:
        pass  # the weights' reference travels with each call

    def request(self, i: int, call: Call) -> None:
        self.pending[i] = self.actors[i].call.remote(call.method, call.args, self.weights, self.version)

    def receive(self, i: int, timeout: float) -> Any:
        return self._get(self.pending[i], "working", timeout)

    def stop(self, i: int) -> None:
        if self.actors[i] is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(self.actors[i], no_restart=True)
            self.actors[i] = None

    def worker_pids(self) -> list[int]:
        """The actors' process ids when Ray runs on this machine; none on a cluster."""
        return [pid for pid in self.pids if pid is not None] if self.local else []

    def close(self) -> None:
        for i in range(len(self.actors)):
            self.stop(i)
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()
