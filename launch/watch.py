"""Watch a trained agent play: `python launch/watch.py RUN_DIR` loads the run's newest checkpoint, rebuilds
its env from the saved config and plays a few greedy episodes, live in a window where there is a display,
otherwise (or with --save) into MP4 files under RUN_DIR/videos/ (GIFs with --gif)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import tyro

from training.cli import run_cli
from training.config import ConfigError
from training.evaluation import PolicyArgs, evaluate_policy, record_episode
from training.video import LiveViewer, has_display


@dataclass
class WatchArgs(PolicyArgs):
    episodes: int = 3
    """episodes to play"""
    save: bool = False
    """write a video file per episode under RUN_DIR/videos/ (always done when there is no display)"""
    gif: bool = False
    """write animated GIFs instead of MP4s"""
    window: bool = True
    """show the episodes live in a window when a display exists (--no-window: files only)"""
    overlay: bool = False
    """draw the step, the return so far and the value estimate on each frame"""
    render: bool = True
    """--no-render: play without frames and print mean +- std of return and length, as evaluate.py does"""
    fps: float | None = None
    """frames per second of the window and the videos; default: real time for the env"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(WatchArgs, args=argv, description=__doc__.split("\n")[0])
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1 (got {args.episodes})")
    trained, seed = args.load()
    deterministic = not args.stochastic
    print(trained.describe())
    if not args.render:
        print(evaluate_policy(trained.policy, trained.env_id, args.episodes, seed, deterministic).report(deterministic))
        return 0

    live = args.window and has_display()
    save = args.save or not live
    if not live and not args.save:
        print("no display: writing the episodes to video files instead (--save does this with a display too)")
    viewer = LiveViewer(f"{trained.env_id}: {trained.checkpoint.name}", fps=30) if live else None
    generator = torch.Generator().manual_seed(seed)
    videos = trained.run_dir / "videos"
    try:
        for i in range(1, args.episodes + 1):
            path = videos / f"watch_{trained.checkpoint.stem}_seed{seed + i - 1}.{'gif' if args.gif else 'mp4'}"
            episode, written, _ = record_episode(
                trained.policy, trained.env_id, seed + i - 1, path if save else None, deterministic,
                args.overlay, viewer=viewer, generator=generator, fps=args.fps,
            )  # fmt: skip
            where = f" -> {written}" if written else ""
            print(f"episode {i}: return {episode.episode_return:.2f}, length {episode.length}{where}")
            if not episode.completed:
                print("window closed: stopping")
                break
    finally:
        if viewer is not None:
            viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
