"""MuZero's gradient step: targets from sampled unrolls (with the values, and optionally the policies,
reanalysed by the latest model), the board's symmetries, the unrolled loss, the priorities it updates."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from agents.muzero.loss import make_targets, muzero_loss
from agents.muzero.networks import MuZeroMLP, root_inference, search_callback
from agents.muzero.policies import run_policy
from training.muzero.config import MuZeroConfig, search_config
from training.muzero.replay import Game, PrioritizedReplay


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


def update(model: MuZeroMLP, optimizer: torch.optim.Optimizer, replay: PrioritizedReplay, cfg: MuZeroConfig,
            rng: np.random.Generator, two_player: bool, device: torch.device,
            actor_model: torch.nn.Module, symmetries: tuple[np.ndarray, np.ndarray] | None = None,
            target_model: torch.nn.Module | None = None) -> dict[str, float] | None:  # fmt: skip
    """One gradient step on a sampled batch; None when it was refused as non-finite. Bootstrap values are
    reanalysed by target_model (a copy refreshed every --target-update-every updates), or by actor_model,
    the latest weights, without one."""
    samples, weights, keys = replay.sample(cfg.batch_size)
    value_model = target_model if target_model is not None else actor_model
    root_values = reanalysed_values(value_model, samples, cfg, rng) if cfg.reanalyse_fraction > 0 else [g.root_values for g, _ in samples]
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
