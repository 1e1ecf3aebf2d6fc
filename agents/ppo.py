"""PPO (Schulman et al. 2017) with GAE (Schulman et al. 2016): the math, top to bottom.

Names follow the papers and CleanRL's ppo.py. Arrays are time-major: [T, N] for T steps of N envs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents.precision import reduced_precision


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    bootstrap_values: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and value targets (returns), both [T, N].

    values[t] = V(s_t); last_values = V(s_T), the state after the rollout's last step.
    When step t ends an episode, s_{t+1} in the arrays is already the next episode's first state, so:
      - terminated[t]: the episode really ended, its future is worth 0 -> no bootstrap;
      - truncated[t] (time limit): the episode was cut, not ended; its future is worth V(final obs),
        which the rollout worker computed into bootstrap_values[t]. Treating a time limit as a terminal
        state would teach the critic that the last states of long episodes are worthless.
    In both cases the advantage recursion stops at the episode boundary.
    """
    T = rewards.shape[0]
    advantages = np.zeros_like(rewards, dtype=np.float32)
    last_gae = np.zeros_like(last_values, dtype=np.float32)
    done = np.logical_or(terminated, truncated)
    for t in reversed(range(T)):
        next_values = last_values if t == T - 1 else values[t + 1]
        # Value of what follows step t: V(s_{t+1}) inside an episode, V(final obs) after a truncation.
        future = np.where(done[t], np.where(truncated[t] & ~terminated[t], bootstrap_values[t], 0.0), next_values)
        delta = rewards[t] + gamma * future - values[t]
        last_gae = delta + gamma * gae_lambda * (1.0 - done[t]) * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


def compute_vtrace(
    rewards: np.ndarray,
    values: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    bootstrap_values: np.ndarray,
    last_values: np.ndarray,
    log_rhos: np.ndarray,
    gamma: float,
    lambda_: float = 1.0,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """V-trace (Espeholt et al. 2018, IMPALA) policy-gradient advantages and value targets v_s, both [T, N]
    and in that order (as compute_gae returns them), for data that a slightly older policy mu collected
    while the learner's policy pi moved on.

    log_rhos[t] = log pi(a_t|s_t) - log mu(a_t|s_t); values[t] = V(s_t) by the learner's critic. The
    truncated importance weights rho_t = min(rho_bar, pi/mu) and c_t = lambda * min(c_bar, pi/mu) keep the
    variance bounded; with pi = mu (no lag) v_s is exactly the lambda-return of GAE. Episode ends are
    handled as in compute_gae: no bootstrap after a termination, V(final obs) after a truncation.

        v_s = V(s_t) + sum_k gamma^(k-t) (prod_{i<k} c_i) rho_k delta_k,
        delta_k = r_k + gamma V(s_{k+1}) - V(s_k),   advantage_t = rho_t (r_t + gamma v_{t+1} - V(s_t)).
    """
    T = rewards.shape[0]
    rhos = np.exp(log_rhos)
    clipped_rhos, cs = np.minimum(rho_bar, rhos), lambda_ * np.minimum(c_bar, rhos)
    done = np.logical_or(terminated, truncated)
    # What follows step t: V(s_{t+1}) inside an episode, V(final obs) after a truncation, 0 after a termination.
    end_values = np.where(truncated & ~terminated, bootstrap_values, 0.0)
    next_values = np.concatenate([values[1:], last_values[None]])
    future = np.where(done, end_values, next_values)
    deltas = clipped_rhos * (rewards + gamma * future - values)

    vs_minus_v = np.zeros_like(values, dtype=np.float32)
    acc = np.zeros_like(last_values, dtype=np.float32)
    for t in reversed(range(T)):
        acc = deltas[t] + gamma * cs[t] * (1.0 - done[t]) * acc
        vs_minus_v[t] = acc
    vs = values + vs_minus_v
    # The advantage bootstraps from v_{s+1}, the corrected target of the next state, where there is one.
    next_vs = np.where(done, end_values, np.concatenate([vs[1:], last_values[None]]))
    advantages = clipped_rhos * (rewards + gamma * next_vs - values)
    return advantages.astype(np.float32), vs.astype(np.float32)


class NonFiniteUpdate(ArithmeticError):
    """A minibatch's loss or gradient norm was NaN or inf: stepping would poison the weights."""


@dataclass
class PPOHyperparams:
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    norm_adv: bool = True
    max_grad_norm: float = 0.5
    update_epochs: int = 4
    num_minibatches: int = 4
    target_kl: float | None = None


def ppo_loss(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    entropy: torch.Tensor,
    new_value: torch.Tensor,
    old_value: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    hp: PPOHyperparams,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on one minibatch. Returns the scalar loss and detached statistics."""
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    with torch.no_grad():
        # Schulman's unbiased low-variance estimator of KL(old || new): E[(r - 1) - log r].
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_frac = ((ratio - 1.0).abs() > hp.clip_coef).float().mean()

    if hp.norm_adv:
        # Per minibatch, as in the reference implementations; needs more than one sample.
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    # Clipped surrogate: the pessimistic (max of negatives) of the unclipped and clipped objectives.
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - hp.clip_coef, 1 + hp.clip_coef)).mean()

    if hp.clip_vloss:
        # Value clipping (PPO2 baselines): the new value may move at most clip_coef from the old one.
        v_clipped = old_value + (new_value - old_value).clamp(-hp.clip_coef, hp.clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns).square(), (v_clipped - returns).square()).mean()
    else:
        v_loss = 0.5 * (new_value - returns).square().mean()

    entropy_loss = entropy.mean()
    loss = pg_loss - hp.ent_coef * entropy_loss + hp.vf_coef * v_loss
    stats = {
        "policy_loss": pg_loss.detach(),
        "value_loss": v_loss.detach(),
        "entropy": entropy_loss.detach(),
        "approx_kl": approx_kl,
        "clipfrac": clip_frac,
    }
    return loss, stats


def ppo_update(
    agent: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor | dict[str, torch.Tensor]],
    hp: PPOHyperparams,
    generator: torch.Generator,
    mean_over_learners: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Minibatch epochs over one flattened rollout batch.

    batch holds "obs" (a dict of tensors), "actions", "log_probs", "values", "advantages", "returns",
    each with the batch as first dim, time-major ([T * N]: step t of env n at t * N + n). `agent(obs,
    memory, episode_starts)` gives (action distribution, value, memory); agent may be a
    DistributedDataParallel wrapper, which averages the gradients of data-parallel learners in backward.
    A policy with memory also needs "memory" [N, S] (each env's state at the rollout's start) and
    "episode_starts" [T * N]: its minibatches are then whole env sequences (N / num_minibatches envs, all T
    steps each), unrolled from the stored state with the resets where episodes began, so the first epoch
    recomputes the rollout's log-probabilities (truncated backpropagation through the rollout).
    The minibatch order comes from `generator`, so a resumed run repeats it exactly. Data-parallel
    learners take the target-KL decision on the KL averaged over them (mean_over_learners), so that
    all of them stop after the same epoch. autocast_dtype (e.g. torch.bfloat16): the agent's forward runs
    under that autocast (what the agent leaves in float32 stays so); the loss is taken in float32.
    """
    batch_size = batch["actions"].shape[0]
    recurrent = "memory" in batch
    # What is shuffled: samples, or for a policy with memory whole env sequences.
    units = batch["memory"].shape[0] if recurrent else batch_size
    per_minibatch = units // hp.num_minibatches
    device = batch["actions"].device
    params = [p for p in agent.parameters() if p.requires_grad]
    history: list[dict[str, torch.Tensor]] = []
    epochs_done = 0
    fields = ("actions", "log_probs", "values", "advantages", "returns")

    def minibatch(idx: torch.Tensor | None) -> tuple:
        """Observations and the fields of the samples idx (all of them when None)."""
        take = (lambda x: x) if idx is None else (lambda x: x[idx])
        obs = {k: take(v) for k, v in batch["obs"].items()}
        return obs, *(take(batch[f]) for f in fields)

    for _epoch in range(hp.update_epochs):
        if hp.num_minibatches == 1:
            # One minibatch is the whole batch: the order does not matter, so skip the shuffle and gathers.
            groups = [None]
        else:
            groups = torch.randperm(units, generator=generator).to(device)[: hp.num_minibatches * per_minibatch]
            groups = groups.split(per_minibatch)
        for group in groups:
            idx, memory, episode_starts = group, None, None
            if recurrent:
                envs = torch.arange(units, device=device) if group is None else group
                memory = batch["memory"][envs]
                if group is not None:
                    # All T steps of these envs, time-major: step t of env n sits at t * N + n.
                    steps = torch.arange(batch_size // units, device=device)
                    idx = (steps[:, None] * units + group[None, :]).reshape(-1)
                episode_starts = batch["episode_starts"] if idx is None else batch["episode_starts"][idx]
            obs, actions, old_log_prob, old_value, advantages, returns = minibatch(idx)
            with reduced_precision(device, autocast_dtype):
                dist, new_value, _ = agent(obs, memory, episode_starts)
            new_log_prob, entropy = dist.log_prob(actions), dist.entropy()
            loss, stats = ppo_loss(
                new_log_prob, old_log_prob, entropy, new_value, old_value, advantages, returns, hp
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = nn.utils.clip_grad_norm_(params, hp.max_grad_norm, foreach=True)
            # A NaN or inf (a NaN reward, an exploding critic) would spread through Adam's moments into
            # every weight; refuse the step and let the caller drop the whole update.
            if not torch.isfinite(loss.detach() + stats["grad_norm"]):
                raise NonFiniteUpdate(f"loss {loss.item()}, gradient norm {stats['grad_norm'].item()}")
            optimizer.step()
            history.append(stats)
        epochs_done += 1
        # Target-KL early stop (checked per epoch, on the last minibatch, as CleanRL does).
        if hp.target_kl is not None and mean_over_learners(history[-1]["approx_kl"]).item() > hp.target_kl:
            break

    mean_stats = {k: torch.stack([h[k] for h in history]).mean().item() for k in history[0]}
    mean_stats["epochs"] = float(epochs_done)
    return mean_stats


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var[returns - values] / Var[returns]: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = np.var(returns)
    return float("nan") if var_returns == 0 else float(1.0 - np.var(returns - values) / var_returns)
