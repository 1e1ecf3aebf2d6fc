"""The run folder's safety: one training process at a time, clean timelines on resume, checkpoints that
fail to write leave no partial file and one line."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.checkpoint import CheckpointWriteError, list_checkpoints, save_best_checkpoint, save_checkpoint
from training.cli import EXIT_BACKSTOP_SECONDS
from training.interrupts import Interrupted
from training.run_folder import RunFolderInUse, RunLock, start_timeline

ROOT = Path(__file__).resolve().parents[1]


def test_a_locked_run_folder_is_refused_naming_the_holder(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunFolderInUse, match=rf"process {os.getpid()} is training in it now"):
        RunLock(tmp_path)
    RunLock(tmp_path).release()  # free again once released


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from training.run_folder import RunLock; "
                               f"RunLock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderInUse, match=rf"process {holder.pid} "):
        RunLock(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    RunLock(tmp_path).release()


def _payload(step: int) -> dict:
    return {"global_step": step, "x": torch.full((2,), float(step))}


def test_resuming_from_an_older_checkpoint_moves_the_abandoned_timeline_aside(tmp_path):
    for step in (100, 200, 300, 400):
        save_checkpoint(tmp_path, _payload(step), step, keep=3)
    save_best_checkpoint(tmp_path, _payload(300))
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step_{s:012d}.pt" for s in (200, 300, 400)]

    aside = start_timeline(tmp_path, 200)
    assert aside is not None and aside.name.startswith("abandoned_")
    assert sorted(p.name for p in aside.iterdir()) == ["best.pt", "step_000000000300.pt", "step_000000000400.pt"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000000200.pt"]
    # The new timeline's checkpoints are kept, however few are kept and whatever the old names were.
    new = save_checkpoint(tmp_path, _payload(264), 264, keep=1)
    assert list_checkpoints(tmp_path) == [new]
    assert start_timeline(tmp_path, 264) is None  # nothing newer: nothing moves


def test_resuming_from_best_keeps_best(tmp_path):
    for step in (100, 200):
        save_checkpoint(tmp_path, _payload(step), step)
    save_best_checkpoint(tmp_path, _payload(100))
    aside = start_timeline(tmp_path, 100)
    assert [p.name for p in aside.iterdir()] == ["step_000000000200.pt"]
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


def test_a_full_disk_leaves_no_partial_file_and_names_the_last_good_checkpoint(tmp_path):
    good = save_checkpoint(tmp_path, _payload(100), 100)
    # The temp file is this process's own name; pointing it at /dev/full makes the kernel's ENOSPC real.
    tmp = tmp_path / "checkpoints" / f".step_{200:012d}.pt.{os.getpid()}.tmp"
    tmp.symlink_to("/dev/full")
    with pytest.raises(CheckpointWriteError) as error:
        save_checkpoint(tmp_path, _payload(200), 200)
    message = str(error.value)
    assert "No space left on device" in message and f"the last good checkpoint is {good}" in message
    assert "\n" not in message
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [good.name]


def test_interrupted_exits_as_the_shell_expects():
    assert Interrupted(signal.SIGINT).exit_code == 130 and Interrupted(signal.SIGTERM).exit_code == 143
    assert isinstance(Interrupted(), KeyboardInterrupt)


# The training commands, end to end: real signals to the process group, a second process on the same
# folder, flags given with --resume, a crash in the loop.

TRAIN_PPO = [sys.executable, str(ROOT / "launch" / "train_ppo.py")]
TRAIN_MUZERO = [sys.executable, str(ROOT / "launch" / "train_muzero.py")]
LONG_PPO = ["--total-timesteps", "10000000", "--checkpoint-every", "2048", "--no-stop-when-solved", "--no-progress",
            "--eval-episodes", "0"]  # fmt: skip
LONG_MUZERO = ["--total-timesteps", "1000000", "--checkpoint-every", "64", "--no-stop-when-solved", "--no-progress",
               "--eval-every", "0", "--warmup-steps", "64"]  # fmt: skip


def _start(cmd: list[str]) -> subprocess.Popen:
    # A session of its own, so that a signal to its process group reaches it and its workers only.
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def _wait_for_checkpoint(runs: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(runs.glob("*/checkpoints/step_*.pt"))
        if found:
            return found[0].parent.parent
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize(
    ("command", "extra", "signum"),
    [
        (TRAIN_PPO, [*LONG_PPO, "--backend", "inprocess"], signal.SIGTERM),
        (TRAIN_PPO, [*LONG_PPO, "--backend", "multiprocess", "--num-workers", "2"], signal.SIGTERM),
        (TRAIN_PPO, [*LONG_PPO, "--backend", "inprocess"], signal.SIGINT),
        (TRAIN_MUZERO, LONG_MUZERO, signal.SIGTERM),
        (TRAIN_MUZERO, [*LONG_MUZERO, "--backend", "multiprocess", "--num-workers", "2"], signal.SIGTERM),
    ],
    ids=["ppo-inprocess-term", "ppo-processes-term", "ppo-inprocess-int", "muzero-inprocess-term", "muzero-processes-term"],
)  # fmt: skip
def test_a_signal_to_the_process_group_stops_with_a_checkpoint_and_one_line(tmp_path, command, extra, signum):
    proc = _start([*command, "--runs-dir", str(tmp_path), *extra])
    run_dir = _wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGUSR1)  # prints the learner's stacks and goes on
    time.sleep(0.5)
    os.killpg(proc.pid, signum)
    native = ""
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # Seen twice in a loaded full suite (ppo-inprocess-int, muzero-inprocess-term): the one line was
        # printed and the process did not end, the last time in the interpreter's final garbage collection
        # with no Python frame. Its C stacks (gdb, while it still waits) say where; it still has until 120 s
        # to end as it should, and training.cli.exit_process's timers end it before that.
        native = f"\nC stacks 30 s after the signal:\n{_native_stacks(proc.pid)[-8000:]}"
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            pytest.fail(f"still running 120 s after {signal.Signals(signum).name}; stderr and stacks:\n"
                        f"{proc.communicate()[1][-6000:]}{native}")
    assert proc.returncode == 128 + signum, err[-3000:] + native
    lines = [line for line in err.splitlines() if line.strip()]
    script = Path(command[1]).name
    expected = (rf"interrupted \({signal.Signals(signum).name}\): checkpoint (\S+) written; "
                rf"continue with: python launch/{script} --resume {run_dir}$")  # fmt: skip
    assert re.fullmatch(expected, lines[-1]), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert re.search(r"^Current thread 0x[0-9a-f]+ \(most recent call first\):$", err, re.M), err[-3000:]
    written = Path(re.fullmatch(expected, lines[-1]).group(1))
    assert written.is_file() and written == sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def _native_stacks(pid: int) -> str:
    """Every thread's C stack of a live process, from gdb where this machine has it."""
    if shutil.which("gdb") is None:
        return "(no gdb on this machine)"
    try:
        out = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "(gdb did not answer in 60 s)"
    return out.stdout + out.stderr


def _as_numba_reports(cause: BaseException, depth: int = 1) -> SystemError:
    """`cause` as numba's dispatcher hands it on: `depth` SystemErrors ("returned a result with an exception
    set"), each caused by the one inside it."""
    error = cause
    for _ in range(depth):
        wrapper = SystemError("CPUDispatcher(<function policy_step>) returned a result with an exception set")
        wrapper.__cause__ = error
        error = wrapper
    return error


def test_a_stop_raised_inside_compiled_code_is_still_a_stop(tmp_path):
    """Seen in CI: SIGTERM landed while numba's policy_step ran, and the loop got a SystemError caused by the
    stop; it was taken for a crash (a traceback, no stop line). It is a stop: checkpoint, then Interrupted."""
    import signal as signals

    from training.run_folder import loop_exit

    saved = tmp_path / "step_1.pt"
    error = _as_numba_reports(Interrupted(signals.SIGTERM))
    raised = loop_exit(error, tmp_path, 1, lambda: saved, consistent=True, last_checkpoint=None)
    assert isinstance(raised, Interrupted) and raised.signum == signals.SIGTERM
    assert raised.checkpoint == saved and raised.run_dir == tmp_path
    # Seen in CI next: SIGINT landed in `_numba_unpickle`, a Python helper numba's compiled code calls, and the
    # stop came wrapped twice, a SystemError caused by a SystemError caused by the stop.
    error = _as_numba_reports(Interrupted(signals.SIGINT), depth=2)
    raised = loop_exit(error, tmp_path, 1, lambda: saved, consistent=True, last_checkpoint=None)
    assert isinstance(raised, Interrupted) and raised.signum == signals.SIGINT and raised.checkpoint == saved
    # Any other SystemError stays the error it is, alone or caused by another error.
    other = SystemError("something else")
    assert loop_exit(other, tmp_path, 1, lambda: saved, consistent=False, last_checkpoint=None) is other
    bug = _as_numba_reports(ValueError("a real bug"))
    assert loop_exit(bug, tmp_path, 1, lambda: saved, consistent=False, last_checkpoint=None) is bug


def test_a_command_stopped_inside_compiled_code_ends_with_its_stop_line(capsys):
    """evaluate.py and watch.py act through the same numba kernels outside any training loop: a stop that
    reaches run_cli wrapped in SystemErrors still ends the command with the stop's line and code; a
    SystemError with no stop behind it is raised as it is."""
    import signal as signals

    from training.cli import run_cli

    def stopped_in_compiled_code() -> int:
        raise _as_numba_reports(Interrupted(signals.SIGTERM), depth=2)

    assert run_cli(stopped_in_compiled_code) == 143
    assert capsys.readouterr().err.strip() == "interrupted (SIGTERM)"

    def broken() -> int:
        raise SystemError("something else")

    with pytest.raises(SystemError, match="something else"):
        run_cli(broken)


def test_a_command_whose_shutdown_hangs_prints_its_stacks_and_ends():
    """The launch scripts end through exit_process: a shutdown that hangs (an exit handler that waits
    forever here) prints every thread's stack and ends with code 1; one that does not keeps its code."""
    hangs = ("import atexit, time\nfrom training.cli import exit_process\n"
             "def waits_forever_at_exit():\n    time.sleep(600)\n"
             "atexit.register(waits_forever_at_exit)\nexit_process(130, timeout=1.0)\n")  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", hangs], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and time.monotonic() - start < 60, proc.stderr
    assert "Timeout (0:00:01)!" in proc.stderr and "in waits_forever_at_exit" in proc.stderr, proc.stderr
    # Where the watchdog thread does not fire either, the kernel's timer ends the process (SIGALRM).
    no_watchdog = hangs.replace("    time.sleep(600)", "    faulthandler.cancel_dump_traceback_later()\n    time.sleep(600)")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "import faulthandler\n" + no_watchdog], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGALRM and "Timeout" not in proc.stderr, proc.stderr
    assert EXIT_BACKSTOP_SECONDS <= time.monotonic() - start < 60, time.monotonic() - start
    clean = "from training.cli import exit_process\nexit_process(130, timeout=30.0)\n"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", clean], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and proc.stderr == "" and time.monotonic() - start < 25, proc.stderr


def _short_ppo_run(runs: Path, steps: int = 2048, env: tuple[str, ...] = ()) -> Path:
    done = subprocess.run([*TRAIN_PPO, *env, "--runs-dir", str(runs), "--total-timesteps", str(steps), "--no-progress",
                           "--eval-episodes", "0", "--no-stop-when-solved", "--checkpoint-every", "2048"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = runs.iterdir()
    return run_dir


def test_resume_extends_a_run_and_refuses_flags_that_would_change_it(tmp_path):
    run_dir = _short_ppo_run(tmp_path, env=("--env-id", "Acrobot-v1", "--preset", "cleanrl"))
    refused = subprocess.run([*TRAIN_PPO, "--resume", str(run_dir), "--learning-rate", "0.1"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--learning-rate with --resume" in refused.stderr and "--total-timesteps" in refused.stderr
    extended = subprocess.run([*TRAIN_PPO, "--resume", str(run_dir), "--total-timesteps", "4096", "--no-progress"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "finished Acrobot-v1 after 4096 env steps" in extended.stdout  # the run's env, not the flag's default
    assert torch.load(sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1], weights_only=True)["global_step"] == 4096
    # The points logged at the checkpoint's own step belong to it: TensorBoard's loader keeps them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("charts/SPS")]
    assert 2048 in steps and steps == sorted(steps) and steps[-1] == 4096


def test_a_second_process_on_a_training_run_folder_is_refused(tmp_path):
    proc = _start([*TRAIN_PPO, "--runs-dir", str(tmp_path), *LONG_PPO])
    try:
        run_dir = _wait_for_checkpoint(tmp_path, proc)
        second = subprocess.run([*TRAIN_PPO, "--resume", str(run_dir), "--no-progress"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        assert second.stderr == f"error: {run_dir} is in use: process {proc.pid} is training in it now; wait for " \
                                "it to end (or stop it), or start a new run\n"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_resuming_from_best_moves_the_newer_checkpoints_aside(tmp_path):
    run_dir = _short_ppo_run(tmp_path, steps=8192)
    checkpoints = run_dir / "checkpoints"
    first = sorted(checkpoints.glob("step_*.pt"))[0]
    newer = sorted(p.name for p in checkpoints.glob("step_*.pt"))[1:]
    assert newer
    resumed = subprocess.run([*TRAIN_PPO, "--resume", str(first), "--no-progress"], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (aside,) = checkpoints.glob("abandoned_*")
    assert sorted(p.name for p in aside.iterdir()) == newer and "abandoned timeline" in resumed.stderr
    assert "step_000000008192.pt" in [p.name for p in checkpoints.glob("step_*.pt")]  # the new timeline's end


def test_a_crash_in_the_loop_saves_the_state_before_it(tmp_path, capsys):
    """An env that raises during periodic evaluation (training envs are rebuilt; evaluation's are not):
    the state between two updates is saved and named before the error goes on up."""
    import dataclasses

    from training.ppo.config import PPOConfig
    from training.ppo.train import train

    cfg = dataclasses.replace(PPOConfig(env_id="tests/EvaluationCrashingEnv-v0"), runs_dir=str(tmp_path), num_envs=2,
                              num_steps=64, total_timesteps=4096, eval_every=512, eval_episodes=2, progress=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="the game crashed"):
        train(cfg)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    m = re.fullmatch(r"crashed at env step (\d+): the state before it is saved in (\S+); continue with --resume "
                     r"(\S+) \(the traceback follows\)", line)  # fmt: skip
    assert m, line
    assert torch.load(m.group(2), weights_only=True)["global_step"] == int(m.group(1)) == 512


def test_printed_commands_are_shell_quoted(tmp_path):
    from training.cli import run_footer

    run_dir = tmp_path / "my runs" / "CartPole-v1__ppo__1__1"
    footer = run_footer(run_dir, run_dir / "checkpoints" / "step_1.pt", "train_ppo.py")
    assert f"python launch/train_ppo.py --resume '{run_dir}'" in footer
    assert f"python launch/watch.py '{run_dir}'" in footer and f"--logdir '{run_dir.parent}'" in footer


def _run_command(module_name: str, argv: list[str], capsys) -> tuple[int, str]:
    import importlib

    from training.cli import run_cli

    sys.path.insert(0, str(ROOT / "launch"))
    try:
        main = importlib.import_module(module_name).main
    finally:
        sys.path.pop(0)
    code = run_cli(lambda: main(argv))
    return code, capsys.readouterr().err


HUNG = (r"stopped: {what} made no progress in 1s \(an env whose step hangs\?\): checkpoint (\S+) written; "
        r"continue with: python launch/\S+ --resume \S+")  # fmt: skip


@pytest.mark.parametrize(
    ("module_name", "argv", "what"),
    [
        ("train_ppo", ["--env-id", "tests/HangingEnv-v0", "--num-envs", "2", "--num-steps", "16",
                       "--backend", "inprocess", "--eval-episodes", "0"],
         "collecting a rollout of tests/HangingEnv-v0 in this process"),
        ("train_ppo", ["--env-id", "tests/HangingInEvaluationEnv-v0", "--num-envs", "2", "--num-steps", "16",
                       "--backend", "inprocess", "--eval-every", "64", "--eval-episodes", "1"],
         "evaluating on tests/HangingInEvaluationEnv-v0"),
        ("train_muzero", ["--env-id", "tests/HangingEnv-v0", "--num-envs", "2", "--num-simulations", "4",
                          "--eval-every", "0"], "self-play on tests/HangingEnv-v0"),
    ],
    ids=["ppo-rollout", "ppo-evaluation", "muzero-self-play"],
)  # fmt: skip
def test_an_env_whose_step_hangs_stops_the_run_with_a_checkpoint_and_one_line(tmp_path, capsys, module_name, argv, what):
    start = time.monotonic()
    code, err = _run_command(module_name, [*argv, "--runs-dir", str(tmp_path), "--worker-timeout", "1",
                                           "--total-timesteps", "100000", "--no-progress"], capsys)  # fmt: skip
    assert code == 1, err[-3000:]
    line = err.strip().splitlines()[-1]
    m = re.fullmatch(HUNG.format(what=re.escape(what)), line)
    assert m and Path(m.group(1)).is_file(), err[-3000:]
    assert time.monotonic() - start < 60


def test_a_killed_learner_leaves_its_workers_to_end_quietly(tmp_path):
    proc = _start([*TRAIN_PPO, "--runs-dir", str(tmp_path), *LONG_PPO, "--backend", "multiprocess", "--num-workers", "2"])
    _wait_for_checkpoint(tmp_path, proc)
    os.kill(proc.pid, signal.SIGKILL)  # the learner alone; its workers find the pipe closed
    _, err = proc.communicate(timeout=60)  # returns once the workers, which share stderr, have ended
    assert "Traceback" not in err and "Error" not in err, err[-3000:]


def test_ctrl_c_while_workers_start_prints_one_line(tmp_path):
    proc = _start([*TRAIN_PPO, "--runs-dir", str(tmp_path), *LONG_PPO, "--backend", "multiprocess", "--num-workers", "2"])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("*/provenance.json")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the run folder exists: the workers are being started now
    # Past the instants in which the learner starts each process (it ignores SIGINT for those, so that the
    # worker inherits the ignoring: a Ctrl-C within them is lost) and well before the workers are ready.
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert re.fullmatch(r"interrupted \(SIGINT\)(: checkpoint \S+ written; continue with: .*)?", lines[-1]), err[-3000:]
