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
import torch


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

    def state_dict(self) -> dict:
        """The stored games and the sampler's state, as tensors a checkpoint holds (torch.load's weights_only
        reads them back). Each field of every game is concatenated into one tensor, with the games' lengths
        to cut them apart: one storage a field, where thousands of short games (TicTacToe's nine moves)
        would otherwise make thousands of tiny records."""
        games = list(self.games)
        lengths = [len(g) for g in games]

        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(g, name) for g in games]
            return torch.from_numpy(np.concatenate(parts)) if parts and parts[0] is not None else None

        return {
            "lengths": torch.tensor(lengths, dtype=torch.int64),
            "num_starts": torch.tensor([g.num_starts for g in games], dtype=torch.int64),
            "terminated": torch.tensor([g.terminated for g in games], dtype=torch.bool),
            "observations": cat("observations"),  # T + 1 a game
            "actions": cat("actions"),
            "rewards": cat("rewards"),
            "policies": cat("policies"),
            "root_values": cat("root_values"),  # T + 1 a game
            "priorities": cat("priorities"),  # num_starts a game
            "legal_actions": cat("legal_actions"),
            "games_seen": self.games_seen,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Put back the games and the sampler's state of state_dict() (this replay's capacity, alpha and
        beta stay: they are the config's)."""
        lengths = state["lengths"].tolist()
        starts = state["num_starts"].tolist()

        def split(name: str, extra: int = 0, counts: list[int] | None = None) -> list[np.ndarray | None]:
            flat = state[name]
            if flat is None:
                return [None] * len(lengths)
            sizes = counts if counts is not None else [n + extra for n in lengths]
            return list(np.split(flat.numpy(), np.cumsum(sizes)[:-1])) if sizes else []

        self.games.clear()
        self.num_positions = 0
        fields = zip(split("observations", 1), split("actions"), split("rewards"), split("policies"),
                     split("root_values", 1), split("priorities", counts=starts), split("legal_actions"),
                     state["terminated"].tolist(), starts, strict=True)  # fmt: skip
        for obs, actions, rewards, policies, values, priorities, legal, terminated, num_starts in fields:
            self.games.append(Game(obs, actions, rewards, policies, values, bool(terminated), priorities.copy(),
                                   num_starts, legal))  # fmt: skip
            self.num_positions += num_starts
        self.games_seen = int(state["games_seen"])
        self.rng.bit_generator.state = state["rng"]

    def update_priorities(self, keys: list[tuple[int, int]], priorities: np.ndarray, eps: float = 1e-6) -> None:
        """New priorities (e.g. |V(s) - z|) for sampled positions; valid until the next add()."""
        for (gi, pos), p in zip(keys, priorities, strict=True):
            self.games[gi].priorities[pos] = float(p) + eps
