"""The Ray backend against a real Ray head on 127.0.0.1: the same data as local workers, replacement of
a killed actor, and the training command end to end."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.networks import ActorCritic
from envs import probe_spaces
from training.executors import InProcessExecutor

# Not importorskip: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, and the executor sets
# it (for loopback addresses) before importing Ray; importing it here first would defeat that.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
# A head on loopback with Ray's default token authentication; the executor sets the same on its side.
RAY_ENV = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    port = _free_port()
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    started = subprocess.run(cmd, env=RAY_ENV, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-3000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([RAY, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120)


def _executors(address):
    from training.ray_executor import RayExecutor

    obs_space, act_space = probe_spaces("CartPole-v1")
    torch.manual_seed(0)
    agent = ActorCritic(obs_space, act_space)
    args = ("CartPole-v1", obs_space, act_space, agent, 4, 2, 64, 3)
    return agent, InProcessExecutor(*args), RayExecutor(*args, worker_timeout=60, address=address)


def test_ray_actors_give_the_same_data_as_local_workers(ray_head):
    agent, local, remote = _executors(ray_head)
    with local, remote:
        for version in range(3):
            a, b = local.collect(), remote.collect()
            assert b.obs["obs"].shape == (64, 4, 4) and b.policy_version == version
            for name in ("actions", "log_probs", "values", "rewards", "terminated", "truncated",
                         "bootstrap_values", "last_values"):  # fmt: skip
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
            np.testing.assert_array_equal(a.obs["obs"], b.obs["obs"])
            np.testing.assert_array_equal(a.episode_returns, b.episode_returns)
            with torch.no_grad():  # new weights must reach the actors
                agent.policy_head.linear.weight.add_(0.05)
            local.set_weights(agent.state_dict(), version + 1)
            remote.set_weights(agent.state_dict(), version + 1)


def test_a_killed_actor_is_replaced_and_counted(ray_head):
    _, local, remote = _executors(ray_head)
    with local, remote:
        remote.collect()
        os.kill(remote.pids[0], signal.SIGKILL)  # the actor's process, on this machine
        rollout = remote.collect()
        assert rollout.num_steps == 256 and remote.worker_restarts == 1 and remote.dropped_episodes == 2
        remote.collect()


def test_train_ppo_runs_on_the_ray_cluster(ray_head, tmp_path):
    cmd = [sys.executable, str(ROOT / "launch" / "train_ppo.py"), "--backend", "ray", "--ray-address", ray_head,
           "--num-workers", "2", "--total-timesteps", "2048", "--runs-dir", str(tmp_path), "--no-progress",
           "--eval-every", "0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished CartPole-v1 after 2048 env steps" in proc.stdout
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "checkpoints").is_dir()


def test_ray_backend_without_ray_names_the_extra(monkeypatch):
    import builtins

    from training.config import ConfigError
    from training.ray_executor import _import_ray

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "ray" else real_import(name, *a, **k))  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        _import_ray(on_loopback=False, joining=False)


def test_ray_address_needs_the_ray_backend():
    from training.config import ConfigError, PPOConfig, validate

    with pytest.raises(ConfigError, match="--ray-address is for --backend ray"):
        validate(PPOConfig(backend="inprocess", ray_address="auto"))


def test_ray_async_collection_lags_one_version(ray_head):
    from test_rollout import _check_async_versions

    from training.ray_executor import RayExecutor

    obs_space, act_space = probe_spaces("CartPole-v1")
    torch.manual_seed(0)
    agent = ActorCritic(obs_space, act_space)
    args = ("CartPole-v1", obs_space, act_space, agent, 4, 2, 64, 3)
    with RayExecutor(*args, worker_timeout=60, address=ray_head, asynchronous=True) as ex:
        _check_async_versions(ex, agent)


def test_muzero_self_play_as_ray_actors_plays_the_same_games(ray_head):
    from training.muzero_trainer import MuZeroConfig, build_model
    from training.self_play import RaySelfPlay, SelfPlayWorker

    cfg = MuZeroConfig(num_envs=2, num_simulations=4)
    torch.manual_seed(3)
    weights = build_model(cfg).state_dict()
    locals_ = [SelfPlayWorker(cfg, build_model(cfg), 1, seed) for seed in (20, 21)]
    remote = RaySelfPlay(cfg, [(1, 20), (1, 21)], ray_address=ray_head)
    try:
        remote.set_weights(weights)
        for w in locals_:
            w.set_weights(weights)
        played = remote.play(120, 1.0)
        expected = [g for w in locals_ for g in w.play(120, 1.0).games]
        assert played.steps == 240 and len(played.games) == len(expected) > 0
        for a, b in zip(played.games, expected, strict=True):
            np.testing.assert_array_equal(a.actions, b.actions)
            np.testing.assert_array_equal(a.observations, b.observations)
    finally:
        remote.close()
        for w in locals_:
            w.close()
