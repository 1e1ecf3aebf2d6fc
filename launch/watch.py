"""Watch a trained agent play: `python launch/watch.py RUN_DIR` loads the run's newest checkpoint, rebuilds
its env from the saved config and plays a few greedy episodes, live in a window where there is a display,
otherwise (or with --save) into MP4 files under RUN_DIR/videos/ (GIFs with --gif).

StarCraft II runs play in pysc2's own renderer where there is a display, and every episode is also saved
as a .SC2Replay under RUN_DIR/replays/ (the command prints how to open it in pysc2's replay viewer); the
simulated maps (sc2-sim/) play in the same window and videos as other envs."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

from envs.sc2 import is_sc2, is_sc2_sim
from training.cli import exit_process, run_cli
from training.errors import ConfigError
from training.evaluation import evaluate_policy, record_episode
from training.ppo.config import env_kwargs
from training.trained_agent import PolicyArgs, TrainedAgent
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
    """draw the step, the return so far and the value estimate on each frame (MuZero runs: also the search's root visit counts and Q per action)"""
    render: bool = True
    """--no-render: play without frames and print mean +- std of return and length, as evaluate.py does"""
    fps: float | None = None
    """frames per second of the window and the videos; default: real time for the env"""


def sc2_watch_kwargs(trained: TrainedAgent, live: bool) -> dict:
    """The run's StarCraft II env settings, with pysc2's renderer on where there is a display and a replay
    saved after every episode."""
    cfg = dataclasses.replace(trained.config, save_replay_every=1, sc2=dataclasses.replace(trained.config.sc2, visualize=live))
    return env_kwargs(cfg, trained.run_dir)


def new_replays(replay_dir: Path, since: float) -> list[Path]:
    return sorted(p for p in replay_dir.glob("*.SC2Replay") if p.stat().st_mtime >= since)


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(WatchArgs, args=argv, description=__doc__.split("\n")[0])
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1 (got {args.episodes})")
    trained, seed = args.load()
    deterministic = args.deterministic(trained)
    print(trained.describe())
    if not args.render:
        print(evaluate_policy(trained.policy, trained.env_id, args.episodes, seed, deterministic).report(deterministic))
        return 0

    live = args.window and has_display()
    # The game shows itself in pysc2's renderer and records replays; the simulated maps (sc2-sim/) have
    # neither and play in our window like every other env (their render is the player_relative view).
    sc2 = is_sc2(trained.env_id) and not is_sc2_sim(trained.env_id)
    save = args.save or not live
    if not live and not args.save:
        print("no display: writing the episodes to video files instead (--save does this with a display too)")
    # StarCraft II shows itself in pysc2's renderer; the other envs in our window.
    viewer = LiveViewer(f"{trained.env_id}: {trained.checkpoint.name}", fps=30) if live and not sc2 else None
    kwargs = sc2_watch_kwargs(trained, live) if sc2 else trained.env_kwargs
    started = time.time()
    generator = torch.Generator().manual_seed(seed)
    videos = trained.run_dir / "videos"
    try:
        for i in range(1, args.episodes + 1):
            path = videos / f"watch_{trained.checkpoint.stem}_seed{seed + i - 1}.{'gif' if args.gif else 'mp4'}"
            episode, written, _ = record_episode(
                trained.policy, trained.env_id, seed + i - 1, path if save else None, deterministic,
                args.overlay, viewer=viewer, generator=generator, fps=args.fps, env_kwargs=kwargs,
            )  # fmt: skip
            where = f" -> {written}" if written else ""
            print(f"episode {i}: return {episode.episode_return:.2f}, length {episode.length}{where}")
            if not episode.completed:
                print("window closed: stopping")
                break
    finally:
        if viewer is not None:
            viewer.close()
    if sc2:
        replays = new_replays(trained.run_dir / "replays", started)
        for replay in replays:
            print(f"replay: {replay}\n  open it in pysc2's replay viewer: python launch/sc2_replay.py --replay {replay}")
        if not replays:
            print("no replays: pysc2's mock (sc2-mock/...) has no game to record" if trained.env_id.startswith("sc2-mock/")
                  else f"no replay appeared under {trained.run_dir / 'replays'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
