"""Seeds for simulators whose seed type is narrower than the integers runs hand out.

Runs seed envs with any non-negative integer: an experiment seed (up to 2**32 - 1) plus a role's offset,
or a restarted env's seed drawn from [2**36, 2**36 + 2**40) (training.seeds). Gymnasium's own envs take
any of them (numpy's SeedSequence), but some simulators do not: MinAtar seeds numpy's legacy RandomState
(< 2**32), ale-py's vector env and StarCraft II take a C int (< 2**31). A seed such a simulator cannot
take is folded into its range by a hash; a seed it can take passes unchanged, so runs that never leave
the range keep their trajectories. A folded seed may meet another env's seed by chance (1 in 2**31 or
2**32 for a given pair), where the integers themselves never do; the games still differ from the
original envs', which is what a restarted env needs.
"""

from __future__ import annotations

import numpy as np

LEGACY_NUMPY_SEEDS = 2**32
"""np.random.RandomState(seed) takes seeds below this (MinAtar)"""
C_INT_SEEDS = 2**31
"""ale-py's AtariVectorEnv and StarCraft II's random_seed take seeds below this"""


def fold_seed(seed: int, bound: int) -> int:
    """`seed` itself when 0 <= seed < bound, else a hash of it in [0, bound)."""
    seed = int(seed)
    if 0 <= seed < bound:
        return seed
    word = np.random.SeedSequence(abs(seed)).generate_state(2, np.uint32)
    return (int(word[0]) << 32 | int(word[1])) % bound


def fold_seeds(seeds: np.ndarray | list[int], bound: int) -> np.ndarray:
    """fold_seed for each of `seeds`, as int64."""
    return np.array([fold_seed(s, bound) for s in np.asarray(seeds).ravel()], dtype=np.int64)
