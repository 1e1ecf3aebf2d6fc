"""Train MuZero: `python launch/train_muzero.py` plays CartPole-v1 with a learned model and tree search;
`--env-id rlgames/TicTacToe-v0` (or rlgames/ConnectFour-v0) plays both sides of the board game; `--gumbel` for Gumbel MuZero; `--help`."""

from __future__ import annotations

import dataclasses
import sys

import tyro

from training.cli import run_cli, run_footer
from training.muzero.config import MUZERO_CHANGEABLE_ON_RESUME, MuZeroConfig
from training.muzero.train import train_muzero
from training.resume import resume_changes


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(MuZeroConfig, args=argv, description=__doc__.split("\n")[0])
    if cfg.resume:
        given = sys.argv[1:] if argv is None else argv
        cfg = dataclasses.replace(cfg, resume_changes=resume_changes(given, MuZeroConfig, MUZERO_CHANGEABLE_ON_RESUME))
    result = train_muzero(cfg)
    status = "solved" if result.solved else "finished"
    evaluation = "n/a" if result.eval_return is None else f"{result.eval_return:.1f}"
    print(
        f"{status} {result.env_id} after {result.global_step} env steps ({result.episodes} self-play games) in "
        f"{result.seconds:.1f}s; greedy evaluation: {evaluation}\n"
        + run_footer(result.run_dir, result.checkpoint, "train_muzero.py")
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
