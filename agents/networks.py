"""Actor-critic networks for PPO: MLPs for vector observations, the Nature CNN for stacked frames.

Observations travel as a dict of tensors. A plain Box env gives `{"obs": x}`; a Dict env passes its own
keys, and a key named `action_mask` (bool, True = allowed) masks the policy's Discrete actions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import torch
from torch import nn
from torch.nn import functional as F

from agents.distributions import ActionHead, Distribution
from agents.initialization import orthogonal_

MASK_KEY = "action_mask"
OBS_KEY = "obs"


def obs_spaces(observation_space: gym.Space) -> dict[str, gym.Space]:
    """The dict layout in which observations of this space travel through rollouts and networks."""
    if isinstance(observation_space, gym.spaces.Dict):
        return dict(observation_space.spaces)
    return {OBS_KEY: observation_space}


def layer_init(layer: nn.Module, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Module:
    orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class ObsNormalizer(nn.Module):
    """Running mean and variance of observations, clipped to +-clip standard deviations.

    The statistics are buffers of the model, so they travel with the weights to rollout workers and are
    saved in every checkpoint; only the learner updates them (from each rollout's raw observations).
    """

    def __init__(self, shape: Sequence[int], clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        # Chan et al.'s parallel combination of (mean, var, count) with a batch's moments.
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta.square() * self.count * b_count / total
        self.mean += delta * b_count / total
        self.var.copy_(m2 / total)
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.mean.to(x.dtype), (self.var + self.eps).sqrt().to(x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)


class MLP(nn.Module):
    """Linear layers, each followed by the activation, in one module call.

    The loop calls F.linear on the layers' parameters instead of calling each submodule: for the small
    networks of classic-control PPO, nn.Module's per-call overhead is a large part of the forward.
    """

    def __init__(self, in_features: int, hidden_sizes: Sequence[int], activation: str):
        super().__init__()
        widths = [in_features, *hidden_sizes]
        self.layers = nn.ModuleList(layer_init(nn.Linear(a, b)) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.activation = {"tanh": torch.tanh, "relu": torch.relu}[activation]
        self.out_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.activation(F.linear(x, layer.weight, layer.bias))
        return x


class NatureCNN(nn.Sequential):
    """Mnih et al. 2015's encoder for 84x84 stacked frames; uint8 pixels are scaled to [0, 1] inside."""

    def __init__(self, in_channels: int, out_features: int = 512):
        super().__init__(
            layer_init(nn.Conv2d(in_channels, 32, 8, stride=4)), nn.ReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.ReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(),
            nn.Flatten(),
            layer_init(nn.Linear(64 * 7 * 7, out_features)), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float() / 255.0)


class PolicyValueNet(nn.Module):
    """What rollout workers, the PPO learner and evaluation need of an agent: `forward(obs)` gives the
    action distribution and V(s); `get_value(obs)` gives V(s) alone. Subclasses also say whether they
    are convolutional (`is_image`, for the learner's thread count) and carry an `obs_normalizer` or None."""

    obs_normalizer: ObsNormalizer | None
    is_image: bool
    obs_key: str

    def get_value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def act(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Action, its log-probability and the value estimate, for acting in envs (no autograd)."""
        dist, value = self(obs)
        action = dist.mode() if deterministic else dist.sample(generator)
        return action, dist.log_prob(action), value


class ActorCritic(PolicyValueNet):
    """Policy and value function.

    Vector observations: separate actor and critic MLPs (the PPO defaults of CleanRL and SB3; sharing
    a trunk lets the value loss disturb the policy). Image observations: one shared Nature CNN trunk.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        normalize_obs: bool = False,
    ):
        super().__init__()
        spaces = obs_spaces(observation_space)
        if MASK_KEY in spaces and not isinstance(action_space, gym.spaces.Discrete | gym.spaces.MultiDiscrete):
            raise ValueError(f"'{MASK_KEY}' in the observation needs a Discrete or MultiDiscrete action space")
        feature_keys = [k for k in spaces if k != MASK_KEY]
        if len(feature_keys) != 1 or not isinstance(spaces[feature_keys[0]], gym.spaces.Box):
            raise ValueError(
                f"PPO's networks take one Box observation (plus an optional '{MASK_KEY}'); got {observation_space}"
            )
        self.obs_key = feature_keys[0]
        space = spaces[self.obs_key]
        self.is_image = len(space.shape) == 3
        self.obs_normalizer = ObsNormalizer(space.shape) if normalize_obs and not self.is_image else None
        if self.is_image:
            self.trunk = NatureCNN(space.shape[0])
            actor_out = critic_out = 512
            self.actor_body = self.critic_body = nn.Identity()
        else:
            in_features = int(math.prod(space.shape))
            self.actor_body = MLP(in_features, hidden_sizes, activation)
            self.critic_body = MLP(in_features, hidden_sizes, activation)
            actor_out = critic_out = self.actor_body.out_features
        self.policy_head = ActionHead(actor_out, action_space)
        self.value_head = layer_init(nn.Linear(critic_out, 1), gain=1.0)

    def _encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs[self.obs_key]
        if self.is_image:
            return self.trunk(x)
        x = x.float()
        if self.obs_normalizer is not None:
            x = self.obs_normalizer(x)
        return x.flatten(1) if x.dim() > 2 else x

    def forward(self, obs: dict[str, torch.Tensor]) -> tuple[Distribution, torch.Tensor]:
        x = self._encode(obs)
        mask = obs.get(MASK_KEY)
        dist = self.policy_head(self.actor_body(x), None if mask is None else mask.bool())
        return dist, self.value_head(self.critic_body(x)).squeeze(-1)

    def get_value(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.value_head(self.critic_body(self._encode(obs))).squeeze(-1)
