"""MuZero's replay: games and game segments with prioritised sampling of positions.

A position is drawn with probability P(i) = p_i^alpha / sum_j p_j^alpha (Schaul et al. 2016) and its loss
weighted by (N P(i))^-beta, which undoes the bias of the skewed sampling as beta goes to 1, divided by the
largest weight in the batch (as muzero-general does). Dividing by the largest weight over the whole buffer
instead lets one nearly-zero priority shrink every weight, and with them the gradient, to nothing. Capacity is counted in positions (transitions), so memory stays bounded whatever the game lengths:
the oldest games leave first.
"""

from __future__ import annotations

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
    """The stored games, oldest first, and every stored start position's priority in one array, end to end
    (each game's `priorities` is a view into it): sampling, the priorities' update and their statistics are
    then single numpy operations, where gathering thousands of games' arrays on every update cost more than
    the update of a small model (LunarLander's 100k positions: ~2 ms of a ~13 ms update)."""

    def __init__(self, capacity: int, alpha: float = 1.0, beta: float = 1.0, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1 position (got {capacity})")
        self.capacity, self.alpha, self.beta = capacity, alpha, beta
        self.games: list[Game] = []
        self.num_positions = 0
        self.games_seen = 0
        self.rng = np.random.default_rng(seed)
        self._priorities = np.zeros(0)  # [num_positions] every game's, in the order of self.games
        self._scaled = np.zeros(0)  # [num_positions] priorities ** alpha, kept up to date with them
        self._offsets = np.zeros(1, np.int64)  # [len(games) + 1] where each game's priorities start

    def _gather_priorities(self) -> None:
        """One array of all priorities again after games came or went, each game's a view into it (a game
        comes every segment_length moves of a game in play, so this copy is rare)."""
        self._priorities = np.concatenate([g.priorities for g in self.games]) if self.games else np.zeros(0)
        self._offsets = np.cumsum([0] + [g.num_starts for g in self.games])
        for game, start, end in zip(self.games, self._offsets[:-1], self._offsets[1:], strict=True):
            game.priorities = self._priorities[start:end]
        self._scaled = self._priorities**self.alpha

    def add(self, game: Game) -> None:
        if game.num_starts == 0:
            return
        if game.priorities is None:
            # New data is sampled at least as often as the most surprising stored position (Ape-X).
            top = self._priorities.max() if self.num_positions else 1.0
            game.priorities = np.full(game.num_starts, top, np.float64)
        self.games.append(game)
        self.num_positions += game.num_starts
        self.games_seen += 1
        evicted = 0
        while self.num_positions > self.capacity and len(self.games) - evicted > 1:
            self.num_positions -= self.games[evicted].num_starts
            evicted += 1
        del self.games[:evicted]
        self._gather_priorities()

    def sample(self, batch_size: int) -> tuple[list[tuple[Game, int]], np.ndarray, list[tuple[int, int]]]:
        """batch_size positions: [(game, position)], their importance weights [B], and keys (game index,
        position) for update_priorities."""
        if not self.games:
            raise ValueError("the replay is empty")
        probs = self._scaled / self._scaled.sum()
        flat = self.rng.choice(len(probs), size=batch_size, p=probs)
        weights = (len(probs) * probs[flat]) ** -self.beta
        weights /= weights.max()
        game_index = np.searchsorted(self._offsets, flat, side="right") - 1
        positions = flat - self._offsets[game_index]
        keys = list(zip(game_index.tolist(), positions.tolist(), strict=True))
        return [(self.games[gi], pos) for gi, pos in keys], weights, keys

    def priority_spread(self) -> dict[str, float]:
        """The stored priorities' median, 90th percentile and maximum: how skewed sampling is."""
        median, p90, top = np.percentile(self._priorities, [50, 90, 100])
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

        self.games = []
        self.num_positions = 0
        fields = zip(split("observations", 1), split("actions"), split("rewards"), split("policies"),
                     split("root_values", 1), split("priorities", counts=starts), split("legal_actions"),
                     state["terminated"].tolist(), starts, strict=True)  # fmt: skip
        for obs, actions, rewards, policies, values, priorities, legal, terminated, num_starts in fields:
            self.games.append(Game(obs, actions, rewards, policies, values, bool(terminated), priorities.copy(),
                                   num_starts, legal))  # fmt: skip
            self.num_positions += num_starts
        self._gather_priorities()
        self.games_seen = int(state["games_seen"])
        self.rng.bit_generator.state = state["rng"]

    def update_priorities(self, keys: list[tuple[int, int]], priorities: np.ndarray, eps: float = 1e-6) -> None:
        """New priorities (e.g. |V(s) - z|) for sampled positions; valid until the next add(). A position
        sampled twice takes its last one."""
        if not keys:
            return
        games, positions = np.array(keys, np.int64).T
        index = self._offsets[games] + positions
        values = np.asarray(priorities, np.float64) + eps
        # numpy leaves the order of repeated indices' writes open: keep each index's last value explicitly.
        _, last_from_end = np.unique(index[::-1], return_index=True)
        last = len(index) - 1 - last_from_end
        self._priorities[index[last]] = values[last]
        self._scaled[index[last]] = values[last] ** self.alpha
