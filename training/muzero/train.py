"""MuZero for the run skeleton (training.run): a step plays one round of self-play with the batched
search (every game makes --self-play-moves moves through the workers), adds the games to the prioritised
replay, and takes `updates_per_step` gradient steps per env step played once the replay holds enough.
Logging, evaluation (the search acting greedily), checkpoints and --resume are the skeleton's, as for PPO.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from agents.muzero.networks import MuZeroResNet
from envs.factory import check_env_id
from envs.symmetries import env_symmetries
from training.errors import ConfigError
from training.muzero.actor import MuZeroActor
from training.muzero.config import (
    MuZeroConfig,
    build_model,
    check_replay_fits,
    is_two_player,
    learner_threads,
    model_spaces,
    resolve_self_play,
    search_config,
    search_symmetries,
    symmetric_search,
    validate_muzero,
    visit_temperature,
)
from training.muzero.learner import update
from training.muzero.replay import PrioritizedReplay
from training.muzero.self_play import make_self_play
from training.run import Algorithm, RunContext, RunResult, StepReport, run_training
from training.seeds import Reseed, reseeded, self_play_seed
from training.validation import precision_name, resolve_device, resolve_learner_precision

# MuZero's page in TensorBoard's Custom Scalars tab (PPO's has KL and clip-fraction charts that MuZero
# never logs): every tag a MuZero run logs has a chart here.
MUZERO_DASHBOARD_LAYOUT = {
    "1. Return": {
        "return: training episodes and greedy search evaluation": [
            "Multiline", ["charts/episodic_return", "charts/mean_return_100", "eval/episodic_return",
                          "eval/episodic_return_std"],
        ],
        "episode length: training and evaluation": ["Multiline", ["charts/episodic_length", "eval/episodic_length"]],
        "board games: moves that give the draw away against perfect play": ["Multiline", ["eval/losing_moves"]],
    },
    "2. Losses": {
        "value, reward and policy loss (and consistency, when on)": ["Multiline", ["losses/.*_loss"]],
        "total loss and gradient norm": ["Multiline", ["losses/loss", "losses/grad_norm"]],
        "learning rate": ["Multiline", ["charts/learning_rate"]],
        "value error |V(s) - z| against the n-step targets, and the replay's priority spread": [
            "Multiline", ["losses/value_error", "replay/priority_.*"]],
    },
    "3. Search": {
        "root value": ["Multiline", ["search/root_value"]],
        "entropy of the search's visits and of the model's prior, self-play temperature": [
            "Multiline", ["search/root_visit_entropy", "search/prior_entropy", "charts/visit_temperature"]],
    },
    "4. System": {
        "env steps per second": ["Multiline", ["charts/SPS"]],
        "gradient steps and replay positions": ["Multiline", ["charts/updates", "charts/replay_positions"]],
        "seconds of self-play per round": ["Multiline", ["time/self_play_seconds", "time/update_seconds"]],
        "self-play workers": ["Multiline", ["system/num_workers"]],
        "memory (MiB)": ["Multiline", ["system/.*_mib"]],
    },
    "5. Faults": {
        "skipped updates, env and worker restarts, dropped games, non-finite steps": ["Multiline", ["faults/.*"]],
    },
}  # fmt: skip


PRIORITY_SPREAD_EVERY = 10
FAULTS = ("skipped_updates", "env_restarts", "dropped_episodes", "nonfinite_steps", "worker_restarts")


class MuZeroAlgorithm(Algorithm):
    name, dashboard = "muzero", MUZERO_DASHBOARD_LAYOUT

    def __init__(self, cfg: MuZeroConfig, context: RunContext):
        payload = context.payload
        self.cfg, self.watch = cfg, context.watch
        # The search runs on one thread (its batches are small); the updates on learner_threads. Chosen
        # here, never inherited from OMP_NUM_THREADS: a thread count changes float rounding.
        torch.set_num_threads(1)
        self.rng = np.random.default_rng(cfg.seed)
        self.two_player = is_two_player(cfg.env_id)
        self.symmetries = env_symmetries(cfg.env_id) if cfg.augment_symmetries else None
        self.model = build_model(cfg)
        # 'auto': the GPU for the residual net alone (an MLP's small kernels run faster on the CPU)
        residual = isinstance(self.model, MuZeroResNet)
        self.device = resolve_device(cfg.device, lambda: residual)
        self.model.to(self.device)
        self.learner_threads = learner_threads(cfg, residual)
        self.autocast_dtype = resolve_learner_precision(cfg.learner_precision, residual, self.device)
        # fused: one kernel for all parameters (~0.15 ms a step here where the per-tensor loop took ~0.8 ms)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                          fused=True)
        # The search runs on a CPU copy (its batches are small), refreshed after each round's updates.
        self.actor_model = build_model(cfg)
        self.updates, self.iteration = 0, 0
        self.fault_counts = dict.fromkeys(FAULTS, 0)
        if payload is not None:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.updates = payload["updates"]
            self.iteration = int(payload.get("iteration", 0))
            self.fault_counts.update({k: int(v) for k, v in payload.get("faults", {}).items() if k in self.fault_counts})
        self.actor_model.load_state_dict(self.model.state_dict())
        self.target_model = None
        if cfg.target_update_every:
            self.target_model = build_model(cfg).eval()
            saved = payload.get("target_model") if payload is not None else None
            self.target_model.load_state_dict(saved if saved is not None else self.actor_model.state_dict())
        self.policy = MuZeroActor(self.actor_model, search_config(cfg), seed=cfg.seed,
                                  symmetries=search_symmetries(cfg, self_play=False))
        self.replay = PrioritizedReplay(cfg.replay_capacity, cfg.priority_alpha, cfg.priority_beta, seed=cfg.seed)
        self.owed_updates, self.bad_in_a_row = 0.0, 0
        if payload is not None and payload.get("replay") is not None:
            # The games of the checkpoint (games then in progress restart) and the samplers' states.
            self.replay.load_state_dict(payload["replay"])
            self.rng.bit_generator.state = payload["learner_rng"]
            self.owed_updates = float(payload["owed_updates"])
        self.start_temperature = visit_temperature(cfg)
        self.backend, self.num_workers = resolve_self_play(cfg)
        self.in_process = self.backend == "inprocess"
        # Envs restart from fresh games after a resume, on seeds of their own (training.seeds).
        resumed_at = payload["global_step"] if payload is not None else 0
        seed = reseeded(self_play_seed(cfg.seed), Reseed.RESUME, resumed_at)
        self.workers_started_at = time.perf_counter()
        self.self_play = make_self_play(cfg, self.actor_model, seed, self.rng)
        self.self_play.set_weights(self.actor_model.state_dict())

    def config_extras(self) -> dict:
        return {"resolved_backend": self.backend, "resolved_num_workers": self.num_workers,
                "resolved_torch_threads": self.learner_threads,
                "resolved_device": str(self.device), "resolved_learner_precision": precision_name(self.autocast_dtype),
                "resolved_symmetric_search": symmetric_search(self.cfg) if env_symmetries(self.cfg.env_id) else "off"}  # fmt: skip

    def step(self, global_step: int) -> StepReport:
        cfg = self.cfg
        # Self-play: every worker's games make self_play_moves moves with the current weights, at a
        # temperature that halves at 50% and 75% of the run.
        fraction = global_step / cfg.total_timesteps
        temperature = self.start_temperature * (1.0 if fraction < 0.5 else 0.5 if fraction < 0.75 else 0.25)
        start = time.perf_counter()
        with self.watching(f"self-play on {cfg.env_id}"):
            played = self.self_play.play(cfg.self_play_moves, temperature)
        self.iteration += 1
        for name in ("env_restarts", "dropped_episodes", "nonfinite_steps", "worker_restarts"):
            self.fault_counts[name] += getattr(played, name)
        for game in played.games:
            self.replay.add(game)
        acted = time.perf_counter()

        # Learning: updates_per_step gradient steps per env step played, once the replay holds enough.
        scalars = {}
        if global_step + played.steps >= cfg.warmup_steps and self.replay.num_positions >= cfg.batch_size:
            self.owed_updates += cfg.updates_per_step * played.steps
            learning_rate = cfg.learning_rate * (1 - (1 - cfg.final_lr_fraction) * min(1.0, fraction))
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate
            scalars["charts/learning_rate"] = learning_rate
            stats = None
            self.consistent = False  # a crash in here leaves the model half-updated
            torch.set_num_threads(self.learner_threads)  # ~20 us a switch, against updates of ~0.1 s
            while self.owed_updates >= 1:
                step_stats = update(self.model, self.optimizer, self.replay, cfg, self.rng, self.two_player,
                                    self.device, self.actor_model, self.symmetries, self.target_model,
                                    self.autocast_dtype)  # fmt: skip
                self.owed_updates -= 1
                self.updates += 1
                if self.target_model is not None and self.updates % cfg.target_update_every == 0:
                    self.target_model.load_state_dict({k: v.cpu() for k, v in self.model.state_dict().items()})
                if step_stats is None:
                    self.fault_counts["skipped_updates"] += 1
                    self.bad_in_a_row += 1
                    if self.bad_in_a_row >= cfg.max_bad_updates:
                        break  # the skeleton stops the run
                else:
                    stats, self.bad_in_a_row = step_stats, 0
            torch.set_num_threads(1)
            self.consistent = True
            if stats is not None:
                weights = {k: v.cpu() for k, v in self.model.state_dict().items()}
                self.actor_model.load_state_dict(weights)  # for evaluation (and the in-process worker, which shares it)
                self.self_play.set_weights(weights)
                scalars.update({f"losses/{k}": v for k, v in stats.items()})
        learned = time.perf_counter()
        scalars.update({
            "charts/updates": self.updates,
            "charts/replay_positions": self.replay.num_positions,
            # Percentiles over every stored position (~4 ms at 100k): every PRIORITY_SPREAD_EVERY rounds.
            **({f"replay/priority_{k}": v for k, v in self.replay.priority_spread().items()}
               if self.replay.games and self.iteration % PRIORITY_SPREAD_EVERY == 1 else {}),
            "charts/visit_temperature": temperature,
            **({"search/root_value": float(np.mean(played.root_values)),
                "search/root_visit_entropy": float(np.mean(played.root_visit_entropies)),
                "search/prior_entropy": float(np.mean(played.prior_entropies))}
               if played.root_values else {}),  # a round cut short by a rebuilt env may search nothing
            "time/self_play_seconds": played.seconds,
            "time/update_seconds": learned - acted,
        })  # fmt: skip
        return StepReport(
            steps=played.steps, episode_returns=np.asarray(played.episode_returns, np.float64),
            episode_lengths=played.episode_lengths, scalars=scalars, skipped_in_a_row=self.bad_in_a_row,
            acting_seconds=acted - start, learning_seconds=learned - acted,
        )  # fmt: skip

    def state_dict(self) -> dict:
        return {"updates": self.updates, "iteration": self.iteration, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "target_model": self.target_model.state_dict() if self.target_model is not None else None}  # fmt: skip

    def resume_state(self) -> dict:
        if not self.cfg.checkpoint_replay:
            return {}
        return {"replay": self.replay.state_dict(), "learner_rng": self.rng.bit_generator.state,
                "owed_updates": self.owed_updates}  # fmt: skip

    def faults(self) -> dict[str, int]:
        return dict(self.fault_counts)

    def worker_pids(self) -> list[int]:
        return self.self_play.worker_pids()

    def close(self) -> None:
        self.self_play.close()


def _validate(cfg: MuZeroConfig) -> None:
    validate_muzero(cfg)
    check_env_id(cfg.env_id)
    spaces = model_spaces(cfg.env_id)
    check_replay_fits(cfg, spaces)
    if cfg.learner_precision == "bfloat16" and not spaces.is_image:
        raise ConfigError(f"--learner-precision bfloat16 is for MuZero's residual conv net (image observations: MinAtar, "
                          f"Atari); {cfg.env_id}'s model is an MLP: use float32 or auto")
    if cfg.action_planes == "one-hot" and not spaces.is_image:
        raise ConfigError(f"--action-planes one-hot is for image observations (MinAtar, Atari); {cfg.env_id}'s model "
                          f"{'sees a move as the cells it names' if cfg.board_net == 'cnn' else 'is an MLP'}: use value")  # fmt: skip


def train_muzero(cfg: MuZeroConfig) -> RunResult:
    """Train MuZero (or continue the run cfg.resume names, with the replay its checkpoint holds)."""
    return run_training(cfg, "muzero", _validate, MuZeroAlgorithm)
