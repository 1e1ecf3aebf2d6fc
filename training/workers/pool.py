"""One worker pool for both algorithms (PufferLib's one interface, three backends): PPO's rollout workers
and MuZero's self-play workers run in it alike.

    pool = WorkerPool(backend, make_worker, envs_per_worker, timeout, "rollout worker")
    pool.set_weights(state_dict, version)            # after each update; each worker loads a version once
    results = pool.call_all("collect", lambda i: (buffer,))   # one call per worker, results in worker order

A worker is any object with `set_weights(state_dict)`, `close()` and the methods the algorithm calls;
`make_worker(i, restarts)` returns a picklable factory that builds worker i where it runs (its env
seeds depend on how often slot i was replaced). The backends:
- `InProcessBackend`: the workers live in the learner's process and are called directly (the fastest for
  cheap envs; an exception is the learner's own, and the watchdog guards against hangs).
- `ProcessBackend`: one spawned process per worker; the weights travel through shared memory (one copy
  per weight slot: PPO's asynchronous double buffers use two), the pipe carries only calls and results.
- `RayBackend` (training.workers.ray_actors): Ray actors, on this machine or a cluster.
`training.workers.backends.make_backend` picks one by its --backend name.
Outside the learner's process a worker that dies, stays silent for `timeout` seconds or raises is stopped
and replaced by a fresh one (new env seeds, the latest weights), which redoes the call; its episodes in
progress are lost and counted. At start-up a failure is raised at once: it is a setup problem (a bad env
id, a missing extra), not bad luck.
"""

from __future__ import annotations

import contextlib
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import torch

from training.workers.processes import MIN_STARTUP_TIMEOUT, receive_reply, serve_worker, start_worker_process

WorkerFactory = Callable[[], Any]

# A worker slot whose replacements keep failing is broken (a bad env, a bug), not unlucky.
MAX_REPLACEMENTS_IN_A_ROW = 3


class WorkerLost(Exception):
    """A worker outside the learner's process died, hung past the timeout, or raised."""


class WorkerError(RuntimeError):
    """A worker failed and could not be replaced; the message says how (with its traceback)."""


@dataclass(frozen=True)
class Call:
    """One call of a worker's method, acting with the weights published in weight slot `weights_slot`."""

    method: str
    args: tuple
    weights_slot: int = 0


class PoolBackend(ABC):
    """Where a pool's workers run: how to start, call, hear from and stop worker i, and how weights reach it."""

    num_weight_slots: int = 1

    @abstractmethod
    def start(self, i: int, factory: WorkerFactory) -> None:
        """Start worker i (without waiting for it)."""

    @abstractmethod
    def wait_ready(self, i: int, timeout: float) -> None:
        """Return once worker i is built; WorkerLost if it cannot be."""

    @abstractmethod
    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """The weights that calls from now on act with (by reference: published when a call needs them)."""

    @abstractmethod
    def publish(self, slot: int) -> None:
        """Make the latest weights available in weight slot `slot`, before calls that act with them."""

    @abstractmethod
    def request(self, i: int, call: Call) -> None:
        """Send worker i a call; a dead worker is found out by receive."""

    @abstractmethod
    def receive(self, i: int, timeout: float) -> Any:
        """The result of worker i's call; WorkerLost if it died, raised or hung."""

    @abstractmethod
    def stop(self, i: int) -> None:
        """Stop worker i for good, whatever state it is in."""

    def worker_pids(self) -> list[int]:
        """Process ids of workers outside the learner's process on this machine (for memory figures)."""
        return []

    @abstractmethod
    def close(self) -> None:
        """Stop every worker (after asking it to close its envs, where it can)."""


class WorkerPool:
    def __init__(self, backend: PoolBackend, make_worker: Callable[[int, int], WorkerFactory],
                 envs_per_worker: Sequence[int], timeout: float, what: str):  # fmt: skip
        self.backend, self.make_worker, self.timeout, self.what = backend, make_worker, timeout, what
        self.envs_per_worker = list(envs_per_worker)
        n = len(self.envs_per_worker)
        self.restarts = [0] * n
        """times each slot's worker was replaced"""
        self.worker_restarts = 0
        self.dropped_episodes = 0
        """episodes in progress lost with the replaced workers"""
        self.pending: list[Call | None] = [None] * n
        for i in range(n):
            backend.start(i, make_worker(i, 0))
        try:
            for i in range(n):
                backend.wait_ready(i, max(timeout, MIN_STARTUP_TIMEOUT))
        except BaseException as e:
            backend.close()
            if isinstance(e, WorkerLost):
                raise WorkerError(f"{what} {i} could not start: {e}") from None
            raise

    @property
    def num_workers(self) -> int:
        return len(self.envs_per_worker)

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.backend.set_weights(state_dict, version)

    def request_all(self, method: str, args_of: Callable[[int], tuple] = lambda i: (), weights_slot: int = 0) -> None:
        """Send every worker a call (results with receive_all): the workers run while the caller works."""
        self.backend.publish(weights_slot)
        for i in range(self.num_workers):
            self.pending[i] = Call(method, args_of(i), weights_slot)
            with contextlib.suppress(WorkerLost):  # a worker already dead fails in receive_all
                self.backend.request(i, self.pending[i])

    def receive_all(self) -> list:
        """Every worker's result of the calls request_all sent, replacing (and asking again) any worker
        that is lost meanwhile."""
        results = [self._receive_or_replace(i) for i in range(self.num_workers)]
        self.pending = [None] * self.num_workers
        return results

    def call_all(self, method: str, args_of: Callable[[int], tuple] = lambda i: (), weights_slot: int = 0) -> list:
        self.request_all(method, args_of, weights_slot)
        return self.receive_all()

    def _receive_or_replace(self, i: int) -> Any:
        failures = 0
        while True:
            try:
                if failures:
                    self.backend.wait_ready(i, max(self.timeout, MIN_STARTUP_TIMEOUT))
                    self.backend.request(i, self.pending[i])
                return self.backend.receive(i, self.timeout)
            except WorkerLost as lost:
                failures += 1
                if failures > MAX_REPLACEMENTS_IN_A_ROW:
                    raise WorkerError(f"{self.what} {i} failed {failures} times in a row; the last time it {lost}") from None
                print(f"{self.what} {i} {str(lost).splitlines()[0]}; replacing it (new env seeds)", file=sys.stderr)
                self.backend.stop(i)
                self.restarts[i] += 1
                self.worker_restarts += 1
                self.dropped_episodes += self.envs_per_worker[i]
                self.backend.start(i, self.make_worker(i, self.restarts[i]))

    def worker_pids(self) -> list[int]:
        return self.backend.worker_pids()

    def close(self) -> None:
        self.backend.close()


class InProcessBackend(PoolBackend):
    """Workers in the learner's process, called directly: nothing to replace (an exception is raised as it
    is), and the weights are loaded the moment they are set."""

    def __init__(self, num_workers: int):
        self.workers: list[Any] = [None] * num_workers
        self.calls: dict[int, Call] = {}

    def start(self, i: int, factory: WorkerFactory) -> None:
        self.workers[i] = factory()

    def wait_ready(self, i: int, timeout: float) -> None:
        pass

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        for worker in self.workers:
            worker.set_weights(state_dict)

    def publish(self, slot: int) -> None:
        pass  # the workers loaded the weights when they were set

    def request(self, i: int, call: Call) -> None:
        self.calls[i] = call  # run by receive, where the caller waits (and the watchdog watches)

    def receive(self, i: int, timeout: float) -> Any:
        call = self.calls.pop(i)
        return getattr(self.workers[i], call.method)(*call.args)

    def stop(self, i: int) -> None:
        self.workers[i].close()

    def close(self) -> None:
        for worker in self.workers:
            if worker is not None:
                worker.close()
        self.workers = []


class ProcessBackend(PoolBackend):
    """One spawned process per worker (spawn, not fork: forking a process whose OpenMP pool is running can
    deadlock the child). The weights live in shared memory, one copy per weight slot, made from the first
    weights set and handed to each worker with its first call that acts with them; a copy is written just
    before calls that act with it are sent, never while one runs, and a worker loads a version once."""

    def __init__(self, num_workers: int, num_weight_slots: int = 1, name: str = "worker"):
        self.ctx = torch.multiprocessing.get_context("spawn")
        self.name, self.num_weight_slots = name, num_weight_slots
        self.shared: list[dict[str, torch.Tensor] | None] = [None] * num_weight_slots
        self.slot_versions: list[int | None] = [None] * num_weight_slots
        self.latest: dict[str, torch.Tensor] | None = None
        self.version: int | None = None
        self.conns: list[Connection | None] = [None] * num_workers
        self.processes: list = [None] * num_workers
        self.handed: list[set[int]] = [set() for _ in range(num_workers)]
        """the weight slots whose shared copy each worker holds"""

    def start(self, i: int, factory: WorkerFactory) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=serve_worker, args=(child, factory), daemon=True, name=f"{self.name}-{i}")
        start_worker_process(proc)
        child.close()
        self.conns[i], self.processes[i], self.handed[i] = parent, proc, set()

    def _reply(self, i: int, expected: str, timeout: float) -> Any:
        return receive_reply(self.conns[i], self.processes[i], expected, timeout, WorkerLost, "--worker-timeout")

    def wait_ready(self, i: int, timeout: float) -> None:
        self._reply(i, "ready", timeout)

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        # Kept by reference and copied when the next call is sent, which is after this update.
        self.latest, self.version = state_dict, version

    def publish(self, slot: int) -> None:
        if self.latest is None or self.slot_versions[slot] == self.version:
            return
        if self.shared[slot] is None:
            self.shared[slot] = {k: v.detach().cpu().clone().share_memory_() for k, v in self.latest.items()}
        else:
            with torch.no_grad():
                for key, target in self.shared[slot].items():
                    target.copy_(self.latest[key])
        self.slot_versions[slot] = self.version

    def request(self, i: int, call: Call) -> None:
        slot = call.weights_slot
        # A worker's first call with a slot carries the slot's shared tensors (as handles, not copies).
        handing = self.shared[slot] if self.shared[slot] is not None and slot not in self.handed[i] else None
        message = ("call", call.method, call.args, slot, self.slot_versions[slot], handing)
        try:
            self.conns[i].send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise WorkerLost(f"died (exit code {self.processes[i].exitcode})") from None
        if handing is not None:
            self.handed[i].add(slot)

    def receive(self, i: int, timeout: float) -> Any:
        return self._reply(i, "ok", timeout)

    def stop(self, i: int) -> None:
        proc, conn = self.processes[i], self.conns[i]
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
        if conn is not None:
            conn.close()

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None and p.pid is not None]

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                with contextlib.suppress(BrokenPipeError, OSError):
                    conn.send(("close",))
        for proc in self.processes:
            if proc is not None:
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
        self.conns, self.processes = [], []
