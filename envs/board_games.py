"""Small two-player board games as Gymnasium envs, for MuZero's self-play and PPO's league
(training.league): one env plays both sides (TicTacToe and Connect Four), declared by metadata["players"] = 2.

Each step is a move of the player to move; the observation is always from that player's view (+1 own
stones, -1 the opponent's), with the legal moves in `action_mask`, and the reward goes to the player who
just moved (+1 for a win, 0 otherwise). A search then treats values as the mover's, alternating in sign.
An illegal move is a loss for the player who makes it (-1, game over), so an agent that ignores the mask
learns to respect it.

`perfect_moves` is an exact TicTacToe minimax player (memoised over all 5,478 positions) and
`lookahead_moves` a depth-limited Connect Four one; `BOARD_OPPONENTS` says which one each game is measured
against. `board_symmetries` gives a game's rotations and reflections, for training on symmetric copies of
positions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

LINES = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6))
ROWS, COLUMNS = 6, 7  # Connect Four's board


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
    if env_id == "rlgames/ConnectFour-v0":  # gravity leaves only the left-right mirror
        cells = np.arange(ROWS * COLUMNS).reshape(ROWS, COLUMNS)
        columns = np.arange(COLUMNS)
        return np.stack([cells.ravel(), cells[:, ::-1].ravel()]), np.stack([columns, columns[::-1]])
    return None


def other_sides_result(mover_reward: float) -> float:
    """The other player's result of a game whose last move earned its mover `mover_reward` (+1 win, 0 draw,
    -1 illegal move): the negation, with a draw +0.0 (a plain -reward gives -0.0, printed "-0.00")."""
    return 0.0 - float(mover_reward)


class TwoPlayerBoardEnv(gym.Env):
    """What both board games share: one env plays both sides, the board is kept from the view of the
    player to move (+1 own, -1 the opponent's) and flipped after each move, the reward goes to the mover.
    A game gives its board's shape (as stored, and as drawn), number of moves, legal moves, move rule
    and picture."""

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 2, "players": 2}
    board_shape: tuple[int, ...]
    grid_shape: tuple[int, int]
    num_moves: int

    def __init__(self, render_mode: str | None = None):
        cells = int(np.prod(self.board_shape))
        self.observation_space = gym.spaces.Dict({
            "obs": gym.spaces.Box(-1.0, 1.0, (cells,), np.float32),
            "action_mask": gym.spaces.MultiBinary(self.num_moves),
        })  # fmt: skip
        self.action_space = gym.spaces.Discrete(self.num_moves)
        self.render_mode = render_mode
        self.board = np.zeros(self.board_shape, np.int8)  # from the view of the player to move
        self.to_play = 1  # +1: the first player (X, red), -1: the second (O, yellow)

    def legal_moves(self) -> np.ndarray:
        raise NotImplementedError

    def _play(self, move: int) -> bool:
        """Put the mover's piece (+1) for a legal move; whether it wins."""
        raise NotImplementedError

    def _picture(self) -> np.ndarray:
        raise NotImplementedError

    def _obs(self) -> dict[str, np.ndarray]:
        return {"obs": self.board.ravel().astype(np.float32), "action_mask": self.legal_moves().astype(np.int8)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.board[:] = 0
        self.to_play = 1
        return self._obs(), {"to_play": self.to_play}

    def step(self, action):
        move = int(action)
        mover = self.to_play
        if not self.legal_moves()[move]:
            return self._obs(), -1.0, True, False, {"to_play": mover, "illegal": True}
        won = self._play(move)
        full = not self.legal_moves().any()
        self.board *= -1  # the next player sees the board from their side
        self.to_play = -mover
        return self._obs(), 1.0 if won else 0.0, won or full, False, {"to_play": self.to_play}

    def absolute_board(self) -> np.ndarray:
        """+1 for the first player's pieces, -1 for the second's, whoever is to move."""
        return self.board * self.to_play

    def render(self):
        if self.render_mode == "ansi":
            marks = {1: "X", -1: "O", 0: "."}
            rows = self.absolute_board().reshape(self.grid_shape)
            return "\n".join("".join(marks[int(v)] for v in row) for row in rows)
        if self.render_mode == "rgb_array":
            return self._picture()
        return None


class TicTacToeEnv(TwoPlayerBoardEnv):
    """TicTacToe: cells 0..8 row by row; three in a line wins."""

    board_shape, grid_shape, num_moves = (9,), (3, 3), 9

    def legal_moves(self) -> np.ndarray:
        return self.board == 0

    def _play(self, move: int) -> bool:
        self.board[move] = 1
        return winner(tuple(int(x) for x in self.board)) == 1

    def _picture(self) -> np.ndarray:
        return _draw(self.absolute_board())


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


class ConnectFourEnv(TwoPlayerBoardEnv):
    """Connect Four on the standard 6 x 7 board: a move drops a disc into a column that is not full; four
    in a row, column or diagonal wins. Cells are flattened row by row, the top row first."""

    board_shape, grid_shape, num_moves = (ROWS, COLUMNS), (ROWS, COLUMNS), COLUMNS

    def legal_moves(self) -> np.ndarray:
        return self.board[0] == 0

    def _play(self, move: int) -> bool:
        row = int(np.flatnonzero(self.board[:, move] == 0)[-1])  # the disc falls to the lowest empty cell
        self.board[row, move] = 1
        return _four_through(self.board, row, move)

    def _picture(self) -> np.ndarray:
        return _draw_connect_four(self.absolute_board())


def _four_through(board: np.ndarray, row: int, column: int) -> bool:
    """Whether the disc at (row, column) is part of four in a line of its owner's discs."""
    owner = board[row, column]
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        run = 1
        for sign in (1, -1):
            r, c = row + sign * dr, column + sign * dc
            while 0 <= r < ROWS and 0 <= c < COLUMNS and board[r, c] == owner:
                run += 1
                r, c = r + sign * dr, c + sign * dc
        if run >= 4:
            return True
    return False


# Connect Four positions as two bitboards (the mover's discs, all discs): bit column * 7 + height, one
# spare bit on top of each column so that shifted lines never wrap into the next column.
_HEIGHT = ROWS + 1


def _bitboards(board: np.ndarray) -> tuple[int, int]:
    """(the mover's discs, all discs) of a [ROWS, COLUMNS] board from the mover's view."""
    mine = occupied = 0
    for (row, column), value in np.ndenumerate(board):
        if value:
            bit = 1 << (column * _HEIGHT + ROWS - 1 - row)
            occupied |= bit
            if value == 1:
                mine |= bit
    return mine, occupied


def _drop(mine: int, occupied: int, column: int) -> tuple[int, int]:
    """The position after the mover drops a disc in column, from the next mover's view."""
    after = occupied | (occupied + (1 << column * _HEIGHT))
    return mine ^ occupied, after  # the next mover's discs are the ones that were not the mover's


def _children(mine: int, occupied: int) -> dict[int, tuple[int, int, bool]]:
    """{column: (the next mover's discs, all discs, whether the move made four)} for every legal move."""
    from envs.connect_four_lookahead import has_four

    children = {}
    for column in range(COLUMNS):
        if not occupied & (1 << (column * _HEIGHT + ROWS - 1)):  # the column's top cell is free
            theirs, after = _drop(mine, occupied, column)
            children[column] = (theirs, after, has_four(theirs ^ after))  # theirs ^ after: the mover's discs
    return children


def lookahead_moves(board: np.ndarray, plies: int = 4) -> list[int]:
    """The Connect Four moves (columns) that keep the best result the mover can see `plies` moves ahead
    (its own and the opponent's): it takes a win it can force in that horizon, blocks a loss the opponent
    could force, and otherwise leaves every move open. board: [ROWS, COLUMNS] from the mover's view."""
    # Imported here: numba costs ~0.4 s to import, which every env-making process would pay otherwise.
    from envs.connect_four_lookahead import lookahead_value

    children = _children(*_bitboards(np.asarray(board).reshape(ROWS, COLUMNS)))
    values = {c: 1 if won else -lookahead_value(theirs, after, plies - 1) for c, (theirs, after, won) in children.items()}
    best = max(values.values())
    return [c for c, v in values.items() if v == best]


def _draw_connect_four(board: np.ndarray, cell: int = 50) -> np.ndarray:
    """The board as an RGB picture: the first player's discs red, the second's yellow, on blue."""
    image = np.zeros((ROWS * cell, COLUMNS * cell, 3), np.uint8)
    image[:] = (30, 70, 170)
    yy, xx = np.mgrid[0:cell, 0:cell] - (cell - 1) / 2
    disc = np.hypot(yy, xx) < cell * 0.4
    colours = {1: (210, 40, 40), -1: (235, 200, 40), 0: (235, 235, 235)}
    for (row, column), value in np.ndenumerate(board):
        image[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell][disc] = colours[int(value)]
    return image


@dataclass(frozen=True)
class BoardOpponent:
    """The fixed player a board game's evaluation is a match against."""

    name: str
    moves: Callable[[np.ndarray], list[int]]
    """the moves it considers best, given the board from its own view (it picks one at random)"""
    perfect: bool
    """nobody can beat it: a mean result of 0 is then the best there is, the game's solved threshold"""


BOARD_OPPONENTS = {
    "rlgames/TicTacToe-v0": BoardOpponent(
        "the perfect minimax player", lambda board: perfect_moves(tuple(int(x) for x in board)), perfect=True
    ),
    "rlgames/ConnectFour-v0": BoardOpponent("a 4-ply lookahead player", lookahead_moves, perfect=False),
}

# Games whose fixed opponent cannot be beaten: never losing to it is solving them.
PERFECT_OPPONENT_ENVS = tuple(env_id for env_id, opponent in BOARD_OPPONENTS.items() if opponent.perfect)

if "rlgames/TicTacToe-v0" not in gym.registry:
    gym.register("rlgames/TicTacToe-v0", entry_point=TicTacToeEnv)
if "rlgames/ConnectFour-v0" not in gym.registry:
    gym.register("rlgames/ConnectFour-v0", entry_point=ConnectFourEnv)
