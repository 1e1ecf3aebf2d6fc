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
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agents.muzero.loss import make_targets, muzero_loss
from agents.muzero.networks import MuZeroMLP, root_inference, search_callback
from agents.muzero.policies import run_policy
from agents.muzero.search import SearchConfig
from envs.board_games import board_symmetries
from envs.factory import check_env_id, solved_return
from training.checkpoint import (
    load_algo_checkpoint,
    reading_contents,
    run_dir_of,
    save_checkpoint,
)
from training.errors import TrainingDiverged
from training.evaluation import TrainingEvaluator
from training.interrupts import armed
from training.logger import Progress, RunLogger, make_run_dir, run_name
from training.muzero.config import (  # noqa: F401 - the config's names, importable from here as before
    MUZERO_CHANGEABLE_ON_RESUME,
    ModelSpaces,
    MuZeroConfig,
    build_model,
    check_replay_fits,
    is_two_player,
    model_spaces,
    sampling_moves,
    search_config,
    validate_muzero,
    visit_temperature,
)
from training.muzero.replay import Game, PrioritizedReplay
from training.muzero.self_play import make_self_play
from training.resume import apply_resume_changes
from training.run_folder import claim_run_dir, loop_exit
from training.seeds import Reseed, reseeded, self_play_seed
from training.validation import resolve_device


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
        result = run_policy(root_inference(self.model, features), search_callback(self.model), search, self.rng,
                            None if mask is None else mask.cpu().numpy().astype(bool), greedy=deterministic)  # fmt: skip
        self.last_result = result
        action = result.action
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


# MuZero's page in TensorBoard's Custom Scalars tab (PPO's, training.logger.DASHBOARD_LAYOUT, has KL and
# clip-fraction charts that MuZero never logs): every tag a MuZero run logs has a chart here.
MUZERO_DASHBOARD_LAYOUT = {
    "1. Return": {
        "return: training episodes and greedy search evaluation": [
            "Multiline", ["charts/episodic_return", "eval/episodic_return", "eval/episodic_return_std"],
        ],
        "episode length: training and evaluation": ["Multiline", ["charts/episodic_length", "eval/episodic_length"]],
        "board games: moves that give the draw away against perfect play": ["Multiline", ["eval/losing_moves"]],
    },
    "2. Losses": {
        "value, reward and policy loss (and consistency, when on)": ["Multiline", ["losses/.*_loss"]],
        "total loss and gradient norm": ["Multiline", ["losses/loss", "losses/grad_norm"]],
    },
    "3. Search": {
        "root value": ["Multiline", ["search/root_value"]],
        "root visit entropy and self-play temperature": ["Multiline", ["search/root_visit_entropy", "charts/visit_temperature"]],
    },
    "4. System": {
        "env steps per second": ["Multiline", ["charts/SPS"]],
        "gradient steps and replay positions": ["Multiline", ["charts/updates", "charts/replay_positions"]],
        "seconds of self-play per round": ["Multiline", ["time/self_play_seconds"]],
    },
    "5. Faults": {
        "skipped updates, env and worker restarts, dropped games, non-finite steps": ["Multiline", ["faults/.*"]],
    },
}  # fmt: skip


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
        logger.dashboards(config_dict, MUZERO_DASHBOARD_LAYOUT)
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

    # Envs restart from fresh games after a resume, on seeds of their own (training.seeds).
    self_play = make_self_play(cfg, actor_model, reseeded(self_play_seed(cfg.seed), Reseed.RESUME, global_step), rng)
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
    fresh = root_inference(model, obs.reshape(len(obs), -1)).value
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
    # greedy: the action is not played, so no random numbers are drawn for it.
    fresh = run_policy(root_inference(model, obs.reshape(len(obs), -1)), search_callback(model), search_config(cfg),
                       rng, masks, greedy=True).action_weights
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
