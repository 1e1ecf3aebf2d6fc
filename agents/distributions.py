"""Action distributions for Discrete (optionally masked), MultiDiscrete and Box action spaces.

Small hand-written classes rather than `torch.distributions`: they take an explicit `torch.Generator`
(so that a rollout worker's samples depend only on its own seed, in any process), skip argument
validation on the hot path, and handle masks the way PPO needs them.
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import nn

from agents.initialization import orthogonal_


class Categorical:
    """Categorical over the last dim. `mask` (bool, True = allowed) removes actions: a masked action
    gets probability exactly 0, is never sampled, and adds nothing to the entropy."""

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor | None = None):
        if mask is not None:
            # The dtype's most negative finite value, not -inf: exp() of it is exactly 0 and 0 * it is 0,
            # so entropy and gradients stay finite.
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        self.logits = logits - logits.logsumexp(-1, keepdim=True)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        # Gumbel-max trick: argmax(logits + Gumbel noise) is an exact sample, in two vectorised ops.
        u = torch.rand(self.logits.shape, generator=generator, dtype=self.logits.dtype)
        gumbel = -torch.log(-torch.log(u.clamp_(min=1e-20)))
        return (self.logits + gumbel).argmax(-1)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return self.logits.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        return -(self.logits.exp() * self.logits).sum(-1)


class MultiCategorical:
    """Independent categoricals, one per MultiDiscrete dimension; log-probs and entropies add up."""

    def __init__(self, logits: torch.Tensor, nvec: list[int], mask: torch.Tensor | None = None):
        masks = mask.split(nvec, dim=-1) if mask is not None else [None] * len(nvec)
        self.parts = [Categorical(lg, m) for lg, m in zip(logits.split(nvec, dim=-1), masks, strict=True)]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([p.sample(generator) for p in self.parts], dim=-1)

    def mode(self) -> torch.Tensor:
        return torch.stack([p.mode() for p in self.parts], dim=-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        return sum(p.log_prob(a) for p, a in zip(self.parts, action.unbind(-1), strict=True))

    def entropy(self) -> torch.Tensor:
        return sum(p.entropy() for p in self.parts)


class DiagGaussian:
    """Diagonal Gaussian; samples are unbounded (the env side clips them to the Box)."""

    _LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.log_std.exp() * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        z = (action - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - self._LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + self._LOG_SQRT_2PI + self.log_std).sum(-1)


Distribution = Categorical | MultiCategorical | DiagGaussian


class ActionHead(nn.Module):
    """Maps features to the distribution of the given action space (orthogonal init, gain 0.01, so the
    initial policy is close to uniform / zero-mean as in the PPO implementation-details study)."""

    def __init__(self, in_features: int, action_space: gym.Space):
        super().__init__()
        self.nvec: list[int] | None = None
        if isinstance(action_space, gym.spaces.Discrete):
            out = int(action_space.n)
        elif isinstance(action_space, gym.spaces.MultiDiscrete):
            self.nvec = [int(n) for n in action_space.nvec.reshape(-1)]
            out = sum(self.nvec)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            out = action_space.shape[0]
            self.log_std = nn.Parameter(torch.zeros(out))
        else:
            raise ValueError(
                f"unsupported action space {action_space}: PPO here takes Discrete, MultiDiscrete or a 1-D Box"
            )
        self.is_continuous = isinstance(action_space, gym.spaces.Box)
        self.linear = nn.Linear(in_features, out)
        orthogonal_(self.linear.weight, 0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> Distribution:
        out = self.linear(features)
        if self.is_continuous:
            return DiagGaussian(out, self.log_std)
        if self.nvec is not None:
            return MultiCategorical(out, self.nvec, mask)
        return Categorical(out, mask)
