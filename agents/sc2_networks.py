"""The SC2LE paper's FullyConv agent (Vinyals et al. 2017, section 4.3) and its action distribution.

Observations are envs.sc2's Dict: `screen` and `minimap` feature layers [C, H, W], `player` [11],
`available_actions` [F]. Actions are [function, one value per pysc2 argument type]; a point argument is a
flat index y * size + x over the screen or minimap.

This module knows nothing of pysc2: the feature layers (scale, categorical or not) and which arguments
each function takes come in as plain data from envs.sc2.SC2Interface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from agents.distributions import Categorical
from agents.networks import PolicyValueNet, layer_init
from agents.recurrent import LSTMCore, unroll

AVAILABLE_KEY = "available_actions"


class LayerSpec(Protocol):
    scale: int
    categorical: bool


class FunctionCallDistribution:
    """pi(function, arguments) = pi(function) * prod over the arguments the function takes of pi(argument).

    The function is never one the mask marks unavailable. Arguments the function does not take are not
    part of the action: they add nothing to its log-probability, so PPO's ratio and gradient ignore
    whatever value the action vector holds for them. The entropy is that of the joint distribution,
        H = H(function) + sum_f pi(f) * sum_{j taken by f} H(argument j),
    so an argument counts in proportion to how likely a function that takes it is (its expectation over
    the sampled function is what counting only the sampled function's arguments would estimate).
    An argument that no function takes may come as None (no head computed it): it is always 0 and adds
    nothing, exactly what its masked-out terms would have added.
    """

    def __init__(
        self, function_logits: torch.Tensor, argument_logits: Sequence[torch.Tensor | None], uses: torch.Tensor,
        available: torch.Tensor,
    ):  # fmt: skip
        self.function = Categorical(function_logits, available)
        self.arguments = [None if logits is None else Categorical(logits) for logits in argument_logits]
        self.uses = uses  # [F, J] float, 1 where function f takes argument j
        self._zeros = torch.zeros(function_logits.shape[:-1], device=function_logits.device)

    def _compose(self, function: torch.Tensor, arguments: list[torch.Tensor]) -> torch.Tensor:
        # Arguments the function does not take are stored as 0, so that the action vector is canonical.
        used = self.uses[function].long()
        return torch.cat([function.unsqueeze(-1), torch.stack(arguments, -1) * used], dim=-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        zero = self._zeros.long()
        return self._compose(self.function.sample(generator),
                             [zero if a is None else a.sample(generator) for a in self.arguments])  # fmt: skip

    def mode(self) -> torch.Tensor:
        zero = self._zeros.long()
        return self._compose(self.function.mode(), [zero if a is None else a.mode() for a in self.arguments])

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        action = action.long()
        function = action[..., 0]
        argument_log_probs = torch.stack(
            [self._zeros if a is None else a.log_prob(action[..., 1 + j]) for j, a in enumerate(self.arguments)], -1
        )
        return self.function.log_prob(function) + (self.uses[function] * argument_log_probs).sum(-1)

    def entropy(self) -> torch.Tensor:
        p_takes = self.function.logits.exp() @ self.uses  # [B, J]: probability that the function takes argument j
        argument_entropies = torch.stack([self._zeros if a is None else a.entropy() for a in self.arguments], -1)
        return self.function.entropy() + (p_takes * argument_entropies).sum(-1)


def embedding_dim(scale: int) -> int:
    """Channels for a categorical layer: about log2 of its number of categories (unit_type's ~2000 -> 11)."""
    return max(1, math.ceil(math.log2(max(scale, 2))))


class FeatureLayerEncoder(nn.Module):
    """Feature layers [B, C, H, W] (integers) to float channels: categorical layers through an embedding
    (the paper's one-hot + 1x1 convolution, without materialising the one-hot), numeric layers log(1 + x)
    (hit points and the like span several orders of magnitude)."""

    def __init__(self, layers: Sequence[LayerSpec]):
        super().__init__()
        self.layers = list(layers)
        self.embeddings = nn.ModuleDict({
            str(i): nn.Embedding(layer.scale, embedding_dim(layer.scale))
            for i, layer in enumerate(self.layers) if layer.categorical
        })  # fmt: skip
        self.out_channels = sum(embedding_dim(la.scale) if la.categorical else 1 for la in self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        for i, layer in enumerate(self.layers):
            if layer.categorical:
                ids = x[:, i].long().clamp(0, layer.scale - 1)
                parts.append(self.embeddings[str(i)](ids).permute(0, 3, 1, 2))
            else:
                parts.append(torch.log1p(x[:, i : i + 1].float().clamp(min=0)))
        return torch.cat(parts, dim=1)


class FullyConvStream(nn.Sequential):
    """One of the paper's two convolution towers: 16 5x5 filters, then 32 3x3, stride 1, same padding."""

    def __init__(self, layers: Sequence[LayerSpec]):
        encoder = FeatureLayerEncoder(layers)
        super().__init__(
            encoder,
            layer_init(nn.Conv2d(encoder.out_channels, 16, 5, padding=2)), nn.ReLU(),
            layer_init(nn.Conv2d(16, 32, 3, padding=1)), nn.ReLU(),
        )  # fmt: skip


POOLED_GRID = 8  # fc_mode "pooled": the state is average-pooled to 8 x 8 cells before the FC layer


class FullyConv(PolicyValueNet):
    """FullyConv: screen and minimap towers keep the resolution; their outputs, concatenated (the
    minimap's resized to the screen's grid when the sizes differ), are the state. Point arguments come
    from 1x1 convolutions over the state, one logit per cell; the function id, the other arguments and
    the value come from a 256-unit fully connected layer over the state, the log-scaled player features
    and the available-functions mask. `fc_mode` "paper" flattens the whole state into that layer, as the paper does (64 * S * S
    inputs: 16.8M weights at S = 32, most of the learner's time); "pooled" first averages it over an
    8 x 8 grid (4,096 inputs at any S), which keeps the coarse where-is-what the non-spatial heads need
    while the spatial heads still read every cell. With `lstm_size` > 0 an LSTM core follows that layer (memory [B, 2 * lstm_size]) and
    feeds the function, non-spatial argument and value heads; the spatial heads read the convolutional
    state of the current step. (As we read the paper, its FullyConv LSTM recurs over the spatial state with a
    convolutional LSTM; that variant is not built here.)"""

    obs_key = "screen"
    obs_normalizer = None
    is_image = True
    multithreaded = True  # big convolutions and a 16.8M-weight layer: the learner uses all CPU threads

    def __init__(
        self,
        screen_layers: Sequence[LayerSpec],
        minimap_layers: Sequence[LayerSpec],
        screen_size: int,
        minimap_size: int,
        num_player_features: int,
        argument_sizes: Sequence[int],
        spatial_arguments: Sequence[str],
        argument_names: Sequence[str],
        uses: np.ndarray,
        hidden: int = 256,
        lstm_size: int = 0,
        fc_mode: str = "pooled",
    ):
        super().__init__()
        if fc_mode not in ("pooled", "paper"):
            raise ValueError(f"fc_mode must be 'pooled' or 'paper', got {fc_mode!r}")
        self.fc_mode = fc_mode
        self.screen_size, self.minimap_size = screen_size, minimap_size
        self.screen = FullyConvStream(screen_layers)
        self.minimap = FullyConvStream(minimap_layers)
        self.register_buffer("uses", torch.as_tensor(uses, dtype=torch.float32), persistent=False)
        self.argument_names = list(argument_names)
        state_channels = 64
        cells = screen_size**2 if fc_mode == "paper" else min(screen_size, POOLED_GRID) ** 2
        # The FC layer also reads which functions are available (the paper's non-spatial inputs include
        # them): a state's function choice often turns on it, e.g. nothing selected yet.
        self.fc = layer_init(nn.Linear(state_channels * cells + num_player_features + uses.shape[0], hidden))
        self.core = LSTMCore(hidden, lstm_size) if lstm_size else None
        if lstm_size:
            hidden, self.memory_size = lstm_size, self.core.state_size
        self.value_head = layer_init(nn.Linear(hidden, 1), gain=1.0)
        self.function_head = layer_init(nn.Linear(hidden, uses.shape[0]), gain=0.01)
        # Heads only for the arguments some function of the chosen set takes (3 of 13 for select_army and
        # Move_screen): the others are never part of an action.
        self.argument_heads = nn.ModuleDict()
        for j, (name, size) in enumerate(zip(argument_names, argument_sizes, strict=True)):
            if not uses[:, j].any():
                continue
            if name in spatial_arguments:
                self.argument_heads[name] = layer_init(nn.Conv2d(state_channels, 1, 1), gain=0.01)
            else:
                self.argument_heads[name] = layer_init(nn.Linear(hidden, size), gain=0.01)
        self.spatial = set(spatial_arguments)

    def _state(
        self, obs: dict[str, torch.Tensor], memory: torch.Tensor | None, episode_starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The convolutional state [B, 64, H, W], the hidden vector the non-spatial heads read, the memory."""
        screen = self.screen(obs["screen"])
        minimap = self.minimap(obs["minimap"])
        if self.minimap_size != self.screen_size:
            minimap = F.interpolate(minimap, size=(self.screen_size, self.screen_size), mode="nearest")
        state = torch.cat([screen, minimap], dim=1)
        player = torch.log1p(obs["player"].float().clamp(min=0))
        flat = state if self.fc_mode == "paper" else F.adaptive_avg_pool2d(state, min(self.screen_size, POOLED_GRID))
        available = obs[AVAILABLE_KEY].float()
        hidden = torch.relu(self.fc(torch.cat([flat.flatten(1), player, available], dim=1)))
        if self.core is None:
            return state, hidden, None
        hidden, memory = unroll(self.core, hidden, *self._memory_inputs(obs, memory, episode_starts))
        return state, hidden, memory

    def forward(
        self, obs: dict[str, torch.Tensor], memory: torch.Tensor | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[FunctionCallDistribution, torch.Tensor, torch.Tensor | None]:  # fmt: skip
        state, hidden, memory = self._state(obs, memory, episode_starts)
        argument_logits: list[torch.Tensor | None] = []
        for name in self.argument_names:
            head = self.argument_heads[name] if name in self.argument_heads else None  # noqa: SIM401 (ModuleDict has no .get)
            if head is None:
                argument_logits.append(None)
            elif name in self.spatial:
                logits = head(state)
                if name == "minimap" and self.minimap_size != self.screen_size:
                    logits = F.interpolate(logits, size=(self.minimap_size, self.minimap_size), mode="nearest")
                argument_logits.append(logits.flatten(1))  # index y * size + x, as the [y, x] grid flattens
            else:
                argument_logits.append(head(hidden))
        dist = FunctionCallDistribution(
            self.function_head(hidden), argument_logits, self.uses, obs[AVAILABLE_KEY].bool()
        )
        return dist, self.value_head(hidden).squeeze(-1), memory

    def get_value(
        self, obs: dict[str, torch.Tensor], memory: torch.Tensor | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        return self.value_head(self._state(obs, memory, episode_starts)[1]).squeeze(-1)
