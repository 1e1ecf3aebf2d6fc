"""Learning thresholds on the heavier envs (PPO: about 30 s and 70 s here; MuZero on TicTacToe about 13
minutes; 15:21 for all three on the idle machine): `make test-slow`."""

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


@pytest.mark.slow
def test_muzero_never_loses_tictactoe_to_the_perfect_player(tmp_path):
    """MuZero's defaults on TicTacToe: a 100-game match against the perfect player without a loss, and no
    losing move in any position a perfect opponent can lead it to (seed 1 got there at 20,000 env steps,
    650 s here)."""
    from training.checkpoint import load_algo_checkpoint
    from training.evaluation import audit_against_perfect_play
    from training.muzero_trainer import MuZeroConfig, load_muzero_actor, train_muzero

    cfg = MuZeroConfig(env_id="rlgames/TicTacToe-v0", seed=1, total_timesteps=60_000, eval_every=2_500,
                       eval_episodes=100, runs_dir=str(tmp_path), progress=False)  # fmt: skip
    result = train_muzero(cfg)
    assert result.solved, f"evaluations (steps, seconds, mean result): {result.history}"
    _, actor = load_muzero_actor(load_algo_checkpoint(str(result.checkpoint), "muzero")[0])
    audit = audit_against_perfect_play(actor)
    assert audit.losing_moves == [], audit.summary()
