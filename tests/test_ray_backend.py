"""The Ray backend against a real Ray head on 127.0.0.1: the same data as local workers, replacement of
a killed actor, and the training command end to end."""

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.networks import ActorCritic
from envs import probe_spaces
from training.ppo.executors import InProcessExecutor

# Not importorskip: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, and the executor sets
# it (for loopback addresses) before importing Ray; importing it here first would defeat that.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes of the session `sid` (field 6 of /proc/PID/stat): what a head started in its own
    session has spawned, and nothing else on the machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                pids.append(int(entry.name))
    return pids


def _ray_core_pids(sid: int) -> set[int]:
    """The GCS server and raylet of the head in session `sid`."""
    core = set()
    for pid in _session_pids(sid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() in ("gcs_server", "raylet"):
                core.add(pid)
    return core


@contextlib.contextmanager
def ray_head(home: Path):
    """A Ray head on 127.0.0.1 with token authentication, configured explicitly as Ray documents it: a
    token generated into `home` (a fresh folder, never the user's own ~/.ray), RAY_AUTH_MODE=token for the
    head. Yields (address, the token file, the head's session id). Started with --block in a session of
    its own, it is stopped by ending that one process; whatever of its session is left then is killed.
    No `ray stop`, which would stop every Ray on the machine."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    generated = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                               timeout=120)  # fmt: skip
    assert generated.returncode == 0, generated.stderr[-3000:]
    token = home / ".ray" / "auth_token"
    port = _free_port()
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", "--disable-usage-stats"]  # fmt: skip
    head = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:  # up once its GCS port takes connections and its raylet runs
            assert head.poll() is None, f"ray start --head exited: {head.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the Ray head did not start within 120 s"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0 and len(_ray_core_pids(head.pid)) == 2:
                    break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", token, head.pid
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.monotonic() + 30
        while _session_pids(head.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in _session_pids(head.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.stderr.close()


@pytest.fixture(scope="module", name="ray_head")
def ray_head_fixture(tmp_path_factory):
    """The module's head. The drivers (this process and the commands it runs) get only the token's path:
    the executor must turn token mode on by itself when it finds a token, as `ray start --head` does."""
    with ray_head(tmp_path_factory.mktemp("ray_home")) as (address, token, _), pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_AUTH_MODE", raising=False)  # restored (unset) after the module, whatever the executor set
        mp.delenv("RAY_AUTH_TOKEN", raising=False)
        mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
        yield address


@pytest.mark.slow  # ~40 s: two heads; it guards this file's fixture, whose stop every Ray test here runs
def test_the_suite_stops_only_the_ray_head_it_started(tmp_path):
    """Two heads on the machine: stopping one leaves every process of the other running."""
    with ray_head(tmp_path / "bystander") as (bystander, _, bystander_sid):
        with ray_head(tmp_path / "ours") as (_, _, our_sid):
            assert _session_pids(our_sid)
            core = _ray_core_pids(bystander_sid)
            assert len(core) == 2  # its GCS server and raylet
        assert _session_pids(our_sid) == []
        assert core <= _ray_core_pids(bystander_sid)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", int(bystander.rsplit(":", 1)[1]))) == 0
    assert _session_pids(bystander_sid) == []


def _executors(address, env_id="CartPole-v1", lstm_size=0):
    from training.ppo.ray_executor import RayExecutor

    obs_space, act_space = probe_spaces(env_id)
    torch.manual_seed(0)
    agent = ActorCritic(obs_space, act_space, lstm_size=lstm_size)
    args = (env_id, obs_space, act_space, agent, 4, 2, 64, 3)
    return agent, InProcessExecutor(*args), RayExecutor(*args, worker_timeout=60, address=address)


def test_ray_actors_give_the_same_data_with_a_policy_with_memory(ray_head):
    agent, local, remote = _executors(ray_head, "rlgames/CartPoleNoVel-v1", lstm_size=16)
    with local, remote:
        for version in range(2):
            a, b = local.collect(), remote.collect()
            for name in ("actions", "log_probs", "values", "bootstrap_values", "last_values", "episode_starts",
                         "memory"):  # fmt: skip
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
            assert version == 0 or np.abs(b.memory).max() > 0  # the state carried over to the next rollout
            local.set_weights(agent.state_dict(), version + 1)
            remote.set_weights(agent.state_dict(), version + 1)


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


def test_ray_actors_play_the_same_league_games_as_local_workers(ray_head):
    from test_league import league_rollouts

    local, remote = league_rollouts("inprocess", 2), league_rollouts("ray", 2, ray_head)
    for a, b in zip(local, remote, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


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
           "--eval-episodes", "0"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished CartPole-v1 after 2048 env steps" in proc.stdout
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "checkpoints").is_dir()


def test_train_ppo_starts_and_stops_its_own_ray_on_a_fresh_machine(tmp_path):
    """--backend ray without an address, from an empty home directory (no token anywhere): a Ray of its
    own on loopback, stopped at the end, nothing of it left running."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    cmd = [sys.executable, str(ROOT / "launch" / "train_ppo.py"), "--backend", "ray", "--num-workers", "1",
           "--total-timesteps", "1024", "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--eval-episodes", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**env, "HOME": str(home)}, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        assert "finished CartPole-v1 after 1024 env steps" in out
        deadline = time.monotonic() + 30  # Ray's own processes were in the command's session
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session_pids(proc.pid) == []
    finally:
        for pid in _session_pids(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_ray_backend_without_ray_names_the_extra(monkeypatch):
    import builtins

    from training.errors import ConfigError
    from training.workers.ray_cluster import _import_ray

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "ray" else real_import(name, *a, **k))  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        _import_ray(on_loopback=False, joining=False)


def test_ray_address_needs_the_ray_backend():
    from training.errors import ConfigError
    from training.ppo.config import PPOConfig, validate

    with pytest.raises(ConfigError, match="--ray-address is for --backend ray"):
        validate(PPOConfig(backend="inprocess", ray_address="auto"))


def test_ray_async_collection_lags_one_version(ray_head):
    from test_rollout import _check_async_versions

    from training.ppo.ray_executor import RayExecutor

    obs_space, act_space = probe_spaces("CartPole-v1")
    torch.manual_seed(0)
    agent = ActorCritic(obs_space, act_space)
    args = ("CartPole-v1", obs_space, act_space, agent, 4, 2, 64, 3)
    with RayExecutor(*args, worker_timeout=60, address=ray_head, asynchronous=True) as ex:
        _check_async_versions(ex, agent)


def test_muzero_self_play_as_ray_actors_plays_the_same_games(ray_head):
    from training.muzero.config import MuZeroConfig, build_model
    from training.muzero.self_play import RaySelfPlay, SelfPlayWorker

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


def test_a_killed_self_play_actor_is_replaced_and_counted(ray_head):
    from training.muzero.config import MuZeroConfig, build_model
    from training.muzero.self_play import RaySelfPlay

    cfg = MuZeroConfig(num_envs=2, num_simulations=4)
    remote = RaySelfPlay(cfg, [(1, 20), (1, 21)], ray_address=ray_head, timeout=60)
    try:
        remote.set_weights(build_model(cfg).state_dict())
        remote.play(2, 1.0)
        os.kill(remote.pids[0], signal.SIGKILL)  # the actor's process, on this machine
        played = remote.play(2, 1.0)
        assert played.steps == 4 and played.worker_restarts == 1 and remote.restarts == [1, 0]
        assert remote.play(2, 1.0).worker_restarts == 0
    finally:
        remote.close()
