"""MuZero's self-play workers: each owns a few games and a CPU copy of the model, plays them with the
batched search and hands back the games that ended, as plain arrays (training.replay.Game).

The learner talks to one SelfPlayExecutor whatever runs the workers: in its own process (the default:
for small models and cheap envs a process round trip costs more than it saves), in worker processes,
or as Ray actors, chosen by `--self-play-backend`, as PPO's rollout workers are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import numpy as np
import torch

from agents.mcts import run_search
from agents.muzero_networks import root_inference, search_callback
from envs.factory import episode_stats_from_info, make_vector_env
from training.executors import NO_REPLY, receive_reply, serve_commands
from training.interrupts import beat
from training.replay import Game

# Self-play envs of a resumed run start from seeds this far from the previous ones.
RESUME_SEED_STRIDE = 1_000_003


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


# Envs rebuilt after a fault start from seeds this far apart, away from the other workers' envs.
ENV_RESTART_SEED_STRIDE = 1_000_033


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

    def __init__(self, cfg, model: torch.nn.Module, num_envs: int, seed: int, rng: np.random.Generator | None = None):
        from training.muzero_trainer import sampling_moves, search_config  # the trainer imports this module

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
        self._start_envs(self.seed + ENV_RESTART_SEED_STRIDE * self.restarts)
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
            state, logits, value = root_inference(self.model, features)
            result = run_search(state, logits, value, search_callback(self.model), self.search, self.rng, mask)
            if result.action is not None:
                actions = result.action
            else:
                weights = result.visit_counts.astype(np.float64) ** (1.0 / temperature)
                weights /= weights.sum(-1, keepdims=True)
                actions = np.array([self.rng.choice(len(w), p=w) for w in weights])
                if self.sampling_moves:
                    greedy = self.move_number >= self.sampling_moves
                    actions = np.where(greedy, result.visit_counts.argmax(-1), actions)
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
                rec.policies.append(result.policy[i])
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
                    final_value = float(root_inference(self.model, final_features[None])[2][0])
                games.append(self.records[i].finish(final_features, final_value, bool(terminated[i])))
                self.records[i] = _GameRecord()
            if "final_obs" in info:
                ep_returns, ep_lengths = episode_stats_from_info(info)
                returns.append(ep_returns)
                lengths.append(ep_lengths)
            root_values.append(float(result.root_value.mean()))
            entropies.append(float(-(result.policy * np.log(np.maximum(result.policy, 1e-12))).sum(-1).mean()))
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

    def close(self) -> None:
        for w in self.workers:
            w.close()


def _worker_process(cfg, num_envs: int, seed: int, conn: Connection) -> None:
    from training.muzero_trainer import build_model

    def set_weights(worker: SelfPlayWorker, state_dict: dict[str, torch.Tensor]):
        worker.set_weights(state_dict)
        return NO_REPLY

    serve_commands(conn, lambda: SelfPlayWorker(cfg, build_model(cfg).eval(), num_envs, seed),
                   {"weights": set_weights, "play": SelfPlayWorker.play})  # fmt: skip


class MultiprocessSelfPlay(SelfPlayExecutor):
    """Workers in their own processes (spawned), each with its share of the games; a round runs them
    all at once and waits for every one."""

    def __init__(self, cfg, shares: list[tuple[int, int]], timeout: float = 600.0):
        ctx = torch.multiprocessing.get_context("spawn")
        self.timeout, self.conns, self.processes = timeout, [], []
        for num_envs, seed in shares:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_process, args=(cfg, num_envs, seed, child), daemon=True,
                               name=f"self-play-{seed}")  # fmt: skip
            proc.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(proc)
        for i in range(len(self.conns)):
            self._reply(i, "ready")

    def _reply(self, i: int, expected: str):
        try:
            return receive_reply(self.conns[i], self.processes[i], expected, self.timeout, SelfPlayError, "the timeout")
        except SelfPlayError as e:
            raise SelfPlayError(f"self-play worker {i} {e}") from None

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        cpu = {k: v.detach().cpu() for k, v in state_dict.items()}
        for i in range(len(self.conns)):
            self._send(i, ("weights", cpu))

    def _send(self, i: int, message: tuple) -> None:
        try:
            self.conns[i].send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise SelfPlayError(f"self-play worker {i} died (exit code {self.processes[i].exitcode})") from None

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        for i in range(len(self.conns)):
            self._send(i, ("play", moves, temperature))
        return SelfPlayRound.merge([self._reply(i, "ok") for i in range(len(self.conns))])

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(BrokenPipeError, OSError):
                conn.send(("close",))
        for proc in self.processes:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


class RaySelfPlay(SelfPlayExecutor):
    """Workers as Ray actors (on this machine, or a cluster with `ray_address`)."""

    def __init__(self, cfg, shares: list[tuple[int, int]], ray_address: str | None = None):
        from training.ray_executor import connect_ray

        ray, self.started_ray = connect_ray(ray_address, num_cpus=max(len(shares), 1))
        self.ray = ray
        actor = ray.remote(num_cpus=1)(_RaySelfPlayActor)
        self.actors = [actor.remote(cfg, num_envs, seed) for num_envs, seed in shares]

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        ref = self.ray.put({k: v.detach().cpu() for k, v in state_dict.items()})
        self.ray.get([a.set_weights.remote(ref) for a in self.actors])

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        try:
            rounds = self.ray.get([a.play.remote(moves, temperature) for a in self.actors])
        except self.ray.exceptions.RayError as e:
            raise SelfPlayError(f"a self-play actor died or raised: {str(e).strip()[:2000]}") from None
        return SelfPlayRound.merge(rounds)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started_ray:
            self.ray.shutdown()


class _RaySelfPlayActor:
    def __init__(self, cfg, num_envs: int, seed: int):
        from training.muzero_trainer import build_model

        torch.set_num_threads(1)
        self.worker = SelfPlayWorker(cfg, build_model(cfg).eval(), num_envs, seed)

    def set_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.worker.set_weights(state_dict)

    def play(self, moves: int, temperature: float) -> SelfPlayRound:
        return self.worker.play(moves, temperature)


def make_self_play(cfg, model: torch.nn.Module, seed: int, rng: np.random.Generator) -> SelfPlayExecutor:
    """The executor of cfg.self_play_backend with cfg.self_play_workers workers sharing cfg.num_envs games
    (worker i's envs seeded from seed + its first env index). The in-process worker plays with `model`
    and `rng` themselves."""
    if cfg.self_play_backend == "inprocess":
        return SelfPlayExecutor([SelfPlayWorker(cfg, model, cfg.num_envs, seed, rng)])
    per_worker = cfg.num_envs // cfg.self_play_workers
    shares = [(per_worker, seed + i * per_worker) for i in range(cfg.self_play_workers)]
    plain = dataclasses.replace(cfg, resume=None)
    if cfg.self_play_backend == "multiprocess":
        return MultiprocessSelfPlay(plain, shares)
    return RaySelfPlay(plain, shares, cfg.ray_address)
