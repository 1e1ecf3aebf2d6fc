"""What worker processes share, whatever they run (PPO's rollout workers, MuZero's self-play workers):
starting one that ignores Ctrl-C, its call loop over a pipe (weights through shared memory), and
reading its replies with a timeout."""

from __future__ import annotations

import contextlib
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch

# Seconds a worker may take to start (a new Python, torch, the envs: StarCraft II takes tens of seconds to
# launch), when --worker-timeout is shorter: a loaded machine must not make start-up look like a hang.
MIN_STARTUP_TIMEOUT = 120.0


def start_worker_process(process) -> None:
    """Start a worker process that ignores SIGINT. Ctrl-C in a terminal reaches the whole process group;
    the learner, not each worker, decides what it means (it saves a checkpoint and closes its workers), so
    workers print no KeyboardInterrupt tracebacks, not even during start-up. An ignored signal stays ignored
    across spawn's exec, and Python then installs no handler of its own for it."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: start it as it is
        process.start()
        return
    try:
        process.start()
    finally:
        signal.signal(signal.SIGINT, previous)


def serve_worker(conn: Connection, factory: Callable[[], Any]) -> None:
    """The loop of a worker process: build the worker, say ("ready", None), then for each
    ("call", method, args, weight slot, version, shared weights or None) keep the slot's shared weights
    when they come (once), load them if that version is new to the worker, call the method and send
    ("ok", result), until ("close",). An exception goes back as ("error", traceback) and ends the
    process; a vanished learner (closed pipe) ends it quietly. One intra-op thread: the workers are the
    parallelism."""
    torch.set_num_threads(1)
    worker, loaded, shared = None, None, {}
    try:
        worker = factory()
        conn.send(("ready", None))
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            _, method, args, slot, version, handed = message
            if handed is not None:
                shared[slot] = handed
            if version is not None and version != loaded:
                worker.set_weights(shared[slot])
                loaded = version
            conn.send(("ok", getattr(worker, method)(*args)))
    except (KeyboardInterrupt, EOFError, ConnectionError):  # ConnectionError: a learner that vanished
        pass
    except Exception:
        with contextlib.suppress(OSError):  # the learner may be gone too
            conn.send(("error", traceback.format_exc()))
    finally:
        if worker is not None:
            worker.close()


def receive_reply(
    conn: Connection, process, expected: str, timeout: float, lost: type[Exception], timeout_option: str
):
    """The payload of a worker process's next ("kind", payload) reply; `lost` (with the reason: hung past
    timeout, died, or raised, with its traceback) when there is none to be had."""
    try:
        if not conn.poll(timeout):
            raise lost(f"hung (no reply within {timeout:g}s, {timeout_option})")
        kind, payload = conn.recv()
    except (EOFError, ConnectionResetError, BrokenPipeError, OSError):
        raise lost(f"died (exit code {process.exitcode})") from None
    if kind == "error":
        raise lost(f"raised:\n{payload}")
    assert kind == expected, (kind, expected)
    return payload
