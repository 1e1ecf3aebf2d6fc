"""Train MuZero: `python launch/train_muzero.py` plays CartPole-v1 with a learned model and tree search;
`--env-id rlgames/TicTacToe-v0` plays both sides of TicTacToe; `--gumbel` for Gumbel MuZero; `--help`."""

from __future__ import annotations

import sys

import tyro

from training.cli import run_cli
from training.muzero_trainer import MuZeroConfig, train_muzero


def main(argv: list[str] | None = None) -> int:
    cfg = tyro.cli(MuZeroConfig, args=argv, description=__doc__.split("\n")[0])
    try:
        result = train_muzero(cfg)
    except KeyboardInterrupt:
        print("\ninterrupted: a checkpoint was written; continue with --resume RUN_DIR", file=sys.stderr)
        return 130
    status = "solved" if result.solved else "finished"
    evaluation = "n/a" if result.eval_return is None else f"{result.eval_return:.1f}"
    print(
        f"{status} {cfg.env_id} after {result.global_step} env steps ({result.episodes} self-play games) in "
        f"{result.seconds:.1f}s; greedy evaluation: {evaluation}\n"
        f"  run folder:  {result.run_dir}\n"
        f"  TensorBoard: tensorboard --logdir {result.run_dir.parent}\n"
        f"  checkpoint:  {result.checkpoint}\n"
        f"  watch:       python launch/watch.py {result.run_dir}\n"
        f"  resume:      python launch/train_muzero.py --resume {result.run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
