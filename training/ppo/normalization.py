"""Reward scaling by the running standard deviation of the discounted return (as gymnasium's
NormalizeReward and SB3's VecNormalize do), applied by the learner to each rollout.

Observation normalisation lives in the model (agents.networks.ObsNormalizer) so that workers, evaluation
and checkpoints get it with the weights; reward scaling only matters to the learner, so it lives here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class RewardScaler:
    """`gather` combines the returns of data-parallel learners, so that all of them scale alike."""

    def __init__(self, num_envs: int, gamma: float, eps: float = 1e-8,
                 gather: Callable[[np.ndarray], np.ndarray] = lambda x: x):  # fmt: skip
        self.gamma, self.eps, self.gather = gamma, eps, gather
        self.discounted_return = np.zeros(num_envs, dtype=np.float64)
        self.mean, self.var, self.count = 0.0, 1.0, eps

    def _update(self, x: np.ndarray) -> None:
        b_mean, b_var, b_count = float(x.mean()), float(x.var()), x.size
        delta, total = b_mean - self.mean, self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.mean += delta * b_count / total
        self.var, self.count = m2 / total, total

    def __call__(self, rewards: np.ndarray, terminated: np.ndarray, truncated: np.ndarray) -> np.ndarray:
        """Scaled copy of rewards [T, N], updating the statistics with this rollout's returns."""
        done = np.logical_or(terminated, truncated)
        returns = np.empty_like(rewards, dtype=np.float64)
        for t in range(rewards.shape[0]):
            self.discounted_return = self.discounted_return * self.gamma + rewards[t]
            returns[t] = self.discounted_return
            self.discounted_return[done[t]] = 0.0
        self._update(self.gather(returns))
        return (rewards / np.sqrt(self.var + self.eps)).astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "discounted_return": torch.from_numpy(self.discounted_return.copy()),
            "stats": torch.tensor([self.mean, self.var, self.count], dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.discounted_return = state["discounted_return"].numpy().copy()
        self.mean, self.var, self.count = (float(x) for x in state["stats"])
