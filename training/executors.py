"""Executors run rollout workers; the learner sees only this interface.

    executor.set_weights(state_dict, version)   # after each update
    rollout = executor.collect()                 # T steps of every env, one Rollout

`InProcessExecutor` steps the workers in the learner's process (fastest for cheap envs such as
CartPole, where a process round trip costs more than the simulator, and easiest to debug).
`MultiprocessExecutor` runs each worker in its own process: observations, actions and the rest are
written straight into shared memory, the policy copy lives in shared memory too, and the pipe carries
only a command and a few statistics per rollout. A Ray executor (a later issue) implements the same
interface with workers as actors.
"""

from __future__ import annotations

import contextlib
import copy
import traceback
from abc import ABC, abstractmethod
from multiprocessing.connection import Connection

import gymnasium as gym
import torch

from agents.networks import ActorCritic
from training.rollout import Rollout, RolloutWorker, WorkerStats, allocate_rollout_arrays


class WorkerError(RuntimeError):
    """A rollout worker failed; the message carries its traceback."""


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

    @abstractmethod
    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None: ...

    @abstractmethod
    def collect(self) -> Rollout:
        """T steps of all envs. The arrays are reused by the next collect(): consume them first."""

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
        self, env_id: str, observation_space: gym.Space, action_space: gym.Space, policy: ActorCritic,
        num_envs: int, num_workers: int, num_steps: int, seed: int,
    ):  # fmt: skip
        super().__init__(num_steps, num_envs)
        self.arrays = allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs)
        self.workers = [
            RolloutWorker(env_id, hi - lo, seed + lo, copy.deepcopy(policy).cpu(), _slice_arrays(self.arrays, lo, hi))
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
    env_id: str, num_envs: int, seed: int, policy: ActorCritic, arrays: dict[str, torch.Tensor], conn: Connection
) -> None:
    # One intra-op thread per worker: the workers themselves are the parallelism.
    torch.set_num_threads(1)
    worker = None
    try:
        worker = RolloutWorker(env_id, num_envs, seed, policy, arrays)
        conn.send(("ready", None))
        while True:
            command = conn.recv()
            if command == "collect":
                conn.send(("ok", worker.collect()))
            elif command == "close":
                break
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        if worker is not None:
            worker.close()


class MultiprocessExecutor(Executor):
    def __init__(
        self, env_id: str, observation_space: gym.Space, action_space: gym.Space, policy: ActorCritic,
        num_envs: int, num_workers: int, num_steps: int, seed: int,
    ):  # fmt: skip
        super().__init__(num_steps, num_envs)
        self.arrays = allocate_rollout_arrays(observation_space, action_space, num_steps, num_envs, shared=True)
        # Workers act with this shared-memory copy; set_weights writes into it in place between rollouts.
        self.policy = copy.deepcopy(policy).cpu().share_memory()
        # spawn, not fork: forking a process whose OpenMP pool is running can deadlock the child.
        ctx = torch.multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes = []
        for lo, hi in env_slices(num_envs, num_workers):
            parent_conn, child_conn = ctx.Pipe()
            args = (env_id, hi - lo, seed + lo, self.policy, _slice_arrays(self.arrays, lo, hi), child_conn)
            proc = ctx.Process(target=_worker_process, args=args, daemon=True, name=f"rollout-worker-{lo}")
            proc.start()
            child_conn.close()
            self.conns.append(parent_conn)
            self.processes.append(proc)
        try:
            self._gather()  # "ready" from every worker, or the first one's error
        except BaseException:
            self.close()
            raise

    def _gather(self) -> list:
        replies = []
        for i, conn in enumerate(self.conns):
            try:
                kind, payload = conn.recv()
            except EOFError:
                code = self.processes[i].exitcode
                raise WorkerError(f"rollout worker {i} died (exit code {code})") from None
            if kind == "error":
                raise WorkerError(f"rollout worker {i} failed:\n{payload}")
            replies.append(payload)
        return replies

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.policy.load_state_dict(state_dict)
        self.version = version

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def collect(self) -> Rollout:
        for conn in self.conns:
            conn.send("collect")
        stats: list[WorkerStats] = self._gather()
        return Rollout.from_arrays(self.arrays, self.version, stats)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send("close")
        for proc in self.processes:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        self.conns, self.processes = [], []


EXECUTORS = {"inprocess": InProcessExecutor, "multiprocess": MultiprocessExecutor}
