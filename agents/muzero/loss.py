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

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch.nn import functional as F

from agents.muzero.value_transform import scalar_to_hl_gauss, scalar_to_support, support_to_scalar


@dataclass
class UnrollTargets:
    """Targets of B unrolls (or of one, without the leading B); arrays over k = 0..K (actions over k < K)."""

    actions: np.ndarray  # [B, K]
    value: np.ndarray  # [B, K+1]
    reward: np.ndarray  # [B, K+1]  (k = 0 unused)
    policy: np.ndarray  # [B, K+1, A]
    value_mask: np.ndarray  # [B, K+1]
    reward_mask: np.ndarray  # [B, K+1]
    policy_mask: np.ndarray  # [B, K+1]


@dataclass
class UnrollWindows:
    """What the targets of B unrolls read from their games: for start position t of a game of T moves,
    the moves t .. t + K + n - 1 (zero past the game's end)."""

    rewards: np.ndarray  # [B, K+n]    r_{t+j}
    root_values: np.ndarray  # [B, K+n+1]  v_{t+j}; v_T is 0 after a real end, the bootstrap estimate otherwise
    policies: np.ndarray  # [B, K+1, A] pi_{t+k}
    actions: np.ndarray  # [B, K]      a_{t+k}
    remaining: np.ndarray  # [B]         T - t, moves from the start to the game's end (or the segment's)
    terminated: np.ndarray  # [B] bool   whether the game really ended at T

    def bootstrap_offsets(self, td_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """([B, K+1] offsets j of the value v_{t+j} that step k's n-step return bootstraps from, [B, K+1]
        whether step k is inside the game): j = k + min(n, T - t - k)."""
        k = np.arange(self.policies.shape[1])
        inside = k[None] <= self.remaining[:, None]
        return np.where(inside, k + np.minimum(td_steps, self.remaining[:, None] - k), 0), inside


def unroll_windows(games: list, starts: list[int], unroll_steps: int, td_steps: int) -> UnrollWindows:
    """The windows of unrolls from starts[i] of games[i] (anything with the arrays rewards [T], root_values
    [T + 1], policies [T, A], actions [T] and the flag terminated, as the replay's games have)."""
    B, K, n, A = len(games), unroll_steps, td_steps, games[0].policies.shape[1]
    w = UnrollWindows(np.zeros((B, K + n)), np.zeros((B, K + n + 1)), np.full((B, K + 1, A), 1.0 / A),
                      np.zeros((B, K), np.int64), np.zeros(B, np.int64), np.zeros(B, bool))  # fmt: skip
    for i, (game, t) in enumerate(zip(games, starts, strict=True)):
        T = len(game.rewards)
        rewards = game.rewards[t : t + K + n]
        w.rewards[i, : len(rewards)] = rewards
        values = game.root_values[t : t + K + n + 1]
        w.root_values[i, : len(values)] = values
        policies = game.policies[t : t + K + 1]
        w.policies[i, : len(policies)] = policies
        actions = game.actions[t : t + K]
        w.actions[i, : len(actions)] = actions
        w.remaining[i], w.terminated[i] = T - t, game.terminated
    return w


def make_batch_targets(w: UnrollWindows, td_steps: int, discount: float, rng: np.random.Generator,
                       two_player: bool = False, root_value_mix: float = 0.0) -> UnrollTargets:  # fmt: skip
    """Targets for B unrolls of K steps from their windows, all at once (the loop runs over k only).

    root_value_mix (lambda) blends each value target with the search's root value at that position:
    (1 - lambda) z_{t+k} + lambda v_{t+k}. With outcome targets (n past the game's end) z is a win or a
    loss that exploring moves late in the game decide as much as the position; v is what a search
    thought of the position itself (Oracle's AlphaZero on Connect Four trained on the average of the two)."""
    B, K1, A = w.policies.shape
    K, n = K1 - 1, td_steps
    gamma = discount * (-1.0 if two_player else 1.0)
    k = np.arange(K + 1)[None]  # [1, K+1]
    T = w.remaining[:, None]  # [B, 1]
    inside = k <= T  # position t + k exists (the last one, k = T, is the state after the final move)
    # n-step returns, cut at the end of the game, where v_T bootstraps: z_k = sum_{i<steps} g^i r_{k+i} + g^steps v_{k+steps}
    offsets, _ = w.bootstrap_offsets(n)
    steps = offsets - k  # [B, K+1]
    i = np.arange(n)
    rewards = np.stack([w.rewards[:, kk : kk + n] for kk in range(K + 1)], 1)  # [B, K+1, n]
    summed = (np.where(i < steps[..., None], gamma**i * rewards, 0.0)).sum(-1)
    value = np.where(inside, summed + gamma**steps * np.take_along_axis(w.root_values, offsets, 1), 0.0)
    if root_value_mix > 0:
        # v_{t+k} as stored at play time (or the value reanalysis's, where a bootstrap offset fell inside
        # the window). At k = T it is v_T, which the n-step return there equals, so nothing changes.
        value = np.where(inside, (1 - root_value_mix) * value + root_value_mix * w.root_values[:, : K + 1], 0.0)
    # After a real end the model learns an absorbing state worth 0; after a time limit nothing is known.
    value_mask = (inside | w.terminated[:, None]).astype(np.float64)
    reward = np.zeros((B, K + 1))
    reward[:, 1:] = np.where(k[:, 1:] - 1 < T, w.rewards[:, :K], 0.0)
    reward_mask = ((k - 1 < T) | w.terminated[:, None]).astype(np.float64)
    reward_mask[:, 0] = 0.0
    policy_mask = (k < T).astype(np.float64)
    policy = np.where(policy_mask[..., None] > 0, w.policies, 1.0 / A)
    # Past the end the unroll follows random actions (their steps' policy targets are masked out).
    played = np.where(k[:, :K] < T, w.actions, rng.integers(A, size=(B, K)))
    return UnrollTargets(played, value, reward, policy, value_mask, reward_mask, policy_mask)


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
    root_value_mix: float = 0.0,
) -> UnrollTargets:
    """Targets for unrolling from position `start` of a game of T moves (make_batch_targets for one).

    rewards, actions [T]; policies [T, A]; root_values [T + 1], the last being the value after the final
    move (0 after a real end, the bootstrap estimate after a time limit).
    """
    game = _GameArrays(rewards, root_values, policies, actions, terminated)
    batch = make_batch_targets(unroll_windows([game], [start], unroll_steps, td_steps), td_steps, discount, rng,
                               two_player, root_value_mix)  # fmt: skip
    return UnrollTargets(*(getattr(batch, f.name)[0] for f in fields(UnrollTargets)))


@dataclass
class _GameArrays:
    rewards: np.ndarray
    root_values: np.ndarray
    policies: np.ndarray
    actions: np.ndarray
    terminated: bool


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
    hl_gauss_sigma: float = 0.0,
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
    real transitions and makes small-data learning steadier (Ye et al. 2021). With hl_gauss_sigma > 0
    the value and reward targets are HL-Gauss histograms of that width instead of two-hot.
    Returns (loss, statistics, new priorities |V(s_t) - z_t| for the replay).
    """
    K = targets["actions"].shape[1]
    # The unroll: s_0 = h(o_t), s_k = g(s_{k-1}, a_{t+k-1}), the gradient into each dynamics step halved.
    states = [model.represent(obs)]
    for k in range(K):
        states.append(model.dynamics(scale_gradient(states[-1], 0.5), targets["actions"][:, k]))
    # The heads see every step's state at once ([B * (K + 1), ...]: one call each instead of K + 1).
    unrolled = torch.stack(states, 1)  # [B, K+1, ...]
    policy_logits, value_logits = (x.view(*unrolled.shape[:2], -1) for x in model.prediction(unrolled.flatten(0, 1)))
    reward_logits = model.dynamics_reward(unrolled[:, 1:].flatten(0, 1)).view(obs.shape[0], K, -1)

    def cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -(target * F.log_softmax(logits, -1)).sum(-1)

    # Each unrolled step's loss counts 1/K (the first one fully), masked where its target does not exist.
    step_scale = torch.full((K + 1,), 1.0 / K, device=obs.device)
    step_scale[0] = 1.0
    width = model.support_bin_width

    def support(x: torch.Tensor, size: int) -> torch.Tensor:
        if hl_gauss_sigma > 0:
            return scalar_to_hl_gauss(x, size, hl_gauss_sigma, width)
        return scalar_to_support(x, size, width)

    value_ce = cross_entropy(support(targets["value"], model.support_size), value_logits)  # [B, K+1]
    policy_ce = cross_entropy(targets["policy"], policy_logits)
    reward_ce = cross_entropy(support(targets["reward"][:, 1:], model.reward_support_size), reward_logits)
    value_loss = (step_scale * targets["value_mask"] * value_ce).sum(1)
    policy_loss = (step_scale * targets["policy_mask"] * policy_ce).sum(1)
    reward_loss = (step_scale[1:] * targets["reward_mask"][:, 1:] * reward_ce).sum(1)
    consistency_loss = torch.zeros_like(value_loss)
    if consistency_coef > 0:
        with torch.no_grad():
            reached = model.represent(next_obs.flatten(0, 1)).view(*next_obs.shape[:2], -1)
        similarity = F.cosine_similarity(unrolled[:, 1:].flatten(2), reached, dim=-1)  # [B, K]
        consistency_loss = -(step_scale[1:] * next_obs_mask * similarity).sum(1)
    predicted = support_to_scalar(value_logits[:, 0].detach(), model.support_size, width)
    priorities = (predicted - targets["value"][:, 0]).abs()
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
