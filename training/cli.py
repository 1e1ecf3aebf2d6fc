"""What every launch script shares: bad input becomes one clear line on stderr and exit code 2."""

from __future__ import annotations

import faulthandler
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from envs.factory import EnvSpecError
from envs.sc2 import SC2NotFoundError, SC2OptionsError
from envs.sc2_compat import SC2NotInstalledError
from training.checkpoint import CheckpointError
from training.errors import ConfigError, TrainingDiverged
from training.interrupts import EnvHung, Interrupted, stop_inside_compiled_code, stop_on_signals

USER_ERRORS = (EnvSpecError, ConfigError, CheckpointError, SC2NotFoundError, SC2NotInstalledError, SC2OptionsError)


def run_cli(main: Callable[[], int], script: str | None = None) -> int:
    """Bad input exits 2 and a run that had to stop (training diverged) exits 1, each with one line;
    SIGINT and SIGTERM exit 130 and 143 with one line naming the checkpoint written and the resume command
    (`python launch/SCRIPT --resume RUN`; SCRIPT is the running one unless `script` names another).
    SIGUSR1 prints every thread's Python stack to stderr and goes on: `kill -USR1 PID` shows where a run
    that seems stuck is."""
    previous = stop_on_signals()
    # The process's own stderr (fd 2), not sys.stderr, which a caller may have swapped for an object with
    # no file descriptor (pytest's capture does).
    if hasattr(signal, "SIGUSR1") and sys.__stderr__ is not None:
        faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    try:
        return main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemError) as e:
        # Outside a training loop (evaluate.py, watch.py) a stop raised in compiled code arrives wrapped too.
        caught = e if isinstance(e, KeyboardInterrupt) else stop_inside_compiled_code(e)
        if caught is None:
            raise
        stop = caught if isinstance(caught, Interrupted) else Interrupted()
        print(f"\n{interruption_line(stop, script)}", file=sys.stderr)
        return stop.exit_code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# How long the interpreter's own shutdown may take after a command's work ended and was saved.
EXIT_TIMEOUT_SECONDS = 60.0
# How much longer the kernel's timer waits before it ends a shutdown that faulthandler's watchdog did not.
EXIT_BACKSTOP_SECONDS = 5.0


def exit_process(code: int, timeout: float = EXIT_TIMEOUT_SECONDS) -> NoReturn:
    """sys.exit(code) for a launch script, with the interpreter's shutdown bounded: if joining threads and
    running exit handlers takes longer than `timeout`, every thread's stack is printed (header "Timeout")
    and the process ends with code 1 instead of hanging. Seen once: a run interrupted by SIGINT printed its
    line, its checkpoint written, and did not exit for minutes. faulthandler's watchdog is a C thread, so it
    fires even where the shutdown no longer runs Python threads.

    Should that thread not fire either, the kernel ends the process EXIT_BACKSTOP_SECONDS later: SIGALRM
    from a real-time timer, with its default action (the process is killed by SIGALRM: 142 in a shell).
    Seen once in CI (2026-12-07): a stopped run stuck in the interpreter's last garbage collection (one
    thread left, no Python frame) for over two minutes, with no "Timeout" printed at 60 s. A timer needs
    no thread of the process to run."""
    if sys.__stderr__ is not None:
        faulthandler.dump_traceback_later(timeout, exit=True, file=sys.__stderr__)
    if hasattr(signal, "setitimer"):
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, timeout + EXIT_BACKSTOP_SECONDS)
    sys.exit(code)


def run_in_child(script: str, work: Callable[..., None], *args: object) -> None:
    """The body of a process that trains one run for a parent (benchmark.py's runs): SIGINT and SIGTERM
    (the parent passes its own stop on, training.interrupts.children_stop_too) save the run's checkpoint
    and end the child with the one line, naming `script` (train_ppo.py, train_muzero.py) to resume it."""

    def body() -> int:
        work(*args)
        return 0

    # run_cli installs the stop handlers: a spawned child starts with the default ones, and SIGTERM would
    # end it unsaved.
    code = run_cli(body, script)
    if code:
        sys.exit(code)


def interruption_line(stop: Interrupted, script: str | None = None) -> str:
    """What a stopped command says: the signal, and the checkpoint with the command that resumes it."""
    name = signal.Signals(stop.signum).name
    what = (f"stopped: {stop.what} made no progress in {stop.timeout:g}s (an env whose step hangs?)"
            if isinstance(stop, EnvHung) else f"interrupted ({name})")  # fmt: skip
    if stop.run_dir is None or stop.checkpoint is None:
        return what
    resume = shlex.join(["python", f"launch/{script or Path(sys.argv[0]).name}", "--resume", str(stop.run_dir)])
    return f"{what}: checkpoint {stop.checkpoint} written; continue with: {resume}"


def run_footer(run_dir: Path, checkpoint: Path | None, script: str) -> str:
    """The lines a training command ends with: where the run is and the commands to use it next."""
    quoted = shlex.quote(str(run_dir))  # the commands are for pasting into a shell
    return (
        f"  run folder:  {run_dir}\n"
        f"  TensorBoard: tensorboard --logdir {shlex.quote(str(run_dir.parent))}\n"
        f"  checkpoint:  {checkpoint}\n"
        f"  watch:       python launch/watch.py {quoted}\n"
        f"  resume:      python launch/{script} --resume {quoted}"
    )
