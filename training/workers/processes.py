"""What worker processes share, whatever they run (PPO's rollout workers, MuZero's self-play workers):
starting one that ignores Ctrl-C, its command loop over a pipe, and reading its replies with a timeout."""

from __future__ import annotations

import contextlib
import signal
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import torch

# Seconds a worker may take to start (a new Python, torch, the envs: StarCraft II takes tens of seconds to
# launch), when --worker-timeout is shorter: a loaded machine must not make start-up look like a hang.
MIN_STARTUP_TIMEOUT = 120.0


# A command handler's return value when the command gets no answer (the learner does not wait for one).
NO_REPLY = object()


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


def serve_commands(
    conn: Connection, start_worker: Callable[[], Any], handlers: Mapping[str, Callable[..., Any]]
) -> None:
    """The loop of a worker process: start the worker, say ("ready", None), then for each message
    (command, *args) call handlers[command](worker, *args) and send ("ok", its result) unless it is
    NO_REPLY, until ("close", ...). An exception goes back as ("error", traceback) and ends the process;
    a vanished learner (closed pipe) ends it quietly. One intra-op thread: the workers are the parallelism."""
    torch.set_num_threads(1)
    worker = None
    try:
        worker = start_worker()
        conn.send(("ready", None))
        while True:
            command, *args = conn.recv()
            if command == "close":
                break
            reply = handlers[command](worker, *args)
            if reply is not NO_REPLY:
                conn.send(("ok", reply))
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
