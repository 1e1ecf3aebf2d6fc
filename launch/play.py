"""Play a board game against a trained agent: `python launch/play.py RUN_DIR` (a MuZero or PPO run on
rlgames/TicTacToe-v0 or rlgames/ConnectFour-v0). Click a cell or a column in a window where there is a
display; otherwise (or with --no-window) type moves in the terminal. The agent's value estimate of each
position it moves in is shown beside its move."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

import tyro

from training.cli import exit_process, run_cli
from training.errors import ConfigError
from training.human_play import PLAYABLE_ENVS, TerminalMoves, WindowMoves, play_game
from training.trained_agent import PolicyArgs
from training.video import has_display


@dataclass
class PlayArgs(PolicyArgs):
    side: Literal["first", "second", "alternate"] = "first"
    """move first (X, red), second (O, yellow), or alternate from game to game starting first"""
    games: int = 1
    """games to play (q, Escape or closing the window stops early)"""
    window: bool = True
    """play in a window (click a cell or a column) when a display exists; --no-window: in the terminal"""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(PlayArgs, args=argv, description=__doc__.split("\n")[0])
    if args.games < 1:
        raise ConfigError(f"--games must be >= 1 (got {args.games})")
    trained, seed = args.load()
    if trained.env_id not in PLAYABLE_ENVS:
        raise ConfigError(f"{args.run} plays {trained.env_id}; play.py plays the board games: {', '.join(PLAYABLE_ENVS)}")
    print(trained.describe())
    moves = WindowMoves(sys.stdout) if args.window and has_display() else TerminalMoves(sys.stdin, sys.stdout)
    results = []
    try:
        for game in range(args.games):
            first = args.side == "first" or (args.side == "alternate" and game % 2 == 0)
            record = play_game(trained.policy, trained.env_id, first, moves, seed + game, not args.stochastic)
            if record is None:
                print("stopped")
                break
            results.append(record.result)
    finally:
        if isinstance(moves, WindowMoves):
            moves.close()
    if results:
        counts = {r: results.count(r) for r in ("you win", "draw", "the agent wins")}
        print(f"{len(results)} game(s): you won {counts['you win']}, drew {counts['draw']}, lost {counts['the agent wins']}")
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
