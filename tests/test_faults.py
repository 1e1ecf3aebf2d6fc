"""Faults: non-finite updates are undone and counted, and too many in a row stop the run."""

import dataclasses

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs import probe_spaces
from training.checkpoint import load_checkpoint
from training.config import PPOConfig
from training.executors import InProcessExecutor
from training.ppo_trainer import PPOLearner, TrainingDiverged, build_agent, train


def _cfg(tmp_path, env_id, **kw) -> PPOConfig:
    return PPOConfig(env_id=env_id, preset="cleanrl", num_envs=2, num_steps=64, num_minibatches=2, update_epochs=2,
                     backend="inprocess", eval_every=0, progress=False, runs_dir=str(tmp_path), checkpoint_every=128,
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
    from training.config import ConfigError, validate

    with pytest.raises(ConfigError, match="--max-bad-updates must be > 0"):
        validate(dataclasses.replace(_cfg(tmp_path, "CartPole-v1"), max_bad_updates=0))
