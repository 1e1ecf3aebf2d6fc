"""Weight initialisation that a seed alone decides.

`nn.init.orthogonal_` takes the QR decomposition of a Gaussian matrix, and LAPACK's blocked QR splits its
work by the number of intra-op threads: the same seed gives different weights with 1 thread than with 2
(`OMP_NUM_THREADS`, `torch.set_num_threads`). Running the decomposition on one thread makes the initial
weights a function of the seed only; the Gaussian draw itself never depended on threads.
"""

from __future__ import annotations

import torch
from torch import nn


def orthogonal_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """`nn.init.orthogonal_` on one intra-op thread (the caller's thread count is restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return nn.init.orthogonal_(weight, gain)
    finally:
        torch.set_num_threads(threads)
