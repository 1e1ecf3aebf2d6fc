"""A person against a trained agent on a board game (launch/play.py), in the terminal or in a window.

The game loop is one function for both front ends: `play_game` asks a `MoveSource` for the person's moves
and shows each position and the agent's value estimate through it. `TerminalMoves` reads typed moves (cells
1-9 for TicTacToe, columns 1-7 for Connect Four), says what was wrong with a bad one and asks again;
`WindowMoves` takes clicks on a pygame window where there is a display.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import gymnasium as gym
import numpy as np
import torch

from envs.board_games import BOARD_OPPONENTS, ConnectFourEnv
from training.evaluation import MemoryCarrier

PLAYABLE_ENVS = tuple(BOARD_OPPONENTS)
MARKS = {1: "X", -1: "O"}


def board_text(env: gym.Env) -> str:
    """The board as text: X for the first player, O for the second; free TicTacToe cells show their
    number, Connect Four's columns are numbered under the board."""
    board = env.absolute_board()
    if isinstance(env, ConnectFourEnv):
        rows = [" ".join(MARKS.get(int(v), ".") for v in row) for row in board]
        return "\n".join([*rows, " ".join(str(c + 1) for c in range(board.shape[1]))])
    cells = [MARKS.get(int(v), str(i + 1)) for i, v in enumerate(board)]
    return "\n".join(" ".join(cells[r * 3 : r * 3 + 3]) for r in range(3))


def move_name(env: gym.Env) -> str:
    return "column" if isinstance(env, ConnectFourEnv) else "cell"


def parse_move(text: str, legal: np.ndarray, what: str) -> tuple[int | None, str]:
    """(move, '') for a typed legal move, numbered from 1; else (None, a line saying what would be right)."""
    choices = " ".join(str(m + 1) for m in np.flatnonzero(legal))
    try:
        number = int(text.strip())
    except ValueError:
        return None, f"'{text.strip()}' is not a {what} number: type one of {choices} (q quits)"
    if not 1 <= number <= len(legal) or not legal[number - 1]:
        taken = "full" if what == "column" else "taken"
        why = f"{what} {number} is {taken}" if 1 <= number <= len(legal) else f"there is no {what} {number}"
        return None, f"{why}: type one of {choices} (q quits)"
    return number - 1, ""


class MoveSource(Protocol):
    def show(self, env: gym.Env, message: str) -> None:
        """Show the position and a line about it."""

    def ask(self, env: gym.Env) -> int | None:
        """The person's move on this position (legal), or None when they quit."""


@dataclass
class TerminalMoves:
    """Moves typed on a text stream (standard input), positions and messages written to another."""

    read: TextIO
    write: TextIO

    def show(self, env: gym.Env, message: str) -> None:
        print(f"\n{board_text(env)}\n{message}", file=self.write, flush=True)

    def ask(self, env: gym.Env) -> int | None:
        legal, what = env.legal_moves().ravel(), move_name(env)
        while True:
            print(f"your move ({what} number, q quits): ", end="", file=self.write, flush=True)
            line = self.read.readline()
            if not line or line.strip().lower() in ("q", "quit", "exit"):
                return None
            move, error = parse_move(line, legal, what)
            if move is not None:
                return move
            print(error, file=self.write, flush=True)


class WindowMoves:
    """Clicks on a pygame window showing the board (a cell for TicTacToe, a column for Connect Four); the
    messages go to the window's title and the terminal. Closing the window (or Escape) quits."""

    def __init__(self, write: TextIO, scale: int = 2):
        import pygame

        self.pg, self.write, self.scale = pygame, write, scale
        pygame.display.init()
        self.screen = None

    def show(self, env: gym.Env, message: str) -> None:
        pg = self.pg
        frame = env.render()
        size = (frame.shape[1] * self.scale, frame.shape[0] * self.scale)
        if self.screen is None:
            self.screen = pg.display.set_mode(size)
        surface = pg.transform.scale(pg.surfarray.make_surface(frame.swapaxes(0, 1)), size)
        self.screen.blit(surface, (0, 0))
        pg.display.flip()
        pg.display.set_caption(message)
        print(message, file=self.write, flush=True)

    def ask(self, env: gym.Env) -> int | None:
        pg = self.pg
        legal = env.legal_moves().ravel()
        rows, columns = env.grid_shape
        width, height = self.screen.get_size()
        while True:
            event = pg.event.wait()
            if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key in (pg.K_ESCAPE, pg.K_q)):
                return None
            if event.type == pg.MOUSEBUTTONDOWN:
                x, y = event.pos
                column, row = x * columns // width, y * rows // height
                move = column if isinstance(env, ConnectFourEnv) else row * columns + column
                if legal[move]:
                    return move
                pg.display.set_caption(f"{move_name(env)} {move + 1} is not free: click another")

    def close(self) -> None:
        self.pg.display.quit()


@dataclass
class GameRecord:
    result: str
    """'you win', 'the agent wins' or 'draw'"""
    moves: list[int] = field(default_factory=list)
    agent_values: list[float] = field(default_factory=list)
    """the agent's value estimate of each position it moved in, for itself (+1 a sure win, -1 a sure loss)"""


def play_game(
    policy: Any, env_id: str, person_first: bool, moves: MoveSource, seed: int = 0, deterministic: bool = True,
    on_agent_move: Callable[[int, float], None] | None = None,
) -> GameRecord | None:  # fmt: skip
    """One game of env_id between a person (whose moves come from `moves`) and the policy; None when the
    person quits. The agent plays its most likely move (sampled with deterministic=False)."""
    env = gym.make(env_id, render_mode="rgb_array").unwrapped
    obs, _ = env.reset(seed=seed)
    person = 1 if person_first else -1
    carrier = MemoryCarrier(policy, 1)
    generator = torch.Generator().manual_seed(seed)
    record = GameRecord("")
    sides = f"you play {MARKS[person]} ({'first' if person_first else 'second'}), the agent {MARKS[-person]}"
    moves.show(env, sides)
    while True:
        mover = env.to_play
        if mover == person:
            move = moves.ask(env)
            if move is None:
                return None
        else:
            move, value = carrier.act_one(obs, generator, deterministic)
            record.agent_values.append(value)
            if on_agent_move is not None:
                on_agent_move(move, value)
        obs, reward, terminated, _, info = env.step(move)
        record.moves.append(move)
        if mover != person:
            message = f"the agent plays {move_name(env)} {move + 1} (its value estimate for itself: {value:+.2f})"
        else:
            message = f"you play {move_name(env)} {move + 1}"
        if terminated:
            if info.get("illegal"):
                record.result = "you win" if mover != person else "the agent wins"
                message += ": an illegal move, which loses"
            elif reward > 0:
                record.result = "you win" if mover == person else "the agent wins"
            else:
                record.result = "draw"
            moves.show(env, f"{message}. Game over: {record.result}.")
            return record
        moves.show(env, message)
