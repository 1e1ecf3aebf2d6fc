"""Faults: non-finite updates are undone and counted, and too many in a row stop the run."""

import dataclasses

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs import probe_spaces
from training.checkpoint import load_checkpoint
from training.errors import TrainingDiverged
from training.ppo.config import PPOConfig
from training.ppo.executors import InProcessExecutor
from training.ppo.train import PPOLearner, build_agent, train


def _cfg(tmp_path, env_id, **kw) -> PPOConfig:
    return PPOConfig(env_id=env_id, preset="cleanrl", num_envs=2, num_steps=64, num_minibatches=2, update_epochs=2,
                     backend="inprocess", eval_episodes=0, progress=False, runs_dir=str(tmp_path), checkpoint_every=128,
                     max_bad_updates=3, **kw)  # fmt: skip


def test_a_nan_update_is_undone_exactly(tmp_path):
    cfg = _cfg(tmp_path, "CartPole-v1", normalize_reward=True)
    obs_space, act_space = probe_spaces(cfg.env_id)
    learner = PPOLearner(build_agent(cfg, obs_space, act_space), cfg, torch.device("cpu"))
    with InProcessExecutor(cfg.env_id, obs_space, act_space, learner.agent, 2, 1, 64, 0) as ex:
        assert learner.update(ex.collect(), 1e-3) is not None
        rollout = ex.collect()
    before = {k: v.clone() for k, v in learner.agent.state_dict().items()}
    adam_before = [s["exp_avg"].clone() for s in learner.optimizer.state.values()]
    scaler_before = learner.reward_scaler.state_dict()["stats"].clone()
    rollout.rewards[5, 1] = np.nan
    assert learner.update(rollout, 1e-3) is None
    assert learner.skipped_updates == learner.skipped_in_a_row == 1
    for k, v in learner.agent.state_dict().items():
        assert torch.equal(v, before[k]), k
    for a, b in zip(adam_before, (s["exp_avg"] for s in learner.optimizer.state.values()), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(learner.reward_scaler.state_dict()["stats"], scaler_before)
    rollout.rewards[5, 1] = 1.0
    assert learner.update(rollout, 1e-3) is not None and learner.skipped_in_a_row == 0


def test_training_skips_a_nan_update_and_goes_on(tmp_path):
    result = train(_cfg(tmp_path, "tests/NaNRewardOnce-v0", total_timesteps=1280))
    assert result.global_step == 1280
    acc = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    skipped = [e.value for e in acc.Scalars("faults/skipped_updates")]
    # The NaN episode's return is left out of the last-100 mean, which stays a number throughout.
    assert all(np.isfinite(e.value) for e in acc.Scalars("charts/mean_return_100"))
    assert skipped[-1] == 1 and len(skipped) == 10
    assert len(acc.Scalars("losses/policy_loss")) == 9  # the skipped update logged no losses


def test_nan_updates_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"3 updates in a row had a NaN or inf .* last good checkpoint is"):
        train(_cfg(tmp_path, "tests/NaNRewardAlways-v0", total_timesteps=10_000))
    (run_dir,) = tmp_path.iterdir()
    payload = load_checkpoint(run_dir)
    assert payload["global_step"] == 256  # written after updates 1 and 2; update 3 raised before saving
    assert all(torch.isfinite(v).all() for v in payload["learner"]["model"].values())


def test_max_bad_updates_must_be_positive(tmp_path):
    from training.errors import ConfigError
    from training.ppo.config import validate

    with pytest.raises(ConfigError, match="--max-bad-updates must be > 0"):
        validate(dataclasses.replace(_cfg(tmp_path, "CartPole-v1"), max_bad_updates=0))


def _worker(env_id, num_envs=2, num_steps=64, seed=0):
    from agents.networks import ActorCritic
    from training.ppo.rollout import RolloutWorker, allocate_rollout_arrays

    obs_space, act_space = probe_spaces(env_id)
    arrays = allocate_rollout_arrays(obs_space, act_space, num_steps, num_envs)
    torch.manual_seed(0)
    return RolloutWorker(env_id, num_envs, seed, ActorCritic(obs_space, act_space), arrays), arrays


def test_an_env_that_raises_is_rebuilt_and_its_episodes_dropped():
    # The envs crash on their 41st step: the worker rebuilds them and redoes that step from new episodes.
    worker, arrays = _worker("tests/CrashingEnv-v0")
    stats = worker.collect()
    a = {k: v.numpy() for k, v in arrays.items()}
    assert stats.env_restarts == 1 and stats.dropped_episodes == 2 and worker.env_restarts == 1
    # Episodes last 25 steps: one ended at step 24 (reported), the one in progress at the crash was cut
    # at step 39 (truncated, bootstrapped from V(s_40)) and is not reported; the rebuilt envs' episodes
    # run from step 40 (their first 24 steps end at step 64, so none is reported yet).
    assert stats.episode_lengths.tolist() == [25, 25]
    np.testing.assert_array_equal(a["truncated"][39], [1.0, 1.0])
    # V(s_40) of the crashed episodes: the same worker on envs that do not crash reaches the same s_40.
    reference, ref_arrays = _worker("tests/NeverCrashingEnv-v0")
    reference.collect()
    np.testing.assert_array_equal(ref_arrays["obs/obs"][:40].numpy(), a["obs/obs"][:40])
    np.testing.assert_array_equal(a["bootstrap_values"][39], ref_arrays["values"][40].numpy())
    assert a["truncated"].sum() == 4 and a["terminated"].sum() == 0
    assert (a["rewards"] == 1.0).all()  # every stored step is a real transition


def test_an_env_that_keeps_raising_is_an_error():
    worker, _ = _worker("tests/AlwaysCrashingEnv-v0")
    with pytest.raises(RuntimeError, match="the game crashed"):
        worker.collect()


def _multiprocess(worker_timeout=60.0):
    from agents.networks import ActorCritic
    from training.ppo.executors import MultiprocessExecutor

    obs_space, act_space = probe_spaces("CartPole-v1")
    torch.manual_seed(0)
    agent = ActorCritic(obs_space, act_space)
    return MultiprocessExecutor("CartPole-v1", obs_space, act_space, agent, 4, 2, 32, 0, worker_timeout=worker_timeout)


def test_a_killed_worker_process_is_replaced_and_counted():
    import os
    import signal

    with _multiprocess() as ex:
        ex.collect()
        victim = ex.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        rollout = ex.collect()
        assert rollout.num_steps == 128 and rollout.obs["obs"].shape == (32, 4, 4)
        assert ex.worker_restarts == 1 and ex.dropped_episodes == 2
        assert victim not in ex.worker_pids() and len(ex.worker_pids()) == 2
        # The replacement acts on new env seeds: its slice differs from what the old worker would give.
        assert ex.worker_seed(1) != ex.worker_seed(0) + 2
        ex.collect()


def test_a_hung_worker_process_is_replaced_after_the_timeout():
    import os
    import signal
    import time

    with _multiprocess(worker_timeout=3.0) as ex:
        ex.collect()
        os.kill(ex.worker_pids()[0], signal.SIGSTOP)  # alive but silent
        start = time.perf_counter()
        rollout = ex.collect()
        assert 3.0 <= time.perf_counter() - start < 30 and ex.worker_restarts == 1
        assert rollout.num_steps == 128
