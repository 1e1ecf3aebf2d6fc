"""Executors run rollout workers; the learner sees only this interface.

    executor.set_weights(state_dict, version)   # after each update
    rollout = executor.collect()                 # T steps of every env, one Rollout

`InProcessExecutor` steps the workers in the learner's process (fastest for cheap envs such as
CartPole, where a process round trip costs more than the simulator, and easiest to debug).
`MultiprocessExecutor` runs each worker in its own process: observations, actions and the rest are
written straight into shared memory, the policy copy lives in shared memory too, and the pipe carries
only a command and a few statistics per rollout. `RayExecutor` (training/ray_executor.py) runs them as
Ray actors, on this machine or a cluster.

Workers outside the learner's process can die or hang (a segfaulting emulator, a game that stops
answering). `ReplacingExecutor` replaces such a worker with a fresh one on new env seeds and collects its
share of the rollout again; training goes on, and the replacements are counted.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
import torch

from agents.networks import PolicyValueNet
from training.ppo.rollout import Rollout, RolloutWorker, WorkerStats, allocate_rollout_arrays
from training.seeds import Reseed, reseeded
from training.workers.processes import (
    MIN_STARTUP_TIMEOUT,
    receive_reply,
    serve_commands,
    start_worker_process,
)


class WorkerError(RuntimeError):
    """A rollout worker failed and could not be replaced; the message carries its traceback."""


class WorkerLost(Exception):
    """A worker outside the learner's process died, hung past the timeout, or raised."""


# A worker slot whose replacements keep failing is broken (a bad env, a bug), not unlucky.
MAX_REPLACEMENTS_IN_A_ROW = 3
def env_slices(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) env index ranges, one per worker (num_envs divisible by num_workers)."""
    per = num_envs // num_workers
    return [(w * per, (w + 1) * per) for w in range(num_workers)]


def _slice_arrays(arrays: dict[str, torch.Tensor], lo: int, hi: int) -> dict[str, torch.Tensor]:
    return {k: (v[lo:hi] if k == "last_values" else v[:, lo:hi]) for k, v in arrays.items()}


class Executor(ABC):
    def __init__(self, num_steps: int, num_envs: int):
        self.num_envs, self.num_steps = num_envs, num_steps
        self.version = 0
        self.worker_restarts = 0
        """workers replaced so far"""
        self.dropped_episodes = 0
        """episodes lost with the replaced workers"""

    @abstractmethod
    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None: ...

    @abstractmethod
    def collect(self) -> Rollout:
        """T steps of all envs. The arrays are reused by the next collect(): consume them first."""

    def collect_next(self) -> Rollout:
        """Asynchronous collection: the rollout that was collected while the learner updated, having
        asked for the next one already (with the weights set so far), so that the workers never wait
        for the learner. The rollout's policy_version says which weights acted; the learner's version
        is at most one ahead. Executors without workers of their own collect synchronously."""
        return self.collect()

    @abstractmethod
    def close(self) -> None: ...

    def worker_pids(self) -> list[int]:
        """Process ids of workers that run outside the learner's process (for memory figures)."""
        return []

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    def __init__(
        self, env_id: str, observation_space: gym.Space, action_space: gym.Space, policy: PolicyValueNet,
        num_envs: int, num_workers: int, num_steps: int, seed: int, env_kwargs: Mapping[str, Any] | None = None,
    ):  # fmt: skip
        super().__init__(num_steps, num_envs)
        self.arrays = allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs)
        self.workers = [
            RolloutWorker(
                env_id, hi - lo, seed + lo, copy.deepcopy(policy).cpu(), _slice_arrays(self.arrays, lo, hi), env_kwargs
            )
            for lo, hi in env_slices(num_envs, num_workers)
        ]

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        for w in self.workers:
            w.set_weights(state_dict)
        self.version = version

    def collect(self) -> Rollout:
        return Rollout.from_arrays(self.arrays, self.version, [w.collect() for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            w.close()


def _worker_process(
    env_id: str, num_envs: int, seed: int, policies: list[PolicyValueNet], buffers: list[dict[str, torch.Tensor]],
    conn: Connection, env_kwargs: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    views = [{k: v.numpy() for k, v in arrays.items()} for arrays in buffers]

    def collect(worker: RolloutWorker, buffer: int) -> WorkerStats:
        worker.retarget(views[buffer], policies[buffer])
        return worker.collect()

    serve_commands(conn, lambda: RolloutWorker(env_id, num_envs, seed, policies[0], buffers[0], env_kwargs),
                   {"collect": collect})  # fmt: skip


class ReplacingExecutor(Executor):
    """Workers outside the learner's process, each owning a contiguous slice of the envs.

    A worker that dies, stays silent for `worker_timeout` seconds, or raises is stopped and replaced by a
    fresh one (new env seeds), which collects that slice of the rollout again. At start-up a failure is
    raised at once instead: it is a setup problem (a bad env id, a missing extra), not bad luck.
    Subclasses say how to start, ask, hear from and stop worker i.
    """

    def __init__(self, num_steps: int, num_envs: int, num_workers: int, seed: int, worker_timeout: float,
                 asynchronous: bool):  # fmt: skip
        super().__init__(num_steps, num_envs)
        self.slices = env_slices(num_envs, num_workers)
        self.base_seed, self.worker_timeout = seed, worker_timeout
        self.slot_restarts = [0] * num_workers
        # Rollout buffers: one, or two for asynchronous collection (the workers fill one while the
        # learner reads the other). Subclasses allocate them.
        self.num_buffers = 2 if asynchronous else 1
        self.buffers: list[dict[str, torch.Tensor]] = []
        self.buffer_versions = [0] * self.num_buffers
        self.in_flight: int | None = None

    def worker_seed(self, i: int) -> int:
        return reseeded(self.base_seed + self.slices[i][0], Reseed.WORKER_REPLACED, self.slot_restarts[i])

    @abstractmethod
    def _start(self, i: int) -> None:
        """Start worker i (without waiting for it)."""

    @abstractmethod
    def _wait_ready(self, i: int) -> None:
        """Return once worker i has built its envs; raise WorkerLost if it cannot."""

    def _prepare(self, buffer: int) -> None:
        """Before a rollout into buffer is asked for: make the latest weights available to it."""

    @abstractmethod
    def _request(self, i: int, buffer: int) -> None:
        """Ask worker i for its share of a rollout into buffer (with the latest weights)."""

    @abstractmethod
    def _receive(self, i: int, buffer: int) -> WorkerStats:
        """Worker i's statistics once its share of the rollout is in buffer; WorkerLost if not."""

    @abstractmethod
    def _stop(self, i: int) -> None:
        """Stop worker i for good, whatever state it is in."""

    def _start_all(self) -> None:
        for i in range(len(self.slices)):
            self._start(i)
        try:
            for i in range(len(self.slices)):
                self._wait_ready(i)
        except BaseException as e:
            self.close()
            if isinstance(e, WorkerLost):
                raise WorkerError(f"rollout worker {i} could not start: {e}") from None
            raise

    def collect(self) -> Rollout:
        self._request_all(0)
        return self._receive_all(0)

    def collect_next(self) -> Rollout:
        if self.num_buffers < 2:
            return self.collect()
        if self.in_flight is None:
            self._request_all(0)
        buffer = self.in_flight
        rollout = self._receive_all(buffer)
        self._request_all(1 - buffer)
        return rollout

    def _request_all(self, buffer: int) -> None:
        self.in_flight, self.buffer_versions[buffer] = buffer, self.version
        self._prepare(buffer)
        for i in range(len(self.slices)):
            self._request(i, buffer)

    def _receive_all(self, buffer: int) -> Rollout:
        stats = [self._receive_or_replace(i, buffer) for i in range(len(self.slices))]
        self.in_flight = None
        return Rollout.from_arrays(self.buffers[buffer], self.buffer_versions[buffer], stats)

    def _receive_or_replace(self, i: int, buffer: int) -> WorkerStats:
        failures = 0
        while True:
            try:
                if failures:
                    self._wait_ready(i)
                    self._request(i, buffer)
                return self._receive(i, buffer)
            except WorkerLost as lost:
                failures += 1
                if failures > MAX_REPLACEMENTS_IN_A_ROW:
                    raise WorkerError(f"rollout worker {i} failed {failures} times in a row; the last time it {lost}") from None
                print(f"rollout worker {i} {str(lost).splitlines()[0]}; replacing it", file=sys.stderr)
                self._stop(i)
                self.worker_restarts += 1
                self.slot_restarts[i] += 1
                self.dropped_episodes += self.slices[i][1] - self.slices[i][0]
                self._start(i)


class MultiprocessExecutor(ReplacingExecutor):
    def __init__(
        self, env_id: str, observation_space: gym.Space, action_space: gym.Space, policy: PolicyValueNet,
        num_envs: int, num_workers: int, num_steps: int, seed: int, env_kwargs: Mapping[str, Any] | None = None,
        worker_timeout: float = 300.0, asynchronous: bool = False,
    ):  # fmt: skip
        super().__init__(num_steps, num_envs, num_workers, seed, worker_timeout, asynchronous)
        self.env_id, self.env_kwargs = env_id, env_kwargs
        self.buffers = [
            allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs, shared=True)
            for _ in range(self.num_buffers)
        ]
        # Workers act with shared-memory copies of the policy, one per buffer: the latest weights are
        # written into a buffer's copy just before a rollout into it is asked for, never while one runs.
        self.policies = [copy.deepcopy(policy).cpu().share_memory() for _ in range(self.num_buffers)]
        self.latest_weights: dict[str, torch.Tensor] | None = None
        # spawn, not fork: forking a process whose OpenMP pool is running can deadlock the child.
        self.ctx = torch.multiprocessing.get_context("spawn")
        self.conns: list[Connection | None] = [None] * num_workers
        self.processes: list = [None] * num_workers
        self._start_all()

    def _start(self, i: int) -> None:
        lo, hi = self.slices[i]
        parent_conn, child_conn = self.ctx.Pipe()
        buffers = [_slice_arrays(arrays, lo, hi) for arrays in self.buffers]
        args = (self.env_id, hi - lo, self.worker_seed(i), self.policies, buffers, child_conn, self.env_kwargs)
        proc = self.ctx.Process(target=_worker_process, args=args, daemon=True, name=f"rollout-worker-{lo}")
        start_worker_process(proc)
        child_conn.close()
        self.conns[i], self.processes[i] = parent_conn, proc

    def _reply(self, i: int, expected: str, timeout: float):
        return receive_reply(self.conns[i], self.processes[i], expected, timeout, WorkerLost, "--worker-timeout")

    def _wait_ready(self, i: int) -> None:
        self._reply(i, "ready", max(self.worker_timeout, MIN_STARTUP_TIMEOUT))

    def _prepare(self, buffer: int) -> None:
        if self.latest_weights is not None:
            self.policies[buffer].load_state_dict(self.latest_weights)

    def _request(self, i: int, buffer: int) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):  # a dead worker: _receive finds out, replaces it
            self.conns[i].send(("collect", buffer))

    def _receive(self, i: int, buffer: int) -> WorkerStats:
        return self._reply(i, "ok", self.worker_timeout)

    def _stop(self, i: int) -> None:
        proc, conn = self.processes[i], self.conns[i]
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        if conn is not None:
            conn.close()

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        # Kept by reference and copied when the next rollout is asked for, which is after this update.
        self.latest_weights, self.version = state_dict, version

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None and p.pid is not None]

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send(("close", None))
        for proc in self.processes:
            if proc is not None:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
        self.conns, self.processes = [], []
