"""MuZero's three functions (Schrittwieser et al. 2020): representation h (observation -> hidden state),
dynamics g (hidden state, action -> next hidden state, reward) and prediction f (hidden state -> policy,
value), as MLPs for vector observations (MuZeroMLP) and residual convolutions for images (MuZeroResNet)
behind one interface (MuZeroNet).

Hidden states are min-max scaled to [0, 1] per sample (appendix G), which keeps the dynamics' inputs in
one range however deep the unroll goes. Rewards and values are categorical over the transformed support
of agents.muzero.value_transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agents.board_encoding import board_planes, move_planes
from agents.muzero.search import RecurrentFn, RecurrentFnOutput, RootFnOutput
from agents.muzero.value_transform import h_inverse, support_to_scalar
from agents.precision import full_precision


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


class MuZeroNet(nn.Module):
    """What the search, self-play and the learner use of a MuZero model; subclasses give h (`represent`),
    g's state half (`dynamics`) and reward head (`dynamics_reward`), and f (`prediction`, `value_logits`)."""

    num_actions: int
    support_size: int
    reward_support_size: int
    support_bin_width: float = 1.0
    """the value's and reward's bins are this far apart in h(x) (agents.muzero.value_transform)"""
    dynamics_reward: nn.Module
    """g's reward half: reward logits of the hidden states that `dynamics` returns"""

    def represent(self, obs: torch.Tensor) -> torch.Tensor:
        """h: the hidden states of a batch of observations."""
        raise NotImplementedError

    def dynamics(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """g's state half: the hidden states after taking `action` in `state` (the reward is read from
        them by dynamics_reward, so a training unroll can run every head once over all its steps)."""
        raise NotImplementedError

    def prediction(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f: (policy logits, value logits) of hidden states."""
        raise NotImplementedError

    def value_logits(self, state: torch.Tensor) -> torch.Tensor:
        """f's value half alone (reanalysing bootstrap values needs no policy)."""
        raise NotImplementedError

    def initial_inference(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden state, policy logits, value logits) of a batch of observations."""
        state = self.represent(obs)
        return (state, *self.prediction(state))

    def recurrent_inference(
        self, state: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(next hidden state, reward logits, policy logits, value logits) after taking action in state."""
        next_state = self.dynamics(state, action)
        return (next_state, self.dynamics_reward(next_state), *self.prediction(next_state))


class MuZeroMLP(MuZeroNet):
    def __init__(self, obs_dim: int, num_actions: int, hidden_state: int = 64, hidden: Sequence[int] = (64,),
                 support_size: int = 10, reward_support_size: int = 10, support_bin_width: float = 1.0):  # fmt: skip
        super().__init__()
        self.num_actions, self.support_size, self.reward_support_size = num_actions, support_size, reward_support_size
        self.support_bin_width = support_bin_width
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

    def value_logits(self, state: torch.Tensor) -> torch.Tensor:
        return self.prediction_value(state)

    def represent(self, obs: torch.Tensor) -> torch.Tensor:
        return scale_hidden_state(self.representation(obs.flatten(1).float()))

    def dynamics(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        x = torch.cat([state, F.one_hot(action.long(), self.num_actions).to(state.dtype)], dim=-1)
        return scale_hidden_state(self.dynamics_state(x))


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection (MuZero's residual tower, appendix G), GroupNorm(1, C)
    (a layer norm over the whole feature map) instead of batch norm, so that searches of one root and
    training batches normalise alike."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(1, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(1, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(y)))


class _Head(nn.Sequential):
    """A head over the hidden state (1x1 convolution, linear layer): in float32 under a learner's bfloat16
    autocast, which rounds the residual convolutions only (agents.precision)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x.device):
            return super().forward(x.float())


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.GroupNorm(1, out_channels), nn.ReLU())


class MuZeroResNet(MuZeroNet):
    """MuZero's functions for image observations [C, H, W] (frames, boards), a small version of the
    paper's: the representation downsamples with stride-2 convolutions while the map is larger than
    `max_latent_size` (96x96 Atari frames -> 12x12 with the default), then residual blocks; the dynamics
    see the hidden state with the action as one extra plane of value (a + 1) / A (the paper's Atari
    encoding; action_planes="value") or as A planes, the action's filled with ones (action_planes="one-hot":
    a no-op and a move then differ by a plane, not by a shade of one), and predict the reward from a
    1x1-convolution summary; the prediction heads are 1x1 convolutions followed by a linear layer. Hidden states are min-max scaled per sample, as for the MLP.
    With pixels=True observations are 0-255 intensities (Atari frames) and are divided by 255; others
    (MinAtar's 0/1 grids) are used as they are. With board_grid=(rows, columns) observations are a board
    game's flat boards from the mover's view, read as two planes [2, rows, columns] (own pieces, the
    opponent's; obs_shape is then that), and the dynamics see a move as the plane of the cells it names
    (a cell, or a Connect Four column), as the paper's board games encode moves, instead of one value.
    Observations may arrive flattened (the replay stores them so): they are reshaped to obs_shape."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, channels: int = 32, blocks: int = 2,
                 support_size: int = 10, reward_support_size: int = 10, max_latent_size: int = 12,
                 pixels: bool = False, board_grid: tuple[int, int] | None = None,
                 support_bin_width: float = 1.0, action_planes: str = "value"):  # fmt: skip
        super().__init__()
        if action_planes not in ("value", "one-hot") or (action_planes == "one-hot" and board_grid is not None):
            raise ValueError(f"action_planes must be 'value' or, without a board grid, 'one-hot' (got {action_planes!r})")
        self.action_planes = action_planes
        self.support_bin_width = support_bin_width
        self.board_grid = None if board_grid is None else tuple(board_grid)
        if self.board_grid is not None:
            obs_shape = (2, *self.board_grid)
            # Derived from the game, so not saved with the weights.
            self.register_buffer("move_planes", move_planes(num_actions, self.board_grid), persistent=False)
        self.obs_shape, self.pixels = tuple(obs_shape), pixels
        self.num_actions, self.support_size, self.reward_support_size = num_actions, support_size, reward_support_size
        layers, (in_channels, height, width) = [], self.obs_shape
        while max(height, width) > max_latent_size:
            layers.append(_conv_block(in_channels, channels, stride=2))
            in_channels, height, width = channels, (height + 1) // 2, (width + 1) // 2
        layers.append(_conv_block(in_channels, channels))
        self.representation = nn.Sequential(*layers, *(ResidualBlock(channels) for _ in range(blocks)))
        self.latent_shape = (channels, height, width)
        action_channels = num_actions if action_planes == "one-hot" else 1
        self.dynamics_state = nn.Sequential(_conv_block(channels + action_channels, channels), *(ResidualBlock(channels) for _ in range(blocks)))
        flat = 4 * self.latent_shape[1] * self.latent_shape[2]
        self.dynamics_reward = _Head(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(flat, 2 * reward_support_size + 1))
        self.prediction_trunk = ResidualBlock(channels)
        self.prediction_policy = _Head(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(flat, num_actions))
        self.prediction_value = _Head(nn.Conv2d(channels, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(flat, 2 * support_size + 1))
        for head in (self.dynamics_reward, self.prediction_policy, self.prediction_value):  # a neutral start
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    def prediction(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prediction_trunk(state)
        return self.prediction_policy(x), self.prediction_value(x)

    def value_logits(self, state: torch.Tensor) -> torch.Tensor:
        return self.prediction_value(self.prediction_trunk(state))

    def represent(self, obs: torch.Tensor) -> torch.Tensor:
        if self.board_grid is not None:
            x = board_planes(obs, self.board_grid)
        else:
            x = obs.reshape(-1, *self.obs_shape).float()
        if self.pixels:
            x = x / 255.0
        return scale_hidden_state(self.representation(x))

    def dynamics(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.board_grid is not None:
            plane = self.move_planes[action.long()].unsqueeze(1).to(state.dtype)
        elif self.action_planes == "one-hot":
            plane = F.one_hot(action.long(), self.num_actions).to(state.dtype)
            plane = plane.view(-1, self.num_actions, 1, 1).expand(-1, -1, *state.shape[2:])
        else:
            plane = ((action.to(state.dtype) + 1) / self.num_actions).view(-1, 1, 1, 1).expand(-1, 1, *state.shape[2:])
        return scale_hidden_state(self.dynamics_state(torch.cat([state, plane], dim=1)))


def _layers(mlp: nn.Sequential) -> list[tuple[nn.Linear, nn.LayerNorm | None]]:
    """An _mlp as (linear, layer norm or None for the last) pairs; ELU follows every layer norm."""
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    norms = [m for m in mlp if isinstance(m, nn.LayerNorm)]
    return list(zip(linears, [*norms, None], strict=True))


class _FusedRecurrent:
    """recurrent_inference for the search, in few torch calls: during a search the model is fixed and
    the batch small, so per-call overhead (~5-15 us a call here) rather than arithmetic is the cost.

    - the dynamics' first layer takes the action as a row lookup of its weights instead of a one-hot
      concatenation (the same product);
    - the three heads (reward, policy, value), which all read the next hidden state through layers of the
      same widths, run as one batched product per layer, their outputs padded to the widest;
    - h^-1 of the [B] reward and value expectations runs in numpy, where tiny arrays cost less.
    - the weights are read once, detached, so the calls record no autograd without entering
      inference_mode on every call (~18 us a call here).
    Equal to recurrent_inference followed by support_to_scalar up to float rounding (tested).
    """

    @torch.no_grad()
    def __init__(self, model: MuZeroMLP):
        self.num_actions = model.num_actions
        hidden_state = model.dynamics_state[0].in_features - model.num_actions
        dynamics = _layers(model.dynamics_state)
        first = dynamics[0][0]
        self.state_weight = first.weight[:, :hidden_state].t().detach()
        # Row a: the first layer's response to action a plus its bias.
        self.action_rows = (first.weight[:, hidden_state:].t() + first.bias).contiguous()
        self.dynamics = [(linear.weight.detach(), linear.bias.detach(),
                          None if norm is None else (norm.normalized_shape, norm.weight.detach(), norm.bias.detach(), norm.eps))
                         for linear, norm in dynamics]  # fmt: skip
        heads = [_layers(m) for m in (model.dynamics_reward, model.prediction_policy, model.prediction_value)]
        self.head_weight = torch.cat([h[0][0].weight for h in heads]).t()
        self.head_bias = torch.cat([h[0][0].bias for h in heads])
        self.head_norms = []  # per layer: stacked weight [3, w], stacked bias, eps
        self.heads = []  # per layer after the first: stacked weight [3, in, out] and bias [3, 1, out]
        for depth in range(len(heads[0])):
            if depth > 0:
                out = max(h[depth][0].out_features for h in heads)
                w = torch.zeros(3, heads[0][depth][0].in_features, out)
                b = torch.zeros(3, 1, out)
                for i, h in enumerate(heads):
                    linear = h[depth][0]
                    w[i, :, : linear.out_features] = linear.weight.t()
                    b[i, 0, : linear.out_features] = linear.bias
                self.heads.append((w, b))
            if heads[0][depth][1] is not None:
                norms = [h[depth][1] for h in heads]
                self.head_norms.append((torch.stack([n.weight for n in norms]), torch.stack([n.bias for n in norms]), norms[0].eps))
        self.supports = [model.support_bin_width * torch.arange(-n, n + 1, dtype=torch.float32)
                         for n in (model.reward_support_size, model.support_size)]  # fmt: skip

    def __call__(self, state: torch.Tensor, action: torch.Tensor):
        x = torch.addmm(F.embedding(action.long(), self.action_rows), state, self.state_weight)
        for i, (weight, bias, norm) in enumerate(self.dynamics):
            if i > 0:
                x = F.linear(x, weight, bias)
            if norm is not None:
                x = F.elu(torch.layer_norm(x, *norm))
        lo, hi = torch.aminmax(x, dim=1, keepdim=True)
        next_state = (x - lo) / (hi - lo).clamp(min=1e-5)  # scale_hidden_state

        # The heads (reward, policy, value) side by side: [B, 3, width] for the layer norms (contiguous,
        # where they are fast), seen as [3, B, width] for the batched products.
        h = torch.addmm(self.head_bias, next_state, self.head_weight).view(x.shape[0], 3, -1)
        for depth, (gamma, beta, eps) in enumerate(self.head_norms):
            if depth > 0:
                w, b = self.heads[depth - 1]
                h = torch.baddbmm(b, h.transpose(0, 1), w).transpose(0, 1).contiguous()
            h = F.elu(torch.addcmul(beta, torch.layer_norm(h, (h.shape[-1],), None, None, eps), gamma))
        w, b = self.heads[-1]
        out = torch.baddbmm(b, h.transpose(0, 1), w)  # [3, B, widest output]
        reward_support, value_support = self.supports
        if len(reward_support) == len(value_support):  # both expectations in one softmax
            expected = out[0::2, :, : len(value_support)].softmax(-1) @ value_support
        else:
            expected = torch.stack([out[0, :, : len(reward_support)].softmax(-1) @ reward_support,
                                    out[2, :, : len(value_support)].softmax(-1) @ value_support])  # fmt: skip
        reward, value = h_inverse(expected.numpy())  # support_to_scalar's last step (float64 out)
        return RecurrentFnOutput(reward, next_state, out[1, :, : self.num_actions].numpy(), value)


def search_callback(model: MuZeroNet) -> RecurrentFn:
    """The model as the search's recurrent function: scalar rewards and values, no autograd. Build it
    again after the weights change (the MLP's fused version reads them once). The search keeps its
    trees in numpy, so a model on a GPU gets each simulation's states and actions copied in and its
    outputs copied back."""
    device = _device_of(model)
    if isinstance(model, MuZeroMLP) and device.type == "cpu":
        return _FusedRecurrent(model)

    @torch.inference_mode()
    def recurrent_fn(state: torch.Tensor, action: torch.Tensor):
        next_state, reward_logits, policy_logits, value_logits = model.recurrent_inference(
            state.to(device, non_blocking=True), action.to(device, non_blocking=True))
        reward = support_to_scalar(reward_logits, model.reward_support_size, model.support_bin_width)
        value = support_to_scalar(value_logits, model.support_size, model.support_bin_width)
        return RecurrentFnOutput(_numpy(reward), next_state.cpu(), _numpy(policy_logits), _numpy(value))

    return recurrent_fn


def root_inference(model: MuZeroNet, obs: np.ndarray) -> RootFnOutput:
    """The hidden states, prior logits and values of a batch of observations: the search's roots."""
    with torch.inference_mode():
        state, policy_logits, value_logits = model.initial_inference(torch.as_tensor(obs).to(_device_of(model)))
        value = support_to_scalar(value_logits, model.support_size, model.support_bin_width)
    return RootFnOutput(state.cpu(), _numpy(policy_logits), _numpy(value))


def state_values(model: MuZeroNet, obs: np.ndarray) -> np.ndarray:
    """[B] the model's values v = f(h(o)) of a batch of observations, without the policy (float64)."""
    with torch.inference_mode():
        logits = model.value_logits(model.represent(torch.as_tensor(obs).to(_device_of(model))))
        return _numpy(support_to_scalar(logits, model.support_size, model.support_bin_width))


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _numpy(x: torch.Tensor) -> np.ndarray:
    """float64 numpy of a tensor on any device (the search's arithmetic is in float64)."""
    return x.detach().cpu().double().numpy()
