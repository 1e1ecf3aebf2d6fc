"""MuZero's self-play workers: the same games whichever process plays them, finished games only, and the
training command with workers in processes."""

import dataclasses
import os
import signal

import numpy as np
import pytest
import torch

from agents.muzero.loss import make_targets
from training.muzero.config import MuZeroConfig, build_model
from training.muzero.replay import Game
from training.muzero.self_play import MultiprocessSelfPlay, SelfPlayWorker, _GameRecord
from training.muzero.train import train_muzero
from training.workers.pool import WorkerError

CFG = MuZeroConfig(num_envs=2, num_simulations=4)


def _weights_of(cfg: MuZeroConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(cfg)
    for p in model.parameters():  # non-zero heads, so that the model's choices matter
        torch.nn.init.normal_(p, std=0.2)
    return model.state_dict()


def _weights(seed: int) -> dict[str, torch.Tensor]:
    return _weights_of(CFG, seed)


def _same_games(a, b) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.policies, y.policies)
        assert x.terminated == y.terminated


def test_a_round_returns_the_games_that_ended_and_keeps_the_others():
    worker = SelfPlayWorker(CFG, build_model(CFG), num_envs=2, seed=5)
    worker.set_weights(_weights(0))
    first = worker.play(moves=40, temperature=1.0)
    assert first.steps == 80 and len(first.root_values) == 40
    assert len(first.games) == len(first.episode_returns) >= 2
    for game, ret, length in zip(first.games, first.episode_returns, first.episode_lengths, strict=True):
        assert len(game.actions) == length and game.rewards.sum() == ret  # CartPole: 1 per step
        assert len(game.observations) == length + 1  # with the observation after the last move
    in_progress = sum(len(r.actions) for r in worker.records)
    assert sum(first.episode_lengths) + in_progress == 80
    worker.close()


@pytest.mark.parametrize("sampling", [0, 2])
def test_moves_after_the_sampling_moves_take_the_most_visited_action(sampling):
    """TicTacToe self-play at T = 1: with --sampling-moves 2 each game's first two moves are sampled
    and every later one is the root's most visited move; with 0 every move is sampled, and some are not
    the most visited."""
    cfg = MuZeroConfig(env_id="rlgames/TicTacToe-v0", num_envs=4, num_simulations=8, sampling_moves=sampling)
    worker = SelfPlayWorker(cfg, build_model(cfg), num_envs=4, seed=3)
    worker.set_weights(_weights_of(cfg, 0))
    games = worker.play(moves=60, temperature=1.0).games
    assert len(games) >= 20
    later = np.concatenate([g.actions[2:] == g.policies[2:].argmax(-1) for g in games])
    first = np.concatenate([g.actions[:2] == g.policies[:2].argmax(-1) for g in games])
    assert later.all() if sampling else not later.all()
    assert not first.all()  # the openings stay sampled either way
    worker.close()


@pytest.mark.parametrize("terminated", [True, False])
def test_segments_of_a_long_game_give_the_whole_games_targets(terminated):
    rng = np.random.default_rng(0)
    T, K, n, L = 137, 5, 10, 20
    obs, actions, rewards = rng.normal(size=(T + 1, 4)), rng.integers(2, size=T), rng.normal(size=T)
    policies, values = rng.dirichlet([1, 1], size=T), rng.normal(size=T + 1)
    values[T] = 0.0 if terminated else values[T]
    record, segments = _GameRecord(), []
    for t in range(T):
        record.observations.append(obs[t])
        record.actions.append(int(actions[t]))
        record.rewards.append(float(rewards[t]))
        record.policies.append(policies[t])
        record.root_values.append(float(values[t]))
        if segment := record.cut_segment(L, K + n):
            segments.append(segment)
    segments.append(record.finish(obs[T], float(values[T]), terminated))
    whole = Game(obs, actions, rewards, policies, values, terminated)
    assert [s.num_starts for s in segments] == [L] * 6 + [T - 6 * L]
    assert all(len(s) == L + K + n for s in segments[:-1])
    start = 0
    for segment in segments:
        for pos in range(segment.num_starts):
            a, b = (make_targets(g.rewards, g.root_values, g.policies, g.actions, g.terminated, p, K, n, 0.997,
                                 np.random.default_rng(1))
                    for g, p in ((whole, start + pos), (segment, pos)))  # fmt: skip
            for name in ("actions", "value", "reward", "policy", "value_mask", "reward_mask", "policy_mask"):
                np.testing.assert_allclose(getattr(a, name), getattr(b, name), err_msg=f"{name} at {start + pos}")
            np.testing.assert_array_equal(segment.observations[pos], obs[start + pos])
        start += segment.num_starts


def test_worker_processes_play_the_same_games_as_the_in_process_worker():
    weights = _weights(1)
    local = SelfPlayWorker(CFG, build_model(CFG), num_envs=2, seed=11)
    local.set_weights(weights)
    remote = MultiprocessSelfPlay(CFG, [(2, 11)], timeout=120)
    try:
        remote.set_weights(weights)
        _same_games(local.play(30, 1.0).games, remote.play(30, 1.0).games)
        # New weights reach the process: both continue identically.
        weights = _weights(2)
        local.set_weights(weights)
        remote.set_weights(weights)
        _same_games(local.play(30, 1.0).games, remote.play(30, 1.0).games)
    finally:
        remote.close()
        local.close()


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_dead_or_hung_worker_process_is_replaced_and_counted(fault, capsys):
    remote = MultiprocessSelfPlay(CFG, [(1, 0), (1, 1)], timeout=3)
    try:
        remote.set_weights(_weights(1))
        remote.play(2, 1.0)
        victim = remote.processes[1]
        os.kill(victim.pid, fault)
        played = remote.play(2, 1.0)
        assert played.steps == 4 and played.worker_restarts == 1 and played.dropped_episodes == 1
        assert remote.processes[1].pid != victim.pid and remote.restarts == [0, 1]
        reason = "died" if fault == signal.SIGKILL else "hung (no reply within 3s, --worker-timeout)"
        assert f"self-play worker 1 {reason}" in capsys.readouterr().err
        assert remote.play(2, 1.0).worker_restarts == 0  # the replacement plays on
    finally:
        remote.close()


def test_a_worker_that_cannot_start_is_a_setup_error():
    with pytest.raises(WorkerError, match="self-play worker 0 could not start"):
        MultiprocessSelfPlay(dataclasses.replace(CFG, env_id="tests/NoSuchEnv-v0"), [(1, 0)], timeout=60)


def test_training_with_self_play_in_worker_processes(tmp_path):
    cfg = MuZeroConfig(runs_dir=str(tmp_path), total_timesteps=320, warmup_steps=80, batch_size=32, num_envs=4,
                       num_simulations=4, eval_episodes=2, eval_every=0, backend="multiprocess",
                       num_workers=2, self_play_moves=5, progress=False)  # fmt: skip
    result = train_muzero(cfg)
    assert result.global_step == 320 and result.episodes > 0 and result.eval_return is not None


def test_an_env_that_raises_is_rebuilt_and_its_games_dropped():
    """tests/CrashingEnv-v0 raises once 40 steps of its life have passed (each rebuild starts a new life)."""
    cfg = MuZeroConfig(env_id="tests/CrashingEnv-v0", num_envs=2, num_simulations=4, segment_length=0)
    worker = SelfPlayWorker(cfg, build_model(cfg), num_envs=2, seed=0)
    played = worker.play(100, temperature=1.0)
    assert played.env_restarts == 2  # at moves 41 and 82
    assert played.dropped_episodes == 2 * 2  # both games in progress, each time
    assert played.steps == 200 and played.nonfinite_steps == 0
    # The games that reached the end (25-step time limits) are whole, from a reset, and finite.
    assert played.games and all(len(g) == 25 and np.isfinite(g.rewards).all() for g in played.games)


def test_non_finite_rewards_never_reach_the_replay():
    """tests/NaNRewardOnce-v0 pays NaN at step 300 of each env's life."""
    cfg = MuZeroConfig(env_id="tests/NaNRewardOnce-v0", num_envs=2, num_simulations=4, segment_length=0)
    worker = SelfPlayWorker(cfg, build_model(cfg), num_envs=2, seed=0)
    played = worker.play(320, temperature=1.0)
    assert played.nonfinite_steps == 2 and played.env_restarts == 1
    assert all(np.isfinite(g.rewards).all() and np.isfinite(g.observations).all() for g in played.games)


def test_updates_that_go_non_finite_are_skipped_then_stop_the_run(tmp_path):
    from training.errors import TrainingDiverged

    # A learning rate of 1e30 blows the weights up within a few steps: NaN/inf losses for real.
    cfg = MuZeroConfig(runs_dir=str(tmp_path), num_envs=2, num_simulations=4, learning_rate=1e30, warmup_steps=32,
                       batch_size=16, total_timesteps=4000, eval_every=0, max_bad_updates=3, progress=False)  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"3 updates in a row had a NaN or inf loss or gradient"):
        train_muzero(cfg)


def test_training_counts_the_faults_it_survives(tmp_path):
    cfg = MuZeroConfig(env_id="tests/CrashingEnv-v0", runs_dir=str(tmp_path), num_envs=2, num_simulations=4,
                       total_timesteps=200, warmup_steps=32, batch_size=16, eval_every=0, eval_episodes=1,
                       progress=False)  # fmt: skip
    result = train_muzero(cfg)
    from training.checkpoint import load_checkpoint

    faults = load_checkpoint(result.checkpoint)["faults"]
    assert faults["env_restarts"] == 2 and faults["dropped_episodes"] == 4 and faults["skipped_updates"] == 0


def test_training_goes_on_when_a_self_play_worker_dies(tmp_path, monkeypatch):
    """A worker process killed in the middle of a run: replaced, counted in faults/worker_restarts, and the
    run reaches its end."""
    killed = []
    real_play = MultiprocessSelfPlay.play

    def play_and_kill_once(self, moves, temperature):
        if not killed and self.restarts == [0, 0]:
            killed.append(self.processes[0].pid)
            os.kill(self.processes[0].pid, signal.SIGKILL)
        return real_play(self, moves, temperature)

    monkeypatch.setattr(MultiprocessSelfPlay, "play", play_and_kill_once)
    cfg = MuZeroConfig(runs_dir=str(tmp_path), total_timesteps=160, warmup_steps=80, batch_size=32, num_envs=4,
                       num_simulations=4, eval_episodes=1, eval_every=0, backend="multiprocess",
                       num_workers=2, self_play_moves=5, progress=False)  # fmt: skip
    result = train_muzero(cfg)
    from training.checkpoint import load_checkpoint

    assert killed and result.global_step == 160
    assert load_checkpoint(result.checkpoint)["faults"]["worker_restarts"] == 1


@pytest.mark.parametrize("moves", [1, 5])
def test_the_replay_ratio_counts_env_steps_whatever_the_moves_per_round(tmp_path, moves):
    """--updates-per-step 0.5: half a gradient step per env step played once the warm-up is over, with one
    move per round or five (each round then plays 5 x num_envs steps; it used to be paid for one)."""
    cfg = MuZeroConfig(runs_dir=str(tmp_path), total_timesteps=240, warmup_steps=80, batch_size=16, num_envs=4,
                       num_simulations=2, updates_per_step=0.5, self_play_moves=moves, eval_every=0,
                       eval_episodes=1, progress=False)  # fmt: skip
    result = train_muzero(cfg)
    from training.checkpoint import load_checkpoint

    # Rounds of 4 * moves steps; learning starts with the round that reaches step 80.
    assert result.global_step == 240 and load_checkpoint(result.checkpoint)["updates"] == 0.5 * (240 - 80 + 4 * moves)
