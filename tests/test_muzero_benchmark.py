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
    # A threshold any policy reaches (CartPole returns are >= 8): solved at the first evaluation. Two seeds
    # at a time, each run through its whole budget: the evaluation after solving is kept too.
    cfg = MuZeroConfig(runs_dir=str(tmp_path), total_timesteps=320, warmup_steps=160, batch_size=32,
                       num_simulations=4, eval_every=160, eval_episodes=2, stop_return=1.0, stop_when_solved=False)  # fmt: skip
    results = time_to_solve(cfg, seeds=2, first_seed=3, parallel=2)
    assert [r.seed for r in results] == [3, 4]
    for r in results:
        assert r.solved and r.env_steps == 160 and r.seconds > 0 and r.steps_per_second > 0
        assert [s for s, _ in r.evaluations] == [160, 320] and r.final_eval_return >= 1.0
        assert r.held(1.0) and not r.held(1e9)  # the evaluation at 320 stayed above 1, not above 1e9


def test_held_is_undefined_before_solving_and_true_with_nothing_after():
    from training.muzero.benchmark import SolveResult

    never = SolveResult("CartPole-v1", 1, False, None, None, 20.0, 1000, 1, [(500, 20.0), (1000, 30.0)])
    assert never.held(450) is None
    at_the_end = SolveResult("CartPole-v1", 1, True, 1000, 9.0, 480.0, 1000, 1, [(500, 20.0), (1000, 480.0)])
    assert at_the_end.held(450) is True
    dropped = SolveResult("CartPole-v1", 1, True, 500, 9.0, 300.0, 1000, 1, [(500, 480.0), (1000, 300.0)])
    assert dropped.held(450) is False
