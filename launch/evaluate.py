"""Evaluate a trained run: `python launch/evaluate.py RUN_DIR --episodes 100` prints each episode's return
and length, then the mean +- std: the figure to quote. Greedy actions unless --stochastic."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import tyro

from training.cli import run_cli
from training.config import ConfigError
from training.evaluation import EVAL_SEED_OFFSET, evaluate_policy, load_trained_agent


@dataclass
class EvaluateArgs:
    run: tyro.conf.Positional[str]
    """a run folder (its newest checkpoint is used) or a checkpoint file"""
    episodes: int = 100
    """episodes to play"""
    best: bool = False
    """use the run's best checkpoint by training-time evaluation (checkpoints/best.pt)"""
    stochastic: bool = False
    """sample actions from the policy instead of taking the most likely one"""
    seed: int | None = None
    """seed of the first episode (episode i uses seed + i); default: the run's evaluation seed, as in training"""
    num_envs: int = 8
    """envs stepped together (each plays an equal share of the episodes)"""
    quiet: bool = False
    """print only the summary line"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(EvaluateArgs, args=argv, description=__doc__.split("\n")[0])
    if args.episodes < 1 or args.num_envs < 1:
        raise ConfigError(f"--episodes and --num-envs must be >= 1 (got {args.episodes}, {args.num_envs})")
    trained = load_trained_agent(args.run, best=args.best)
    seed = args.seed if args.seed is not None else trained.config.seed + EVAL_SEED_OFFSET
    print(trained.describe())
    result = evaluate_policy(trained.policy, trained.env_id, args.episodes, seed, not args.stochastic, args.num_envs)
    print(result.report(deterministic=not args.stochastic, per_episode=not args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
