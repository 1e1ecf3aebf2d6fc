"""MuZero's value and reward representation (Schrittwieser et al. 2020, appendix F; Pohlen et al. 2018).

Values and rewards are predicted as categorical distributions over the support {w i : i = -S..S} of the
transformed scalar h(x) = sign(x)(sqrt(|x| + 1) - 1) + eps * x. The transform squashes large returns
(a CartPole value of 100 becomes ~9) so one support of 2S + 1 bins covers them, and a cross-entropy loss on
the bins is scale-free, unlike a squared error on raw returns. The bin width w is the paper's 1 by
default. Smaller values can be resolved more finely: a board game's +-1 lands at h = +-0.415, inside one
bin of 0, where a perfect prediction of a win gains ~0.3 nats over predicting 0; bins of w = 0.05 spread
[-1, 1] over 17 (on Connect Four that won no more games: 3 seeds, docs/benchmark/muzero-connect-four-1205.md).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

EPS = 0.001


def h(x: torch.Tensor) -> torch.Tensor:
    """The invertible squashing transform h(x) = sign(x)(sqrt(|x| + 1) - 1) + eps x."""
    return torch.sign(x) * (torch.sqrt(x.abs() + 1) - 1) + EPS * x


def h_inverse(y: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The exact inverse of h (solving the quadratic in sqrt(|x| + 1)). Takes torch tensors or numpy
    arrays (the search converts its few scalars in numpy: one compiled ufunc call, where the ten
    small-array operations of the formula cost ~20 us a search step)."""
    if isinstance(y, np.ndarray):
        return _h_inverse_ufunc(y)
    root = (torch.sqrt(1 + 4 * EPS * (y.abs() + 1 + EPS)) - 1) / (2 * EPS)
    return torch.sign(y) * (root * root - 1)


@numba.vectorize(["float64(float64)"], cache=True)
def _h_inverse_ufunc(y: float) -> float:
    root = (math.sqrt(1 + 4 * EPS * (abs(y) + 1 + EPS)) - 1) / (2 * EPS)
    return (1.0 if y > 0 else -1.0 if y < 0 else 0.0) * (root * root - 1)


def scalar_to_support(x: torch.Tensor, support_size: int, bin_width: float = 1.0) -> torch.Tensor:
    """Two-hot targets [..., 2S + 1] of h(x): the probability mass sits on the two bins around h(x), in
    proportion to closeness, so that the expectation over the support is exactly h(x) (clipped to +-S w)."""
    y = (h(x) / bin_width).clamp(-support_size, support_size)
    low = y.floor()
    upper_weight = y - low
    out = torch.zeros(*x.shape, 2 * support_size + 1, dtype=x.dtype, device=x.device)
    low_index = (low + support_size).long()
    out.scatter_(-1, low_index.unsqueeze(-1), (1 - upper_weight).unsqueeze(-1))
    # At the top bin upper_weight is 0; clamp the index so the (zero) mass lands inside the support.
    high_index = (low_index + 1).clamp(max=2 * support_size)
    out.scatter_add_(-1, high_index.unsqueeze(-1), upper_weight.unsqueeze(-1))
    return out


def scalar_to_hl_gauss(x: torch.Tensor, support_size: int, sigma: float, bin_width: float = 1.0) -> torch.Tensor:
    """HL-Gauss targets [..., 2S + 1] of h(x) (Farebrother et al. 2024, "Stop Regressing"): the mass a
    normal N(h(x), sigma^2) puts on each bin [i - 1/2, i + 1/2] of the support, renormalised over the
    support. Where two-hot targets ask for one exact pair of bins, neighbouring bins share the credit,
    which the paper found steadies value learning (its advice: sigma = 0.75 bin widths; sigma is in bin
    widths here too). h(x) is clipped to +-S w first, as for two-hot."""
    y = (h(x) / bin_width).clamp(-support_size, support_size).unsqueeze(-1)
    edges = torch.arange(-support_size - 0.5, support_size + 1.0, 1.0, dtype=x.dtype, device=x.device)
    cdf = torch.special.ndtr((edges - y) / sigma)  # [..., 2S + 2]
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / (cdf[..., -1:] - cdf[..., :1])


def support_to_scalar(logits: torch.Tensor, support_size: int, bin_width: float = 1.0) -> torch.Tensor:
    """The scalar a categorical prediction [..., 2S + 1] stands for: h^-1 of its expected bin."""
    support = bin_width * torch.arange(-support_size, support_size + 1, dtype=logits.dtype, device=logits.device)
    return h_inverse((logits.softmax(-1) * support).sum(-1))
