"""Train MuZero: `python launch/train_muzero.py` plays CartPole-v1 with a learned model and tree search;
`--env-id rlgames/TicTacToe-v0` (or rlgames/ConnectFour-v0) plays both sides of the board game; `--env-id
MinAtar/Breakout-v0` (any MinAtar game) trains the residual net with MinAtar's preset; `--help`."""

from __future__ import annotations

from training.cli import exit_process, run_cli, run_footer
from training.muzero.config import parse_muzero_config
from training.muzero.train import train_muzero


def main(argv: list[str] | None = None) -> int:
    cfg = parse_muzero_config(argv)
    result = train_muzero(cfg)
    status = "solved" if result.solved else "finished"
    evaluation = "n/a" if result.eval_return is None else f"{result.eval_return:.1f}"
    print(
        f"{status} {result.env_id} after {result.global_step} env steps ({result.episodes} self-play games) in "
        f"{result.seconds:.1f}s; {result.evaluation_name}: {evaluation}\n"
        + run_footer(result.run_dir, result.checkpoint, "train_muzero.py")
    )
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
