"""League self-play for two-player games, the way OpenAI Five and AlphaStar trained PPO agents: the learner
plays against a pool of opponents, its current self and frozen snapshots of its past selves (and, when
asked, fixed reference players), and learns only from its own moves.

- `League` (in the learner): the snapshots (one every --league.snapshot-every updates, or as soon as the
  policy's recent score against its frozen members passes --league.snapshot-score, as in RLlib's self-play
  example), each opponent's recent results, the opponents' sampling probabilities (uniform, or
  prioritised fictitious self-play: AlphaStar's (1 - p)^2 weighting, harder opponents more often) and an
  Elo table of the snapshots and the game's reference players (random, TicTacToe's perfect player,
  Connect Four's 4-ply lookahead), from rating games each new snapshot plays. All of it is in the
  checkpoint, so a resumed run continues the same league.
- `LeagueOpponents`: what the workers need of it (sampling probabilities, snapshot weights), sent when
  it changes.
- `OpponentVectorEnv` (in the rollout workers, whatever the backend): games in which an opponent drawn
  from the league for each game, and a side drawn at random, answers every learner move, so that the
  vector env looks like a one-player env to the rollout code. Opponents sample their moves; the moves of
  all games facing the same opponent go through its network in one batch.

A two-player env declares itself with `metadata["players"] == 2` and plays like envs.board_games'
TwoPlayerBoardEnv: `to_play`, observations from the mover's view, the reward to the mover.
"""

from __future__ import annotations

import copy
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch

from envs.board_games import other_sides_result
from envs.factory import make_env
from training.arena import PairResult, agent_player, fit_elo, play_pair, reference_players

CURRENT = -1
"""the opponent id of the learner's current policy (snapshots have ids 0, 1, 2, ...; reference players
-2, -3, ... in the order of training.arena.reference_players)"""
RECENT_GAMES = 100  # results kept per opponent for its win rate and PFSP weight


@dataclass
class LeagueOptions:
    """League self-play for two-player games (rlgames/TicTacToe-v0, rlgames/ConnectFour-v0)."""

    snapshot_every: int = 10
    """add a frozen copy of the policy to the league every this many updates (0 = only by --league.snapshot-score)"""
    snapshot_score: float = 0.0
    """also add one as soon as the policy's score over its last 100 games against the frozen members (snapshots, references; win 1, draw 0.5, loss 0) reaches this (0 = never)"""
    current_fraction: float = 0.5
    """share of the games played against the current policy itself; the rest against the frozen members"""
    opponent_epsilon: float = 0.0
    """share of the opponents' moves played uniformly at random instead of by their policy, so the learner meets more positions"""
    random_opening_plies: int = 0
    """each game opens with 0..this many uniformly random moves (both sides', none of them the learner's to learn from), so the learner meets more openings"""
    sampling: Literal["uniform", "pfsp"] = "pfsp"
    """which snapshot to play: 'uniform', or 'pfsp' (prioritised fictitious self-play: weight (1 - p)^2, p = the policy's recent score against it)"""
    references: tuple[str, ...] = ()
    """fixed players that join the league beside the snapshots, drawn like them (the game's reference players: random, and TicTacToe's perfect or Connect Four's lookahead); none by default, so the evaluation opponent is one the learner never trained against"""
    max_snapshots: int = 100
    """the oldest snapshot leaves the league when a new one would pass this"""
    rating_games: int = 20
    """games each new snapshot plays against every reference player and the snapshot before it, for the Elo table (league/elo_*; 0 = no ratings)"""


def reference_ids(env_id: str) -> dict[str, int]:
    """The opponent id of each of the game's reference players."""
    return {name: -2 - k for k, name in enumerate(reference_players(env_id))}


def league_problems(options: LeagueOptions, env_id: str) -> list[str]:
    problems = []
    unknown = [r for r in options.references if r not in reference_ids(env_id)]
    if unknown:
        problems.append(f"--league.references {' '.join(unknown)}: {env_id} has {', '.join(reference_ids(env_id))}")
    for name in ("snapshot_every", "rating_games", "random_opening_plies"):
        if getattr(options, name) < 0:
            problems.append(f"--league.{name.replace('_', '-')} must be >= 0 (got {getattr(options, name)})")
    for name in ("snapshot_score", "current_fraction", "opponent_epsilon"):
        if not 0.0 <= getattr(options, name) <= 1.0:
            problems.append(f"--league.{name.replace('_', '-')} must be in [0, 1] (got {getattr(options, name)})")
    if options.max_snapshots < 1:
        problems.append(f"--league.max-snapshots must be >= 1 (got {options.max_snapshots})")
    return problems


@dataclass
class LeagueOpponents:
    """What rollout workers need of the league: the probability of each opponent (CURRENT, snapshot and
    reference player ids) and the weights of snapshots (in an update, only of those the worker has not
    been sent yet)."""

    probabilities: dict[int, float]
    weights: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    epsilon: float = 0.0
    """share of the opponents' moves made uniformly at random"""
    random_opening_plies: int = 0
    """games open with 0..this many random moves"""
    references: dict[int, str] = field(default_factory=dict)
    """reference players in the league: id -> name in training.arena.reference_players"""


def _score(result: float) -> float:
    """A game's result for the learner (+1 win, 0 draw, -1 loss) as a score: 1, 0.5, 0."""
    return (float(result) + 1.0) / 2.0


class League:
    """The learner's side of league self-play: snapshots, results, sampling probabilities and ratings.

    make_policy(weights) builds a CPU policy with the given weights, for rating games."""

    def __init__(self, options: LeagueOptions, env_id: str, make_policy: Callable[[dict], torch.nn.Module], seed: int):
        self.options, self.env_id, self.make_policy, self.seed = options, env_id, make_policy, seed
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.snapshot_updates: dict[int, int] = {}
        """the update each snapshot was taken after"""
        self.recent: dict[int, deque] = defaultdict(lambda: deque(maxlen=RECENT_GAMES))
        """each opponent's latest results, as the learner's scores"""
        self.recent_vs_pool: deque = deque(maxlen=RECENT_GAMES)
        """the latest results against the frozen members (snapshots and reference players)"""
        self.references = {reference_ids(env_id)[name]: name for name in options.references}
        self.rating_results: list[PairResult] = []
        self.elo: dict[str, float] = {}
        self.next_id = 0
        self.version = 0
        """changes whenever the opponents or their probabilities do"""

    # --- results and snapshots -------------------------------------------------------------------------

    def record(self, opponents: np.ndarray, results: np.ndarray) -> None:
        """Games that ended: the opponent id of each and the learner's result (+1, 0, -1)."""
        for opponent, result in zip(opponents.tolist(), results.tolist(), strict=True):
            self.recent[int(opponent)].append(_score(result))
            if opponent != CURRENT:
                self.recent_vs_pool.append(_score(result))
        if len(opponents):
            self.version += self.options.sampling == "pfsp"  # the weights follow the results

    def score_vs_pool(self) -> float | None:
        return float(np.mean(self.recent_vs_pool)) if self.recent_vs_pool else None

    def wants_snapshot(self, update: int) -> bool:
        """Whether the policy after `update` updates should join the league."""
        o = self.options
        if not self.snapshots:
            return True  # something to play against besides itself, from the start
        if o.snapshot_every and update % o.snapshot_every == 0:
            return True
        score = self.score_vs_pool()
        return bool(o.snapshot_score) and len(self.recent_vs_pool) == RECENT_GAMES and score >= o.snapshot_score

    def add_snapshot(self, weights: dict[str, torch.Tensor], update: int) -> int:
        """Freeze a copy of the weights as a new league member (rated, when ratings are on); its id."""
        snapshot_id = self.next_id
        self.next_id += 1
        self.snapshots[snapshot_id] = {k: v.detach().cpu().clone() for k, v in weights.items()}
        self.snapshot_updates[snapshot_id] = update
        while len(self.snapshots) > self.options.max_snapshots:
            oldest = min(self.snapshots)
            del self.snapshots[oldest], self.snapshot_updates[oldest]
            self.recent.pop(oldest, None)
        self.recent_vs_pool.clear()  # the next promotion by score needs games against the new pool
        self.version += 1
        if self.options.rating_games:
            self._rate(snapshot_id)
        return snapshot_id

    def snapshot_name(self, snapshot_id: int) -> str:
        return f"update {self.snapshot_updates[snapshot_id]}"

    # --- what the workers get --------------------------------------------------------------------------

    def probabilities(self) -> dict[int, float]:
        """Each opponent's share of the games: --league.current-fraction for the current policy, the rest
        over the frozen members (snapshots, reference players), uniformly or by PFSP's (1 - p)^2 with p the
        learner's recent score against the member (one half-won game of prior, so an unplayed one starts
        at p = 0.5)."""
        ids = sorted(self.snapshots) + sorted(self.references)
        if not ids:
            return {CURRENT: 1.0}
        if self.options.sampling == "pfsp":
            p = np.array([(sum(self.recent[i]) + 0.5) / (len(self.recent[i]) + 1) for i in ids])
            weights = (1.0 - p) ** 2
            if weights.sum() <= 0:
                weights = np.ones(len(ids))
        else:
            weights = np.ones(len(ids))
        share = 1.0 - self.options.current_fraction
        probabilities = {CURRENT: self.options.current_fraction}
        probabilities.update({i: float(share * w / weights.sum()) for i, w in zip(ids, weights, strict=True)})
        return probabilities

    def opponents(self) -> LeagueOpponents:
        """The whole league, for a worker that starts."""
        o = self.options
        return LeagueOpponents(self.probabilities(), dict(self.snapshots), o.opponent_epsilon, o.random_opening_plies,
                               dict(self.references))  # fmt: skip

    # --- ratings ---------------------------------------------------------------------------------------

    def _rate(self, snapshot_id: int) -> None:
        """The new snapshot plays every reference player and the snapshot before it; then one Bradley-Terry
        fit of all rating games so far (training.arena.fit_elo)."""
        games, seed = self.options.rating_games, self.seed + 7919 * snapshot_id
        new = agent_player(self.snapshot_name(snapshot_id), self.make_policy(self.snapshots[snapshot_id]))
        opponents = list(reference_players(self.env_id).values())
        earlier = [i for i in self.snapshots if i < snapshot_id]
        if earlier:
            previous = max(earlier)
            opponents.append(agent_player(self.snapshot_name(previous), self.make_policy(self.snapshots[previous])))
        for k, opponent in enumerate(opponents):
            self.rating_results.append(play_pair(self.env_id, new, opponent, games, seed + 1000 * k))
        self.elo = self._fit_elo()

    def _fit_elo(self) -> dict[str, float]:
        """Every player's Elo with the random player at 0: fit_elo's mean-1000 scale would drift as the
        league grows, this anchor does not."""
        elo = {r.name: r.elo for r in fit_elo(self.rating_results)}
        anchor = elo.get(reference_players(self.env_id)["random"].name, 0.0)
        return {name: value - anchor for name, value in elo.items()}

    def scalars(self) -> dict[str, float]:
        """league/* for TensorBoard: the newest snapshot's Elo (the learner's as it was then; the random
        player at 0), the other reference players', the league's size and the recent score against its
        frozen members (and against each reference player in the pool)."""
        out: dict[str, float] = {"league/snapshots": float(len(self.snapshots))}
        score = self.score_vs_pool()
        if score is not None:
            out["league/score_vs_pool"] = score
        for i, name in self.references.items():  # reference players in the pool: the training games' score
            if self.recent[i]:
                out[f"league/score_vs_{name}"] = float(np.mean(self.recent[i]))
        if self.elo and self.snapshots:
            newest = self.snapshot_name(max(self.snapshots))
            if newest in self.elo:
                out["league/elo"] = self.elo[newest]
            for key, player in reference_players(self.env_id).items():
                if player.name in self.elo:
                    out[f"league/elo_{key}"] = self.elo[player.name]
        return out

    # --- checkpoint ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "snapshots": self.snapshots,
            "snapshot_updates": self.snapshot_updates,
            "recent": {i: list(d) for i, d in self.recent.items()},
            "recent_vs_pool": list(self.recent_vs_pool),
            "rating_results": [vars(r).copy() for r in self.rating_results],
            "next_id": self.next_id,
            "version": self.version,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.snapshots = dict(state["snapshots"])
        self.snapshot_updates = dict(state["snapshot_updates"])
        self.recent = defaultdict(lambda: deque(maxlen=RECENT_GAMES))
        for i, results in state["recent"].items():
            self.recent[int(i)].extend(results)
        self.recent_vs_pool = deque(state["recent_vs_pool"], maxlen=RECENT_GAMES)
        self.rating_results = [PairResult(**r) for r in state["rating_results"]]
        self.elo = self._fit_elo() if self.rating_results else {}
        self.next_id, self.version = state["next_id"], state["version"]


class OpponentVectorEnv(gym.vector.VectorEnv):
    """num_envs games of a two-player env in which the learner plays one side, drawn at random each game,
    and an opponent drawn from the league the other. One step is one learner move and the opponent's
    answer; the reward is the learner's (+1 win, 0 draw, -1 loss) and the episode its moves alone.
    Autoreset is SAME_STEP, as make_vector_env's: info["final_obs"] and info["final_info"]["episode"] for
    the games that ended, and info["final_info"]["opponent"] for whom each was against.

    `policy` is the learner's current policy (the CURRENT opponent: the worker keeps it up to date);
    snapshot opponents are copies of it with the league's weights."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, env_id: str, num_envs: int, seed: int, policy: torch.nn.Module, opponents: LeagueOpponents):
        self.games = [make_env(env_id, seed + i)().unwrapped for i in range(num_envs)]
        self.env_id, self.num_envs, self.policy = env_id, num_envs, policy
        self.single_observation_space = self.games[0].observation_space
        self.single_action_space = self.games[0].action_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.nets: dict[int, torch.nn.Module] = {}
        self.probabilities: dict[int, float] = {}
        self.rng = np.random.default_rng(seed)
        self.update_opponents(opponents)
        self.generator = torch.Generator().manual_seed(seed)
        self.obs: list[dict] = [{} for _ in range(num_envs)]
        self.side = np.ones(num_envs, np.int64)
        self.opponent = np.full(num_envs, CURRENT, np.int64)
        self.lengths = np.zeros(num_envs, np.int64)

    def update_opponents(self, opponents: LeagueOpponents) -> None:
        """New probabilities and the weights of new snapshots. A snapshot that left the league is kept
        while a game against it goes on."""
        for i, weights in opponents.weights.items():
            if i not in self.nets:
                net = copy.deepcopy(self.policy)
                net.load_state_dict(weights)
                self.nets[i] = net
        self.probabilities = dict(opponents.probabilities)
        self.epsilon, self.random_opening_plies = opponents.epsilon, opponents.random_opening_plies
        players = reference_players(self.env_id)
        self.rules = {i: players[name].start_game(self.rng) for i, name in opponents.references.items()}
        playing = set(getattr(self, "opponent", np.empty(0)).tolist())
        self.nets = {i: n for i, n in self.nets.items() if i in self.probabilities or i in playing}

    def reset(self, *, seed: int | list[int] | None = None, options: dict | None = None):
        seeds = seed if isinstance(seed, list) else [None if seed is None else seed + i for i in range(self.num_envs)]
        if seeds[0] is not None:
            self.rng = np.random.default_rng(seeds[0])
            self.generator.manual_seed(seeds[0])
        for i, game_seed in enumerate(seeds):
            self.obs[i], _ = self.games[i].reset(seed=game_seed)
        self._start_games(list(range(self.num_envs)))
        return self._batch(self.obs), {}

    def _start_games(self, envs: list[int]) -> None:
        """Fresh games (reset, their first observations in self.obs) for these envs: an opponent and a side
        (+1 first, -1 second) each, the random opening moves, and the opponent's move where it is its turn."""
        ids = list(self.probabilities)
        p = np.array([self.probabilities[i] for i in ids])
        for i in envs:
            self.opponent[i] = ids[self.rng.choice(len(ids), p=p / p.sum())]
            self.side[i] = 1 if self.rng.random() < 0.5 else -1
            self.lengths[i] = 0
            for _ in range(self.rng.integers(self.random_opening_plies + 1) if self.random_opening_plies else 0):
                move = self.rng.choice(np.flatnonzero(self.obs[i]["action_mask"]))
                self.obs[i], _, terminated, _, _ = self.games[i].step(int(move))
                if terminated:  # an opening too long for the game: start it again without one
                    self.obs[i], _ = self.games[i].reset()
                    break
        self._opponents_move([i for i in envs if self.games[i].to_play != self.side[i]])

    def _opponents_move(self, envs: list[int]) -> dict[int, float]:
        """The opponents of these games move (one batch per opponent); the learner's reward of each game
        the move ended."""
        by_opponent = defaultdict(list)
        for i in envs:
            by_opponent[int(self.opponent[i])].append(i)
        ended = {}
        for opponent, members in by_opponent.items():
            if opponent in self.rules:  # a reference player: one move at a time
                for i in members:
                    self.obs[i], reward, terminated, _, _ = self.games[i].step(self.rules[opponent](self.games[i], self.obs[i]))
                    if terminated:
                        ended[i] = other_sides_result(reward)
                continue
            net = self.policy if opponent == CURRENT else self.nets[opponent]
            obs = {k: torch.from_numpy(v) for k, v in self._batch([self.obs[i] for i in members]).items()}
            with torch.inference_mode():
                moves = net.act(obs, self.generator, False)[0].numpy()
            if self.epsilon:
                for k, i in enumerate(members):
                    if self.rng.random() < self.epsilon:
                        moves[k] = self.rng.choice(np.flatnonzero(self.obs[i]["action_mask"]))
            for i, move in zip(members, moves, strict=True):
                self.obs[i], reward, terminated, _, _ = self.games[i].step(int(move))
                if terminated:
                    ended[i] = other_sides_result(reward)  # the opponent's win is the learner's loss
        return ended

    def step(self, actions):
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        for i, action in enumerate(np.asarray(actions).tolist()):
            self.obs[i], reward, done, _, _ = self.games[i].step(int(action))
            self.lengths[i] += 1
            if done:
                rewards[i], terminated[i] = reward, True
        for i, reward in self._opponents_move(np.flatnonzero(~terminated).tolist()).items():
            rewards[i], terminated[i] = reward, True
        info: dict[str, Any] = {}
        ended = np.flatnonzero(terminated).tolist()
        if ended:
            final_obs = np.empty(self.num_envs, dtype=object)
            for i in ended:
                final_obs[i] = self.obs[i]
            info = {
                "final_obs": final_obs, "_final_obs": terminated.copy(),
                "final_info": {
                    "episode": {"r": rewards.copy(), "l": self.lengths.copy()}, "_episode": terminated.copy(),
                    "opponent": self.opponent.copy(), "_opponent": terminated.copy(),
                },
            }  # fmt: skip
            for i in ended:
                self.obs[i], _ = self.games[i].reset()
            self._start_games(ended)
        truncated = np.zeros(self.num_envs, bool)
        return self._batch(self.obs), rewards, terminated, truncated, info

    @staticmethod
    def _batch(items: list[dict]) -> dict[str, np.ndarray]:
        return {k: np.stack([o[k] for o in items]) for k in items[0]}

    def close(self, **kwargs) -> None:
        for game in self.games:
            game.close()
