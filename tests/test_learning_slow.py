"""Learning thresholds on the heavier envs (about 30 s and 70 s here): `make test-slow`."""

import dataclasses

import pytest

from training.config import PPOConfig, apply_preset
from training.ppo_trainer import train


@pytest.mark.slow
@pytest.mark.parametrize(("env_id", "budget"), [("Acrobot-v1", 1_000_000), ("LunarLander-v3", 2_000_000)])
def test_preset_solves_within_budget(tmp_path, env_id, budget):
    cfg = dataclasses.replace(apply_preset(PPOConfig(env_id=env_id)), seed=1, total_timesteps=budget,
                              runs_dir=str(tmp_path), progress=False)  # fmt: skip
    result = train(cfg)
    assert result.solved, f"{env_id}: last-100 mean {result.mean_return} after {result.global_step} steps"
