"""MuZero's replay: games and game segments with prioritised sampling of positions.

A position is drawn with probability P(i) = p_i^alpha / sum_j p_j^alpha (Schaul et al. 2016) and its loss
weighted by (N P(i))^-beta, which undoes the bias of the skewed sampling as beta goes to 1, divided by the
largest weight in the batch (as muzero-general does). Dividing by the largest weight over the whole buffer
instead lets one nearly-zero priority shrink every weight, and with them the gradient, to nothing. Capacity is counted in positions (transitions), so memory stays bounded whatever the game lengths:
the oldest games leave first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Game:
    """One played game (or a segment of one): what the search saw and what happened."""

    observations: np.ndarray  # [T + 1, ...] including the observation after the last move
    actions: np.ndarray  # [T]
    rewards: np.ndarray  # [T]
    policies: np.ndarray  # [T, A] the search's visit distributions
    root_values: np.ndarray  # [T + 1] the search's values; the last is 0 after a real end
    terminated: bool
    priorities: np.ndarray = field(default=None)  # [num_starts]; default: the buffer's highest
    num_starts: int | None = None
    """positions sampled as unroll starts (default: all T). A segment cut from a game in progress carries
    K + n moves past its starts, so every start's unroll and n-step targets stay inside it."""
    legal_actions: np.ndarray | None = None  # [T, A] bool, for envs with action masks (a reanalysing search needs them)

    def __post_init__(self) -> None:
        if self.num_starts is None:
            self.num_starts = len(self.actions)

    def __len__(self) -> int:
        return len(self.actions)


class PrioritizedReplay:
    def __init__(self, capacity: int, alpha: float = 1.0, beta: float = 1.0, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 position (got {capacity})")
        self.capacity, self.alpha, self.beta = capacity, alpha, beta
        self.games: deque[Game] = deque()
        self.num_positions = 0
        self.games_seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, game: Game) -> None:
        if game.num_starts == 0:
            return
        if game.priorities is None:
            # New data is sampled at least as often as the most surprising stored position (Ape-X).
            top = max((g.priorities.max() for g in self.games), default=1.0)
            game.priorities = np.full(game.num_starts, top, np.float64)
        self.games.append(game)
        self.num_positions += game.num_starts
        self.games_seen += 1
        while self.num_positions > self.capacity and len(self.games) > 1:
            self.num_positions -= self.games.popleft().num_starts

    def sample(self, batch_size: int) -> tuple[list[tuple[Game, int]], np.ndarray, list[tuple[int, int]]]:
        """batch_size positions: [(game, position)], their importance weights [B], and keys (game index,
        position) for update_priorities."""
        if not self.games:
            raise ValueError("the replay is empty")
        priorities = np.concatenate([g.priorities for g in self.games]) ** self.alpha
        probs = priorities / priorities.sum()
        flat = self.rng.choice(len(probs), size=batch_size, p=probs)
        weights = (len(probs) * probs[flat]) ** -self.beta
        weights /= weights.max()
        offsets = np.cumsum([0] + [g.num_starts for g in self.games])
        game_index = np.searchsorted(offsets, flat, side="right") - 1
        keys = [(int(gi), int(f - offsets[gi])) for gi, f in zip(game_index, flat, strict=True)]
        return [(self.games[gi], pos) for gi, pos in keys], weights, keys

    def priority_spread(self) -> dict[str, float]:
        """The stored priorities' median, 90th percentile and maximum: how skewed sampling is."""
        p = np.concatenate([g.priorities for g in self.games])
        median, p90, top = np.percentile(p, [50, 90, 100])
        return {"median": float(median), "p90": float(p90), "max": float(top)}

    def update_priorities(self, keys: list[tuple[int, int]], priorities: np.ndarray, eps: float = 1e-6) -> None:
        """New priorities (e.g. |V(s) - z|) for sampled positions; valid until the next add()."""
        for (gi, pos), p in zip(keys, priorities, strict=True):
            self.games[gi].priorities[pos] = float(p) + eps
