"""Small two-player board games as Gymnasium envs, for MuZero's self-play: one env plays both sides.

Each step is a move of the player to move; the observation is always from that player's view (+1 own
stones, -1 the opponent's), with the legal moves in `action_mask`, and the reward goes to the player who
just moved (+1 for a win, 0 otherwise). A search then treats values as the mover's, alternating in sign.
An illegal move is a loss for the player who makes it (-1, game over), so an agent that ignores the mask
learns to respect it.

`perfect_move` is an exact minimax player (memoised over all 5,478 positions), to measure agents against.
`board_symmetries` gives a game's rotations and reflections, for training on symmetric copies of positions.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))


def winner(board: tuple[int, ...]) -> int:
    """+1 or -1 for the player with three in a line, 0 for none."""
    for a, b, c in LINES:
        if board[a] != 0 and board[a] == board[b] == board[c]:
            return board[a]
    return 0


@functools.cache
def solve(board: tuple[int, ...]) -> int:
    """The game value for the player to move (+1 win, 0 draw, -1 loss) with perfect play from both sides.
    board holds +1 for the player to move and -1 for the other."""
    if winner(board) != 0:
        return -1  # the previous mover completed a line
    moves = [i for i in range(9) if board[i] == 0]
    if not moves:
        return 0
    # After my move the opponent is to move, seeing the board with signs flipped.
    return max(-solve(tuple(-x for x in board[:i] + (1,) + board[i + 1 :])) for i in moves)


def perfect_moves(board: tuple[int, ...]) -> list[int]:
    """All moves that keep the best game value for the player to move."""
    moves = [i for i in range(9) if board[i] == 0]
    values = {i: -solve(tuple(-x for x in board[:i] + (1,) + board[i + 1 :])) for i in moves}
    best = max(values.values())
    return [i for i in moves if values[i] == best]


def _square_symmetries(size: int) -> np.ndarray:
    """The 8 rotations and reflections of a size x size board as cell permutations [8, size * size]:
    the transformed board is board[perm] (flattened), and a move on cell c becomes a move on cell
    argsort(perm)[c]."""
    cells = np.arange(size * size).reshape(size, size)
    return np.stack([np.rot90(grid, k).ravel() for grid in (cells, cells.T) for k in range(4)])


def board_symmetries(env_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(observation permutations [S, obs_size], action permutations [S, num_actions]) of a board game
    whose rules and results do not change under them (the identity first), or None. Permutation g maps
    a flattened observation o to o[obs_perms[g]] and a policy p over actions to p[action_perms[g]]."""
    if env_id == "rlgames/TicTacToe-v0":
        perms = _square_symmetries(3)
        return perms, perms
    return None


class TicTacToeEnv(gym.Env):
    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 2}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = gym.spaces.Dict({
            "obs": gym.spaces.Box(-1.0, 1.0, (9,), np.float32),
            "action_mask": gym.spaces.MultiBinary(9),
        })  # fmt: skip
        self.action_space = gym.spaces.Discrete(9)
        self.render_mode = render_mode
        self.board = np.zeros(9, np.int8)  # from the view of the player to move
        self.to_play = 1  # +1: X (first player), -1: O

    def _obs(self) -> dict[str, np.ndarray]:
        return {"obs": self.board.astype(np.float32), "action_mask": (self.board == 0).astype(np.int8)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.board[:] = 0
        self.to_play = 1
        return self._obs(), {"to_play": self.to_play}

    def step(self, action):
        action = int(action)
        mover = self.to_play
        if self.board[action] != 0:
            return self._obs(), -1.0, True, False, {"to_play": mover, "illegal": True}
        self.board[action] = 1
        won = winner(tuple(int(x) for x in self.board)) == 1
        full = not (self.board == 0).any()
        # The next player sees the board from their side.
        self.board *= -1
        self.to_play = -mover
        return self._obs(), 1.0 if won else 0.0, won or full, False, {"to_play": self.to_play}

    def absolute_board(self) -> np.ndarray:
        """+1 for X, -1 for O, whoever is to move."""
        return self.board * self.to_play

    def render(self):
        marks = {1: "X", -1: "O", 0: "."}
        text = "\n".join("".join(marks[int(v)] for v in self.absolute_board()[r * 3 : r * 3 + 3]) for r in range(3))
        if self.render_mode == "ansi":
            return text
        if self.render_mode == "rgb_array":
            return _draw(self.absolute_board())
        return None


def _draw(board: np.ndarray, cell: int = 60) -> np.ndarray:
    """The board as an RGB picture: X red, O blue, on a light grid."""
    size = 3 * cell
    image = np.full((size, size, 3), 235, np.uint8)
    image[cell - 1 : cell + 1, :] = image[2 * cell - 1 : 2 * cell + 1, :] = 80
    image[:, cell - 1 : cell + 1] = image[:, 2 * cell - 1 : 2 * cell + 1] = 80
    yy, xx = np.mgrid[0:cell, 0:cell] - (cell - 1) / 2
    disc = np.hypot(yy, xx)
    ring = (disc < cell * 0.35) & (disc > cell * 0.25)
    cross = (np.abs(np.abs(yy) - np.abs(xx)) < cell * 0.06) & (np.abs(yy) < cell * 0.33)
    for i, v in enumerate(board):
        r, c = divmod(i, 3)
        block = image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell]
        if v == 1:
            block[cross] = (200, 40, 40)
        elif v == -1:
            block[ring] = (40, 70, 200)
    return image


if "rlgames/TicTacToe-v0" not in gym.registry:
    gym.register("rlgames/TicTacToe-v0", entry_point=TicTacToeEnv)
