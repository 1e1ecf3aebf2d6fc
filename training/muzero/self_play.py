"""MuZero's self-play workers: each owns a few games and a CPU copy of the model, plays them with the
batched search and hands back the games that ended, as plain arrays (training.muzero.replay.Game).

The learner talks to one SelfPlayExecutor whatever runs the workers: in its own process (the default:
for small models and cheap envs a process round trip costs more than it saves), in worker processes,
or as Ray actors, chosen by `--backend`: the same worker pool as PPO's rollout workers (training.workers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from agents.muzero.networks import root_inference, search_callback
from agents.muzero.policies import run_policy_over_symmetries
from envs.factory import episode_stats_from_info, make_vector_env
from training.interrupts import beat
from training.muzero.config import (
    MuZeroConfig,
    build_model,
    resolve_self_play,
    sampling_moves,
    search_config,
    search_symmetries,
)
from training.muzero.replay import Game
from training.seeds import Reseed, reseeded
from training.workers.backends import make_backend
from training.workers.pool import InProcessBackend, PoolBackend, WorkerFactory, WorkerPool


@dataclass
class _GameRecord:
    observations: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    policies: list = field(default_factory=list)
    root_values: list = field(default_factory=list)
    legal_actions: list = field(default_factory=list)  # empty for envs without action masks

    def finish(self, final_obs: np.ndarray, final_value: float, terminated: bool, num_starts: int | None = None) -> Game:
        return Game(
            observations=np.stack([*self.observations, final_obs]),
            actions=np.array(self.actions, np.int64),
            rewards=np.array(self.rewards, np.float64),
            policies=np.stack(self.policies),
            root_values=np.array([*self.root_values, final_value], np.float64),
            terminated=terminated,
            legal_actions=np.stack(self.legal_actions) if self.legal_actions else None,
            num_starts=num_starts,
        )

    def cut_segment(self, starts: int, lookahead: int) -> Game | None:
        """Once the game in progress holds starts + lookahead + 1 moves: a Game of its first starts
        positions carrying the next `lookahead` moves (and the root value after them) for their targets;
        those first `starts` moves then leave the record. None while it holds fewer."""
        T = starts + lookahead
        if len(self.actions) <= T:
            return None
        head = _GameRecord(self.observations[:T], self.actions[:T], self.rewards[:T], self.policies[:T],
                           self.root_values[:T], self.legal_actions[:T])  # fmt: skip
        segment = head.finish(self.observations[T], self.root_values[T], terminated=False, num_starts=starts)
        for values in (self.observations, self.actions, self.rewards, self.policies, self.root_values,
                       self.legal_actions):  # fmt: skip
            del values[:starts]
        return segment


def _finite_rows(features: np.ndarray) -> np.ndarray:
    """[B] whether row b of [B, F] features is all finite (integer observations always are)."""
    if not np.issubdtype(features.dtype, np.floating):
        return np.ones(len(features), bool)
    return np.isfinite(features).all(-1)


def _features(obs) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(obs, dict):
        return obs["obs"].reshape(len(obs["obs"]), -1), obs["action_mask"].astype(bool)
    return obs.reshape(len(obs), -1), None


def _mean_entropy(p: np.ndarray) -> float:
    """The mean entropy (nats) of the distributions in the rows of p [B, A]."""
    return float(-(p * np.log(np.maximum(p, 1e-12))).sum(-1).mean())


@dataclass
class SelfPlayRound:
    """What workers send back from one round: the games that ended and a few statistics."""

    games: list[Game]
    episode_returns: np.ndarray
    episode_lengths: np.ndarray
    steps: int
    """env steps played"""
    root_values: list[float] = field(default_factory=list)
    root_visit_entropies: list[float] = field(default_factory=list)
    prior_entropies: list[float] = field(default_factory=list)
    """the entropy of the model's prior at the roots (before root noise), beside the search's visits"""
    seconds: float = 0.0
    env_restarts: int = 0
    """times the worker's envs were rebuilt because one raised or gave a non-finite observation or reward"""
    dropped_episodes: int = 0
    """games in progress cut and dropped by those rebuilds (they reach neither the replay nor the statistics)"""
    nonfinite_steps: int = 0
    """env steps whose observation or reward was NaN or inf (dropped before they reach the replay)"""
    worker_restarts: int = 0
    """self-play workers replaced during the round (dead, hung or raising)"""

    @classmethod
    def merge(cls, rounds: list[SelfPlayRound]) -> SelfPlayRound:
        return cls(
            games=[g for r in rounds for g in r.games],
            episode_returns=np.concatenate([r.episode_returns for r in rounds]),
            episode_lengths=np.concatenate([r.episode_lengths for r in rounds]),
            steps=sum(r.steps for r in rounds),
            root_values=[v for r in rounds for v in r.root_values],
            root_visit_entropies=[v for r in rounds for v in r.root_visit_entropies],
            prior_entropies=[v for r in rounds for v in r.prior_entropies],
            seconds=max(r.seconds for r in rounds),
            env_restarts=sum(r.env_restarts for r in rounds),
            dropped_episodes=sum(r.dropped_episodes for r in rounds),
            nonfinite_steps=sum(r.nonfinite_steps for r in rounds),
        )


class SelfPlayWorker:
    """Plays `num_envs` games at once (one batched search per move for all of them) with `model`.

    Games in progress stay with the worker between rounds; a round returns those that ended. `rng`
    drives the search noise and the move sampling (the in-process worker shares the learner's).
    """

    def __init__(self, cfg: MuZeroConfig, model: torch.nn.Module, num_envs: int, seed: int, rng: np.random.Generator | None = None):
        self.model, self.search, self.symmetries = model, search_config(cfg), search_symmetries(cfg, self_play=True)
        self.sampling_moves = sampling_moves(cfg)
        self.move_number = np.zeros(num_envs, np.int64)  # moves made in each game so far
        # Long games reach the replay in segments: a 500-move CartPole game would otherwise teach nothing
        # until it ends, 500 x num_envs env steps after it began.
        self.segment_length, self.lookahead = cfg.segment_length, cfg.unroll_steps + cfg.td_steps
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.env_id, self.num_envs, self.seed, self.restarts = cfg.env_id, num_envs, seed, 0
        self.envs = None
        self._start_envs(seed)

    def _start_envs(self, seed: int) -> None:
        if self.envs is not None:
            with contextlib.suppress(Exception):  # the envs being replaced may be broken
                self.envs.close()
        self.envs = make_vector_env(self.env_id, self.num_envs, seed)
        self.obs, _ = self.envs.reset(seed=[seed + i for i in range(self.num_envs)])
        self.records = [_GameRecord() for _ in range(self.num_envs)]
        self.move_number[:] = 0

    def _restart_envs(self) -> int:
        """Rebuild the envs on fresh seeds after one raised or gave NaN/inf; the games in progress are cut
        and dropped (how many is returned): their last moves have no trustworthy outcome."""
        dropped = sum(1 for rec in self.records if rec.actions)
        self.restarts += 1
        self._start_envs(reseeded(self.seed, Reseed.ENV_REBUILT, self.restarts))
        return dropped

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict)

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        """`moves` moves in every game: the first sampling_moves of each game sampled from the root visits ^
        (1 / temperature), later ones the most visited (Gumbel: the search's own choice)."""
        start = time.perf_counter()
        games, returns, lengths, root_values, entropies, prior_entropies = [], [], [], [], [], []
        restarts = dropped = nonfinite = 0
        for _ in range(moves):
            features, mask = _features(self.obs)
            # The first sampling_moves of each game sample from the visits, later ones take the most visited.
            greedy = self.move_number >= self.sampling_moves if self.sampling_moves else False
            result = run_policy_over_symmetries(functools.partial(root_inference, self.model), search_callback(self.model),
                                                self.search, self.rng, features, self.symmetries, mask, temperature, greedy)  # fmt: skip
            actions = result.action
            try:
                next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
                beat()  # progress, for the watchdog of in-process runs
            except Exception:  # a crashed game or emulator: rebuild, drop the games it cut, play on
                restarts, dropped = restarts + 1, dropped + self._restart_envs()
                continue
            bad = ~(_finite_rows(_features(next_obs)[0]) & np.isfinite(np.asarray(rewards, np.float64)))
            if bad.any():
                # NaN/inf would reach the model's inputs and the value targets: nothing of these games is
                # kept, and the envs start again (a vector env cannot reset one of its envs alone).
                nonfinite += int(bad.sum())
                restarts, dropped = restarts + 1, dropped + self._restart_envs()
                continue
            for i, rec in enumerate(self.records):
                rec.observations.append(features[i])
                rec.actions.append(int(actions[i]))
                rec.rewards.append(float(rewards[i]))
                rec.policies.append(result.action_weights[i])
                rec.root_values.append(float(result.root_value[i]))
                if mask is not None:
                    rec.legal_actions.append(mask[i])
                if self.segment_length and (segment := rec.cut_segment(self.segment_length, self.lookahead)):
                    games.append(segment)
            self.move_number += 1
            for i in np.flatnonzero(terminated | truncated):
                self.move_number[i] = 0
                final = info["final_obs"][i]
                final_features = np.asarray(final["obs"] if isinstance(final, dict) else final, features.dtype).reshape(-1)
                # A time limit cut the game: its last state is worth what the model says, not 0.
                final_value = 0.0
                if truncated[i] and not terminated[i]:
                    final_value = float(root_inference(self.model, final_features[None]).value[0])
                games.append(self.records[i].finish(final_features, final_value, bool(terminated[i])))
                self.records[i] = _GameRecord()
            if "final_obs" in info:
                ep_returns, ep_lengths = episode_stats_from_info(info)
                returns.append(ep_returns)
                lengths.append(ep_lengths)
            root_values.append(float(result.root_value.mean()))
            weights = result.action_weights
            entropies.append(_mean_entropy(weights))
            prior_entropies.append(_mean_entropy(result.prior))
            self.obs = next_obs
        return SelfPlayRound(
            games, np.concatenate(returns) if returns else np.empty(0, np.float32),
            np.concatenate(lengths) if lengths else np.empty(0, np.int64), moves * len(self.records),
            root_values, entropies, prior_entropies, time.perf_counter() - start, restarts, dropped, nonfinite,
        )  # fmt: skip

    def close(self) -> None:
        self.envs.close()


class SelfPlayExecutor:
    """MuZero's self-play workers in the shared worker pool (training.workers): the learner calls
    set_weights after its updates and play for each round; a dead or hung worker outside the learner's
    process is replaced (new env seeds, the latest weights) and plays its share of the round again, its
    games in progress dropped and counted."""

    def __init__(self, backend: PoolBackend, make_worker: Callable[[int, int], WorkerFactory],
                 shares: list[tuple[int, int]], timeout: float):  # fmt: skip
        self.shares = shares
        self.pool = WorkerPool(backend, make_worker, [n for n, _ in shares], timeout, "self-play worker")
        self.version = 0

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.version += 1
        self.pool.set_weights(state_dict, self.version)

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        restarts, dropped = self.pool.worker_restarts, self.pool.dropped_episodes
        merged = SelfPlayRound.merge(self.pool.call_all("play", lambda i: (moves, temperature)))
        merged.worker_restarts = self.pool.worker_restarts - restarts
        merged.dropped_episodes += self.pool.dropped_episodes - dropped
        return merged

    @property
    def restarts(self) -> list[int]:
        """times each worker slot was replaced"""
        return self.pool.restarts

    def worker_seed(self, i: int, restarts: int) -> int:
        return reseeded(self.shares[i][1], Reseed.WORKER_REPLACED, restarts)

    def worker_pids(self) -> list[int]:
        """Process ids of workers outside the learner's process (for the memory figures)."""
        return self.pool.worker_pids()

    def close(self) -> None:
        self.pool.close()


def new_self_play_worker(cfg: MuZeroConfig, num_envs: int, seed: int) -> SelfPlayWorker:
    """A worker with a model copy of its own (its weights come with the first round): outside the learner."""
    return SelfPlayWorker(cfg, build_model(cfg).eval(), num_envs, seed)


class _RemoteSelfPlay(SelfPlayExecutor):
    """Workers outside the learner's process, each with its share (num_envs, first env seed) of the games."""

    def __init__(self, backend: str, cfg: MuZeroConfig, shares: list[tuple[int, int]], timeout: float,
                 ray_address: str | None = None):  # fmt: skip
        self.cfg = dataclasses.replace(cfg, resume=None)
        pool_backend = make_backend(backend, len(shares), 1, ray_address, "self-play")
        super().__init__(pool_backend, self._worker_factory, shares, timeout)

    def _worker_factory(self, i: int, restarts: int) -> WorkerFactory:
        return functools.partial(new_self_play_worker, self.cfg, self.shares[i][0], self.worker_seed(i, restarts))


class MultiprocessSelfPlay(_RemoteSelfPlay):
    """Workers in their own processes (spawned); a round runs them all at once and waits for every one."""

    def __init__(self, cfg: MuZeroConfig, shares: list[tuple[int, int]], timeout: float = 300.0):
        super().__init__("multiprocess", cfg, shares, timeout)

    @property
    def processes(self) -> list:
        return self.pool.backend.processes


class RaySelfPlay(_RemoteSelfPlay):
    """Workers as Ray actors (on this machine, or a cluster with `ray_address`)."""

    def __init__(self, cfg: MuZeroConfig, shares: list[tuple[int, int]], ray_address: str | None = None,
                 timeout: float = 300.0):  # fmt: skip
        super().__init__("ray", cfg, shares, timeout, ray_address)

    @property
    def pids(self) -> list[int | None]:
        return self.pool.backend.pids


def make_self_play(cfg: MuZeroConfig, model: torch.nn.Module, seed: int, rng: np.random.Generator) -> SelfPlayExecutor:
    """The executor of cfg's backend with its workers sharing cfg.num_envs games (worker i's envs seeded from
    seed + its first env index). The in-process worker plays with `model` and `rng` themselves."""
    backend, workers = resolve_self_play(cfg)
    per_worker = cfg.num_envs // workers
    shares = [(per_worker, seed + i * per_worker) for i in range(workers)]
    if backend == "inprocess":
        worker = functools.partial(SelfPlayWorker, cfg, model, cfg.num_envs, seed, rng)
        return SelfPlayExecutor(InProcessBackend(1), lambda i, restarts: worker, shares, cfg.worker_timeout)
    if backend == "multiprocess":
        return MultiprocessSelfPlay(cfg, shares, cfg.worker_timeout)
    return RaySelfPlay(cfg, shares, cfg.ray_address, cfg.worker_timeout)
