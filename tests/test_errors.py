"""Bad input: one clear line on stderr, exit code 2, before any work starts."""

import builtins
import subprocess
import sys
from pathlib import Path

import pytest

from envs import EnvSpecError, check_env_id
from envs.factory import make_env
from training.cli import run_cli
from training.errors import ConfigError
from training.ppo.config import PPOConfig, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
import train_ppo  # noqa: E402


def _cli_error(capsys, *argv: str, command=train_ppo) -> str:
    code = run_cli(lambda: command.main(list(argv)))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_unknown_env_id_suggests_close_matches(capsys):
    err = _cli_error(capsys, "--env-id", "CartPol-v1")
    assert "unknown env id 'CartPol-v1'" in err and "'CartPole-v1'" in err


def test_minibatches_that_do_not_divide_the_batch(capsys):
    err = _cli_error(capsys, "--num-envs", "3", "--num-steps", "10", "--num-minibatches", "4")
    assert "does not split into --num-minibatches 4" in err and "choose one of [1, 2, 3, 5, 6, 10, 15, 30]" in err


def test_more_workers_than_envs(capsys):
    err = _cli_error(capsys, "--num-envs", "2", "--num-workers", "4", "--backend", "multiprocess")
    assert "more than --num-envs 2" in err


def test_unknown_preset(capsys):
    assert "unknown preset 'Pong'" in _cli_error(capsys, "--preset", "Pong")


def test_missing_and_corrupt_checkpoints(capsys, tmp_path):
    assert "no such run folder" in _cli_error(capsys, "--resume", str(tmp_path / "missing"))
    assert "holds no checkpoint" in _cli_error(capsys, "--resume", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_000000000100.pt").write_bytes(b"not a checkpoint")
    assert "is corrupt or unreadable" in _cli_error(capsys, "--resume", str(tmp_path))


def test_missing_extra_names_the_pip_command(monkeypatch):
    real_import = builtins.__import__

    def no_ale(name, *args, **kwargs):
        if name == "ale_py":
            raise ImportError("No module named 'ale_py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ale)
    with pytest.raises(EnvSpecError, match=r"needs the 'atari' extra.*pip install -e '\.\[atari\]'"):
        check_env_id("ALE/Breakout-v5")


def test_missing_box2d_names_the_pip_command(monkeypatch):
    import gymnasium as gym

    def raise_missing(*args, **kwargs):
        raise gym.error.DependencyNotInstalled("Box2D is not installed")

    monkeypatch.setattr(gym, "make", raise_missing)
    with pytest.raises(EnvSpecError, match=r"'box2d' extra.*pip install -e '\.\[box2d\]'"):
        make_env("LunarLander-v3", seed=0)()


def test_validate_collects_every_problem():
    with pytest.raises(ConfigError) as e:
        validate(PPOConfig(num_envs=0, gamma=1.5))
    assert "--num-envs must be > 0" in str(e.value) and "--gamma must lie in [0, 1]" in str(e.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--learning-rate", "nan"], "--learning-rate must be a finite number > 0 (got nan)"),
        (["--learning-rate", "inf"], "--learning-rate must be a finite number > 0 (got inf)"),
        (["--seed", "-1"], "--seed must lie in [0, 2**32 - 1]"),
        (["--device", "bogus"], "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got 'bogus')"),
        (["--torch-threads", "-2"], "--torch-threads must be a finite number >= 0 (got -2)"),
        (["--exp-name", "a/b"], "--exp-name becomes part of the run folder's name"),
        (["--exp-name", ".."], "--exp-name becomes part of the run folder's name"),
        (["--max-grad-norm", "-1"], "--max-grad-norm must be a finite number > 0 (got -1.0)"),
        (["--max-grad-norm", "0"], "--max-grad-norm must be a finite number > 0 (got 0.0)"),
        (["--vf-coef", "-1"], "--vf-coef must be a finite number >= 0 (got -1.0)"),
        (["--target-kl", "-1"], "--target-kl must be a finite number > 0, or left out (got -1.0)"),
        (["--worker-timeout", "nan"], "--worker-timeout must be a finite number > 0 (got nan)"),
        (["--stop-return", "nan"], "--stop-return must be a finite number (got nan)"),
        (["--lstm-size", "0", "--policy-memory", "lstm"], "--lstm-size must be >= 1 (got 0)"),
        (["--grid-filters", "0"], "--grid-filters must be > 0 (got 0)"),
        (["--policy-memory", "lstm", "--num-envs", "6", "--num-minibatches", "4"],
         "each learner's 6 envs must split into --num-minibatches 4; choose one of [1, 2, 3, 6]"),
        (["--env-id", "rlgames/TicTacToe-v0", "--solved-by", "training"], "use --solved-by evaluation"),
        (["--env-id", "rlgames/TicTacToe-v0", "--league.max-snapshots", "0"], "--league.max-snapshots must be >= 1 (got 0)"),
        (["--board-net", "cnn"], "--board-net cnn is for board games"),
        (["--sil-updates", "-1"], "--sil-updates must be a finite number >= 0 (got -1)"),
        (["--sil-batch-size", "0"], "--sil-batch-size must be a finite number > 0 (got 0)"),
        (["--sil-value-coef", "nan"], "--sil-value-coef must be a finite number >= 0 (got nan)"),
        (["--sil-updates", "2", "--policy-memory", "lstm"], "--sil-updates replays single transitions"),
        (["--sil-updates", "2", "--env-id", "rlgames/TicTacToe-v0"], "--sil-updates is for single-player games"),
        (["--sil-updates", "2", "--sil-capacity", "100"], "--sil-capacity 100 is smaller than one --sil-batch-size 512"),
        (["--rnd-coef", "-0.5"], "--rnd-coef must be a finite number >= 0 (got -0.5)"),
        (["--rnd-gamma", "1.5"], "--rnd-gamma must lie in [0, 1] (got 1.5)"),
        (["--rnd-coef", "0.5", "--rnd-update-proportion", "0"], "--rnd-update-proportion must lie in (0, 1] (got 0.0)"),
        (["--rnd-coef", "0.5", "--env-id", "sc2-mock/MoveToBeacon"], "--rnd-coef reads one observation array"),
        (["--anneal-rnd"], "--anneal-rnd decays the exploration bonus, which is off: set --rnd-coef above 0"),
        (["--rnd-coef", "0.5", "--anneal-rnd", "--rnd-anneal-fraction", "0"], "--rnd-anneal-fraction must lie in (0, 1] (got 0.0)"),
        (["--rnd-coef", "0.5", "--rnd-anneal-fraction", "0.5"], "--rnd-anneal-fraction sets how fast --anneal-rnd decays the bonus"),
        # the bonus's ranges are checked with the bonus off too: a typo never passes silently
        (["--rnd-anneal-fraction", "5"], "--rnd-anneal-fraction must lie in (0, 1] (got 5.0)"),
        (["--rnd-update-proportion", "0"], "--rnd-update-proportion must lie in (0, 1] (got 0.0)"),
    ],
)  # fmt: skip
def test_every_flag_is_checked_against_its_range(capsys, argv, expected):
    assert expected in _cli_error(capsys, *argv)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--learning-rate", "-1"], "--learning-rate must be a finite number > 0 (got -1.0)"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0 (got -1.0)"),
        (["--hidden-state", "0"], "--hidden-state must be a finite number > 0 (got 0)"),
        (["--updates-per-step", "-1"], "--updates-per-step must be a finite number > 0 (got -1.0)"),
        (["--seed", "-1"], "--seed must lie in [0, 2**32 - 1]"),
        (["--device", "cpu:x"], "--device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got 'cpu:x')"),
        (["--board-net", "cnn"], "--board-net cnn is for board games"),
        (["--support-bin-width", "0"], "--support-bin-width must be a finite number > 0 (got 0.0)"),
        (["--discount", "0"], "--discount must lie in (0, 1] (got 0.0)"),
        (["--discount", "nan"], "--discount must lie in (0, 1] (got nan)"),
        (["--root-value-mix", "1.5"], "--root-value-mix must lie in [0, 1] (got 1.5)"),
    ],
)  # fmt: skip
def test_every_muzero_flag_is_checked_against_its_range(capsys, argv, expected):
    import train_muzero

    assert expected in _cli_error(capsys, *argv, command=train_muzero)


def test_a_runs_folder_that_is_a_file_or_read_only(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    assert "is a file, not a folder" in _cli_error(capsys, "--runs-dir", str(tmp_path / "file"))
    assert f"{tmp_path / 'file'} is not a folder" in _cli_error(capsys, "--runs-dir", str(tmp_path / "file" / "runs"))
    read_only = tmp_path / "ro"
    read_only.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(read_only)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a read-only file system here (needs root)")
    try:
        err = _cli_error(capsys, "--runs-dir", str(read_only / "runs"))
        assert f"{read_only} cannot be written (read-only or no permission)" in err
    finally:
        subprocess.run(["umount", str(read_only)], check=True)


def test_a_loadable_checkpoint_with_the_wrong_contents_gets_one_line(capsys, short_cartpole_run, tmp_path):
    import shutil

    import torch

    _, result = short_cartpole_run
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run, ignore=shutil.ignore_patterns(".lock"))
    (path,) = sorted((run / "checkpoints").glob("step_*.pt"))[-1:]
    for label, edit in (
        ("missing key", lambda p: p.pop("iteration")),
        ("wrong shape", lambda p: p["learner"]["model"].update(
            {k: torch.zeros(3) for k in list(p["learner"]["model"])[:1]})),
        ("wrong type", lambda p: p.update(global_step="many")),
    ):  # fmt: skip
        payload = torch.load(path, weights_only=True)
        edit(payload)
        for other in (run / "checkpoints").glob("*.pt"):
            other.unlink()
        torch.save(payload, path)
        err = _cli_error(capsys, "--resume", str(path))
        assert "loads, but its contents do not fit the run its config describes" in err, (label, err)


def test_a_checkpoint_that_could_run_code_is_refused_saying_so(tmp_path):
    import os

    import torch

    from training.checkpoint import CheckpointError, load_checkpoint

    class Exploit:
        def __reduce__(self):
            return os.system, ("true",)

    path = tmp_path / "checkpoints" / "step_000000000001.pt"
    path.parent.mkdir()
    torch.save({"format_version": 1, "x": Exploit()}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "loading such a file could run code" in str(e.value) and "weights_only=False" not in str(e.value)
