"""MuZero's three functions (Schrittwieser et al. 2020): representation h (observation -> hidden state),
dynamics g (hidden state, action -> next hidden state, reward) and prediction f (hidden state -> policy,
value), here as MLPs for vector observations.

Hidden states are min-max scaled to [0, 1] per sample (appendix G), which keeps the dynamics' inputs in
one range however deep the unroll goes. Rewards and values are categorical over the transformed support
of agents.value_transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agents.mcts import RecurrentFn
from agents.value_transform import support_to_scalar


def scale_hidden_state(state: torch.Tensor) -> torch.Tensor:
    """Min-max scale each sample's hidden state to [0, 1]."""
    flat = state.flatten(1)
    lo, hi = flat.min(1, keepdim=True)[0], flat.max(1, keepdim=True)[0]
    return ((flat - lo) / (hi - lo).clamp(min=1e-5)).view_as(state)


def _mlp(sizes: Sequence[int], activate_last: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or activate_last:
            layers += [nn.LayerNorm(b), nn.ELU()]
    return nn.Sequential(*layers)


class MuZeroMLP(nn.Module):
    def __init__(self, obs_dim: int, num_actions: int, hidden_state: int = 64, hidden: Sequence[int] = (64,),
                 support_size: int = 10, reward_support_size: int = 10):  # fmt: skip
        super().__init__()
        self.num_actions, self.support_size, self.reward_support_size = num_actions, support_size, reward_support_size
        self.representation = _mlp([obs_dim, *hidden, hidden_state])
        self.dynamics_state = _mlp([hidden_state + num_actions, *hidden, hidden_state])
        self.dynamics_reward = _mlp([hidden_state, *hidden, 2 * reward_support_size + 1])
        self.prediction_policy = _mlp([hidden_state, *hidden, num_actions])
        self.prediction_value = _mlp([hidden_state, *hidden, 2 * support_size + 1])
        # Start from a uniform policy and zero value and reward (their logits' last layers at zero), as
        # muzero-general does: early searches then follow visits, not the noise of random weights.
        for head in (self.dynamics_reward, self.prediction_policy, self.prediction_value):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def prediction(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prediction_policy(state), self.prediction_value(state)

    def initial_inference(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden state, policy logits, value logits) of a batch of observations."""
        state = scale_hidden_state(self.representation(obs.flatten(1).float()))
        return (state, *self.prediction(state))

    def recurrent_inference(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(next hidden state, reward logits, policy logits, value logits) after taking action in state."""
        x = torch.cat([state, F.one_hot(action.long(), self.num_actions).to(state.dtype)], dim=-1)
        next_state = scale_hidden_state(self.dynamics_state(x))
        return (next_state, self.dynamics_reward(next_state), *self.prediction(next_state))


def search_callback(model: MuZeroMLP) -> RecurrentFn:
    """The model as the search's recurrent function: scalar rewards and values, no autograd."""

    @torch.inference_mode()
    def recurrent_fn(state: torch.Tensor, action: torch.Tensor):
        next_state, reward_logits, policy_logits, value_logits = model.recurrent_inference(state, action)
        reward = support_to_scalar(reward_logits, model.reward_support_size)
        value = support_to_scalar(value_logits, model.support_size)
        return reward.double().numpy(), next_state, policy_logits.double().numpy(), value.double().numpy()

    return recurrent_fn


def root_inference(model: MuZeroMLP, obs: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(hidden states, prior logits, values) of a batch of observations, for run_search's roots."""
    with torch.inference_mode():
        state, policy_logits, value_logits = model.initial_inference(torch.as_tensor(obs))
        value = support_to_scalar(value_logits, model.support_size)
    return state, policy_logits.double().numpy(), value.double().numpy()
