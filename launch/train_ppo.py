"""Train PPO: `python launch/train_ppo.py` solves CartPole-v1; `--env-id`, `--preset` and `--help` for more."""

from __future__ import annotations

from training.cli import exit_process, run_cli, run_footer
from training.ppo.config import parse_ppo_config
from training.ppo.train import train


def main(argv: list[str] | None = None) -> int:
    cfg = parse_ppo_config(argv)
    result = train(cfg)
    status = "solved" if result.solved else "finished"
    ret = "n/a" if result.mean_return is None else f"{result.mean_return:.1f}"
    evaluation = "" if result.eval_return is None else f"; {result.evaluation_name}: {result.eval_return:.1f}"
    print(
        f"{status} {result.env_id} after {result.global_step} env steps in {result.seconds:.1f}s "
        f"({result.sps:.0f} SPS; rollout {result.rollout_seconds:.1f}s, update {result.update_seconds:.1f}s); "
        f"mean return of the last 100 episodes: {ret}{evaluation}\n"
        + run_footer(result.run_dir, result.checkpoint, "train_ppo.py")
    )
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
