"""Round-robin matches between board-game players (trained agents and fixed reference players) and the
Elo ratings that fit their results.

A player picks a move for the position in front of it. Every pair plays the same number of games, half
of them with each moving first. Ratings are the Bradley-Terry maximum-likelihood fit of all the games at
once (a draw counts half a win for each side), on Elo's scale (400 points = 10:1 odds) with the players'
mean at 1000: unlike Elo's game-by-game updates, the result does not depend on the order the games were
played in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from envs.board_games import lookahead_moves, perfect_moves
from training.evaluation import MemoryCarrier
from training.interrupts import beat

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per unit of log-odds
MEAN_RATING = 1000.0


@dataclass
class Player:
    """A name and how it chooses: `start_game()` gives the chooser for one game, called with the env (the
    board from the mover's view in env.board, the legal moves in env.legal_moves()) and the observation."""

    name: str
    start_game: Callable[[np.random.Generator], Callable[[gym.Env, dict], int]]


def rule_player(name: str, best_moves: Callable[[gym.Env], list[int]]) -> Player:
    """A fixed player that picks at random among the moves its rule rates best."""

    def start_game(rng: np.random.Generator) -> Callable[[gym.Env, dict], int]:
        return lambda env, obs: int(rng.choice(best_moves(env)))

    return Player(name, start_game)


def reference_players(env_id: str) -> dict[str, Player]:
    """The fixed players a game has: 'random' always; Connect Four's 'lookahead' (4 plies); TicTacToe's
    'perfect' (exact minimax)."""
    players = {"random": rule_player("random", lambda env: list(np.flatnonzero(env.legal_moves().ravel())))}
    if env_id == "rlgames/ConnectFour-v0":
        players["lookahead"] = rule_player("lookahead (4 plies)", lambda env: lookahead_moves(env.board))
    else:
        players["perfect"] = rule_player("perfect (minimax)", lambda env: perfect_moves(tuple(int(x) for x in env.board)))
    return players


def agent_player(name: str, policy, deterministic: bool = True) -> Player:
    """A trained policy (its most likely move; sampled with deterministic=False), its memory, if it has one,
    carried through each game."""

    def start_game(rng: np.random.Generator) -> Callable[[gym.Env, dict], int]:
        carrier = MemoryCarrier(policy, 1)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))

        def choose(env: gym.Env, obs: dict) -> int:
            return carrier.act_one(obs, generator, deterministic)[0]

        return choose

    return Player(name, start_game)


@dataclass
class Tally:
    """Wins, draws and losses, from one side."""

    wins: int = 0
    draws: int = 0
    losses: int = 0

    @property
    def games(self) -> int:
        return self.wins + self.draws + self.losses

    def flipped(self) -> Tally:
        """The same games from the other side."""
        return Tally(self.losses, self.draws, self.wins)


@dataclass
class PairResult(Tally):
    """Games between players a and b, from a's side."""

    a: str = ""
    b: str = ""


def play_game(env_id: str, first: Player, second: Player, seed: int) -> int:
    """One game; +1 when the first player wins, -1 when the second does, 0 for a draw (an illegal move loses)."""
    env = gym.make(env_id).unwrapped
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    choosers = {1: first.start_game(rng), -1: second.start_game(rng)}
    while True:
        mover = env.to_play
        obs, reward, terminated, _, info = env.step(choosers[mover](env, obs))
        beat()
        if terminated:
            sign = -1 if info.get("illegal") else (1 if reward > 0 else 0)
            return sign * mover


def play_pair(env_id: str, a: Player, b: Player, games: int, seed: int) -> PairResult:
    """`games` games between a and b, a moving first in the even ones (game g seeded seed + g)."""
    pair = PairResult(a=a.name, b=b.name)
    for g in range(games):
        a_first = g % 2 == 0
        outcome = play_game(env_id, a if a_first else b, b if a_first else a, seed + g)
        outcome = outcome if a_first else -outcome
        pair.wins += outcome > 0
        pair.draws += outcome == 0
        pair.losses += outcome < 0
    return pair


def round_robin(env_id: str, players: list[Player], games: int, seed: int = 0) -> list[PairResult]:
    """`games` games for every pair (half with each moving first, the odd one to the first named)."""
    return [
        play_pair(env_id, a, b, games, seed + 1000 * (i * len(players) + j))
        for (i, a), (j, b) in itertools.combinations(enumerate(players), 2)
    ]


@dataclass
class Rating:
    name: str
    elo: float
    total: Tally = field(default_factory=Tally)
    opponents: dict[str, Tally] = field(default_factory=dict)
    """the games against each opponent"""


def fit_elo(results: list[PairResult], prior_games: float = 1.0, iterations: int = 10_000) -> list[Rating]:
    """Bradley-Terry strengths by minorization-maximization (Hunter 2004), on Elo's scale, best first.

    With prior_games > 0 each player also gets that many games, half won and half lost, against a virtual
    player of strength 1: a weak prior that keeps an unbeaten (or never-winning) player's rating finite
    instead of running off to +-infinity. Without it the fit is the plain maximum likelihood one."""
    names = list(dict.fromkeys(n for r in results for n in (r.a, r.b)))
    index = {n: k for k, n in enumerate(names)}
    n = len(names)
    score = np.full(n, prior_games / 2)  # wins + draws / 2
    for r in results:
        score[index[r.a]] += r.wins + r.draws / 2
        score[index[r.b]] += r.losses + r.draws / 2
    # The games as a list of the pairs that played (a league's ratings: ~3 pairs per player, where an n x n
    # table made each iteration O(n^2): ~40 s a fit at 570 players). Each pair counts once for each side.
    a = np.array([index[r.a] for r in results], np.int64)
    b = np.array([index[r.b] for r in results], np.int64)
    pair_games = np.array([r.games for r in results], np.float64)
    side, other, games = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([pair_games, pair_games])
    strength = np.ones(n)
    for _ in range(iterations):
        # MM: s_i = W_i / (sum over i's games of 1 / (s_i + s_j)  +  the prior's games against strength 1).
        expected = np.bincount(side, weights=games / (strength[side] + strength[other]), minlength=n)
        updated = score / (expected + prior_games / (strength + 1.0))
        if prior_games == 0:
            updated /= np.exp(np.log(updated).mean())  # without the prior only the strengths' ratios are fixed
        converged = np.allclose(updated, strength, rtol=1e-12, atol=0)
        strength = updated
        if converged:
            break
    elo = ELO_SCALE * np.log(strength)
    elo += MEAN_RATING - elo.mean()
    ratings = {name: Rating(name, float(elo[index[name]])) for name in names}
    for r in results:
        tally = Tally(r.wins, r.draws, r.losses)
        ratings[r.a].opponents[r.b], ratings[r.b].opponents[r.a] = tally, tally.flipped()
    for rating in ratings.values():
        games = rating.opponents.values()
        rating.total = Tally(*(sum(getattr(t, k) for t in games) for k in ("wins", "draws", "losses")))
    return sorted(ratings.values(), key=lambda r: -r.elo)


def ratings_table(ratings: list[Rating]) -> str:
    """The ratings as a Markdown table, best first, with each player's total wins, draws and losses."""
    lines = ["| player | Elo | wins | draws | losses |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.elo:.0f} | {r.total.wins} | {r.total.draws} | {r.total.losses} |" for r in ratings]
    return "\n".join(lines)
