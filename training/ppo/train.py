"""PPO: the network it builds, the learner (an update on a rollout, undone when it turns NaN) and the
algorithm's step for the run skeleton (training.run): collect a rollout through the executor, update,
broadcast the weights. The learner has one code path whatever runs the workers (in-process, worker
processes, Ray actors)."""

from __future__ import annotations

import copy
import dataclasses
import random
import time

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
from agents.precision import reduced_precision
from envs.factory import board_grid, is_two_player, probe_spaces
from envs.sc2 import is_sc2
from envs.symmetries import Symmetries, env_symmetries
from training.checkpoint import reading_contents
from training.distributed import SINGLE, DataParallel, run_data_parallel
from training.league import League
from training.ppo.backends import make_executor
from training.ppo.config import (
    PPOConfig,
    env_kwargs,
    learner_device,
    resolve_backend,
    resolve_num_learners,
    resolve_torch_threads,
    validate,
)
from training.ppo.exploration import RNDLearner
from training.ppo.normalization import RewardScaler
from training.ppo.rollout import Rollout
from training.ppo.self_imitation import SelfImitationReplay, self_imitation_update
from training.run import Algorithm, RunContext, RunResult, StepReport, resumed_config, run_training
from training.seeds import Reseed, reseeded, rollout_seed
from training.validation import precision_name, resolve_learner_precision


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
            interface.uses, lstm_size=cfg.memory_lstm_size, fc_mode=cfg.sc2.fc_mode,
        )  # fmt: skip
    grid = board_grid(cfg.env_id) if cfg.board_net == "cnn" else None
    agent = ActorCritic(observation_space, action_space, cfg.hidden_sizes, cfg.activation, cfg.normalize_obs,
                        cfg.memory_lstm_size, grid, cfg.conv_body_sizes, cfg.grid_filters)  # fmt: skip
    agent.kernels = cfg.mlp_kernel == "auto" and agent.kernel_compatible
    return agent


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
        # Small MLPs on the CPU with one learner: the compiled kernel (agents.ppo_kernel), else torch
        # (self-imitation's steps share the optimizer with PPO's: both then run through torch).
        self.kernel = getattr(agent, "kernels", False) and device.type == "cpu" and not parallel.enabled and not cfg.sil_updates
        # Fused Adam: one kernel for all parameters instead of several small ops per tensor.
        self.optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)
        local_envs = cfg.num_envs // parallel.world_size
        self.reward_scaler = RewardScaler(local_envs, cfg.gamma, gather=parallel.gather) if cfg.normalize_reward else None
        self.generator = torch.Generator().manual_seed(cfg.seed)
        symmetries = env_symmetries(cfg.env_id) if cfg.augment_symmetries else None
        self.symmetries = None if symmetries is None else symmetry_tensors(symmetries, device)
        self.autocast_dtype = resolve_learner_precision(cfg.learner_precision, getattr(agent, "conv_trunk", False), device)
        self.skipped_updates = 0
        self.skipped_in_a_row = 0
        # Self-imitation's replay: data, not learner state, so an undone update does not copy it.
        self.sil_replay = SelfImitationReplay(cfg.sil_capacity, local_envs, cfg.gamma) if cfg.sil_updates else None
        # Random network distillation's networks and their optimizer: learner state, undone with the update.
        self.rnd = None
        if cfg.rnd_coef > 0:
            self.rnd = RNDLearner(agent.obs_shape, local_envs, cfg.rnd_gamma, cfg.gae_lambda,
                                  cfg.rnd_update_proportion, cfg.learning_rate, device)  # fmt: skip

    def update(self, rollout: Rollout, learning_rate: float, rnd_coef: float | None = None) -> dict[str, float] | None:
        """One PPO update on a rollout; its statistics, or None when it was skipped as non-finite. rnd_coef:
        this update's weight of the exploration bonus (None: the config's rnd_coef)."""
        before = _cloned(self.state_dict())
        try:
            stats = self._update(rollout, learning_rate, self.cfg.rnd_coef if rnd_coef is None else rnd_coef)
        except NonFiniteUpdate:
            self.load_state_dict(before)
            self.skipped_updates += 1
            self.skipped_in_a_row += 1
            return None
        self.skipped_in_a_row = 0
        return stats

    def _update(self, rollout: Rollout, learning_rate: float, rnd_coef: float) -> dict[str, float]:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        rewards = rollout.rewards
        if self.reward_scaler is not None:
            rewards = self.reward_scaler(rewards, rollout.terminated, rollout.truncated)
        if self.sil_replay is not None:
            # The rollout's steps join their episodes (in the rewards the critic learns) before anything can
            # undo the update: a skipped update must not leave a gap inside an episode the replay stitches.
            self.sil_replay.add_rollout(rollout.obs, rollout.actions, rewards, rollout.values, rollout.terminated,
                                        rollout.truncated, rollout.bootstrap_values)  # fmt: skip

        def flat(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(x.reshape(-1, *x.shape[2:])).to(self.device)

        obs, actions = {k: flat(v) for k, v in rollout.obs.items()}, flat(rollout.actions)
        # A policy with memory: each env's state at the rollout's start and where episodes began.
        memory_inputs = {}
        if rollout.memory is not None:
            memory_inputs = {"memory": torch.as_tensor(rollout.memory).to(self.device),
                             "episode_starts": flat(rollout.episode_starts)}  # fmt: skip
        terminated, truncated = rollout.terminated.astype(bool), rollout.truncated.astype(bool)
        values = rollout.values
        if self.cfg.async_rollouts:
            # The rollout was acted by the previous weights (mu) while these (pi) were being computed:
            # V-trace targets from the current critic, weighted by pi/mu. The PPO ratio below is taken
            # against mu's log-probabilities and clipped around it, as in APPO. With memory, pi unrolls
            # from the states mu's workers had at the rollout's start.
            with torch.no_grad(), reduced_precision(self.device, self.autocast_dtype):
                dist, current_values, _ = self.agent(obs, memory_inputs.get("memory"), memory_inputs.get("episode_starts"))
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
        intrinsic = None
        if self.rnd is not None:
            # The exploration bonus enters the policy's advantage only; the critic keeps the game's returns.
            key = self.agent.obs_key  # the observation the networks read (a board's "obs" beside its action mask)
            intrinsic = self.rnd.targets(obs[key], rollout.last_obs[key])
            advantages = advantages + rnd_coef * intrinsic.advantages

        batch = {
            "obs": obs,
            "actions": actions,
            "log_probs": flat(rollout.log_probs),
            "values": flat(values),
            "advantages": flat(advantages),
            "returns": flat(returns),
            **memory_inputs,
        }
        if self.symmetries is not None:
            batch = symmetric_samples(batch, self.symmetries, self.generator)
        if self.kernel:
            from agents.ppo_kernel import ppo_kernel_update  # numba's import, only where the kernel runs

            stats = ppo_kernel_update(self.agent, self.optimizer, batch, self.hp, self.generator)
        else:
            stats = ppo_update(
                self.model, self.optimizer, batch, self.hp, self.generator, self.parallel.mean, self.autocast_dtype
            )
        stats["explained_variance"] = explained_variance(values.reshape(-1), returns.reshape(-1))
        if intrinsic is not None:
            stats.update(self.rnd.update(intrinsic, learning_rate, self.cfg.update_epochs, self.cfg.num_minibatches,
                                         self.cfg.max_grad_norm, self.generator))  # fmt: skip
        if self.sil_replay is not None:
            # A few steps imitate the replayed transitions whose return beat the critic (agents.self_imitation).
            stats.update(self_imitation_update(
                self.agent, self.optimizer, self.sil_replay, self.cfg.sil_updates, self.cfg.sil_batch_size,
                self.cfg.sil_value_coef, self.cfg.max_grad_norm, self.generator, self.device, self.autocast_dtype,
            ))  # fmt: skip
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
            "rnd": self.rnd.state_dict() if self.rnd else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        if self.rnd is not None:
            self.rnd.load_state_dict(state["rnd"])


def symmetry_tensors(symmetries: Symmetries, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """envs.symmetries' arrays as the tensors symmetric_samples takes: (observation permutations, observation
    signs, action permutations) on device."""
    arrays = (symmetries.obs_perms, symmetries.obs_signs, symmetries.action_perms)
    return tuple(torch.as_tensor(a).to(device) for a in arrays)


def symmetric_samples(batch: dict, symmetries: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      generator: torch.Generator) -> dict:  # fmt: skip
    """The rollout's samples, each seen through one of the game's symmetries drawn at random (the
    identity among them), as AlphaZero trains on Go's eight: a mirrored position is one the policy must
    also play well, and its advantage and return are those of the original, since neither the rules nor
    the result change under a symmetry.

    symmetries: (observation permutations [S, obs_size], observation signs [S, obs_size], action
    permutations [S, A]), envs.symmetries' as tensors; g maps the flat observation o (a board's
    batch["obs"]["obs"], or batch["obs"] itself) to signs[g] * o[obs_perms[g]], the action mask m to
    m[action_perms[g]] and action a to argsort(action_perms[g])[a]. A transformed sample keeps the
    rollout's log-probability and value, as if the acting policy were symmetric (rsl_rl's augmentation,
    Mittal et al. 2024, does the same): the ratio then pulls the policy's odds in the transformed position
    towards those it acted with, bounded like any sample's by the clip. The acting policy's own odds of the
    transformed move are no good: where it has not become symmetric they can be ~0, and a ratio against
    them blew the loss up to inf within 400k Connect Four steps. Observations are the raw ones: a
    normalising policy (--normalize-obs) normalises the transformed copies in its model."""
    obs_perms, obs_signs, action_perms = symmetries
    n = batch["actions"].shape[0]
    g = torch.randint(len(obs_perms), (n,), generator=generator).to(obs_perms.device)

    def turned(o: torch.Tensor) -> torch.Tensor:
        flat = o.reshape(n, -1)
        return (torch.take_along_dim(flat, obs_perms[g], 1) * obs_signs[g].to(flat.dtype)).reshape(o.shape)

    if isinstance(batch["obs"], dict):
        obs = dict(batch["obs"])
        obs["obs"] = turned(obs["obs"])
        if "action_mask" in obs:
            obs["action_mask"] = torch.take_along_dim(obs["action_mask"], action_perms[g], 1)
    else:
        obs = turned(batch["obs"])
    actions = torch.take_along_dim(action_perms.argsort(1)[g], batch["actions"].long()[:, None], 1)[:, 0]
    return {**batch, "obs": obs, "actions": actions.to(batch["actions"].dtype)}


def _cloned(state: object) -> object:
    """A state_dict tree with its tensors cloned and its containers rebuilt: what copy.deepcopy gives for
    the learner's state, ~10x cheaper (deepcopy's bookkeeping cost ~2 ms an update on CartPole's nets, a
    tenth of the kernel's update)."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return {k: _cloned(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cloned(v) for v in state)
    return state


# PPO's page in TensorBoard's "Custom Scalars" tab: one page with the charts people read first, curves that belong
# together drawn on the same axes (each entry is a regex over the tags of the same run).
PPO_DASHBOARD_LAYOUT = {
    "1. Return": {
        "return: training episodes, last-100 mean, evaluation": [
            "Multiline", ["charts/episodic_return", "charts/mean_return_100", "eval/episodic_return"],
        ],
        "episode length: training and evaluation": ["Multiline", ["charts/episodic_length", "eval/episodic_length"]],
    },
    "2. Losses": {
        "policy and value loss": ["Multiline", ["losses/policy_loss", "losses/value_loss"]],
        "entropy": ["Multiline", ["losses/entropy"]],
        "self-imitation (--sil-updates): its losses, the share of replayed returns above the critic, replay size": [
            "Multiline", ["losses/sil_.*"]],
        "exploration (--rnd-coef): predictor and intrinsic critic losses": [
            "Multiline", ["losses/rnd_predictor_loss", "losses/rnd_value_loss"]],
        "exploration (--rnd-coef): intrinsic reward, raw and scaled; the intrinsic critic's explained variance": [
            "Multiline", ["losses/rnd_intrinsic_reward", "losses/rnd_scaled_intrinsic_reward", "losses/rnd_explained_variance"]],
        "exploration (--rnd-coef): the bonus's weight in the advantage (falls to 0 with --anneal-rnd)": [
            "Multiline", ["charts/rnd_coef"]],
    },
    "3. Policy statistics": {
        "KL to the acting policy": ["Multiline", ["losses/approx_kl", "losses/old_approx_kl"]],
        "clip fraction": ["Multiline", ["losses/clipfrac"]],
        "explained variance": ["Multiline", ["losses/explained_variance"]],
        "gradient norm and learning rate": ["Multiline", ["charts/grad_norm", "charts/learning_rate"]],
        "policy lag of the data (versions; > 0 with --async-rollouts)": ["Multiline", ["charts/policy_lag"]],
    },
    "4. System": {
        "env steps per second": ["Multiline", ["charts/SPS"]],
        "seconds per rollout vs per update": ["Multiline", ["time/rollout_seconds", "time/update_seconds"]],
        "rollout workers": ["Multiline", ["system/num_workers"]],
        "memory (MiB)": ["Multiline", ["system/.*_mib"]],
    },
    "5. Faults": {
        "skipped updates, worker and env restarts, dropped episodes": ["Multiline", ["faults/.*"]],
    },
    "6. League (two-player games)": {
        "Elo: the newest snapshot and the reference players": ["Multiline", ["league/elo.*"]],
        "score against the frozen members (win 1, draw 0.5)": ["Multiline", ["league/score_vs_pool"]],
        "snapshots in the league": ["Multiline", ["league/snapshots"]],
    },
}  # fmt: skip


class PPOAlgorithm(Algorithm):
    """PPO for the run skeleton: a step collects one rollout through the executor (its workers in-process,
    in worker processes or on Ray actors), updates on it and broadcasts the new weights."""

    name, dashboard = "ppo", PPO_DASHBOARD_LAYOUT

    def __init__(self, cfg: PPOConfig, context: RunContext):
        parallel, payload = context.parallel, context.payload
        self.cfg, self.parallel, self.watch = cfg, parallel, context.watch
        device = learner_device(cfg)
        if parallel.enabled and device.type == "cuda":
            device = torch.device("cuda", parallel.rank)  # one GPU per learner
        self.device = device
        self.backend, self.num_workers = resolve_backend(cfg)
        self.in_process = self.backend == "inprocess"
        local_envs = cfg.num_envs // parallel.world_size
        observation_space, action_space = probe_spaces(cfg.env_id, env_kwargs(cfg))
        self.agent = self.policy = build_agent(cfg, observation_space, action_space).to(device)
        # Chosen here, never inherited from OMP_NUM_THREADS: a thread count changes float rounding, so a
        # user's environment variable would otherwise change a seeded run.
        torch.set_num_threads(resolve_torch_threads(cfg, self.agent.multithreaded, self.backend, self.num_workers))
        self.learner = PPOLearner(self.agent, cfg, device, parallel)
        self.iteration = 0
        # Faults survived before this process's executor started (they carry over a resume); the executor
        # adds the workers it replaced, and the learner the updates it skipped.
        self.faults_before = dict.fromkeys(("env_restarts", "worker_restarts", "dropped_episodes"), 0)
        if payload is not None:
            with reading_contents(cfg.resume):
                saved = payload.get("faults", {})
                self.learner.skipped_updates = saved.get("skipped_updates", 0)
                self.faults_before.update({k: saved.get(k, 0) for k in self.faults_before})
                self.learner.load_state_dict(payload["learner"])
                if self.learner.sil_replay is not None and payload.get("sil_replay") is not None:
                    self.learner.sil_replay.load_state_dict(payload["sil_replay"])
                self.iteration = payload["iteration"]
                torch.set_rng_state(payload["rng"]["torch"])
                random.setstate(payload["rng"]["python"])
        # A two-player game: the learner plays a league of its current and past selves (training.league).
        self.league = None
        if is_two_player(cfg.env_id):
            self.league = League(cfg.league, cfg.env_id, self._frozen_policy, cfg.seed)
            if payload is not None and "league" in payload:
                with reading_contents(cfg.resume):
                    self.league.load_state_dict(payload["league"])
            if not self.league.snapshots:
                self.league.add_snapshot(self.agent.state_dict(), self.iteration)
        self.env_kwargs = env_kwargs(cfg, context.run_dir)
        # Envs restart from fresh episodes after a resume, on seeds of their own (training.seeds). Each
        # data-parallel learner steps its own envs, seeded after those of the learners before it.
        worker_seed = reseeded(rollout_seed(cfg.seed), Reseed.RESUME, self.iteration) + parallel.rank * local_envs
        self.workers_started_at = time.perf_counter()
        self.executor = make_executor(
            self.backend, cfg.env_id, observation_space, action_space, self.agent, local_envs, self.num_workers,
            cfg.num_steps, worker_seed, cfg.worker_timeout, cfg.ray_address, cfg.async_rollouts, self.env_kwargs,
            self.league.opponents() if self.league else None,
        )  # fmt: skip
        self.executor.set_weights(self.agent.state_dict(), self.iteration)
        if parallel.enabled:
            # The workers' copies (made above) act through the kernel; the learner's own net, wrapped by
            # DistributedDataParallel, keeps its parameters where DDP registered them: torch acts for it.
            self.agent.kernels = False
        self.acting_total = self.learning_total = 0.0  # this invocation's, for time/rollout_fraction

    def _frozen_policy(self, weights: dict) -> PolicyValueNet:
        """A CPU copy of the agent with these weights (a league snapshot, for its rating games)."""
        policy = copy.deepcopy(self.agent).cpu()
        policy.load_state_dict(weights)
        return policy.eval()

    def config_extras(self) -> dict:
        return {"resolved_backend": self.backend, "resolved_num_workers": self.num_workers,
                "resolved_num_learners": self.parallel.world_size, "resolved_device": str(self.device),
                "resolved_learner_precision": precision_name(self.learner.autocast_dtype)}  # fmt: skip

    def step(self, global_step: int) -> StepReport:
        cfg = self.cfg
        lr, rnd_coef = cfg.learning_rate, cfg.rnd_coef
        remaining = 1.0 - self.iteration / cfg.num_iterations
        if cfg.anneal_lr:
            lr *= remaining
        if cfg.anneal_rnd:  # reaches 0 at rnd_anneal_fraction of the run and stays there
            rnd_coef *= max(0.0, 1.0 - self.iteration / (cfg.num_iterations * cfg.rnd_anneal_fraction))
        t0 = time.perf_counter()
        with self.watching(f"collecting a rollout of {cfg.env_id} in this process"):
            rollout = self.executor.collect_next() if cfg.async_rollouts else self.executor.collect()
        t1 = time.perf_counter()
        policy_lag = self.iteration - rollout.policy_version
        self.consistent = False  # from here to the new weights, a crash leaves the learner half-updated
        self.iteration += 1
        stats = self.learner.update(rollout, lr, rnd_coef)
        self.executor.set_weights(self.agent.state_dict(), self.iteration)
        self.consistent = True
        t2 = time.perf_counter()
        league_scalars = self._league_step(rollout) if self.league else {}
        self.faults_before["env_restarts"] += rollout.env_restarts
        self.faults_before["dropped_episodes"] += rollout.dropped_episodes

        # Every learner sees every learner's episodes, so all take the same stop decision.
        episodes = self.parallel.gather_objects((rollout.episode_returns, rollout.episode_lengths))
        scalars = {"charts/learning_rate": lr, "charts/policy_lag": policy_lag,
                   **({"charts/rnd_coef": rnd_coef} if cfg.rnd_coef > 0 else {}),
                   "time/rollout_seconds": t1 - t0, "time/update_seconds": t2 - t1}  # fmt: skip
        if stats is not None:
            scalars.update({f"losses/{k}": v for k, v in stats.items() if k not in ("epochs", "grad_norm")})
            scalars.update({"charts/update_epochs": stats["epochs"], "charts/grad_norm": stats["grad_norm"]})
        self.acting_total += t1 - t0
        self.learning_total += t2 - t1
        scalars["time/rollout_fraction"] = self.acting_total / (self.acting_total + self.learning_total)
        scalars.update(league_scalars)
        return StepReport(
            steps=rollout.num_steps * self.parallel.world_size,
            episode_returns=np.concatenate([r for r, _ in episodes]),
            episode_lengths=np.concatenate([n for _, n in episodes]),
            scalars=scalars, skipped_in_a_row=self.learner.skipped_in_a_row, acting_seconds=t1 - t0,
            learning_seconds=t2 - t1,
        )  # fmt: skip

    def _league_step(self, rollout: Rollout) -> dict[str, float]:
        """Record the games that ended, take a snapshot when it is time, and send the workers what changed."""
        league = self.league
        version = league.version
        league.record(rollout.episode_opponents, rollout.episode_returns)
        if league.wants_snapshot(self.iteration):
            league.add_snapshot(self.agent.state_dict(), self.iteration)
        if league.version != version:
            self.executor.set_opponents(league.opponents())
        return league.scalars()

    def state_dict(self) -> dict:
        state = {
            "iteration": self.iteration,
            "learner": self.learner.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }
        if self.league is not None:
            state["league"] = self.league.state_dict()
        return state

    def resume_state(self) -> dict:
        """Self-imitation's replay, in the periodic checkpoints only (best.pt does not need it)."""
        replay = self.learner.sil_replay
        return {"sil_replay": replay.state_dict()} if replay is not None else {}

    def faults(self) -> dict[str, int]:
        return {
            "skipped_updates": self.learner.skipped_updates,
            "env_restarts": self.faults_before["env_restarts"],
            "worker_restarts": self.faults_before["worker_restarts"] + self.executor.worker_restarts,
            "dropped_episodes": self.faults_before["dropped_episodes"] + self.executor.dropped_episodes,
        }

    def worker_pids(self) -> list[int]:
        return self.executor.worker_pids()

    def close(self) -> None:
        self.executor.close()


def train(cfg: PPOConfig) -> RunResult:
    """Train PPO; with several learners (--num-learners, or one per GPU), in that many data-parallel
    processes, returning rank 0's result."""
    resolved = resumed_config(cfg, "ppo")[0] if cfg.resume else cfg
    validate(resolved)
    learners = resolve_num_learners(resolved)
    if learners > 1:
        return run_data_parallel(_train, (cfg,), learners, use_cuda=learner_device(resolved).type == "cuda")
    return _train(cfg, SINGLE)


def _train(cfg: PPOConfig, parallel: DataParallel) -> RunResult:
    return run_training(cfg, "ppo", validate, PPOAlgorithm, parallel)
