"""Data-parallel learners (torch.distributed DDP): one learner process per GPU, each with its own rollout
workers and its share of the envs; gradients are averaged across them at every minibatch, so every
replica applies the same update and the weights stay identical.

On CPU the same code runs on the gloo backend (that is how it is tested); on GPUs on NCCL. With one
learner, `SINGLE` makes every collective a no-op and nothing here is imported into the hot path.
"""

from __future__ import annotations

import io
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the learners: rank 0 logs, evaluates and saves."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The model the update runs through: DDP averages gradients in backward when enabled."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the learners (for decisions all of them must take alike)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def gather(self, array: np.ndarray) -> np.ndarray:
        """Every learner's array (same shapes), concatenated along the first axis in rank order."""
        if not self.enabled:
            return array
        tensor = torch.as_tensor(np.ascontiguousarray(array))
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.cat(parts).cpu().numpy()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every learner's picklable object (any size), in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


SINGLE = DataParallel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_store(rank: int, world_size: int, port: int) -> dist.TCPStore:
    """The process group's rendezvous store on 127.0.0.1:port. Rank 0 serves it from a socket it binds to
    loopback itself: given only an address, TCPStore's server listens on every interface."""
    listener = None
    if rank == 0:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
    store = dist.TCPStore("127.0.0.1", port, world_size, is_master=rank == 0, wait_for_workers=False,
                          master_listen_fd=listener.fileno() if listener else None)  # fmt: skip
    if listener is not None:
        listener.detach()  # the store owns the file descriptor now, and closes it
    return store


def _entry(rank: int, world_size: int, port: int, backend: str, fn: Callable, args: tuple, results) -> None:
    if sys.platform.startswith("linux"):  # the learners' own connections stay on loopback too
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    store = loopback_store(rank, world_size, port)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    try:
        result = fn(*args, DataParallel(rank, world_size))
        if rank == 0:
            # As bytes: tensors put on a queue as such are fetched from the sender later, which is gone by then.
            buffer = io.BytesIO()
            torch.save(result, buffer)
            results.put(("result", buffer.getvalue()))
        # Every rank done with its collectives before any closes its connections: without this a rank
        # whose peer tore the group down first could abort in gloo's transport thread ("terminate
        # called without an active exception", SIGABRT; seen about once in 25 loaded runs here).
        dist.barrier()
        results.put(("finished", rank))  # from here on nothing of the run can be lost
    finally:
        dist.destroy_process_group()


def run_data_parallel(fn: Callable, args: tuple, world_size: int, use_cuda: bool) -> Any:
    """Run fn(*args, DataParallel(rank, world_size)) in world_size processes on this machine (NCCL on
    GPUs, gloo on CPU) and return rank 0's result."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    backend = "nccl" if use_cuda else "gloo"
    processes = torch.multiprocessing.start_processes(
        _entry, args=(world_size, _free_port(), backend, fn, args, results), nprocs=world_size, join=False,
        start_method="spawn",
    )  # fmt: skip
    # join() raises at once (with the traceback) if a process fails; meanwhile read rank 0's result as
    # soon as it is there, since a large one blocks its sender until it is read.
    payload, finished = None, set()

    def read_messages(until_result: bool = False) -> None:
        nonlocal payload
        while not results.empty() or (until_result and payload is None):
            kind, value = results.get()
            if kind == "result":
                payload = value
            else:
                finished.add(value)

    try:
        while not processes.join(timeout=0.2):
            read_messages()
    except torch.multiprocessing.ProcessExitedException as e:
        read_messages()
        # Every learner passed the last barrier and rank 0's result is here: a learner that died while
        # the group was torn down (gloo's transport thread can still abort when its peer closes first,
        # despite the barrier; rarely) cost nothing. Anything earlier is a real failure.
        if payload is None or len(finished) < world_size:
            raise
        print(f"note: learner {e.error_index} ended with {e} while closing, after the run was complete; nothing lost",
              file=sys.stderr)  # fmt: skip
    read_messages(until_result=True)  # empty() can miss what is still in the pipe: wait for rank 0's result
    return torch.load(io.BytesIO(payload), weights_only=False)
