"""The pool backend a --backend value names; Ray itself is imported only when its backend starts."""

from __future__ import annotations

from training.workers.pool import InProcessBackend, PoolBackend, ProcessBackend
from training.workers.ray_actors import RayBackend


def make_backend(name: str, num_workers: int, num_weight_slots: int = 1, ray_address: str | None = None,
                 worker_name: str = "worker") -> PoolBackend:  # fmt: skip
    """'inprocess', 'multiprocess' or 'ray' (on this machine, or the cluster at ray_address)."""
    if name == "inprocess":
        return InProcessBackend(num_workers)
    if name == "multiprocess":
        return ProcessBackend(num_workers, num_weight_slots, worker_name)
    if name == "ray":
        return RayBackend(num_workers, ray_address)
    raise ValueError(f"unknown backend {name!r}")
