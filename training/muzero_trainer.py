"""MuZero's training loop: self-play with the batched search, prioritised replay, the unrolled loss.

Self-play plays `num_envs` games at once through the env factory's vector env, one batched search per
move for all of them; finished games go to the replay, and the learner takes `updates_per_step` gradient
steps per env step. Logging, evaluation (the search acting greedily), checkpoints and --resume use the
same parts as PPO. This first version self-plays in the learner's process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch import nn

from agents.mcts import SearchConfig, run_search
from agents.muzero import make_targets, muzero_loss
from agents.muzero_networks import MuZeroMLP, MuZeroResNet, root_inference, search_callback
from envs.board_games import board_symmetries
from envs.factory import check_env_id, probe_spaces, solved_return
from training.checkpoint import (
    load_algo_checkpoint,
    reading_contents,
    run_dir_of,
    save_checkpoint,
)
from training.config import ConfigError, resolve_device
from training.errors import TrainingDiverged
from training.evaluation import TrainingEvaluator
from training.interrupts import armed
from training.logger import Progress, RunLogger, make_run_dir, run_name
from training.replay import Game, PrioritizedReplay
from training.resume import CHANGEABLE_ON_RESUME, apply_resume_changes
from training.run_folder import claim_run_dir, loop_exit
from training.self_play import RESUME_SEED_STRIDE, make_self_play
from training.validation import range_problems, run_problems

# What `--resume` may change in a MuZero run (the shared list and the cluster to join). A longer
# --total-timesteps also stretches the self-play temperature schedule, which follows the run's progress.
MUZERO_CHANGEABLE_ON_RESUME = (*CHANGEABLE_ON_RESUME, "ray_address")


@dataclass
class MuZeroConfig:
    env_id: str = "CartPole-v1"
    """the Gymnasium env id (Discrete actions; the board games rlgames/TicTacToe-v0 and rlgames/ConnectFour-v0 play both sides)"""
    exp_name: str = "muzero"
    """the experiment name, part of the run folder runs/{env}__{exp}__{seed}__{time}"""
    seed: int = 1
    """seed of the experiment"""
    total_timesteps: int = 10_000
    """env steps of self-play, at most"""
    stop_when_solved: bool = True
    """stop once a greedy evaluation reaches --stop-return"""
    stop_return: float | None = None
    """the solved threshold for evaluations; default: the env's own (CartPole-v1 475, ...)"""
    device: str = "auto"
    """the learner's device: 'auto', 'cpu', 'cuda', ..."""
    num_envs: int = 8
    """self-play games played together (one batched search per move for each worker's games)"""
    self_play_backend: Literal["inprocess", "multiprocess", "ray"] = "inprocess"
    """where self-play workers run: in the learner's process (fastest for small models and cheap envs), in worker processes, or as Ray actors (needs the ray extra)"""
    self_play_workers: int = 1
    """self-play workers (each plays num_envs / workers games); 1 with --self-play-backend inprocess"""
    self_play_moves: int = 1
    """moves each game makes per self-play round; the learner updates (updates_per_step x env steps) and sends new weights between rounds"""
    ray_address: str | None = None
    """with --self-play-backend ray: a running cluster to join ('auto' or HOST:PORT); default: Ray on this machine"""
    num_simulations: int = 25
    """search simulations per move"""
    gumbel: bool = False
    """Gumbel MuZero's search (works with very few simulations) instead of pUCT with Dirichlet noise"""
    discount: float = 0.997
    """discount factor"""
    unroll_steps: int = 5
    """K: model steps unrolled per sample"""
    td_steps: int = 10
    """n of the n-step value targets"""
    batch_size: int = 256
    """positions per gradient step"""
    learning_rate: float = 3e-3
    """Adam's learning rate"""
    weight_decay: float = 1e-4
    """L2 regularisation of the weights"""
    max_grad_norm: float = 5.0
    """global gradient-norm clip"""
    updates_per_step: float = 1.0
    """gradient steps per env step of self-play (the replay ratio)"""
    warmup_steps: int = 400
    """env steps of self-play before the first gradient step"""
    replay_capacity: int = 100_000
    """positions kept in the replay (the oldest games leave first)"""
    segment_length: int = 50
    """games in progress reach the replay every this many moves (each segment also keeps the next unroll_steps + td_steps moves for its targets); 0 = whole games only, when they end"""
    priority_alpha: float = 0.6
    """prioritised replay's alpha (0 = uniform sampling)"""
    priority_beta: float = 0.4
    """prioritised replay's importance-weight exponent (1 undoes the sampling bias fully, at the price of tiny weights on the most-sampled positions)"""
    consistency_coef: float = 0.0
    """weight of EfficientZero's temporal consistency loss (the dynamics' hidden state vs the representation of the observation reached); 0 = MuZero's loss alone"""
    reanalyse_fraction: float = 1.0
    """share of sampled unrolls whose bootstrap values are recomputed by the latest model (the value half of MuZero Reanalyse); 0 = the values stored at play time"""
    reanalyse_policy_fraction: float = 0.0
    """share of sampled unrolls whose policy targets come from a new search by the latest model at the unroll's positions (the policy half of MuZero Reanalyse; costs a search of batch_size x (unroll_steps + 1) roots per update); 0 = the searches made at play time"""
    visit_temperature: float | None = None
    """self-play samples moves from visits^(1/T); T halves at 50% and 75% of the run; default: 1 for board games (the paper's: self-play must explore openings or it collapses), 0.25 otherwise (LightZero's: near-greedy play learns control tasks such as CartPole several times faster)"""
    augment_symmetries: bool = True
    """train each sampled unroll turned by a random rotation or reflection of the board, for games that declare them (TicTacToe's 8, Connect Four's mirror)"""
    sampling_moves: int | None = None
    """moves at the start of each self-play game sampled at the visit temperature; later moves take the most visited action (root noise still explores). 0 = every move sampled. Default: 2 for board games (AlphaZero's num_sampling_moves: openings stay varied while the rest of the game, whose outcome the value targets learn, is played as well as the search can), 0 otherwise"""
    hidden_state: int = 64
    """size of the hidden state"""
    hidden_sizes: tuple[int, ...] = (64,)
    """hidden layer widths of each of the model's MLPs"""
    res_channels: int = 32
    """image observations: channels of the residual conv net"""
    res_blocks: int = 2
    """image observations: residual blocks in each of the representation and dynamics"""
    support_size: int = 20
    """value and reward supports span h(x) in [-S, S] (S=20: |x| up to ~440)"""
    eval_every: int = 2_000
    """env steps between greedy evaluations (the search without noise); 0 = only at the end"""
    eval_episodes: int = 10
    """episodes per evaluation"""
    runs_dir: str = "runs"
    """folder that holds the run folders"""
    checkpoint_every: int = 2_000
    """env steps between checkpoints"""
    keep_checkpoints: int = 3
    """periodic checkpoints kept on disk"""
    worker_timeout: float = 300.0
    """seconds that self-play in this process or an evaluation may go without a single env step before the run counts it hung and stops with a checkpoint"""
    max_bad_updates: int = 5
    """updates in a row whose loss or gradient is NaN or inf (each is skipped) before the run stops"""
    resume: str | None = None
    """a run folder (or checkpoint) to continue from; the replay starts empty again; flags given with it that leave the learning as it was apply (--total-timesteps extends the run; --device, evaluation, checkpoint, worker and stop settings), any other is refused"""
    resume_changes: tyro.conf.Suppress[tuple[str, ...]] = ()
    """the fields a --resume takes from this config instead of the run's (set from the command line)"""
    progress: bool = True
    """show a progress bar"""


def validate_muzero(cfg: MuZeroConfig) -> None:
    problems = []
    for name in ("total_timesteps", "num_envs", "num_simulations", "unroll_steps", "td_steps", "batch_size",
                 "replay_capacity", "checkpoint_every", "eval_episodes", "max_bad_updates"):  # fmt: skip
        if getattr(cfg, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} must be > 0 (got {getattr(cfg, name)})")
    for name in ("reanalyse_fraction", "reanalyse_policy_fraction"):
        if not 0 <= getattr(cfg, name) <= 1:
            problems.append(f"--{name.replace('_', '-')} must lie in [0, 1] (got {getattr(cfg, name)})")
    if cfg.sampling_moves is not None and cfg.sampling_moves < 0:
        problems.append(f"--sampling-moves must be >= 0 (0 = every move; got {cfg.sampling_moves})")
    if cfg.visit_temperature is not None and cfg.visit_temperature <= 0:
        problems.append(f"--visit-temperature must be > 0 (got {cfg.visit_temperature})")
    if not 0 < cfg.discount <= 1:
        problems.append(f"--discount must lie in (0, 1] (got {cfg.discount})")
    if cfg.segment_length < 0:
        problems.append(f"--segment-length must be >= 0 (0 = whole games; got {cfg.segment_length})")
    if cfg.self_play_workers < 1 or cfg.self_play_moves < 1:
        problems.append(f"--self-play-workers and --self-play-moves must be >= 1 (got {cfg.self_play_workers}, {cfg.self_play_moves})")
    elif cfg.self_play_backend == "inprocess" and cfg.self_play_workers != 1:
        problems.append("--self-play-backend inprocess runs one worker; use multiprocess or ray for several")
    elif cfg.num_envs % cfg.self_play_workers:
        problems.append(f"--num-envs {cfg.num_envs} does not split evenly over --self-play-workers {cfg.self_play_workers}")
    if cfg.replay_capacity < cfg.batch_size:
        problems.append(f"--replay-capacity {cfg.replay_capacity} is smaller than one --batch-size {cfg.batch_size}")
    problems += range_problems(
        cfg, positive=("learning_rate", "max_grad_norm", "updates_per_step", "hidden_state", "support_size", "worker_timeout",
                       "res_channels"),
        non_negative=("weight_decay", "warmup_steps", "priority_alpha", "consistency_coef", "keep_checkpoints", "res_blocks",
                      "eval_every"),
        unit=("priority_beta",),
    )  # fmt: skip
    problems += run_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


@dataclass
class ModelSpaces:
    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    masked: bool
    """whether observations carry an action mask"""

    @property
    def is_image(self) -> bool:
        return len(self.obs_shape) == 3


def model_spaces(env_id: str) -> ModelSpaces:
    observation_space, action_space = probe_spaces(env_id)
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"MuZero here plays Discrete action spaces; {env_id} has {action_space}")
    masked = isinstance(observation_space, gym.spaces.Dict)
    space = observation_space["obs"] if masked else observation_space
    return ModelSpaces(tuple(space.shape), np.dtype(space.dtype), int(action_space.n), masked)


def build_model(cfg: MuZeroConfig) -> MuZeroMLP | MuZeroResNet:
    """MLPs for vector observations, the residual conv net for images [C, H, W]."""
    spaces = model_spaces(cfg.env_id)
    if spaces.is_image:
        return MuZeroResNet(spaces.obs_shape, spaces.num_actions, cfg.res_channels, cfg.res_blocks, cfg.support_size,
                            cfg.support_size, pixels=spaces.obs_dtype == np.uint8)  # fmt: skip
    return MuZeroMLP(int(np.prod(spaces.obs_shape)), spaces.num_actions, cfg.hidden_state, cfg.hidden_sizes,
                     cfg.support_size, cfg.support_size)  # fmt: skip


def check_replay_fits(cfg: MuZeroConfig, spaces: ModelSpaces, memory_bytes: int | None = None) -> None:
    """Refuse, before any work, a replay whose observations alone would take more than half this machine's
    memory (positions are stored in the observations' own dtype: uint8 frames take a quarter of float32)."""
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    per_position = int(np.prod(spaces.obs_shape)) * spaces.obs_dtype.itemsize + 8 * (spaces.num_actions + 4)
    if spaces.masked:
        per_position += spaces.num_actions  # the legal moves, one byte each
    if cfg.segment_length:
        # each segment also stores the unroll_steps + td_steps moves after its starts
        per_position = math.ceil(per_position * (1 + (cfg.unroll_steps + cfg.td_steps + 1) / cfg.segment_length))
    needed = per_position * cfg.replay_capacity
    if needed > memory_bytes / 2:
        fits = int(memory_bytes / 2 // per_position)
        raise ConfigError(
            f"--replay-capacity {cfg.replay_capacity} positions of {per_position:,} bytes need "
            f"{needed / 2**30:.1f} GiB, more than half of this machine's {memory_bytes / 2**30:.1f} GiB; "
            f"use --replay-capacity {fits} or less"
        )


def is_two_player(env_id: str) -> bool:
    return env_id.startswith("rlgames/")


def visit_temperature(cfg: MuZeroConfig) -> float:
    """Self-play's starting temperature: --visit-temperature, else 1 for board games, 0.25 otherwise.
    Measured here (5k-step CartPole, 4 seeds): T = 1 plays so close to random with 25 simulations on two
    actions that none solved; T = 0.25 solved all. On TicTacToe, T = 0.25 lost every game to the perfect
    player at 5k and 10k steps; T = 1 lost under a third at 10k and fewer after."""
    if cfg.visit_temperature is not None:
        return cfg.visit_temperature
    return 1.0 if is_two_player(cfg.env_id) else 0.25


def sampling_moves(cfg: MuZeroConfig) -> int:
    """Moves per self-play game sampled at the temperature: --sampling-moves, else 2 for board games and
    0 (all) otherwise. Measured here on TicTacToe: sampling every move at T = 1 teaches values of noisy
    play, in which a theoretically lost position is often still drawn (the model rated lost positions
    -0.04 on average after 20k steps), so the search walked into them against the perfect player."""
    if cfg.sampling_moves is not None:
        return cfg.sampling_moves
    return 2 if is_two_player(cfg.env_id) else 0


def search_config(cfg: MuZeroConfig) -> SearchConfig:
    return SearchConfig(num_simulations=cfg.num_simulations, discount=cfg.discount,
                        two_player=is_two_player(cfg.env_id), gumbel=cfg.gumbel)  # fmt: skip


class MuZeroActor(nn.Module):
    """The search as a policy with PPO's acting interface, for evaluation and watching: greedy (most
    visited, or Gumbel's noiseless choice) when deterministic, else sampled from the visits."""

    def __init__(self, model: MuZeroMLP, search: SearchConfig, seed: int = 0):
        super().__init__()
        self.model, self.search = model, search
        self.rng = np.random.default_rng(seed)
        self.last_result = None

    @torch.inference_mode()
    def act(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None, deterministic: bool = True):
        mask = obs.get("action_mask")
        features = obs["obs"].cpu().numpy()
        search = dataclasses.replace(self.search, root_exploration_fraction=0.0,
                                     gumbel_scale=0.0 if deterministic else self.search.gumbel_scale)  # fmt: skip
        state, logits, value = root_inference(self.model, features)
        result = run_search(state, logits, value, search_callback(self.model), search, self.rng,
                            None if mask is None else mask.cpu().numpy().astype(bool))  # fmt: skip
        self.last_result = result
        if result.action is not None:
            action = result.action
        elif deterministic:
            action = result.visit_counts.argmax(-1)
        else:
            action = np.array([self.rng.choice(len(p), p=p) for p in result.policy])
        n = len(action)
        return torch.as_tensor(action), torch.zeros(n), torch.as_tensor(result.root_value, dtype=torch.float32)

    def search_summary(self) -> list[str]:
        """The last search of the first root, as overlay lines: root visit counts and Q per action."""
        if self.last_result is None:
            return []
        r = self.last_result
        visits = " ".join(str(int(v)) for v in r.visit_counts[0])
        q = " ".join(f"{v:.2f}" for v in r.q_values[0])
        return [f"root value {r.root_value[0]:.2f}", f"visits {visits}", f"Q {q}"]


@dataclass
class MuZeroResult:
    run_dir: Path
    checkpoint: Path
    global_step: int
    seconds: float
    solved: bool
    eval_return: float | None
    episodes: int
    history: list = field(default_factory=list)
    """(env steps, wall seconds, greedy evaluation return) at each evaluation"""
    env_id: str = ""
    """the run's env (a resumed run's own, whatever the command line's --env-id says)"""


def _saved_config(payload: dict) -> MuZeroConfig:
    names = {f.name for f in dataclasses.fields(MuZeroConfig)}
    saved = MuZeroConfig(**{k: v for k, v in json.loads(payload["config"]).items() if k in names})
    return dataclasses.replace(saved, hidden_sizes=tuple(saved.hidden_sizes))


def load_muzero_actor(payload: dict) -> tuple[MuZeroConfig, MuZeroActor]:
    """A MuZero checkpoint's config and its search as a policy (for watch.py and evaluate.py)."""
    cfg = _saved_config(payload)
    check_env_id(cfg.env_id)
    model = build_model(cfg)
    model.load_state_dict(payload["model"])
    return cfg, MuZeroActor(model, search_config(cfg), seed=cfg.seed)


def train_muzero(cfg: MuZeroConfig) -> MuZeroResult:
    payload, run_dir = None, None
    if cfg.resume:
        payload, path = load_algo_checkpoint(cfg.resume, "muzero")
        with reading_contents(path):
            cfg = apply_resume_changes(_saved_config(payload), cfg)
            payload["global_step"] = int(payload["global_step"])
        run_dir = run_dir_of(path)
    validate_muzero(cfg)
    check_env_id(cfg.env_id)
    check_replay_fits(cfg, model_spaces(cfg.env_id))
    if payload is None:
        run_dir = make_run_dir(Path(cfg.runs_dir), run_name(cfg.env_id, cfg.exp_name, cfg.seed))
    with claim_run_dir(run_dir, payload["global_step"] if payload is not None else None):
        return _train_in_folder(cfg, payload, run_dir)


def _train_in_folder(cfg: MuZeroConfig, payload: dict | None, run_dir: Path) -> MuZeroResult:
    device = resolve_device(cfg.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(cfg.seed)
    two_player = is_two_player(cfg.env_id)
    symmetries = board_symmetries(cfg.env_id) if cfg.augment_symmetries else None
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    search = search_config(cfg)
    # The search runs on a CPU copy (its batches are small), refreshed after every gradient step.
    actor_model = build_model(cfg)
    global_step, updates, episodes, seconds_before = 0, 0, 0, 0.0
    # Faults survived, over the whole run (they carry over a resume): logged as faults/*.
    faults = dict.fromkeys(("skipped_updates", "env_restarts", "dropped_episodes", "nonfinite_steps", "worker_restarts"), 0)
    bad_in_a_row = 0
    if payload is not None:
        with reading_contents(cfg.resume):
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            global_step, updates, episodes = payload["global_step"], payload["updates"], payload["episodes"]
            seconds_before = payload["elapsed_seconds"]
            faults.update({k: int(v) for k, v in payload.get("faults", {}).items() if k in faults})
    actor_model.load_state_dict(model.state_dict())
    config_dict = dataclasses.asdict(cfg)
    logger = RunLogger(run_dir, config_dict, resumed_at=global_step if payload is not None else None)
    if payload is None:
        logger.dashboards(config_dict)
    evaluator = TrainingEvaluator(cfg.env_id, run_dir, logger, cfg.seed, cfg.eval_episodes, cfg.eval_every,
                                  False, 1, best_return=payload.get("best_eval_return", -math.inf) if payload else -math.inf)  # fmt: skip
    actor = MuZeroActor(actor_model, search, seed=cfg.seed)
    replay = PrioritizedReplay(cfg.replay_capacity, cfg.priority_alpha, cfg.priority_beta, seed=cfg.seed)
    threshold = solved_return(cfg.env_id, cfg.stop_return)
    start_temperature = visit_temperature(cfg)
    start = time.perf_counter()

    def checkpoint_state() -> dict:
        return {
            "algo": "muzero",
            "config": json.dumps(dataclasses.asdict(dataclasses.replace(cfg, resume=None, resume_changes=()))),
            "global_step": global_step, "updates": updates, "episodes": episodes,
            "elapsed_seconds": seconds_before + time.perf_counter() - start,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "best_eval_return": evaluator.best_return,
            "faults": dict(faults),
        }  # fmt: skip

    def checkpoint() -> Path:
        return save_checkpoint(run_dir, checkpoint_state(), global_step, cfg.keep_checkpoints)

    # Envs restart from fresh games after a resume; a distinct seed keeps them off the old ones.
    self_play = make_self_play(cfg, actor_model, cfg.seed + RESUME_SEED_STRIDE * (global_step + 1), rng)
    self_play.set_weights(actor_model.state_dict())
    recent: deque[float] = deque(maxlen=100)
    progress = Progress(cfg.total_timesteps, global_step, enabled=cfg.progress)
    owed_updates, eval_return, solved, last_checkpoint = 0.0, None, False, None
    history: list[tuple[int, float, float]] = []
    next_checkpoint = (global_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    consistent = True  # the state a checkpoint would hold is one between two updates
    in_process = cfg.self_play_backend == "inprocess"  # no worker timeout of its own: the watchdog stands in
    try:
        while global_step < cfg.total_timesteps and not solved:
            # Self-play: every worker's games make self_play_moves moves with the current weights.
            progress_fraction = global_step / cfg.total_timesteps
            temperature = start_temperature * (1.0 if progress_fraction < 0.5 else 0.5 if progress_fraction < 0.75 else 0.25)
            with armed(f"self-play on {cfg.env_id}", cfg.worker_timeout) if in_process else contextlib.nullcontext():
                played = self_play.play(cfg.self_play_moves, temperature)
            step_before = global_step
            global_step += played.steps
            for name in ("env_restarts", "dropped_episodes", "nonfinite_steps", "worker_restarts"):
                faults[name] += getattr(played, name)
            for game in played.games:
                replay.add(game)
            for episode_return, length in zip(played.episode_returns, played.episode_lengths, strict=True):
                recent.append(float(episode_return))
                episodes += 1
                logger.scalars({"charts/episodic_return": float(episode_return), "charts/episodic_length": float(length)},
                               global_step)  # fmt: skip

            # Learning: updates_per_step gradient steps per env step, once the replay holds enough.
            if global_step >= cfg.warmup_steps and replay.num_positions >= cfg.batch_size:
                owed_updates += cfg.updates_per_step * played.steps  # the replay ratio, per env step played
                stats = None
                consistent = False  # a crash in here leaves the model half-updated
                while owed_updates >= 1:
                    step_stats = _update(model, optimizer, replay, cfg, rng, two_player, device, actor_model, symmetries)
                    owed_updates -= 1
                    updates += 1
                    if step_stats is None:
                        faults["skipped_updates"] += 1
                        bad_in_a_row += 1
                        if bad_in_a_row >= cfg.max_bad_updates:
                            kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
                            raise TrainingDiverged(
                                f"{bad_in_a_row} updates in a row had a NaN or inf loss or gradient, so the run stopped "
                                f"at env step {global_step}; {kept}. Lower --learning-rate, or look for NaN/inf in the "
                                "env's rewards and observations"
                            )
                    else:
                        stats, bad_in_a_row = step_stats, 0
                consistent = True
                if stats is not None:
                    weights = {k: v.cpu() for k, v in model.state_dict().items()}
                    actor_model.load_state_dict(weights)  # for evaluation (and the in-process worker, which shares it)
                    self_play.set_weights(weights)
                    logger.scalars({f"losses/{k}": v for k, v in stats.items()}, global_step)
            elapsed = time.perf_counter() - start
            logger.scalars({
                "charts/SPS": global_step / max(elapsed + seconds_before, 1e-9),
                "charts/updates": updates,
                "charts/replay_positions": replay.num_positions,
                "charts/visit_temperature": temperature,
                **({"search/root_value": float(np.mean(played.root_values)),
                    "search/root_visit_entropy": float(np.mean(played.root_visit_entropies))}
                   if played.root_values else {}),  # a round cut short by a rebuilt env may search nothing
                "time/self_play_seconds": played.seconds,
                **{f"faults/{k}": v for k, v in faults.items()},
            }, global_step)  # fmt: skip
            progress.update(global_step, global_step / max(elapsed, 1e-9), float(np.mean(recent)) if recent else None)

            if evaluator.evaluation_due(step_before, global_step):
                with armed(f"evaluating on {cfg.env_id}", cfg.worker_timeout):
                    eval_return = evaluator.evaluate(actor, global_step, checkpoint_state).mean_return
                history.append((global_step, seconds_before + time.perf_counter() - start, eval_return))
                solved = cfg.stop_when_solved and threshold is not None and eval_return >= threshold
            if global_step >= next_checkpoint:
                last_checkpoint = checkpoint()
                next_checkpoint = (global_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        if not solved and not (history and history[-1][0] == global_step):  # once per step: never logged twice
            with armed(f"evaluating on {cfg.env_id}", cfg.worker_timeout):
                eval_return = evaluator.evaluate(actor, global_step, checkpoint_state).mean_return
            history.append((global_step, seconds_before + time.perf_counter() - start, eval_return))
            solved = threshold is not None and eval_return >= threshold
        last_checkpoint = checkpoint()
    except BaseException as error:  # a stop or a crash: save what can be saved, then say so (run_folder)
        raise loop_exit(error, run_dir, global_step, checkpoint, consistent, last_checkpoint)  # noqa: B904
    finally:
        progress.close()
        self_play.close()
        logger.close()
    return MuZeroResult(run_dir, last_checkpoint, global_step, seconds_before + time.perf_counter() - start,
                        bool(solved), eval_return, episodes, history, cfg.env_id)  # fmt: skip


def reanalysed_values(model: torch.nn.Module, samples: list[tuple[Game, int]], cfg: MuZeroConfig,
                      rng: np.random.Generator) -> list[np.ndarray]:
    """Each sample's root values, with those its value targets bootstrap from (positions pos .. pos + K + n)
    recomputed by `model` for a cfg.reanalyse_fraction share of the samples: the value half of MuZero
    Reanalyse (appendix H), without a new search for the policy targets. Values stored at play time
    come from an older model, so as the model improves they understate (or overstate) what a state is
    worth; fresh ones keep the n-step targets current. The value after a real end stays 0."""
    values = [g.root_values for g, _ in samples]
    chosen = [i for i in range(len(samples)) if rng.random() < cfg.reanalyse_fraction]
    if not chosen:
        return values
    spans = []
    for i in chosen:
        game, pos = samples[i]
        end = min(pos + cfg.unroll_steps + cfg.td_steps, len(game) - 1 if game.terminated else len(game))
        spans.append((i, pos, end))
    obs = np.concatenate([samples[i][0].observations[pos : end + 1] for i, pos, end in spans])
    fresh = root_inference(model, obs.reshape(len(obs), -1))[2]
    offset = 0
    for i, pos, end in spans:
        values[i] = values[i].copy()
        values[i][pos : end + 1] = fresh[offset : offset + end + 1 - pos]
        offset += end + 1 - pos
    return values


def reanalysed_policies(model: torch.nn.Module, samples: list[tuple[Game, int]], cfg: MuZeroConfig,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Each sample's policy targets, with those of its unroll (positions pos .. pos + K inside the game)
    replaced by a new search of `model` for a cfg.reanalyse_policy_fraction share of the samples: the
    policy half of MuZero Reanalyse (appendix H). The searches made at play time used an older model;
    as it improves, their visit counts teach yesterday's policy. All positions are searched as one batch,
    with the self-play search's settings (root noise included) and the legal moves stored with the game."""
    policies = [g.policies for g, _ in samples]
    chosen = [i for i in range(len(samples)) if rng.random() < cfg.reanalyse_policy_fraction]
    if not chosen:
        return policies
    spans = [(i, samples[i][1], min(samples[i][1] + cfg.unroll_steps + 1, len(samples[i][0]))) for i in chosen]
    obs = np.concatenate([samples[i][0].observations[pos:end] for i, pos, end in spans])
    masked = samples[chosen[0]][0].legal_actions is not None
    masks = np.concatenate([samples[i][0].legal_actions[pos:end] for i, pos, end in spans]) if masked else None
    state, logits, value = root_inference(model, obs.reshape(len(obs), -1))
    fresh = run_search(state, logits, value, search_callback(model), search_config(cfg), rng, masks).policy
    offset = 0
    for i, pos, end in spans:
        policies[i] = policies[i].copy()
        policies[i][pos:end] = fresh[offset : offset + end - pos]
        offset += end - pos
    return policies


def apply_symmetries(
    symmetries: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, obs: np.ndarray, actions: np.ndarray,
    policies: np.ndarray, next_obs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Each sampled unroll seen through one of the board's symmetries, drawn at random (the identity
    among them): its observations [B, ...] (and next_obs [B, K, ...]), unrolled actions [B, K] and
    policy targets [B, K + 1, A]. Values and rewards do not change under a symmetry. A small board game
    is a few thousand positions that self-play visits unevenly; every symmetric copy of a position is a
    position the model must also get right (AlphaGo Zero trained on Go's eight the same way)."""
    obs_perms, action_perms = symmetries
    g = rng.integers(len(obs_perms), size=len(obs))
    inverse = np.argsort(action_perms, axis=1)  # a move on cell c becomes a move on cell inverse[c]
    flat = obs.reshape(len(obs), -1)
    obs = np.take_along_axis(flat, obs_perms[g], 1).reshape(obs.shape)
    actions = np.take_along_axis(inverse[g], actions, 1)
    policies = np.take_along_axis(policies, action_perms[g][:, None, :], 2)
    if next_obs is not None:
        flat = next_obs.reshape(*next_obs.shape[:2], -1)
        next_obs = np.take_along_axis(flat, obs_perms[g][:, None, :], 2).reshape(next_obs.shape)
    return obs, actions, policies, next_obs


def _update(model: MuZeroMLP, optimizer: torch.optim.Optimizer, replay: PrioritizedReplay, cfg: MuZeroConfig,
            rng: np.random.Generator, two_player: bool, device: torch.device,
            actor_model: torch.nn.Module, symmetries: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float] | None:  # fmt: skip
    samples, weights, keys = replay.sample(cfg.batch_size)
    root_values = reanalysed_values(actor_model, samples, cfg, rng) if cfg.reanalyse_fraction > 0 else [g.root_values for g, _ in samples]
    policies = reanalysed_policies(actor_model, samples, cfg, rng) if cfg.reanalyse_policy_fraction > 0 else [g.policies for g, _ in samples]
    targets = [make_targets(g.rewards, values, pi, g.actions, g.terminated, pos, cfg.unroll_steps, cfg.td_steps,
                            cfg.discount, rng, two_player)
               for (g, pos), values, pi in zip(samples, root_values, policies, strict=True)]  # fmt: skip
    arrays = {name: np.stack([getattr(t, name) for t in targets])
              for name in ("actions", "value", "reward", "policy", "value_mask", "reward_mask", "policy_mask")}  # fmt: skip
    obs = np.stack([g.observations[pos] for g, pos in samples])
    # Targets built from a model gone NaN (reanalysed values) cannot be put on the value support.
    if not all(np.isfinite(a).all() for a in arrays.values()):
        return None
    next_obs = next_obs_mask = None
    if cfg.consistency_coef > 0:
        # The observations reached after each unrolled action (the last one repeated past the end, masked).
        K = cfg.unroll_steps
        next_obs = np.stack([g.observations[np.minimum(np.arange(pos + 1, pos + K + 1), len(g))] for g, pos in samples])
        next_obs_mask = torch.as_tensor(np.stack([np.arange(pos + 1, pos + K + 1) <= len(g) for g, pos in samples]),
                                        dtype=torch.float32).to(device)  # fmt: skip
    if symmetries is not None:
        obs, arrays["actions"], arrays["policy"], next_obs = apply_symmetries(
            symmetries, rng, obs, arrays["actions"], arrays["policy"], next_obs)
    batch = {name: torch.as_tensor(a, dtype=torch.int64 if name == "actions" else torch.float32).to(device)
             for name, a in arrays.items()}  # fmt: skip
    obs = torch.as_tensor(obs).to(device).float()
    if next_obs is not None:
        next_obs = torch.as_tensor(next_obs).to(device).float()
    loss, stats, priorities = muzero_loss(model, obs, batch, torch.as_tensor(weights, dtype=torch.float32).to(device),
                                          next_obs=next_obs, next_obs_mask=next_obs_mask,
                                          consistency_coef=cfg.consistency_coef)  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    stats["grad_norm"] = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
    # A NaN or inf would spread through Adam's moments into every weight (and into the priorities):
    # refuse the step; the caller counts it and stops the run after --max-bad-updates in a row.
    if not (math.isfinite(loss.item()) and math.isfinite(stats["grad_norm"])):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    replay.update_priorities(keys, priorities.cpu().numpy())
    stats["loss"] = loss.item()
    return stats
