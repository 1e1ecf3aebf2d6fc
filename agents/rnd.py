"""Random network distillation (Burda et al. 2018, "Exploration by Random Network Distillation"): an
exploration bonus for PPO, the math top to bottom.

A fixed, randomly initialised target network f maps an observation to features; a predictor network
f_hat is trained to reproduce them on the observations the agent visits. Where the agent has been often
the predictor is good; a state it has rarely seen is predicted badly. The prediction error is the
intrinsic reward of the transition into that state:

    i_t = 1/2 * || f_hat(o_{t+1}) - f(o_{t+1}) ||^2        o normalised: (o - mean) / std, clipped to +-5

Both networks read observations whitened by running statistics (a random network on raw pixels gives
features that barely move between states). The paper's other choices, all kept here:
  - i_t is divided by the running standard deviation of its discounted sum (so one coefficient suits games
    whose errors differ by orders of magnitude);
  - the intrinsic return is non-episodic: the game's end is not the end of the novelty to be found, and
    treating it as one would make the agent shy of every risk that may end the game, for the bonus it
    would lose;
  - intrinsic and extrinsic returns have critics of their own (V_E, V_I), because the two rewards follow
    different rules (episodic or not, stationary or not): A = A_E + rnd_coef * A_I;
  - the predictor learns on a random share of each batch (update_proportion): with many envs a rollout is
    far more data than it needs, and learning all of it would shrink the bonus faster.

Shapes: observations [B, *obs_shape] (a MinAtar grid [C, 10, 10], Atari frames [4, 84, 84], a vector
[D]); features [B, F]; rewards and values [B].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from agents.networks import NATURE_CNN_MIN_SIZE, ObsNormalizer, layer_init

# The paper clips whitened observations to +-5.
OBS_CLIP = 5.0


def _encoder(obs_shape: Sequence[int]) -> tuple[nn.Module, int]:
    """The front of a network reading obs_shape, and its output width. Frames (84x84): the Nature CNN's
    convolutions with leaky ReLUs, as in the paper. Small grids (MinAtar's 10x10 of 0/1 cells) and vectors:
    the flattened input, read by the linear layers that follow (a 3x3 convolution there cost RND twice as
    much on MinAtar for nothing the target's novelty needs: a random projection of the cells tells states
    apart as well)."""
    if len(obs_shape) == 3 and min(obs_shape[1:]) >= NATURE_CNN_MIN_SIZE:
        convs = nn.Sequential(
            layer_init(nn.Conv2d(obs_shape[0], 32, 8, stride=4)), nn.LeakyReLU(),
            layer_init(nn.Conv2d(32, 64, 4, stride=2)), nn.LeakyReLU(),
            layer_init(nn.Conv2d(64, 64, 3, stride=1)), nn.LeakyReLU(), nn.Flatten(),
        )  # fmt: skip
        with torch.no_grad():
            width = convs(torch.zeros(1, *obs_shape)).shape[1]
        return convs, int(width)
    return nn.Flatten(), int(torch.Size(obs_shape).numel())


def feature_size(obs_shape: Sequence[int]) -> int:
    """F: the paper's 512 for frames; 128 for grids and vectors, whose states are far fewer."""
    return 512 if len(obs_shape) == 3 and min(obs_shape[1:]) >= NATURE_CNN_MIN_SIZE else 128


class RandomNetworkDistillation(nn.Module):
    """The target f (never trained), the predictor f_hat, the intrinsic critic V_I and the running
    statistics of the observations they read. All three networks read whitened observations (whitened());
    everything is a parameter or buffer, so one state_dict holds it all (a checkpoint, an update undone)."""

    def __init__(self, obs_shape: Sequence[int]):
        super().__init__()
        features = feature_size(obs_shape)
        self.obs_normalizer = ObsNormalizer(obs_shape, clip=OBS_CLIP)
        encoder, width = _encoder(obs_shape)
        self.target = nn.Sequential(
            encoder, layer_init(nn.Linear(width, 2 * features)), nn.LeakyReLU(),
            layer_init(nn.Linear(2 * features, features)),
        )  # fmt: skip
        self.target.requires_grad_(False)
        # The predictor is deeper than the target, as in the paper: it must be able to fit f.
        encoder, width = _encoder(obs_shape)
        self.predictor = nn.Sequential(
            encoder, layer_init(nn.Linear(width, 2 * features)), nn.LeakyReLU(),
            layer_init(nn.Linear(2 * features, features)), nn.ReLU(),
            layer_init(nn.Linear(features, features)), nn.ReLU(), layer_init(nn.Linear(features, features)),
        )  # fmt: skip
        encoder, width = _encoder(obs_shape)
        self.intrinsic_critic = nn.Sequential(
            encoder, layer_init(nn.Linear(width, features)), nn.ReLU(), layer_init(nn.Linear(features, 1), gain=1.0)
        )

    @torch.no_grad()
    def observe(self, obs: torch.Tensor) -> None:
        """Fold observations [B, *obs_shape] into the whitening statistics (moments taken in float32: for
        MinAtar's 0/1 cells float64 cost 4x as much and gives nothing)."""
        x = obs.float()
        self.obs_normalizer.update_from_moments(x.mean(0), x.var(0, unbiased=False), x.shape[0])

    def whitened(self, obs: torch.Tensor) -> torch.Tensor:
        """[B, *obs_shape] (o - mean) / std, clipped to +-5."""
        return self.obs_normalizer(obs.float())

    @torch.no_grad()
    def intrinsic_rewards(self, next_whitened: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
        """[B] i_t = 1/2 ||f_hat(o_{t+1}) - f(o_{t+1})||^2, from the whitened o_{t+1} and f(o_{t+1}) [B, F]."""
        return 0.5 * (self.predictor(next_whitened) - target_features).square().sum(1)

    def intrinsic_values(self, whitened: torch.Tensor) -> torch.Tensor:
        """[B] V_I(o) from the whitened o."""
        return self.intrinsic_critic(whitened).squeeze(1)


def rnd_loss(
    rnd: RandomNetworkDistillation, whitened: torch.Tensor, next_whitened: torch.Tensor,
    target_features: torch.Tensor, intrinsic_returns: torch.Tensor, update_proportion: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The predictor's and the intrinsic critic's loss on a minibatch of transitions: whitened o_t and
    o_{t+1} [B, *obs_shape], the target's features f(o_{t+1}) [B, F] (fixed: computed once a rollout) and
    the intrinsic returns R_I [B] (GAE's targets for V_I(o_t)).

        L = mean_{b in mask} 1/F ||f_hat(o_{t+1}) - f(o_{t+1})||^2  +  mean_b 1/2 (V_I(o_t) - R_I)^2

    The predictor learns the states whose novelty was rewarded, each kept with probability
    update_proportion (drawn from generator); only the kept ones go through it."""
    keep = torch.rand(next_whitened.shape[0], generator=generator) < update_proportion
    keep = keep.nonzero().squeeze(1).to(next_whitened.device)
    predictor_loss = (rnd.predictor(next_whitened[keep]) - target_features[keep]).square().mean(1).sum()
    predictor_loss = predictor_loss / max(len(keep), 1)
    value_loss = 0.5 * (rnd.intrinsic_values(whitened) - intrinsic_returns).square().mean()
    return predictor_loss + value_loss, {"rnd_predictor_loss": predictor_loss.detach(),
                                        "rnd_value_loss": value_loss.detach()}  # fmt: skip
