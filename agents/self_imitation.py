"""Self-imitation learning (Oh et al. 2018, "Self-Imitation Learning"): the math, top to bottom.

An actor-critic forgets the rare episodes that went better than it expected: it learns from each rollout
for a few epochs and drops it. SIL keeps past transitions (s, a, R) with R the discounted return that
actually followed, and imitates the action wherever R beat the critic's value:

    L_sil = E_{s,a,R ~ replay} [ -log pi(a | s) * (R - V(s))_+  +  beta * 1/2 * ((R - V(s))_+)^2 ]

(x)_+ = max(x, 0): a transition whose return the critic already expects teaches nothing, so only the
good surprises are followed (a lower bound on the optimal Q, the paper's argument). The clipped advantage
is also the transition's priority in the replay (sampled with probability ~ priority^alpha, its loss
weighted by the importance weight (N P)^-beta, as in Schaul et al. 2016).
"""

from __future__ import annotations

import numpy as np
import torch


def discounted_returns(rewards: np.ndarray, gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """[T] R_t = sum_{i >= t} gamma^(i - t) r_i + gamma^(T - t) bootstrap for one episode's rewards [T]
    (bootstrap: 0 after a real end, V(final obs) after a time limit cut the episode)."""
    returns = np.empty(len(rewards), np.float64)
    future = float(bootstrap)
    for t in range(len(rewards) - 1, -1, -1):
        future = float(rewards[t]) + gamma * future
        returns[t] = future
    return returns


def sil_loss(
    log_prob: torch.Tensor, value: torch.Tensor, returns: torch.Tensor, weights: torch.Tensor, value_coef: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The SIL loss on a minibatch of B replayed transitions: log_prob [B] = log pi(a | s), value [B] =
    V(s), returns [B] = R, weights [B] the replay's importance weights. Returns (loss, detached
    statistics, the new priorities (R - V(s))_+ [B])."""
    clipped_advantage = (returns - value).clamp(min=0.0)
    # The policy term weighs by the advantage without moving the critic through it (as the paper does).
    policy_loss = -(weights * log_prob * clipped_advantage.detach()).mean()
    # (R - V)_+^2: the critic is pulled up to returns it underestimates and left alone below them.
    value_loss = 0.5 * (weights * clipped_advantage.square()).mean()
    loss = policy_loss + value_coef * value_loss
    stats = {
        "sil_policy_loss": policy_loss.detach(),
        "sil_value_loss": value_loss.detach(),
        # Share of the replayed transitions that still teach something: R above the critic's value.
        "sil_positive_fraction": (clipped_advantage > 0).float().mean().detach(),
    }
    return loss, stats, clipped_advantage.detach()
