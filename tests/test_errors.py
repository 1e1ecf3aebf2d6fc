"""Bad input: one clear line on stderr, exit code 2, before any work starts."""

import builtins
import sys
from pathlib import Path

import pytest

from envs import EnvSpecError, check_env_id
from envs.factory import make_env
from training.cli import run_cli
from training.config import ConfigError, PPOConfig, validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
import train_ppo  # noqa: E402


def _cli_error(capsys, *argv: str) -> str:
    code = run_cli(lambda: train_ppo.main(list(argv)))
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
