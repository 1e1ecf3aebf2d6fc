"""PPO's learner loop: collect a rollout through the executor, update, broadcast weights, log, save.

The learner has one code path whatever runs the workers (in-process, worker processes, Ray actors).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from agents.networks import ActorCritic, PolicyValueNet
from agents.ppo import (
    NonFiniteUpdate,
    PPOHyperparams,
    compute_gae,
    compute_vtrace,
    explained_variance,
    ppo_update,
)
from envs.factory import check_env_id, probe_spaces, solved_return
from envs.sc2 import is_sc2
from training.checkpoint import (
    load_algo_checkpoint,
    reading_contents,
    run_dir_of,
    save_checkpoint,
)
from training.distributed import SINGLE, DataParallel, run_data_parallel
from training.errors import TrainingDiverged
from training.evaluation import TrainingEvaluator
from training.interrupts import armed
from training.logger import Progress, RunLogger, make_run_dir, run_name
from training.ppo.backends import make_executor
from training.ppo.config import (
    PPOConfig,
    config_from_dict,
    config_to_dict,
    env_kwargs,
    resolve_backend,
    resolve_device,
    resolve_num_learners,
    validate,
)
from training.ppo.executors import Executor
from training.ppo.normalization import RewardScaler
from training.ppo.rollout import Rollout
from training.provenance import usable_cores
from training.resume import apply_resume_changes
from training.run_folder import claim_run_dir, loop_exit
from training.seeds import Reseed, reseeded, rollout_seed


def build_agent(cfg: PPOConfig, observation_space: gym.Space, action_space: gym.Space) -> PolicyValueNet:
    """The network for the env: FullyConv for StarCraft II, else MLPs (vectors) or the Nature CNN (frames)."""
    if is_sc2(cfg.env_id):
        from agents.sc2_networks import FullyConv
        from envs.sc2 import ARGUMENT_TYPES, SPATIAL_ARGUMENTS, SC2Interface

        interface = SC2Interface(cfg.sc2)
        layers = interface.feature_layers
        return FullyConv(
            layers["screen"], layers["minimap"], cfg.sc2.screen_size, cfg.sc2.minimap_size,
            observation_space["player"].shape[0], interface.argument_sizes, SPATIAL_ARGUMENTS, ARGUMENT_TYPES,
            interface.uses,
        )  # fmt: skip
    return ActorCritic(observation_space, action_space, cfg.hidden_sizes, cfg.activation, cfg.normalize_obs)


def hyperparams(cfg: PPOConfig) -> PPOHyperparams:
    names = {f.name for f in dataclasses.fields(PPOHyperparams)}
    return PPOHyperparams(**{n: getattr(cfg, n) for n in names})


class PPOLearner:
    """The agent, its optimizer, reward scaling and the minibatch RNG: everything an update changes.

    An update whose loss or gradient turns NaN or inf is undone entirely (weights, optimizer, reward
    statistics and minibatch RNG as they were before it) and reported as skipped.
    """

    def __init__(self, agent: PolicyValueNet, cfg: PPOConfig, device: torch.device, parallel: DataParallel = SINGLE):
        self.agent, self.cfg, self.device, self.parallel = agent, cfg, device, parallel
        # What the update runs through: the agent itself, or its DDP wrapper with several learners.
        self.model = parallel.wrap(agent, device)
        self.hp = hyperparams(cfg)
        # Fused Adam: one kernel for all parameters instead of several small ops per tensor.
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)
        local_envs = cfg.num_envs // parallel.world_size
        self.reward_scaler = RewardScaler(local_envs, cfg.gamma, gather=parallel.gather) if cfg.normalize_reward else None
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.skipped_updates = 0
        self.skipped_in_a_row = 0

    def update(self, rollout: Rollout, learning_rate: float) -> dict[str, float] | None:
        """One PPO update on a rollout; its statistics, or None when it was skipped as non-finite."""
        before = copy.deepcopy(self.state_dict())
        try:
            stats = self._update(rollout, learning_rate)
        except NonFiniteUpdate:
            self.load_state_dict(before)
            self.skipped_updates += 1
            self.skipped_in_a_row += 1
            return None
        self.skipped_in_a_row = 0
        return stats

    def _update(self, rollout: Rollout, learning_rate: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        rewards = rollout.rewards
        if self.reward_scaler is not None:
            rewards = self.reward_scaler(rewards, rollout.terminated, rollout.truncated)

        def flat(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x.reshape(-1, *x.shape[2:])).to(self.device)

        obs, actions = {k: flat(v) for k, v in rollout.obs.items()}, flat(rollout.actions)
        terminated, truncated = rollout.terminated.astype(bool), rollout.truncated.astype(bool)
        values = rollout.values
        if self.cfg.async_rollouts:
            # The rollout was acted by the previous weights (mu) while these (pi) were being computed:
            # V-trace targets from the current critic, weighted by pi/mu. The PPO ratio below is taken
            # against mu's log-probabilities and clipped around it, as in APPO.
            with torch.no_grad():
                dist, current_values = self.agent(obs)
                log_rhos = (dist.log_prob(actions) - flat(rollout.log_probs)).cpu().numpy().reshape(values.shape)
            values = current_values.cpu().numpy().reshape(values.shape)
            advantages, returns = compute_vtrace(
                rewards, values, terminated, truncated, rollout.bootstrap_values, rollout.last_values, log_rhos,
                self.cfg.gamma, self.cfg.gae_lambda,
            )  # fmt: skip
        else:
            advantages, returns = compute_gae(
                rewards, values, terminated, truncated, rollout.bootstrap_values, rollout.last_values,
                self.cfg.gamma, self.cfg.gae_lambda,
            )  # fmt: skip

        batch = {
            "obs": obs,
            "actions": actions,
            "log_probs": flat(rollout.log_probs),
            "values": flat(values),
            "advantages": flat(advantages),
            "returns": flat(returns),
        }
        stats = ppo_update(self.model, self.optimizer, batch, self.hp, self.generator, self.parallel.mean)
        stats["explained_variance"] = explained_variance(values.reshape(-1), returns.reshape(-1))
        if self.agent.obs_normalizer is not None:
            # After the update, so the update sees the same normalisation the rollout was acted with.
            # Data-parallel learners update theirs with everybody's observations, so they stay equal.
            raw = obs[self.agent.obs_key]
            if self.parallel.enabled:
                raw = torch.as_tensor(self.parallel.gather(raw.cpu().numpy())).to(self.device)
            self.agent.obs_normalizer.update(raw)
        return stats

    def state_dict(self) -> dict:
        return {
            "model": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "reward_scaler": self.reward_scaler.state_dict() if self.reward_scaler else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    global_step: int
    seconds: float
    solved: bool
    mean_return: float | None
    sps: float
    eval_return: float | None
    """mean return of the final greedy evaluation (None with --eval-every 0)"""
    rollout_seconds: float
    update_seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)
    """(env steps, wall seconds, mean return of the last 100 episodes) after each update"""
    env_id: str = ""
    """the run's env (a resumed run's own, whatever the command line's --env-id says)"""


def load_resume_config(cfg: PPOConfig) -> tuple[PPOConfig, dict, Path]:
    """The saved config of the run to resume (with this invocation's device/progress), its checkpoint
    payload and its run folder."""
    payload, path = load_algo_checkpoint(cfg.resume, "ppo")
    with reading_contents(path):
        resumed = apply_resume_changes(config_from_dict(json.loads(payload["config"])), cfg)
        payload["global_step"] = int(payload["global_step"])
    return resumed, payload, run_dir_of(path)


@dataclass
class FaultCounts:
    """Faults survived before this process's executor started (they carry over a resume); the executor
    adds the workers it replaced, and the learner the updates it skipped."""

    env_restarts: int = 0
    worker_restarts: int = 0
    dropped_episodes: int = 0

    def totals(self, executor: Executor, learner: PPOLearner) -> dict[str, int]:
        return {
            "skipped_updates": learner.skipped_updates,
            "env_restarts": self.env_restarts,
            "worker_restarts": self.worker_restarts + executor.worker_restarts,
            "dropped_episodes": self.dropped_episodes + executor.dropped_episodes,
        }


class _NullLogger:
    """What data-parallel learners other than rank 0 log to: nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def train(cfg: PPOConfig) -> TrainResult:
    """Train PPO; with several learners (--num-learners, or one per GPU), in that many data-parallel
    processes, returning rank 0's result."""
    resolved = load_resume_config(cfg)[0] if cfg.resume else cfg
    validate(resolved)
    learners = resolve_num_learners(resolved)
    if learners > 1:
        return run_data_parallel(_train, (cfg,), learners, use_cuda=resolve_device(resolved.device).type == "cuda")
    return _train(cfg, SINGLE)


def _train(cfg: PPOConfig, parallel: DataParallel) -> TrainResult:
    payload, run_dir = None, None
    if cfg.resume:
        cfg, payload, run_dir = load_resume_config(cfg)
    validate(cfg)
    check_env_id(cfg.env_id)
    if payload is None and parallel.is_main:
        run_dir = make_run_dir(Path(cfg.runs_dir), run_name(cfg.env_id, cfg.exp_name, cfg.seed))
    if not parallel.is_main:  # rank 0 holds the folder for all learners
        return _train_in_folder(cfg, parallel, payload, run_dir)
    with claim_run_dir(run_dir, payload["global_step"] if payload is not None else None):
        return _train_in_folder(cfg, parallel, payload, run_dir)


def _train_in_folder(cfg: PPOConfig, parallel: DataParallel, payload: dict | None, run_dir: Path | None) -> TrainResult:
    device = resolve_device(cfg.device)
    if parallel.enabled and device.type == "cuda":
        device = torch.device("cuda", parallel.rank)  # one GPU per learner
    main = parallel.is_main
    backend, num_workers = resolve_backend(cfg)
    local_envs = cfg.num_envs // parallel.world_size
    observation_space, action_space = probe_spaces(cfg.env_id, env_kwargs(cfg))

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    agent = build_agent(cfg, observation_space, action_space).to(device)
    # One thread for MLPs (a second costs more in synchronisation than it gives); all usable cores for CNNs.
    # Chosen here, never inherited from OMP_NUM_THREADS: a thread count changes float rounding, so a
    # user's environment variable would otherwise change a seeded run.
    torch.set_num_threads(cfg.torch_threads or (usable_cores() if agent.is_image else 1))
    learner = PPOLearner(agent, cfg, device, parallel)

    global_step, iteration, seconds_before = 0, 0, 0.0
    recent_returns: deque[float] = deque(maxlen=100)
    faults = FaultCounts()
    if payload is not None:
        with reading_contents(cfg.resume):
            saved = payload.get("faults", {})
            learner.skipped_updates = saved.get("skipped_updates", 0)
            faults = FaultCounts(**{k: saved.get(k, 0) for k in ("env_restarts", "worker_restarts", "dropped_episodes")})
            learner.load_state_dict(payload["learner"])
            global_step, iteration = payload["global_step"], payload["iteration"]
            seconds_before = payload["elapsed_seconds"]
            recent_returns.extend(payload["recent_returns"].tolist())
            torch.set_rng_state(payload["rng"]["torch"])
            random.setstate(payload["rng"]["python"])

    threshold = solved_return(cfg.env_id, cfg.stop_return)
    config_dict = {**config_to_dict(cfg), "resolved_backend": backend, "resolved_num_workers": num_workers,
                   "resolved_num_learners": parallel.world_size}  # fmt: skip
    if main:
        logger = RunLogger(run_dir, config_dict, resumed_at=global_step if payload is not None else None)
        if payload is None:
            logger.dashboards(config_dict)
    else:
        logger = _NullLogger()
    evaluator = TrainingEvaluator(
        cfg.env_id, run_dir, logger, cfg.seed, cfg.eval_episodes, cfg.eval_every, cfg.capture_video,
        cfg.video_every, best_return=payload.get("best_eval_return", -math.inf) if payload else -math.inf,
        env_kwargs=env_kwargs(cfg),
    )  # fmt: skip

    def checkpoint_state() -> dict:
        return {
            "algo": "ppo",
            "config": json.dumps(config_to_dict(dataclasses.replace(cfg, resume=None, resume_changes=()))),
            "global_step": global_step,
            "iteration": iteration,
            "elapsed_seconds": seconds_before + time.perf_counter() - start,
            "learner": learner.state_dict(),
            "recent_returns": torch.tensor(list(recent_returns), dtype=torch.float64),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "best_eval_return": evaluator.best_return,
            "faults": faults.totals(executor, learner),
        }

    def checkpoint() -> Path | None:
        return save_checkpoint(run_dir, checkpoint_state(), global_step, cfg.keep_checkpoints) if main else None

    # Envs restart from fresh episodes after a resume, on seeds of their own (training.seeds). Each
    # data-parallel learner steps its own envs, seeded after those of the learners before it.
    worker_seed = reseeded(rollout_seed(cfg.seed), Reseed.RESUME, iteration) + parallel.rank * local_envs
    start = time.perf_counter()
    executor = make_executor(
        backend, cfg.env_id, observation_space, action_space, agent, local_envs, num_workers, cfg.num_steps,
        worker_seed, cfg.worker_timeout, cfg.ray_address, cfg.async_rollouts, env_kwargs(cfg, run_dir),
    )  # fmt: skip
    progress = Progress(cfg.total_timesteps, global_step, enabled=cfg.progress and main)
    rollout_seconds = update_seconds = 0.0
    history: list[tuple[int, float, float]] = []
    eval_return = None
    solved, last_checkpoint, next_checkpoint = False, None, (global_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    consistent = True  # the state a checkpoint would hold is one between two updates

    def watching(what: str) -> contextlib.AbstractContextManager:
        # Envs stepped in this process have no --worker-timeout of their own: the watchdog stands in.
        return armed(what, cfg.worker_timeout) if backend == "inprocess" else contextlib.nullcontext()

    try:
        executor.set_weights(agent.state_dict(), iteration)
        steps_at_start = global_step
        while global_step < cfg.total_timesteps:
            lr = cfg.learning_rate
            if cfg.anneal_lr:
                lr *= 1.0 - iteration / cfg.num_iterations
            t0 = time.perf_counter()
            with watching(f"collecting a rollout of {cfg.env_id} in this process"):
                rollout = executor.collect_next() if cfg.async_rollouts else executor.collect()
            t1 = time.perf_counter()
            policy_lag = iteration - rollout.policy_version
            consistent = False  # from here to the new weights, a crash leaves the learner half-updated
            step_before = global_step
            global_step += rollout.num_steps * parallel.world_size
            iteration += 1
            stats = learner.update(rollout, lr)
            if stats is None and learner.skipped_in_a_row >= cfg.max_bad_updates:
                kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written"
                raise TrainingDiverged(
                    f"{learner.skipped_in_a_row} updates in a row had a NaN or inf loss or gradient, so the run "
                    f"stopped at env step {global_step}; {kept}. Look for NaN/inf in the env's rewards and "
                    "observations, or lower --learning-rate"
                )
            executor.set_weights(agent.state_dict(), iteration)
            consistent = True
            t2 = time.perf_counter()
            rollout_seconds += t1 - t0
            update_seconds += t2 - t1

            # Every learner sees every learner's episodes, so all take the same stop decision.
            episodes = parallel.gather_objects((rollout.episode_returns, rollout.episode_lengths))
            episode_returns = np.concatenate([r for r, _ in episodes])
            episode_lengths = np.concatenate([n for _, n in episodes])
            for ret, length in zip(episode_returns, episode_lengths, strict=True):
                logger.scalars({"charts/episodic_return": ret, "charts/episodic_length": length}, global_step)
            # A NaN or inf return (a broken reward) would hold the last-100 mean at NaN for 100 episodes.
            recent_returns.extend(episode_returns[np.isfinite(episode_returns)].tolist())
            faults.env_restarts += rollout.env_restarts
            faults.dropped_episodes += rollout.dropped_episodes
            mean_return = float(np.mean(recent_returns)) if recent_returns else None
            elapsed = time.perf_counter() - start
            sps = (global_step - steps_at_start) / elapsed
            if stats is not None:
                logger.scalars({f"losses/{k}": v for k, v in stats.items() if k not in ("epochs", "grad_norm")}, global_step)
                logger.scalars({"charts/update_epochs": stats["epochs"], "charts/grad_norm": stats["grad_norm"]}, global_step)
            logger.scalars({
                "charts/learning_rate": lr,
                "charts/SPS": sps,
                "charts/policy_lag": policy_lag,
                **{f"faults/{k}": v for k, v in faults.totals(executor, learner).items()},
                "time/rollout_seconds": t1 - t0,
                "time/update_seconds": t2 - t1,
                "time/rollout_fraction": rollout_seconds / (rollout_seconds + update_seconds),
            }, global_step)  # fmt: skip
            logger.system(num_workers, executor.worker_pids(), device, global_step)
            if mean_return is not None:
                logger.scalars({"charts/mean_return_100": mean_return}, global_step)
                history.append((global_step, seconds_before + elapsed, mean_return))
            progress.update(global_step, sps, mean_return)

            solved = (
                cfg.stop_when_solved and threshold is not None and len(recent_returns) == recent_returns.maxlen
                and mean_return >= threshold
            )  # fmt: skip
            # Periodic evaluation and videos; the last of each runs after the loop, once training is over.
            finished = solved or global_step >= cfg.total_timesteps
            if main and evaluator.evaluation_due(step_before, global_step) and not finished:
                with armed(f"evaluating on {cfg.env_id}", cfg.worker_timeout):
                    evaluator.evaluate(agent, global_step, checkpoint_state)
            if main and evaluator.video_due(iteration) and not finished:
                with armed(f"recording a video of {cfg.env_id}", cfg.worker_timeout):
                    evaluator.record_video(agent, global_step)
            if global_step >= next_checkpoint and not finished:
                last_checkpoint = checkpoint()
                next_checkpoint = (global_step // cfg.checkpoint_every + 1) * cfg.checkpoint_every
            if solved:
                break
        if main and cfg.eval_every > 0:
            with armed(f"evaluating on {cfg.env_id}", cfg.worker_timeout):
                eval_return = evaluator.evaluate(agent, global_step, checkpoint_state).mean_return
        if main and cfg.capture_video:
            with armed(f"recording a video of {cfg.env_id}", cfg.worker_timeout):
                evaluator.record_video(agent, global_step)
        last_checkpoint = checkpoint()
    except BaseException as error:  # a stop or a crash: save what can be saved, then say so (run_folder)
        raise loop_exit(error, run_dir, global_step, checkpoint, consistent, last_checkpoint)  # noqa: B904
    finally:
        progress.close()
        executor.close()
        logger.close()

    elapsed = time.perf_counter() - start
    mean_return = float(np.mean(recent_returns)) if recent_returns else None
    return TrainResult(
        run_dir=run_dir, checkpoint=last_checkpoint, global_step=global_step, seconds=seconds_before + elapsed,
        solved=bool(solved), mean_return=mean_return, sps=(global_step - steps_at_start) / elapsed, eval_return=eval_return,
        rollout_seconds=rollout_seconds, update_seconds=update_seconds, history=history, env_id=cfg.env_id,
    )  # fmt: skip
