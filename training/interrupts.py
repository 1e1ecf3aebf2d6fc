"""What stops a run from outside its loop: SIGINT and SIGTERM, and a watchdog for work done in the
learner's own process. Each raises `Interrupted` in the main thread, so the loop saves a checkpoint and the
command ends with one line.

SIGTERM (a scheduler, `docker stop`, a pre-empted VM) is handled like Ctrl-C. The watchdog: an env whose
step never returns would otherwise hang a run forever (worker processes and Ray actors have
--worker-timeout for that).

The loops that step envs (rollout workers, self-play workers, evaluation) call `beat()` after each step or
move: a module-level timestamp, cheap enough for every step. While a run is `armed`, a daemon thread
checks it; after `timeout` seconds without a beat it raises `EnvHung` in the main thread, as a signal
would (a SIGINT to the main thread, as Ctrl-C), so the loop saves its checkpoint and the command ends with one line. A
step stuck inside C code never lets the main thread take that exception: after a grace period the
thread says so in one line, naming the last checkpoint, and ends the process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal (SIGINT or SIGTERM). The training loop saves a checkpoint and raises
    it again with the run folder and that checkpoint filled in, for the command's one line."""

    def __init__(self, signum: int = signal.SIGINT, run_dir: Path | None = None, checkpoint: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.run_dir, self.checkpoint = signum, run_dir, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # The watchdog's alarm arrives as SIGINT; it raises its own EnvHung.
    raise take_fired() or Interrupted(signum)


def stop_on_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM raise Interrupted in the main thread; returns the handlers they had."""
    return {signum: signal.signal(signum, _raise_interrupted) for signum in (signal.SIGINT, signal.SIGTERM)}


def stop_inside_compiled_code(error: BaseException) -> KeyboardInterrupt | None:
    """The stop behind `error` when a signal's stop was raised while compiled code ran: numba's dispatcher
    (the rollout's act) reports it as a SystemError ("returned a result with an exception set") caused by
    the stop, and when the signal lands in a Python helper numba calls back (`_numba_unpickle`), as a
    SystemError caused by such a SystemError. None when `error` is anything else."""
    while isinstance(error, SystemError) and error.__cause__ is not None:
        error = error.__cause__
    return error if isinstance(error, KeyboardInterrupt) else None


_last_beat = time.monotonic()
# How long a main thread stuck in C code gets to take the exception before the process is ended.
GRACE_SECONDS = 30.0


def beat() -> None:
    """Progress: an env step or a move was made."""
    global _last_beat
    _last_beat = time.monotonic()


class EnvHung(Interrupted):
    """Nothing in this process made progress for the watchdog's timeout (an env's step that hangs)."""

    def __init__(self, what: str, timeout: float):
        super().__init__(signal.SIGTERM)
        self.what, self.timeout = what, timeout

    @property
    def exit_code(self) -> int:
        return 1


class _Watchdog:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watching: tuple[str, float] | None = None  # (what, timeout) while armed
        self.fired: EnvHung | None = None
        self.last_checkpoint: str | None = None
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        while True:
            time.sleep(0.2)
            with self.lock:
                watching, fired = self.watching, self.fired
            if watching is None:
                continue
            what, timeout = watching
            idle = time.monotonic() - _last_beat
            if fired is None and idle > timeout:
                with self.lock:
                    self.fired = EnvHung(what, timeout)
                # A real SIGINT to the main thread, as Ctrl-C would send (it also wakes a blocking call such
                # as sleep, which _thread.interrupt_main would not): our SIGINT handler raises self.fired,
                # Python's default one a KeyboardInterrupt that the training loop exchanges for it.
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            elif fired is not None and idle > timeout + GRACE_SECONDS:
                print(f"stopped: {what} made no progress in {timeout:g}s and did not return to Python to stop "
                      f"cleanly; the last checkpoint is {self.last_checkpoint or 'none'}", file=sys.stderr, flush=True)  # fmt: skip
                os._exit(1)


_WATCHDOG = _Watchdog()


def take_fired() -> EnvHung | None:
    """The EnvHung the watchdog has just raised the alarm for (once), for the signal handler."""
    with _WATCHDOG.lock:
        fired, _WATCHDOG.fired = _WATCHDOG.fired, None
        if fired is not None:
            _WATCHDOG.watching = None
    return fired


@contextlib.contextmanager
def armed(what: str, timeout: float) -> Iterator[None]:
    """Watch the enclosed work: `timeout` seconds without a beat() count as hung."""
    if _WATCHDOG.thread is None:
        _WATCHDOG.thread = threading.Thread(target=_WATCHDOG.run, name="watchdog", daemon=True)
        _WATCHDOG.thread.start()
    beat()
    with _WATCHDOG.lock:
        previous, _WATCHDOG.watching = _WATCHDOG.watching, (what, timeout)
    try:
        yield
    finally:
        with _WATCHDOG.lock:
            _WATCHDOG.watching = previous


def note_checkpoint(path: object) -> None:
    """The last checkpoint written, for the line of a hang that cannot be stopped cleanly."""
    _WATCHDOG.last_checkpoint = None if path is None else str(path)


@contextlib.contextmanager
def children_stop_too(processes: Callable[[], Iterable[BaseProcess]], timeout: float = 300.0) -> Iterator[None]:
    """A stop of this process (SIGINT, SIGTERM) is its child runs' stop too: the signal is passed on to
    every child still running, each saves its checkpoint and ends, and this process waits up to `timeout`
    seconds for them (then kills what is left) before the stop goes on. Without it `kill PID` of a parent
    that runs trainings in child processes (benchmark.py) printed its line and then waited, at exit, for a
    child that never heard of the stop. `processes` is asked at the stop (the set may change meanwhile)."""
    try:
        yield
    except KeyboardInterrupt as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        alive = [p for p in processes() if p.is_alive()]
        for proc in alive:
            # Another signal while a child saves is held off there (run_folder.interrupted_with_checkpoint).
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
        deadline = time.monotonic() + timeout
        for proc in alive:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        raise
