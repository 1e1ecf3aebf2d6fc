"""Evaluate a trained run: `python launch/evaluate.py RUN_DIR --episodes 100` prints each episode's return
and length, then the mean +- std: the figure to quote. Greedy actions unless --stochastic (sampled on Atari, as in training, unless --greedy)."""

from __future__ import annotations

from dataclasses import dataclass

import tyro

from envs.board_games import BOARD_OPPONENTS, PERFECT_OPPONENT_ENVS
from training.cli import exit_process, run_cli
from training.errors import ConfigError
from training.evaluation import audit_against_perfect_play, evaluate_policy
from training.trained_agent import PolicyArgs


@dataclass
class EvaluateArgs(PolicyArgs):
    episodes: int = 100
    """episodes to play"""
    num_envs: int = 8
    """envs stepped together (each plays an equal share of the episodes)"""
    quiet: bool = False
    """print only the summary line"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(EvaluateArgs, args=argv, description=__doc__.split("\n")[0])
    if args.episodes < 1 or args.num_envs < 1:
        raise ConfigError(f"--episodes and --num-envs must be >= 1 (got {args.episodes}, {args.num_envs})")
    trained, seed = args.load()
    deterministic = args.deterministic(trained)
    print(trained.describe())
    result = evaluate_policy(trained.policy, trained.env_id, args.episodes, seed, deterministic, args.num_envs,
                             trained.env_kwargs)  # fmt: skip
    print(result.report(deterministic=deterministic, per_episode=not args.quiet))
    if trained.env_id in BOARD_OPPONENTS:
        print(f"(games against {BOARD_OPPONENTS[trained.env_id].name}, half of them moving first: +1 win, 0 draw, -1 loss)")
    if trained.env_id in PERFECT_OPPONENT_ENVS:
        print(audit_against_perfect_play(trained.policy, deterministic, seed).summary())
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
