"""MuZero's gradient step: targets from sampled unrolls (with the values, and optionally the policies,
reanalysed by the latest model), the board's symmetries, the unrolled loss, the priorities it updates."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from agents.muzero.loss import UnrollWindows, make_batch_targets, muzero_loss, unroll_windows
from agents.muzero.networks import MuZeroNet, root_inference, search_callback, state_values
from agents.muzero.policies import run_policy
from agents.precision import reduced_precision
from envs.symmetries import Symmetries
from training.muzero.config import MuZeroConfig, search_config
from training.muzero.replay import Game, PrioritizedReplay


def reanalysed_values(model: torch.nn.Module, samples: list[tuple[Game, int]], windows: UnrollWindows,
                      cfg: MuZeroConfig, rng: np.random.Generator) -> np.ndarray:
    """The windows' root values [B, K + n + 1] with those the n-step targets bootstrap from recomputed by
    `model` for a cfg.reanalyse_fraction share of the samples: the value half of MuZero Reanalyse
    (appendix H), without a new search for the policy targets. Values stored at play time come from an
    older model, so as the model improves they understate (or overstate) what a state is worth; fresh
    ones keep the n-step targets current. Only the K + 1 bootstrap positions of each unroll are
    evaluated (the others enter no target); the value after a real end stays 0."""
    chosen = rng.random(len(samples)) < cfg.reanalyse_fraction
    offsets, inside = windows.bootstrap_offsets(cfg.td_steps)
    # The state after a game's real end is worth 0: nothing to recompute there.
    redo = chosen[:, None] & inside & ((offsets < windows.remaining[:, None]) | ~windows.terminated[:, None])
    values = windows.root_values.copy()
    if not redo.any():
        return values
    rows, ks = np.nonzero(redo)
    # Each unroll's bootstrap positions, without repeats (near the end several steps share one).
    pairs = np.unique(np.stack([rows, offsets[rows, ks]], 1), axis=0)
    rows, cols = pairs[:, 0], pairs[:, 1]
    bounds = np.searchsorted(rows, np.arange(len(samples) + 1))  # pairs are sorted by sample: one gather each
    obs = np.concatenate([game.observations[start + cols[bounds[i] : bounds[i + 1]]]
                          for i, (game, start) in enumerate(samples) if bounds[i + 1] > bounds[i]])  # fmt: skip
    values[rows, cols] = state_values(model, obs.reshape(len(obs), -1))
    return values


def reanalysed_policies(model: torch.nn.Module, samples: list[tuple[Game, int]], windows: UnrollWindows,
                        cfg: MuZeroConfig, rng: np.random.Generator) -> np.ndarray:
    """The windows' policy targets [B, K + 1, A], with those of positions inside the game replaced by a
    new search of `model` for a cfg.reanalyse_policy_fraction share of the samples: the policy half of
    MuZero Reanalyse (appendix H). The searches made at play time used an older model; as it improves,
    their visit counts teach yesterday's policy. All positions are searched as one batch, with the
    self-play search's settings (root noise included) and the legal moves stored with the game."""
    policies = windows.policies.copy()
    chosen = rng.random(len(samples)) < cfg.reanalyse_policy_fraction
    redo = chosen[:, None] & (np.arange(cfg.unroll_steps + 1)[None] < windows.remaining[:, None])
    if not redo.any():
        return policies
    rows, ks = np.nonzero(redo)
    positions = [(samples[i][0], samples[i][1] + k) for i, k in zip(rows, ks, strict=True)]
    obs = np.stack([game.observations[t] for game, t in positions])
    masked = positions[0][0].legal_actions is not None
    masks = np.stack([game.legal_actions[t] for game, t in positions]) if masked else None
    # greedy: the action is not played, so no random numbers are drawn for it.
    fresh = run_policy(root_inference(model, obs.reshape(len(obs), -1)), search_callback(model), search_config(cfg),
                       rng, masks, greedy=True).action_weights  # fmt: skip
    policies[rows, ks] = fresh
    return policies


def apply_symmetries(
    symmetries: Symmetries, rng: np.random.Generator, obs: np.ndarray, actions: np.ndarray,
    policies: np.ndarray, next_obs: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Each sampled unroll seen through one of the game's symmetries (envs.symmetries), drawn at random
    (the identity among them): its observations [B, ...] (and next_obs [B, K, ...]), unrolled actions
    [B, K] and policy targets [B, K + 1, A]. Values and rewards do not change under a symmetry. A small
    board game is a few thousand positions that self-play visits unevenly; every symmetric copy of a
    position is a position the model must also get right (AlphaGo Zero trained on Go's eight the same
    way). In CartPole a run that fails by drifting to one end sees that end's states mirrored at the other."""
    g = rng.integers(len(symmetries), size=len(obs))
    action_perms = symmetries.action_perms[g]
    inverse = np.argsort(action_perms, axis=1)  # a move on cell c becomes a move on cell inverse[c]
    obs = symmetries.transformed(obs, g)
    actions = np.take_along_axis(inverse, actions, 1)
    policies = np.take_along_axis(policies, action_perms[:, None, :], 2)
    if next_obs is not None:  # [B, K, ...]: each unroll's K observations through its own symmetry
        steps = next_obs.shape[1]
        flat = next_obs.reshape(len(obs) * steps, *next_obs.shape[2:])
        next_obs = symmetries.transformed(flat, np.repeat(g, steps)).reshape(next_obs.shape)
    return obs, actions, policies, next_obs


def update(model: MuZeroNet, optimizer: torch.optim.Optimizer, replay: PrioritizedReplay, cfg: MuZeroConfig,
            rng: np.random.Generator, two_player: bool, device: torch.device,
            actor_model: torch.nn.Module, symmetries: Symmetries | None = None,
            target_model: torch.nn.Module | None = None,
            autocast_dtype: torch.dtype | None = None) -> dict[str, float] | None:  # fmt: skip
    """One gradient step on a sampled batch; None when it was refused as non-finite. Bootstrap values are
    reanalysed by target_model (a copy refreshed every --target-update-every updates), or by actor_model,
    the latest weights, without one. autocast_dtype (--learner-precision) rounds the residual net's
    convolutions in the loss's forward; the heads, the loss and the weights stay float32."""
    samples, weights, keys = replay.sample(cfg.batch_size)
    windows = unroll_windows([g for g, _ in samples], [pos for _, pos in samples], cfg.unroll_steps, cfg.td_steps)
    value_model = target_model if target_model is not None else actor_model
    if cfg.reanalyse_fraction > 0:
        # The bootstrap values through the same rounded trunk as the loss's forward (a third of the FLOPs).
        with reduced_precision(device, autocast_dtype):
            windows.root_values = reanalysed_values(value_model, samples, windows, cfg, rng)
    if cfg.reanalyse_policy_fraction > 0:
        windows.policies = reanalysed_policies(actor_model, samples, windows, cfg, rng)
    targets = make_batch_targets(windows, cfg.td_steps, cfg.discount, rng, two_player, cfg.root_value_mix)
    arrays = {name: getattr(targets, name)
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
    with reduced_precision(device, autocast_dtype):
        loss, stats, priorities = muzero_loss(model, obs, batch, torch.as_tensor(weights, dtype=torch.float32).to(device),
                                              value_coef=cfg.value_loss_coef, next_obs=next_obs, next_obs_mask=next_obs_mask,
                                              consistency_coef=cfg.consistency_coef, hl_gauss_sigma=cfg.hl_gauss_sigma)  # fmt: skip
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    stats["grad_norm"] = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
    # A NaN or inf would spread through Adam's moments into every weight (and into the priorities):
    # refuse the step; the caller counts it and stops the run after --max-bad-updates in a row.
    if not (math.isfinite(loss.item()) and math.isfinite(stats["grad_norm"])):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    priorities = priorities.cpu().numpy()
    replay.update_priorities(keys, priorities)
    stats["value_error"] = float(priorities.mean())  # |V(s_t) - z_t| at the unrolls' starts
    stats["loss"] = loss.item()
    return stats
