"""What keeps a run folder's work safe, for every algorithm: one training process at a time (a lock), a
clean timeline when a run resumes from an older checkpoint, and signals that stop a run with a checkpoint.

- The lock is `fcntl.flock` on RUN_DIR/.lock, holding the owner's PID: the kernel drops it when the
  process dies, however it dies, so a killed run never leaves a stale lock behind.
- Resuming from a checkpoint older than the folder's newest (best.pt, or an explicit step file) starts a
  new timeline: the newer files of the abandoned one are moved into checkpoints/abandoned_<time>_<pid>/ (never
  deleted), so the rotation of the new timeline's checkpoints cannot remove what it has just written.
- A stop (SIGINT, SIGTERM, the watchdog: training.interrupts) in the training loop saves a checkpoint
  first, with further signals held off, and the command ends with one line naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from training.checkpoint import BEST_NAME, CHECKPOINT_DIR, CheckpointError, list_checkpoints, step_of
from training.errors import ConfigError, TrainingDiverged
from training.interrupts import Interrupted, stop_inside_compiled_code, take_fired

LOCK_FILE = ".lock"


class RunFolderInUse(CheckpointError):
    """Another process trains in the run folder now."""


class RunLock:
    """An exclusive lock on a run folder for as long as this process trains in it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            raise RunFolderInUse(
                f"{run_dir} is in use: process {holder} is training in it now; wait for it to end (or stop it), "
                "or start a new run"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def start_timeline(run_dir: Path, step: int) -> Path | None:
    """Before a run resumes at env step `step`: move the checkpoints written after it (periodic ones of a
    later step, and best.pt when it came from after it) into checkpoints/abandoned_<time>/. Returns that
    folder, or None when nothing was newer."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    newer = [p for p in list_checkpoints(run_dir) if step_of(p) > step]
    best = folder / BEST_NAME
    if best.is_file():
        with contextlib.suppress(Exception):  # an unreadable best.pt is not this function's to judge
            if torch.load(best, map_location="cpu", weights_only=True).get("global_step", -1) > step:
                newer.append(best)
    if not newer:
        return None
    aside = folder / f"abandoned_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}_{os.getpid()}"
    aside.mkdir()
    for path in newer:
        os.replace(path, aside / path.name)
    print(f"resuming at env step {step}: moved the {len(newer)} newer checkpoint(s) of the abandoned timeline "
          f"into {aside}", file=sys.stderr)  # fmt: skip
    return aside


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, resumed_step: int | None) -> Iterator[None]:
    """Hold the run folder's lock while training in it; a resume at `resumed_step` first moves the
    abandoned timeline's newer checkpoints aside."""
    with RunLock(run_dir):
        if resumed_step is not None:
            start_timeline(run_dir, resumed_step)
        yield


def interrupted_with_checkpoint(stop: KeyboardInterrupt, run_dir: Path | None,
                                checkpoint: Callable[[], Path | None]) -> Interrupted:  # fmt: skip
    """Save a checkpoint after SIGINT or SIGTERM stopped the loop (further signals held off meanwhile, so a
    second Ctrl-C cannot cut the file short) and return the Interrupted to raise, naming it."""
    # A plain KeyboardInterrupt is Ctrl-C under Python's own handler, or the watchdog's alarm.
    stop = stop if isinstance(stop, Interrupted) else take_fired() or Interrupted(signal.SIGINT)
    held = {}
    with contextlib.suppress(ValueError):  # signal handlers can only be set from the main thread
        held = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        path = checkpoint()
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
    stop.run_dir, stop.checkpoint = run_dir, path
    return stop


def crashed_with_checkpoint(run_dir: Path | None, step: int, checkpoint: Callable[[], Path | None] | None,
                            last: Path | None) -> None:  # fmt: skip
    """One line for a crash in the training loop, after saving the state when it is one between two
    updates (`checkpoint` is None when the crash came in the middle of one)."""
    if checkpoint is None:
        saved = f"it came in the middle of an update, so the last good checkpoint is {last or 'none yet'}"
    else:
        try:
            saved = f"the state before it is saved in {checkpoint()}"
        except Exception as e:  # the crash itself is what the user must see next, not this one
            saved = f"saving the state failed too ({str(e).strip()[:200]}); the last good checkpoint is {last}"
    resume = f"; continue with --resume {run_dir}" if run_dir is not None else ""
    print(f"crashed at env step {step}: {saved}{resume} (the traceback follows)", file=sys.stderr)


def loop_exit(error: BaseException, run_dir: Path | None, step: int, checkpoint: Callable[[], Path | None],
              consistent: bool, last_checkpoint: Path | None) -> BaseException:  # fmt: skip
    """What a training loop raises when `error` ends it: a stop (signal, watchdog) after saving a
    checkpoint; a crash between two updates (`consistent`) after saving that state and saying so in one
    line; errors that already say what happened in one line (bad input, a failed checkpoint write, a
    diverged run), as they are."""
    error = stop_inside_compiled_code(error) or error
    if isinstance(error, KeyboardInterrupt):
        stop = interrupted_with_checkpoint(error, run_dir, checkpoint)
        stop.__suppress_context__ = True
        return stop
    if isinstance(error, Exception) and not isinstance(error, CheckpointError | ConfigError | TrainingDiverged):
        crashed_with_checkpoint(run_dir, step, checkpoint if consistent else None, last_checkpoint)
    return error
