"""MuZero's benchmark helpers: search throughput with the real model and the constant stand-in, and the
solve runs in fresh processes."""

import numpy as np
import torch

from training.muzero.benchmark import constant_model, search_throughput, time_to_solve
from training.muzero.config import MuZeroConfig


def test_constant_model_keeps_the_state_and_returns_nothing_to_learn_from():
    fn = constant_model(num_actions=3, hidden_state=8)
    state = torch.rand(5, 8)
    reward, next_state, logits, value = fn(state, torch.zeros(5, dtype=torch.long))
    assert next_state is state and logits.shape == (5, 3)
    assert not reward.any() and not value.any() and not logits.any()


def test_search_throughput_counts_roots_times_simulations():
    for model in ("real", "constant"):
        r = search_throughput(MuZeroConfig(), roots=4, simulations=10, model=model, repeats=1)
        assert (r.roots, r.simulations, r.model) == (4, 10, model)
        assert np.isfinite(r.simulations_per_second) and r.simulations_per_second > 0


def test_time_to_solve_reports_the_first_evaluation_over_the_threshold(tmp_path):
    # A threshold any policy reaches (CartPole returns are >= 8): solved at the first evaluation.
    cfg = MuZeroConfig(runs_dir=str(tmp_path), total_timesteps=320, warmup_steps=160, batch_size=32,
                       num_simulations=4, eval_every=160, eval_episodes=2, stop_return=1.0)  # fmt: skip
    (result,) = time_to_solve(cfg, seeds=1)
    assert result.solved and result.env_steps == 160 and result.seconds > 0
    assert result.final_eval_return >= 1.0
