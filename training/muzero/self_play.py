"""MuZero's self-play workers: each owns a few games and a CPU copy of the model, plays them with the
batched search and hands back the games that ended, as plain arrays (training.muzero.replay.Game).

The learner talks to one SelfPlayExecutor whatever runs the workers: in its own process (the default:
for small models and cheap envs a process round trip costs more than it saves), in worker processes,
or as Ray actors, chosen by `--backend`, as PPO's rollout workers are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np
import torch

from agents.muzero.networks import root_inference, search_callback
from agents.muzero.policies import run_policy
from envs.factory import episode_stats_from_info, make_vector_env
from training.interrupts import beat
from training.muzero.config import MuZeroConfig, build_model, resolve_self_play, sampling_moves, search_config
from training.muzero.replay import Game
from training.seeds import Reseed, reseeded
from training.workers.processes import (
    MIN_STARTUP_TIMEOUT,
    NO_REPLY,
    receive_reply,
    serve_commands,
    start_worker_process,
)
from training.workers.ray_cluster import connect_ray


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
        self.model, self.search = model, search_config(cfg)
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
        games, returns, lengths, root_values, entropies = [], [], [], [], []
        restarts = dropped = nonfinite = 0
        for _ in range(moves):
            features, mask = _features(self.obs)
            # The first sampling_moves of each game sample from the visits, later ones take the most visited.
            greedy = self.move_number >= self.sampling_moves if self.sampling_moves else False
            result = run_policy(root_inference(self.model, features), search_callback(self.model), self.search,
                                self.rng, mask, temperature, greedy)  # fmt: skip
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
            entropies.append(float(-(weights * np.log(np.maximum(weights, 1e-12))).sum(-1).mean()))
            self.obs = next_obs
        return SelfPlayRound(
            games, np.concatenate(returns) if returns else np.empty(0, np.float32),
            np.concatenate(lengths) if lengths else np.empty(0, np.int64), moves * len(self.records),
            root_values, entropies, time.perf_counter() - start, restarts, dropped, nonfinite,
        )  # fmt: skip

    def close(self) -> None:
        self.envs.close()


class SelfPlayError(RuntimeError):
    """A self-play worker process or actor died or raised."""


class SelfPlayExecutor:
    """Runs the workers; the learner calls set_weights after its updates and play for each round."""

    def __init__(self, workers: list[SelfPlayWorker]):
        self.workers = workers

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        for w in self.workers:
            w.set_weights(state_dict)

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        return SelfPlayRound.merge([w.play(moves, temperature) for w in self.workers])

    def worker_pids(self) -> list[int]:
        """Process ids of workers outside the learner's process (for the memory figures)."""
        return []

    def close(self) -> None:
        for w in self.workers:
            w.close()


def _worker_process(cfg: MuZeroConfig, num_envs: int, seed: int, conn: Connection) -> None:
    def set_weights(worker: SelfPlayWorker, state_dict: dict[str, torch.Tensor]):
        worker.set_weights(state_dict)
        return NO_REPLY

    serve_commands(conn, lambda: SelfPlayWorker(cfg, build_model(cfg).eval(), num_envs, seed),
                   {"weights": set_weights, "play": SelfPlayWorker.play})  # fmt: skip


class _ReplacingSelfPlay(SelfPlayExecutor, ABC):
    """Workers outside the learner's process, each with its share of the games. One that dies, raises or
    stays silent for `timeout` seconds during a round is stopped and replaced by a fresh one (new env seeds,
    the latest weights) that plays its share of the round again; the games it had in progress are lost
    (counted as dropped). At start-up a failure is raised at once: it is a setup problem, not bad luck.
    Subclasses say how to start, ask, hear from and stop worker i."""

    # Replacements of one worker in a row (within one round) before the round gives up.
    MAX_REPLACEMENTS_IN_A_ROW = 3

    def __init__(self, cfg: MuZeroConfig, shares: list[tuple[int, int]], timeout: float):
        self.cfg, self.shares, self.timeout = cfg, shares, timeout
        self.restarts = [0] * len(shares)
        self.weights: dict[str, torch.Tensor] | None = None
        for i in range(len(shares)):
            self._start(i)
        try:
            for i in range(len(shares)):
                self._wait_ready(i)
        except BaseException as e:
            self.close()
            if isinstance(e, SelfPlayError):
                raise SelfPlayError(f"self-play worker {i} could not start: {e}") from None
            raise

    def worker_seed(self, i: int) -> int:
        return reseeded(self.shares[i][1], Reseed.WORKER_REPLACED, self.restarts[i])

    @abstractmethod
    def _start(self, i: int) -> None:
        """Start worker i (without waiting for it)."""

    @abstractmethod
    def _wait_ready(self, i: int) -> None:
        """Return once worker i has built its envs; SelfPlayError if it cannot."""

    @abstractmethod
    def _send_weights(self, i: int) -> None:
        """Give worker i self.weights (before its next round)."""

    @abstractmethod
    def _request(self, i: int, moves: int, temperature: float) -> None:
        """Ask worker i for a round of `moves` moves."""

    @abstractmethod
    def _receive(self, i: int) -> SelfPlayRound:
        """Worker i's round; SelfPlayError if it died, raised or hung."""

    @abstractmethod
    def _stop(self, i: int) -> None:
        """Stop worker i for good, whatever state it is in."""

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.weights = {k: v.detach().cpu() for k, v in state_dict.items()}
        for i in range(len(self.shares)):
            with contextlib.suppress(SelfPlayError):  # a dead worker is replaced at the next round
                self._send_weights(i)

    def _replace(self, i: int, reason: SelfPlayError) -> None:
        self._stop(i)
        self.restarts[i] += 1
        print(f"self-play worker {i} {reason}; replacing it (new env seeds)", file=sys.stderr)
        self._start(i)
        self._wait_ready(i)
        if self.weights is not None:
            self._send_weights(i)

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        for i in range(len(self.shares)):
            with contextlib.suppress(SelfPlayError):  # a worker already dead fails in _receive below
                self._request(i, moves, temperature)
        rounds, replaced, dropped = [], 0, 0
        for i in range(len(self.shares)):
            for attempt in range(self.MAX_REPLACEMENTS_IN_A_ROW + 1):
                try:
                    rounds.append(self._receive(i))
                    break
                except SelfPlayError as e:
                    if attempt == self.MAX_REPLACEMENTS_IN_A_ROW:
                        raise SelfPlayError(f"self-play worker {i} failed {attempt + 1} times in a row: {e}") from None
                    self._replace(i, e)
                    replaced, dropped = replaced + 1, dropped + self.shares[i][0]
                    self._request(i, moves, temperature)
        merged = SelfPlayRound.merge(rounds)
        merged.worker_restarts, merged.dropped_episodes = replaced, merged.dropped_episodes + dropped
        return merged


class MultiprocessSelfPlay(_ReplacingSelfPlay):
    """Workers in their own processes (spawned), each with its share of the games; a round runs them
    all at once and waits for every one."""

    def __init__(self, cfg: MuZeroConfig, shares: list[tuple[int, int]], timeout: float = 300.0):
        self.ctx = torch.multiprocessing.get_context("spawn")
        self.conns: list = [None] * len(shares)
        self.processes: list = [None] * len(shares)
        super().__init__(cfg, shares, timeout)

    def _start(self, i: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_process, args=(self.cfg, self.shares[i][0], self.worker_seed(i), child),
                                daemon=True, name=f"self-play-{i}")  # fmt: skip
        start_worker_process(proc)
        child.close()
        self.conns[i], self.processes[i] = parent, proc

    def _reply(self, i: int, expected: str, timeout: float):
        return receive_reply(self.conns[i], self.processes[i], expected, timeout, SelfPlayError, "--worker-timeout")

    def _wait_ready(self, i: int) -> None:
        self._reply(i, "ready", max(self.timeout, MIN_STARTUP_TIMEOUT))

    def _send(self, i: int, message: tuple) -> None:
        try:
            self.conns[i].send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise SelfPlayError(f"died (exit code {self.processes[i].exitcode})") from None

    def _send_weights(self, i: int) -> None:
        self._send(i, ("weights", self.weights))

    def _request(self, i: int, moves: int, temperature: float) -> None:
        self._send(i, ("play", moves, temperature))

    def _receive(self, i: int) -> SelfPlayRound:
        return self._reply(i, "ok", self.timeout)

    def _stop(self, i: int) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conns[i].close()
        proc = self.processes[i]
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(timeout=10)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self.processes if p is not None and p.pid is not None]

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError, AttributeError):
                conn.send(("close",))
        for proc in self.processes:
            if proc is None:
                continue
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


class RaySelfPlay(_ReplacingSelfPlay):
    """Workers as Ray actors (on this machine, or a cluster with `ray_address`)."""

    def __init__(self, cfg: MuZeroConfig, shares: list[tuple[int, int]], ray_address: str | None = None, timeout: float = 300.0):
        ray, self.started_ray = connect_ray(ray_address, num_cpus=max(len(shares), 1))
        self.address = ray_address
        self.ray = ray
        self.actor_class = ray.remote(num_cpus=1, max_restarts=0)(_RaySelfPlayActor)
        self.actors: list = [None] * len(shares)
        self.ready: list = [None] * len(shares)
        self.pending: list = [None] * len(shares)
        self.pids: list[int | None] = [None] * len(shares)
        super().__init__(cfg, shares, timeout)

    def _get(self, ref, what: str, timeout: float):
        try:
            return self.ray.get(ref, timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise SelfPlayError(f"hung ({what}: no reply within {timeout:g}s, --worker-timeout)") from None
        except self.ray.exceptions.RayError as e:
            raise SelfPlayError(f"died or raised ({what}): {str(e).strip()[:2000]}") from None

    def _start(self, i: int) -> None:
        self.actors[i] = self.actor_class.remote(self.cfg, self.shares[i][0], self.worker_seed(i))
        self.ready[i] = self.actors[i].pid.remote()

    def _wait_ready(self, i: int) -> None:
        self.pids[i] = self._get(self.ready[i], "starting", max(self.timeout, MIN_STARTUP_TIMEOUT))

    def _send_weights(self, i: int) -> None:
        # The actor's call is queued before its next play; a failure shows in that play's reply.
        self.actors[i].set_weights.remote(self.weights_ref)

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.weights_ref = self.ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        super().set_weights(state_dict)

    def _request(self, i: int, moves: int, temperature: float) -> None:
        self.pending[i] = self.actors[i].play.remote(moves, temperature)

    def _receive(self, i: int) -> SelfPlayRound:
        return self._get(self.pending[i], "playing", self.timeout)

    def worker_pids(self) -> list[int]:
        """The actors' process ids when Ray runs on this machine; none on a cluster."""
        return [pid for pid in self.pids if pid is not None] if self.started_ray and not self.address else []

    def _stop(self, i: int) -> None:
        if self.actors[i] is not None:
            with contextlib.suppress(Exception):
                self.ray.kill(self.actors[i], no_restart=True)
            self.actors[i] = None

    def close(self) -> None:
        for i in range(len(self.actors)):
            self._stop(i)
        if self.started_ray and self.ray.is_initialized():
            self.ray.shutdown()


class _RaySelfPlayActor:
    def __init__(self, cfg: MuZeroConfig, num_envs: int, seed: int):
        torch.set_num_threads(1)
        self.worker = SelfPlayWorker(cfg, build_model(cfg).eval(), num_envs, seed)

    def pid(self) -> int:
        return os.getpid()

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.worker.set_weights(state_dict)

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        return self.worker.play(moves, temperature)


def make_self_play(cfg: MuZeroConfig, model: torch.nn.Module, seed: int, rng: np.random.Generator) -> SelfPlayExecutor:
    """The executor of cfg's backend with its workers sharing cfg.num_envs games (worker i's envs seeded from
    seed + its first env index). The in-process worker plays with `model` and `rng` themselves."""
    backend, workers = resolve_self_play(cfg)
    if backend == "inprocess":
        return SelfPlayExecutor([SelfPlayWorker(cfg, model, cfg.num_envs, seed, rng)])
    per_worker = cfg.num_envs // workers
    shares = [(per_worker, seed + i * per_worker) for i in range(workers)]
    plain = dataclasses.replace(cfg, resume=None)
    if backend == "multiprocess":
        return MultiprocessSelfPlay(plain, shares, cfg.worker_timeout)
    return RaySelfPlay(plain, shares, cfg.ray_address, cfg.worker_timeout)
