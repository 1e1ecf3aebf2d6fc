"""The config every training run shares, whatever the algorithm: one field, one flag, one meaning.

`PPOConfig` (training.ppo.config) and `MuZeroConfig` (training.muzero.config) extend `RunConfig`; tyro
turns each into a command line whose help text is the field docstrings. A subclass may give a shared
field another default (MuZero trains for fewer env steps), never another meaning. The run skeleton
(training.run) reads only these fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import tyro

from envs.factory import is_two_player
from training.seeds import MAX_ENVS
from training.validation import flag, range_problems, run_problems

Backend = Literal["auto", "inprocess", "multiprocess", "ray"]


@dataclass
class RunConfig:
    env_id: str = "CartPole-v1"
    """the Gymnasium env id (ALE/... needs the atari extra, LunarLander the box2d extra)"""
    exp_name: str = "run"
    """the experiment name, part of the run folder runs/{env}__{exp}__{seed}__{time}"""
    seed: int = 1
    """seed of the experiment (envs, sampling, initialisation, minibatch order)"""
    total_timesteps: int = 500_000
    """env steps to train for, at most"""
    train_for_minutes: float = 0.0
    """wall-clock minutes to train for, at most (a resumed run's earlier minutes count; the learning-rate schedule still runs over --total-timesteps); the final evaluation and checkpoint follow; 0 = no limit"""
    stop_when_solved: bool = True
    """stop once the run is solved, as --solved-by judges it against --stop-return"""
    solved_by: Literal["training", "evaluation"] = "training"
    """what counts as solved: 'training' (the mean return of the last 100 training episodes reaches --stop-return) or 'evaluation' (an evaluation's mean return does; greedy unless --eval-stochastic)"""
    stop_return: float | None = None
    """the solved threshold; default: the env's own (CartPole-v1 475, Acrobot-v1 -100, LunarLander-v3 200, ...)"""
    device: str = "auto"
    """the learner's device: 'auto' (CUDA when available and the net is convolutional: frames, grids, boards, StarCraft II, MuZero's residual net; else the CPU, where small MLPs train faster), 'cpu', 'cuda', 'cuda:1', ..."""
    torch_threads: int = 0
    """torch intra-op threads for the learner's updates; 0 = auto: 1 for MLPs and MinAtar's small CNN (PPO), where more threads cost more than they give; every usable core for the Nature CNN, FullyConv, the board CNN and MuZero's residual net (PPO: less one per local worker process with --async-rollouts; MuZero's search always runs on one thread, its batches being small); OMP_NUM_THREADS is not read, so it cannot change a seeded run"""
    learner_precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """the update's convolutional trunk (PPO: board CNN, GridCNN, Nature CNN; MuZero: the residual net's convolutions) under a bfloat16 autocast, everything else (memory cores, MLP bodies, policy, value and reward heads, the loss, the weights and Adam) in float32, acting always in float32 (one thread of an AMD EPYC with AVX512_BF16: Connect Four's PPO minibatch step ~1.9x faster, MuZero's MinAtar update ~1.7x); 'auto': bfloat16 for such a trunk where the device computes it natively (a CPU with AVX512_BF16 or AMX, a CUDA GPU with bf16), else float32"""
    board_net: Literal["mlp", "cnn"] = "mlp"
    """board games: read the board with MLPs, or with convolutions over two planes (own pieces, the opponent's) that share what they learn of a line across the board (PPO: three 3x3 convolutions of 32, then 256 units; MuZero: its residual net of --res-channels and --res-blocks, moves shown to the dynamics as the cells they name)"""

    # Workers
    num_envs: int = 4
    """parallel envs in total, across all workers"""
    backend: Backend = "auto"
    """where the workers that step the envs run: 'inprocess' (in the learner's process), 'multiprocess' (one process per worker), 'ray' (Ray actors, on this machine or a cluster: needs the ray extra); 'auto' picks what is fastest for the env and algorithm"""
    num_workers: int = 0
    """workers sharing the envs; 0 = auto (1 in-process, up to the CPU count otherwise); must divide num_envs"""
    ray_address: str | None = None
    """with --backend ray: a running cluster to join ('auto', or HOST:PORT of `ray start --head`); default: start Ray on this machine"""
    worker_timeout: float = 300.0
    """seconds a worker process or actor may take for its share of one round before it counts as hung and is replaced; in-process envs and evaluation: seconds without a single env step before the run counts them hung and stops with a checkpoint"""

    # Faults
    max_bad_updates: int = 5
    """updates in a row whose loss or gradient is NaN or inf (each is skipped) before the run stops"""

    # Evaluation
    eval_every: int = 25_000
    """env steps between evaluations (greedy unless --eval-stochastic; logged as eval/*; the best one is kept as checkpoints/best.pt); one more runs at the end; 0 = only the one at the end"""
    eval_episodes: int = 10
    """episodes per evaluation; 0 = no evaluation at all"""
    eval_stochastic: bool | None = None
    """evaluate (and record videos) with actions sampled from the policy instead of its most likely ones; default: sampled on Atari (ALE/*), where a greedy policy can wait at a serve until the 108,000-frame limit (Breakout needs FIRE after each lost life), greedy everywhere else"""
    capture_video: bool = False
    """record an evaluation episode every --video-every steps of the run and at the end: an MP4 in RUN_DIR/videos/ and a GIF in TensorBoard's Images tab"""
    video_every: int = 50
    """steps of the run (PPO: rollout + update; MuZero: self-play round + updates) between recorded episodes, with --capture-video"""

    # Run folder and checkpoints
    runs_dir: str = "runs"
    """folder that holds the run folders"""
    checkpoint_every: int = 50_000
    """env steps between checkpoints (a killed run loses at most this much); the final one is always written"""
    keep_checkpoints: int = 3
    """periodic checkpoints kept on disk (newest first)"""
    resume: str | None = None
    """a run folder (or one of its checkpoint files) to continue from; its saved config is used; flags given with it that leave the learning as it was apply (--total-timesteps extends the run; --device, evaluation, checkpoint, worker and stop settings), any other is refused"""
    resume_changes: tyro.conf.Suppress[tuple[str, ...]] = ()
    """the fields a --resume takes from this config instead of the run's (set from the command line)"""
    progress: bool = True
    """show a progress bar (a log line every few seconds when stderr is not a terminal)"""


# Fields a resumed run of any algorithm may change: its length, where it computes, how often it saves and
# evaluates, where its workers run, in which precision its update rounds. Each algorithm adds its own.
CHANGEABLE_ON_RESUME = (
    "total_timesteps", "train_for_minutes", "device", "progress", "stop_when_solved", "stop_return", "eval_every",
    "eval_episodes", "eval_stochastic", "checkpoint_every", "keep_checkpoints", "backend", "num_workers", "ray_address", "worker_timeout",
    "max_bad_updates", "capture_video", "video_every", "learner_precision", "torch_threads",
)  # fmt: skip


def run_config_problems(cfg: RunConfig) -> list[str]:
    """What is wrong with the shared settings, one line each (flag, valid range, value given)."""
    problems = []
    for name in ("total_timesteps", "num_envs", "checkpoint_every", "max_bad_updates", "video_every"):
        if getattr(cfg, name) <= 0:
            problems.append(f"{flag(name)} must be > 0 (got {getattr(cfg, name)})")
    for name in ("num_workers", "eval_every", "eval_episodes", "keep_checkpoints"):
        if getattr(cfg, name) < 0:
            problems.append(f"{flag(name)} must be >= 0 (got {getattr(cfg, name)})")
    if cfg.num_envs > MAX_ENVS:
        problems.append(f"--num-envs must be <= {MAX_ENVS:,} (got {cfg.num_envs})")
    if cfg.eval_episodes > MAX_ENVS:
        problems.append(f"--eval-episodes must be <= {MAX_ENVS:,} (got {cfg.eval_episodes})")
    if cfg.solved_by == "evaluation" and cfg.stop_when_solved and cfg.eval_episodes == 0:
        problems.append("--solved-by evaluation needs evaluations: --eval-episodes must be > 0")
    if cfg.board_net == "cnn" and not is_two_player(cfg.env_id):
        problems.append(f"--board-net cnn is for board games (rlgames/TicTacToe-v0, rlgames/ConnectFour-v0); {cfg.env_id} is not one")
    problems += range_problems(cfg, positive=("worker_timeout",), non_negative=("train_for_minutes", "torch_threads"))
    problems += run_problems(cfg)
    return problems


def default_num_workers(backend: str, num_envs: int) -> int:
    """--num-workers 0: one worker in-process; else as many as there are cores, dividing num_envs."""
    return 1 if backend == "inprocess" else math.gcd(num_envs, os.cpu_count() or 1)


def worker_problems(cfg: RunConfig, backend: str, workers: int, learners: int = 1) -> list[str]:
    """Workers that cannot share the envs evenly, and a --ray-address without Ray."""
    problems = []
    if cfg.ray_address and backend != "ray":
        problems.append(f"--ray-address is for --backend ray (the backend is {backend})")
    if workers * learners > cfg.num_envs:
        split = f"--num-workers {workers}" + (f" x --num-learners {learners}" if learners > 1 else "")
        problems.append(f"{split} is more than --num-envs {cfg.num_envs}: each worker needs at least one env")
    elif cfg.num_envs % (workers * learners):
        split = f"--num-learners {learners} x --num-workers {workers}" if learners > 1 else f"--num-workers {workers}"
        problems.append(f"--num-envs {cfg.num_envs} does not split evenly over {split}")
    return problems


Config = TypeVar("Config", bound=RunConfig)

# Fields that earlier versions saved under other names (MuZero's workers had flags of their own).
_RENAMED = {"self_play_backend": "backend", "self_play_workers": "num_workers"}


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(config_class: type[Config], data: dict) -> Config:
    """A config saved by config_to_dict (a checkpoint's JSON): lists back to tuples, nested option
    dataclasses rebuilt, renamed fields under their new names, fields this version no longer has dropped."""
    hints = typing.get_type_hints(config_class, include_extras=True)
    fields = {f.name for f in dataclasses.fields(config_class)}
    values = {}
    for key, value in data.items():
        name = _RENAMED.get(key, key)
        if name in fields:
            values[name] = _rebuild(hints[name], value)
    return config_class(**values)


def _rebuild(hint: Any, value: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        inner = typing.get_type_hints(hint)
        return hint(**{k: _rebuild(inner[k], v) for k, v in value.items() if k in inner})
    origin = typing.get_origin(hint)
    if isinstance(value, list) and (origin is tuple or _optional_tuple(hint)):
        return tuple(value)
    return value


def _optional_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and any(
        typing.get_origin(a) is tuple for a in typing.get_args(hint)
    )
