"""MuZero's training targets and loss (Schrittwieser et al. 2020, appendix G), top to bottom.

From a stored game and a start position t, the model is unrolled K steps along the actions that were
actually played, and at every step k = 0..K it predicts
  - the value:  z_{t+k} = sum_{i<n} gamma^i r_{t+k+i} + gamma^n v_{t+k+n}  (n-step return, bootstrapped
                from the search's root value n steps later),
  - the reward: u_{t+k} = r_{t+k-1}  (for k >= 1),
  - the policy: pi_{t+k}, the search's visit distribution.
Past the end of the game there is nothing to imitate: after a real end (terminated) the model learns an
absorbing state (value and reward 0, policy masked out); after a time limit (truncated) the value and
reward targets are unknown and masked out too. In two-player games every quantity is from the view of the
player to move, so rewards and the bootstrap alternate in sign along the n steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from agents.muzero.value_transform import scalar_to_support, support_to_scalar


@dataclass
class UnrollTargets:
    """Targets of one unroll; arrays over k = 0..K (actions over k = 0..K-1)."""

    actions: np.ndarray  # [K]
    value: np.ndarray  # [K+1]
    reward: np.ndarray  # [K+1]  (k = 0 unused)
    policy: np.ndarray  # [K+1, A]
    value_mask: np.ndarray  # [K+1]
    reward_mask: np.ndarray  # [K+1]
    policy_mask: np.ndarray  # [K+1]


def make_targets(
    rewards: np.ndarray,
    root_values: np.ndarray,
    policies: np.ndarray,
    actions: np.ndarray,
    terminated: bool,
    start: int,
    unroll_steps: int,
    td_steps: int,
    discount: float,
    rng: np.random.Generator,
    two_player: bool = False,
) -> UnrollTargets:
    """Targets for unrolling from position `start` of a game of T moves.

    rewards, actions [T]; policies [T, A]; root_values [T + 1], the last being the value after the final
    move (0 after a real end, the bootstrap estimate after a time limit).
    """
    T, K, n = len(rewards), unroll_steps, td_steps
    sign = -1.0 if two_player else 1.0
    num_actions = policies.shape[1]
    value, reward = np.zeros(K + 1), np.zeros(K + 1)
    policy = np.full((K + 1, num_actions), 1.0 / num_actions)
    value_mask, reward_mask, policy_mask = np.zeros(K + 1), np.zeros(K + 1), np.zeros(K + 1)
    for k in range(K + 1):
        t = start + k
        if t <= T:
            # n-step return, cut at the end of the game, where the final root value bootstraps.
            steps = min(n, T - t)
            z = sum((discount * sign) ** i * rewards[t + i] for i in range(steps))
            value[k] = z + (discount * sign) ** steps * root_values[t + steps]
            value_mask[k] = 1.0
        elif terminated:
            value_mask[k] = 1.0  # the absorbing state after a real end is worth 0
        if k > 0:
            if t - 1 < T:
                reward[k], reward_mask[k] = rewards[t - 1], 1.0
            elif terminated:
                reward_mask[k] = 1.0  # no reward after the end
        if t < T:
            policy[k], policy_mask[k] = policies[t], 1.0
    played = [actions[start + k] if start + k < T else rng.integers(num_actions) for k in range(K)]
    return UnrollTargets(np.array(played, np.int64), value, reward, policy, value_mask, reward_mask, policy_mask)


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient flowing back through x is multiplied by scale."""
    return x * scale + x.detach() * (1 - scale)


def muzero_loss(
    model,
    obs: torch.Tensor,
    targets: dict[str, torch.Tensor],
    weights: torch.Tensor,
    value_coef: float = 0.25,
    next_obs: torch.Tensor | None = None,
    next_obs_mask: torch.Tensor | None = None,
    consistency_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """The unrolled loss on a batch: cross-entropies of value, reward and policy against their targets
    (value and reward as two-hot supports), masked where the targets do not exist.

    targets holds the UnrollTargets fields stacked over the batch ([B, K], [B, K+1], [B, K+1, A]).
    weights [B] are the replay's importance weights. As in the paper, the loss of each unrolled step is
    scaled by 1/K and the gradient into the dynamics by 1/2 per step, so the unroll's total gradient does
    not grow with K. Value loss is weighted by value_coef (0.25 in the paper's Reanalyse setting).
    With consistency_coef > 0, next_obs [B, K, ...] (the observations after each unrolled action, masked
    by next_obs_mask [B, K] past the game's end) add EfficientZero's temporal consistency loss: the
    negative cosine similarity between the dynamics' hidden state after k actions and the representation
    of the observation actually reached (no gradient into that target), which ties the learned model to
    real transitions and makes small-data learning steadier (Ye et al. 2021).
    Returns (loss, statistics, new priorities |V(s_t) - z_t| for the replay).
    """
    K = targets["actions"].shape[1]
    state, policy_logits, value_logits = model.initial_inference(obs)
    value_loss = reward_loss = policy_loss = consistency_loss = torch.zeros(obs.shape[0], device=obs.device)
    if consistency_coef > 0:
        with torch.no_grad():
            reached = model.initial_inference(next_obs.flatten(0, 1))[0].view(*next_obs.shape[:2], -1)
    priorities = (support_to_scalar(value_logits.detach(), model.support_size) - targets["value"][:, 0]).abs()
    for k in range(K + 1):
        if k > 0:
            state, reward_logits, policy_logits, value_logits = model.recurrent_inference(
                scale_gradient(state, 0.5), targets["actions"][:, k - 1]
            )
        step_scale = 1.0 if k == 0 else 1.0 / K
        value_target = scalar_to_support(targets["value"][:, k], model.support_size)
        value_ce = -(value_target * F.log_softmax(value_logits, -1)).sum(-1)
        policy_ce = -(targets["policy"][:, k] * F.log_softmax(policy_logits, -1)).sum(-1)
        value_loss = value_loss + step_scale * targets["value_mask"][:, k] * value_ce
        policy_loss = policy_loss + step_scale * targets["policy_mask"][:, k] * policy_ce
        if k > 0:
            reward_target = scalar_to_support(targets["reward"][:, k], model.reward_support_size)
            reward_ce = -(reward_target * F.log_softmax(reward_logits, -1)).sum(-1)
            reward_loss = reward_loss + step_scale * targets["reward_mask"][:, k] * reward_ce
            if consistency_coef > 0:
                similarity = F.cosine_similarity(state.flatten(1), reached[:, k - 1], dim=-1)
                consistency_loss = consistency_loss - step_scale * next_obs_mask[:, k - 1] * similarity
    per_sample = value_coef * value_loss + reward_loss + policy_loss + consistency_coef * consistency_loss
    loss = (weights * per_sample).mean()
    stats = {
        "value_loss": value_loss.mean().item(),
        "reward_loss": reward_loss.mean().item(),
        "policy_loss": policy_loss.mean().item(),
    }
    if consistency_coef > 0:
        stats["consistency_loss"] = consistency_loss.mean().item()
    return loss, stats, priorities
