"""One run skeleton for every algorithm (Stable-Baselines3's `learn`, Sample Factory's runner): the run
folder and its lock, resume, seeding, the logger and dashboards, evaluation and videos, the checkpoint
cadence, Ctrl-C and SIGTERM, the stop rule and the result. An algorithm supplies an `Algorithm`: one
`step` (collect experience and learn from it), its state, its acting policy and its dashboard page.

    algorithm = build(cfg, context)            # networks, optimiser, workers; restored from a checkpoint
    while env steps < total_timesteps (and wall minutes < train_for_minutes, when set):
        report = algorithm.step(env steps)     # PPO: a rollout and an update; MuZero: a round of self-play and its updates
        log the episodes and the report; evaluate, record, checkpoint when due; stop once solved
    the final evaluation, video and checkpoint
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from envs.factory import check_env_id, solved_return
from training.allocator import keep_freed_memory
from training.checkpoint import load_algo_checkpoint, reading_contents, run_dir_of, save_checkpoint
from training.distributed import SINGLE, DataParallel
from training.errors import TrainingDiverged
from training.evaluation import TrainingEvaluator, greedy_by_default
from training.interrupts import armed
from training.logger import Progress, RunLogger, make_run_dir, run_name
from training.resume import apply_resume_changes
from training.run_config import Config, RunConfig, config_from_dict, config_to_dict
from training.run_folder import claim_run_dir, loop_exit


@dataclass
class StepReport:
    """What one step of an algorithm did."""

    steps: int
    """env steps played (by every data-parallel learner together)"""
    episode_returns: np.ndarray
    """returns of the episodes that ended during the step (every learner's)"""
    episode_lengths: np.ndarray
    scalars: dict[str, float] = field(default_factory=dict)
    """logged at the env step the run reached (losses, timings, search statistics, ...)"""
    skipped_in_a_row: int = 0
    """updates in a row skipped so far because their loss or gradient was NaN or inf"""
    acting_seconds: float = 0.0
    """seconds collecting experience (PPO's rollouts, MuZero's self-play)"""
    learning_seconds: float = 0.0
    """seconds updating the networks"""


class Algorithm(ABC):
    """What an algorithm gives the run skeleton. Built by the algorithm's own function, which restores it
    from the checkpoint payload when the run resumes."""

    name: str
    """the checkpoint's 'algo'"""
    dashboard: dict
    """its page in TensorBoard's Custom Scalars tab: every tag it logs has a chart there"""
    policy: torch.nn.Module
    """the acting policy (PPO's act interface) that evaluations and videos play"""
    consistent: bool = True
    """whether state_dict() is now a state between two updates (a crash mid-update leaves it half-made)"""
    iteration: int = 0
    """steps taken so far, over the whole run (videos are recorded every --video-every of them)"""
    device: torch.device = torch.device("cpu")
    in_process: bool = True
    """whether the envs step in the learner's process (then the watchdog stands in for --worker-timeout)"""
    watch: Callable[[str], contextlib.AbstractContextManager] = contextlib.nullcontext
    """RunContext.watch, kept by the algorithm for `watching`"""
    num_workers: int = 1
    workers_started_at: float = 0.0
    """time.perf_counter() when the workers began to start: the run's clock (SPS, seconds to solve) starts
    there, so their start-up counts and the one-time setup of the networks before it does not"""
    env_kwargs: dict | None = None
    """what the env factory passes to each env's constructor (training.ppo.config.env_kwargs)"""

    @abstractmethod
    def step(self, global_step: int) -> StepReport:
        """Collect experience and learn from it; global_step is the run's env steps before this step."""

    def watching(self, what: str) -> contextlib.AbstractContextManager:
        """The context to act in: the watchdog where envs step in this process; outside it the workers
        have --worker-timeout of their own."""
        return self.watch(what) if self.in_process else contextlib.nullcontext()

    @abstractmethod
    def state_dict(self) -> dict:
        """The algorithm's part of a checkpoint (the skeleton adds the run's)."""

    def resume_state(self) -> dict:
        """What only a resume needs beside state_dict() (MuZero's replay): written into the periodic
        checkpoints, kept out of best.pt, which is for playing."""
        return {}

    @abstractmethod
    def faults(self) -> dict[str, int]:
        """Faults survived over the whole run (they carry over a resume): logged as faults/*."""

    def worker_pids(self) -> list[int]:
        """Process ids of workers outside this process (for the memory figures)."""
        return []

    def config_extras(self) -> dict:
        """What the run's config resolved to ('auto' settings), shown beside it in TensorBoard."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Stop the workers."""


@dataclass
class RunContext:
    """What an algorithm's build function gets besides the config."""

    run_dir: Path | None
    """None on data-parallel learners other than rank 0, which write nothing"""
    payload: dict | None
    """the checkpoint being resumed, else None"""
    parallel: DataParallel = SINGLE
    watch: Callable[[str], contextlib.AbstractContextManager] = contextlib.nullcontext
    """watch(what): a context in which envs stepped in this process that go without a step for
    --worker-timeout seconds stop the run with a checkpoint (the watchdog); wrap the acting in it"""


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path | None
    global_step: int
    seconds: float
    """wall seconds over the whole run (a resumed run's earlier ones included)"""
    solved: bool
    """--solved-by training: the run stopped on reaching --stop-return (--stop-when-solved); --solved-by
    evaluation: its last evaluation reached it"""
    mean_return: float | None
    """mean return of the last 100 training episodes"""
    eval_return: float | None
    """mean return of the final evaluation (None with --eval-episodes 0)"""
    sps: float
    """env steps per second of this invocation"""
    episodes: int
    """training episodes over the whole run"""
    rollout_seconds: float = 0.0
    """seconds collecting experience in this invocation (PPO's rollouts, MuZero's self-play)"""
    update_seconds: float = 0.0
    """seconds updating the networks in this invocation"""
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(env steps, wall seconds, mean return of the last 100 training episodes) after each step"""
    eval_history: list[tuple[int, float, float]] = field(default_factory=list)
    """(env steps, wall seconds, mean evaluation return) at each evaluation"""
    solved_at: tuple[int, float] | None = None
    """(env steps, wall seconds) where the run was first solved as --solved-by judges it, whether it stopped
    there or not (--no-stop-when-solved); None if never (in this invocation)"""
    env_id: str = ""
    """the run's env (a resumed run's own, whatever the command line's --env-id says)"""
    eval_greedy: bool = True
    """whether the evaluations took the most likely actions (False: sampled, --eval-stochastic or Atari's default)"""

    @property
    def evaluation_name(self) -> str:
        return "greedy evaluation" if self.eval_greedy else "sampled evaluation"


class _NullLogger:
    """What data-parallel learners other than rank 0 log to: nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def resumed_config(cfg: Config, algo: str) -> tuple[Config, dict, Path]:
    """The saved config of the run cfg.resume names (continued by cfg's resume changes), its checkpoint
    payload and its run folder."""
    payload, path = load_algo_checkpoint(cfg.resume, algo)
    with reading_contents(path):
        resumed = apply_resume_changes(config_from_dict(type(cfg), json.loads(payload["config"])), cfg)
        payload["global_step"] = int(payload["global_step"])
    return resumed, payload, run_dir_of(path)


def run_training(
    cfg: RunConfig, algo: str, validate: Callable[[Any], None], build: Callable[[Any, RunContext], Algorithm],
    parallel: DataParallel = SINGLE,
) -> RunResult:  # fmt: skip
    """Train `algo` with cfg (or continue the run cfg.resume names): validate, make or claim the run
    folder, seed, build the algorithm and run the loop."""
    payload, run_dir = None, None
    if cfg.resume:
        cfg, payload, run_dir = resumed_config(cfg, algo)
    validate(cfg)
    check_env_id(cfg.env_id)
    keep_freed_memory()  # 1.27x on MinAtar's PPO and MuZero steps here: no page faults for each step's tensors
    if payload is None and parallel.is_main:
        run_dir = make_run_dir(Path(cfg.runs_dir), run_name(cfg.env_id, cfg.exp_name, cfg.seed))
    if not parallel.is_main:  # rank 0 holds the folder for all learners
        return _run_in_folder(cfg, algo, build, payload, run_dir, parallel)
    with claim_run_dir(run_dir, payload["global_step"] if payload is not None else None):
        return _run_in_folder(cfg, algo, build, payload, run_dir, parallel)


def _run_in_folder(cfg: RunConfig, algo_name: str, build: Callable[[Any, RunContext], Algorithm],
                   payload: dict | None, run_dir: Path | None, parallel: DataParallel) -> RunResult:  # fmt: skip
    main = parallel.is_main
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    global_step, seconds_before, episodes = 0, 0.0, 0
    recent_returns: deque[float] = deque(maxlen=100)
    best_return, best_losing_moves = -math.inf, None
    if payload is not None:
        with reading_contents(cfg.resume):
            global_step, seconds_before = payload["global_step"], payload["elapsed_seconds"]
            episodes = int(payload.get("episodes", 0))
            recent_returns.extend(payload["recent_returns"].tolist() if "recent_returns" in payload else [])
            best_return = payload.get("best_eval_return", -math.inf)
            best_losing_moves = payload.get("best_eval_losing_moves")

    def watch(what: str) -> contextlib.AbstractContextManager:
        return armed(what, cfg.worker_timeout)

    algorithm = build(cfg, RunContext(run_dir, payload, parallel, watch))
    start = algorithm.workers_started_at

    config_dict = {**config_to_dict(cfg), **algorithm.config_extras()}
    if main:
        logger = RunLogger(run_dir, config_dict, resumed_at=global_step if payload is not None else None)
        if payload is None:
            logger.dashboards(config_dict, algorithm.dashboard)
    else:
        logger = _NullLogger()
    evaluator = TrainingEvaluator(
        cfg.env_id, run_dir, logger, cfg.seed, cfg.eval_episodes, cfg.eval_every, cfg.capture_video,
        cfg.video_every, best_return=best_return, env_kwargs=algorithm.env_kwargs, best_losing_moves=best_losing_moves,
        deterministic=greedy_by_default(cfg.env_id, cfg.eval_stochastic),
    )  # fmt: skip

    def checkpoint_state() -> dict:
        return {
            "algo": algo_name,
            "config": json.dumps(config_to_dict(dataclasses.replace(cfg, resume=None, resume_changes=()))),
            "global_step": global_step,
            "elapsed_seconds": seconds_before + time.perf_counter() - start,
            "episodes": episodes,
            "recent_returns": torch.tensor(list(recent_returns), dtype=torch.float64),
            "best_eval_return": evaluator.best_return,
            "best_eval_losing_moves": evaluator.best_losing_moves,
            "faults": algorithm.faults(),
            **algorithm.state_dict(),
        }

    def checkpoint() -> Path | None:
        if not main:
            return None
        state = {**checkpoint_state(), **algorithm.resume_state()}  # MuZero's replay too, unlike best.pt
        return save_checkpoint(run_dir, state, global_step, cfg.keep_checkpoints)

    def evaluate() -> float:
        """An evaluation (greedy unless --eval-stochastic), logged; its mean return. With --solved-by evaluation it also decides
        `solved`: the return reaches the threshold and, on TicTacToe, the audit of every perfect line finds
        no losing move either."""
        nonlocal solved, solved_at
        with armed(f"evaluating on {cfg.env_id}", cfg.worker_timeout):
            result = evaluator.evaluate(algorithm.policy, global_step, checkpoint_state)
        seconds = seconds_before + time.perf_counter() - start
        eval_history.append((global_step, seconds, result.mean_return))
        if cfg.solved_by == "evaluation":
            solved = threshold is not None and result.mean_return >= threshold and not result.losing_moves
            if solved and solved_at is None:
                solved_at = (global_step, seconds)
        return result.mean_return

    threshold = solved_return(cfg.env_id, cfg.stop_return)
    solved_at: tuple[int, float] | None = None
    progress = Progress(cfg.total_timesteps, global_step, enabled=cfg.progress and main)
    steps_at_start, acting_seconds, learning_seconds = global_step, 0.0, 0.0
    history: list[tuple[int, float, float]] = []
    eval_history: list[tuple[int, float, float]] = []
    eval_return, solved, last_checkpoint = None, False, None
    next_checkpoint = (global_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every

    def out_of_time(elapsed: float) -> bool:
        """Whether --train-for-minutes has run out after `elapsed` seconds of this invocation."""
        return bool(cfg.train_for_minutes) and seconds_before + elapsed >= 60 * cfg.train_for_minutes

    timed_out = out_of_time(0.0)  # a resumed run may have spent its minutes already
    try:
        while global_step < cfg.total_timesteps and not timed_out:
            report = algorithm.step(global_step)
            step_before, global_step = global_step, global_step + report.steps
            acting_seconds += report.acting_seconds
            learning_seconds += report.learning_seconds
            if report.skipped_in_a_row >= cfg.max_bad_updates:
                kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
                raise TrainingDiverged(
                    f"{report.skipped_in_a_row} updates in a row had a NaN or inf loss or gradient, so the run stopped "
                    f"at env step {global_step}; {kept}. Look for NaN/inf in the env's rewards and observations, or "
                    "lower --learning-rate"
                )

            for ret, length in zip(report.episode_returns, report.episode_lengths, strict=True):
                logger.scalars({"charts/episodic_return": ret, "charts/episodic_length": length}, global_step)
            # A NaN or inf return (a broken reward) would hold the last-100 mean at NaN for 100 episodes.
            finite = report.episode_returns[np.isfinite(report.episode_returns)]
            recent_returns.extend(finite.tolist())
            episodes += len(report.episode_returns)
            mean_return = float(np.mean(recent_returns)) if recent_returns else None
            elapsed = time.perf_counter() - start
            sps = (global_step - steps_at_start) / max(elapsed, 1e-9)
            logger.scalars({
                **report.scalars,
                "charts/SPS": sps,
                **{f"faults/{k}": v for k, v in algorithm.faults().items()},
            }, global_step)  # fmt: skip
            logger.system(algorithm.num_workers, algorithm.worker_pids(), algorithm.device, global_step)
            if mean_return is not None:
                logger.scalars({"charts/mean_return_100": mean_return}, global_step)
                history.append((global_step, seconds_before + elapsed, mean_return))
            seconds_left = 60 * cfg.train_for_minutes - seconds_before - elapsed if cfg.train_for_minutes else None
            progress.update(global_step, sps, mean_return, seconds_left=seconds_left)

            if cfg.solved_by == "training":
                reached = threshold is not None and len(recent_returns) == recent_returns.maxlen and mean_return >= threshold
                if reached and solved_at is None:
                    solved_at = (global_step, seconds_before + elapsed)
                solved = reached and cfg.stop_when_solved
            timed_out = out_of_time(elapsed)
            # Periodic evaluation, videos and checkpoints; the last of each runs after the loop.
            finished = (solved and cfg.stop_when_solved) or timed_out or global_step >= cfg.total_timesteps
            if main and cfg.eval_episodes and evaluator.evaluation_due(step_before, global_step) and not finished:
                eval_return = evaluate()
            if main and evaluator.video_due(algorithm.iteration) and not finished:
                with armed(f"recording a video of {cfg.env_id}", cfg.worker_timeout):
                    evaluator.record_video(algorithm.policy, global_step)
            if global_step >= next_checkpoint and not finished:
                last_checkpoint = checkpoint()
                next_checkpoint = (global_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
            if solved and cfg.stop_when_solved:
                break
        # The final evaluation, unless the one that just stopped the run was at this very step.
        if main and cfg.eval_episodes and not (eval_history and eval_history[-1][0] == global_step):
            eval_return = evaluate()
        if main and cfg.capture_video:
            with armed(f"recording a video of {cfg.env_id}", cfg.worker_timeout):
                evaluator.record_video(algorithm.policy, global_step)
        last_checkpoint = checkpoint()
    except BaseException as error:  # a stop or a crash: save what can be saved, then say so (run_folder)
        raise loop_exit(error, run_dir, global_step, checkpoint, algorithm.consistent, last_checkpoint)  # noqa: B904
    finally:
        progress.close()
        algorithm.close()
        logger.close()

    elapsed = time.perf_counter() - start
    return RunResult(
        run_dir=run_dir, checkpoint=last_checkpoint, global_step=global_step, seconds=seconds_before + elapsed,
        solved=bool(solved), mean_return=float(np.mean(recent_returns)) if recent_returns else None,
        eval_return=eval_return, sps=(global_step - steps_at_start) / max(elapsed, 1e-9), episodes=episodes,
        rollout_seconds=acting_seconds, update_seconds=learning_seconds, history=history, eval_history=eval_history,
        solved_at=solved_at, env_id=cfg.env_id, eval_greedy=evaluator.deterministic,
    )  # fmt: skip
