"""Actor-critic networks for PPO: MLPs for vector observations, the Nature CNN for stacked frames, each
feed-forward or with memory (an LSTM core between the torso and the heads: agents.recurrent).

Observations travel as a dict of tensors. A plain Box env gives `{"obs": x}`; a Dict env passes its own
keys, and a key named `action_mask` (bool, True = allowed) masks the policy's Discrete actions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import gymnasium as gym
import torch
from torch import nn
from torch.nn import functional as F

from agents.board_encoding import board_planes
from agents.distributions import ActionHead, Distribution
from agents.initialization import orthogonal_
from agents.precision import full_precision
from agents.recurrent import LSTMCore, unroll

MASK_KEY = "action_mask"
OBS_KEY = "obs"


def obs_spaces(observation_space: gym.Space) -> dict[str, gym.Space]:
    """The dict layout in which observations of this space travel through rollouts and networks."""
    if isinstance(observation_space, gym.spaces.Dict):
        return dict(observation_space.spaces)
    return {OBS_KEY: observation_space}


def is_image_space(observation_space: gym.Space) -> bool:
    """Whether the observation's features (its space besides an action mask) are images [C, H, W], which
    ActorCritic reads with a CNN trunk."""
    spaces = obs_spaces(observation_space)
    return any(len(space.shape or ()) == 3 for key, space in spaces.items() if key != MASK_KEY)


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
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        self.update_from_moments(x.mean(0), x.var(0, unbiased=False), x.shape[0])

    @torch.no_grad()
    def update_from_moments(self, b_mean: torch.Tensor, b_var: torch.Tensor, b_count: int) -> None:
        """Fold in a batch's mean and (biased) variance, however they were computed: Chan et al.'s parallel
        combination of (mean, var, count)."""
        b_mean, b_var = b_mean.to(torch.float64), b_var.to(torch.float64)
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


class Acted(NamedTuple):
    """What acting gives: per env the action, its log-probability, V(s), and the memory after the step
    (None for a feed-forward policy)."""

    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    memory: torch.Tensor | None


class GridCNN(nn.Sequential):
    """Young & Tian 2019's MinAtar network for small grids of binary channels (10x10): `filters` 3x3 filters
    (the paper's 16) at stride 1, then 128 units. Observations are 0/1 already, so nothing is scaled."""

    def __init__(self, in_channels: int, height: int, width: int, out_features: int = 128, filters: int = 16):
        super().__init__(
            layer_init(nn.Conv2d(in_channels, filters, 3, stride=1)), nn.ReLU(), nn.Flatten(),
            layer_init(nn.Linear(filters * (height - 2) * (width - 2), out_features)), nn.ReLU(),
        )  # fmt: skip
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())


class BoardCNN(nn.Module):
    """For board games whose flat observation is a grid from the mover's view (+1 own, -1 the opponent's,
    0 empty): the board as two planes (own, opponent's) [2, H, W], `layers` 3x3 convolutions of `channels`
    that keep the size (zero padding: the board's edge is visible), then `out_features` units. Lines of
    four are local patterns, which convolutions share across the board and an MLP must learn per place."""

    def __init__(self, grid_shape: tuple[int, int], channels: int = 32, layers: int = 3, out_features: int = 256):
        super().__init__()
        self.grid_shape = tuple(grid_shape)
        convs: list[nn.Module] = []
        for k in range(layers):
            convs += [layer_init(nn.Conv2d(2 if k == 0 else channels, channels, 3, padding=1)), nn.ReLU()]
        height, width = self.grid_shape
        self.net = nn.Sequential(
            *convs, nn.Flatten(), layer_init(nn.Linear(channels * height * width, out_features)), nn.ReLU()
        )
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(board_planes(x, self.grid_shape))


# The Nature CNN's 8/4, 4/2 and 3/1 convolutions need at least 36 pixels a side; smaller grids get GridCNN.
NATURE_CNN_MIN_SIZE = 36


class PolicyValueNet(nn.Module):
    """What rollout workers, the PPO learner and evaluation need of an agent.

    `forward(obs, memory, episode_starts)` gives the action distribution, V(s) and the memory after the
    step; `get_value(...)` gives V(s) alone. A feed-forward net (memory_size 0) ignores memory and
    episode_starts and returns None as memory. A net with memory takes obs time-major flattened, [T * B,
    ...], memory [B, memory_size] (the state before the first step; zeros when None) and episode_starts
    [T * B] (1.0 where a step begins an episode: its state is reset first; none when None); it returns the
    memory after a single step (acting), None after an unroll of several (the update). Subclasses also
    say whether they read frames (`is_image`), whether the learner gains from several intra-op threads
    (`multithreaded`: big convolutions do, small MLPs and GridCNN run fastest on one), and carry an
    `obs_normalizer` or None."""

    obs_normalizer: ObsNormalizer | None
    is_image: bool
    multithreaded: bool = False
    obs_key: str
    memory_size: int = 0

    def initial_memory(self, batch_size: int) -> torch.Tensor | None:
        """The memory of envs at the start of their first episode: zeros [B, memory_size], or None."""
        return torch.zeros(batch_size, self.memory_size) if self.memory_size else None

    def _memory_inputs(
        self, obs: dict[str, torch.Tensor], memory: torch.Tensor | None, episode_starts: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # Defaults for one step from a fresh state: a batch of B observations, no resets.
        first = obs[self.obs_key]
        if memory is None:
            memory = torch.zeros(first.shape[0], self.memory_size, device=first.device)
        if episode_starts is None:
            episode_starts = torch.zeros(first.shape[0], device=first.device)
        return memory.to(first.device), episode_starts.to(first.device)

    def get_value(
        self, obs: dict[str, torch.Tensor], memory: torch.Tensor | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        raise NotImplementedError

    @torch.inference_mode()
    def act(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None, deterministic: bool = False,
        memory: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None,
    ) -> Acted:  # fmt: skip
        """One step for a batch of envs, for acting (no autograd)."""
        dist, value, memory = self(obs, memory, episode_starts)
        action = dist.mode() if deterministic else dist.sample(generator)
        return Acted(action, dist.log_prob(action), value, memory)


class ActorCritic(PolicyValueNet):
    """Policy and value function: the torso (observation normaliser and flatten for vectors, the Nature CNN
    for frames, GridCNN for MinAtar's 10x10 grids), with memory an LSTM core, then the bodies and the linear
    heads.

    Vector observations: separate actor and critic MLP bodies (the PPO defaults of CleanRL and SB3; sharing
    a trunk lets the value loss disturb the policy). Image observations: one shared CNN trunk.
    With `lstm_size` > 0: for vectors, actor and critic each get an LSTM that reads the observation and
    feeds its MLP (SB3-contrib's RecurrentPPO layout with `enable_critic_lstm`; the memory is [actor's
    (h, c), critic's (h, c)]); for frames, one LSTM after the shared CNN feeds both heads (CleanRL's
    ppo_atari_lstm). On CartPoleNoVel the LSTM before the MLP solved in 3 of 3 seeds where an MLP before
    the LSTM solved 1 of 3 in the same budget (README, "Memory").
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        normalize_obs: bool = False,
        lstm_size: int = 0,
        board_grid: tuple[int, int] | None = None,
        conv_body_sizes: Sequence[int] = (),
        grid_filters: int = 16,
    ):
        """board_grid: the (rows, columns) of a board game's flat observation, to read it with BoardCNN.
        conv_body_sizes: after a shared CNN, separate actor and critic MLP bodies of these widths (with
        `activation`; pgx's MinAtar PPO uses 64, 64 with tanh); empty: the heads read the CNN's features.
        grid_filters: the convolution's filters where small grids (MinAtar) get GridCNN."""
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
        self.masked = MASK_KEY in spaces
        space = spaces[self.obs_key]
        self.obs_shape = tuple(space.shape)
        self.is_image = is_image_space(observation_space)
        # One shared convolutional trunk (frames, grids, boards) or MLP bodies of their own (vectors).
        self.conv_trunk = self.is_image or board_grid is not None
        self.obs_normalizer = ObsNormalizer(space.shape) if normalize_obs and not self.conv_trunk else None
        features = int(math.prod(space.shape))
        if board_grid is not None:
            if lstm_size:
                raise ValueError("a board CNN with memory is not built")
            self.trunk = BoardCNN(board_grid)
            features = self.trunk.out_features
            # Its convolutions over minibatches of 256 boards are compute-bound: on 2 cores Connect Four's
            # preset ran 1,070 env steps/s with one thread and 1,800 with two (rollout and update alike).
            self.multithreaded = True
        elif self.is_image:
            channels, height, width = space.shape
            if min(height, width) >= NATURE_CNN_MIN_SIZE:
                self.trunk, features = NatureCNN(channels), 512
                self.multithreaded = True
            else:
                self.trunk = GridCNN(channels, height, width, filters=grid_filters)
                features = self.trunk.out_features
        # The core: one after the shared CNN (actor_core, read by both heads), or one per MLP body.
        self.actor_core = LSTMCore(features, lstm_size) if lstm_size else None
        self.critic_core = LSTMCore(features, lstm_size) if lstm_size and not self.is_image else None
        if lstm_size:
            features = lstm_size
            self.memory_size = self.actor_core.state_size * (1 if self.is_image else 2)
        if self.conv_trunk and not conv_body_sizes:
            self.actor_body = self.critic_body = nn.Identity()
            body_out = features
        elif self.conv_trunk:
            self.actor_body = MLP(features, conv_body_sizes, activation)
            self.critic_body = MLP(features, conv_body_sizes, activation)
            body_out = self.actor_body.out_features
        else:
            self.actor_body = MLP(features, hidden_sizes, activation)
            self.critic_body = MLP(features, hidden_sizes, activation)
            body_out = self.actor_body.out_features
        self.policy_head = ActionHead(body_out, action_space)
        self.value_head = layer_init(nn.Linear(body_out, 1), gain=1.0)

    kernels: bool = False
    """act through agents.ppo_kernel's compiled kernel (and let the PPO learner update through it); only
    for a kernel_compatible net (training.ppo.train.build_agent sets it from --mlp-kernel)"""

    @property
    def kernel_compatible(self) -> bool:
        """Whether agents.ppo_kernel can act and learn for this net: separate MLP bodies over a vector
        observation, a Categorical policy over Discrete actions without an action mask, no memory."""
        head = self.policy_head
        return not (self.conv_trunk or self.memory_size or self.masked or head.nvec is not None or head.is_continuous)

    def act(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None, deterministic: bool = False,
        memory: torch.Tensor | None = None, episode_starts: torch.Tensor | None = None,
    ) -> Acted:  # fmt: skip
        if self.kernels and self.value_head.weight.device.type == "cpu":
            from agents.ppo_kernel import kernel_act  # numba's import, only where the kernel runs

            return Acted(*kernel_act(self, obs, generator, deterministic), None)
        return super().act(obs, generator, deterministic, memory, episode_starts)

    def _encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs[self.obs_key]
        if self.conv_trunk:
            # A learner's reduced-precision autocast (--learner-precision) reaches only this trunk, where an
            # update's FLOPs are; its features come back as float32 for what follows (see full_precision).
            return self.trunk(x).float()
        x = x.float()
        if self.obs_normalizer is not None:
            x = self.obs_normalizer(x)
        return x.flatten(1) if x.dim() > 2 else x

    def forward(
        self, obs: dict[str, torch.Tensor], memory: torch.Tensor | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[Distribution, torch.Tensor, torch.Tensor | None]:  # fmt: skip
        features = self._encode(obs)
        with full_precision(features.device):
            return self._heads(features, obs, memory, episode_starts)

    def _heads(
        self, features: torch.Tensor, obs: dict[str, torch.Tensor], memory: torch.Tensor | None,
        episode_starts: torch.Tensor | None,
    ) -> tuple[Distribution, torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """forward after the trunk: the memory cores, the bodies and the policy and value heads."""
        actor = critic = features
        mask = obs.get(MASK_KEY)
        new_memory = None
        if self.actor_core is not None:
            memory, episode_starts = self._memory_inputs(obs, memory, episode_starts)
            split = self.actor_core.state_size
            actor, new_memory = unroll(self.actor_core, actor, memory[:, :split], episode_starts)
            if self.is_image:
                critic = actor
            else:
                critic, critic_memory = unroll(self.critic_core, critic, memory[:, split:], episode_starts)
                new_memory = None if new_memory is None else torch.cat([new_memory, critic_memory], dim=-1)
        dist = self.policy_head(self.actor_body(actor), None if mask is None else mask.bool())
        return dist, self.value_head(self.critic_body(critic)).squeeze(-1), new_memory

    def get_value(
        self, obs: dict[str, torch.Tensor], memory: torch.Tensor | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        x = self._encode(obs)
        with full_precision(x.device):
            if self.actor_core is not None:
                memory, episode_starts = self._memory_inputs(obs, memory, episode_starts)
                # The core the value head reads: the shared one after a CNN, the critic's own for vectors.
                core, state = (self.actor_core, memory) if self.is_image else (self.critic_core, memory[:, self.actor_core.state_size :])
                x, _ = unroll(core, x, state, episode_starts)
            return self.value_head(self.critic_body(x)).squeeze(-1)
