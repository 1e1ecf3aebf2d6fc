"""The learner's side of random network distillation (agents.rnd has the math): from each rollout, the
intrinsic rewards, their scaling and the intrinsic advantages PPO adds to its own; after PPO's update, the
predictor's and the intrinsic critic's minibatch steps on the same rollout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.ppo import NonFiniteUpdate, compute_gae, explained_variance
from agents.rnd import RandomNetworkDistillation, rnd_loss
from training.ppo.normalization import RewardScaler


@dataclass
class IntrinsicTargets:
    """One rollout's intrinsic side, flattened time-major like PPO's batch ([T * N, ...]). The whitening
    statistics and the target network stay fixed over an update, so the whitened observations and the
    target's features are computed once here rather than in every minibatch."""

    whitened: torch.Tensor  # o_t, whitened
    next_whitened: torch.Tensor  # o_{t+1} (the next episode's first observation after an episode ended)
    target_features: torch.Tensor  # f(o_{t+1}) [T * N, F]
    rewards: np.ndarray  # [T, N] i_t, scaled
    advantages: np.ndarray  # [T, N] A_I
    returns: torch.Tensor  # R_I, V_I's targets
    stats: dict[str, float]


class RNDLearner:
    """The networks of agents.rnd, their own Adam (the predictor and V_I, never the target) and the running
    scale of the intrinsic return."""

    def __init__(self, obs_shape: tuple[int, ...], num_envs: int, gamma: float, gae_lambda: float,
                 update_proportion: float, learning_rate: float, device: torch.device):  # fmt: skip
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.update_proportion, self.device = update_proportion, device
        self.rnd = RandomNetworkDistillation(obs_shape).to(device)
        trainable = [p for p in self.rnd.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=learning_rate, eps=1e-5)
        # The non-episodic discounted sum of intrinsic rewards, whose running std scales them.
        self.reward_scaler = RewardScaler(num_envs, gamma)

    def targets(self, obs: torch.Tensor, last_obs: np.ndarray) -> IntrinsicTargets:
        """A rollout's intrinsic rewards (i_t of o_{t+1}, scaled), V_I and GAE over them, with no episode
        ends: the intrinsic return runs on across games. obs: the observations the networks read, o_0 ..
        o_{T-1} flattened time-major [T * N, ...] on the learner's device (PPO's batch already holds them);
        last_obs: o_T [N, ...]."""
        last = torch.as_tensor(last_obs).to(self.device)
        envs = len(last)
        steps = len(obs) // envs
        # The statistics first (o_1 .. o_T), so the states rewarded are whitened like those the predictor
        # learns. Time-major: o_{t+1} of sample t * N + n is sample (t + 1) * N + n, or the last observation.
        self.rnd.observe(torch.cat([obs[envs:], last]))
        with torch.no_grad():
            whitened, last_whitened = self.rnd.whitened(obs), self.rnd.whitened(last)
            next_whitened = torch.cat([whitened[envs:], last_whitened])
            target_features = self.rnd.target(next_whitened)
            raw = self.rnd.intrinsic_rewards(next_whitened, target_features).cpu().numpy().reshape(steps, envs)
            values = self.rnd.intrinsic_values(whitened).cpu().numpy().reshape(steps, envs)
            last_values = self.rnd.intrinsic_values(last_whitened).cpu().numpy()
        no_end = np.zeros((steps, envs), bool)
        rewards = self.reward_scaler(raw, no_end, no_end)
        advantages, returns = compute_gae(rewards, values, no_end, no_end, np.zeros_like(values), last_values,
                                          self.gamma, self.gae_lambda)  # fmt: skip
        stats = {"rnd_intrinsic_reward": float(raw.mean()), "rnd_scaled_intrinsic_reward": float(rewards.mean()),
                 "rnd_explained_variance": explained_variance(values.reshape(-1), returns.reshape(-1))}  # fmt: skip
        returns_t = torch.as_tensor(returns.reshape(-1)).to(self.device)
        return IntrinsicTargets(whitened, next_whitened, target_features, rewards, advantages, returns_t, stats)

    def update(self, targets: IntrinsicTargets, learning_rate: float, epochs: int, num_minibatches: int,
               max_grad_norm: float, generator: torch.Generator) -> dict[str, float]:  # fmt: skip
        """Minibatch epochs of agents.rnd.rnd_loss over the rollout (the order and masks from generator);
        the last minibatch's losses."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        batch_size = targets.whitened.shape[0]
        per_minibatch = batch_size // num_minibatches
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        parts: dict[str, torch.Tensor] = {}
        for _ in range(epochs):
            order = torch.randperm(batch_size, generator=generator).to(self.device)
            for start in range(0, per_minibatch * num_minibatches, per_minibatch):
                idx = order[start : start + per_minibatch]
                loss, parts = rnd_loss(self.rnd, targets.whitened[idx], targets.next_whitened[idx],
                                       targets.target_features[idx], targets.returns[idx], self.update_proportion,
                                       generator)  # fmt: skip
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                    raise NonFiniteUpdate(f"RND loss {loss.item()}, gradient norm {grad_norm.item()}")
                self.optimizer.step()
        return {**targets.stats, **{k: float(v) for k, v in parts.items()}}

    def state_dict(self) -> dict:
        return {"networks": self.rnd.state_dict(), "optimizer": self.optimizer.state_dict(),
                "reward_scaler": self.reward_scaler.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.rnd.load_state_dict(state["networks"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
