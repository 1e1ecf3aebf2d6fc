"""Every env seed a run derives from its experiment seed, in one place, each role in a range of its own.

    PPO's rollout envs         seed + env index                       [seed, seed + MAX_ENVS)
    MuZero's self-play envs    seed + 1_000_003 + env index           [seed + 1_000_003, ... + MAX_ENVS)
    evaluation episodes        seed + 10_000_019 + episode index      [seed + 10_000_019, ... + MAX_ENVS)
    envs started again         reseeded(...) + env index              [2**36, 2**36 + 2**40)

Envs started again are those of a resumed run (fresh episodes: replaying the old run's starts would
train on the same trajectories twice), of a worker that replaced a dead or hung one, and those a worker
rebuilt after an env raised or gave NaN. Their seeds are drawn from a hash of the seed they replace, why
and how many times, into a range that no experiment seed (numpy's [0, 2**32)) plus any other role's
offset reaches: a restarted env never replays an evaluation's starts, nor another env's. The offsets of
the first three roles are the ones runs have always used, so fresh runs keep their trajectories.

A simulator with a narrower seed type (MinAtar's numpy RandomState, ale-py's vector env and StarCraft II
take 32- or 31-bit seeds) folds a larger seed into its range at the env (envs/seed_folding.py).
"""

from __future__ import annotations

import enum

import numpy as np

MAX_EXPERIMENT_SEED = 2**32 - 1
"""numpy's legacy seed range (np.random.seed), which --seed is validated against"""
MAX_ENVS = 1_000_000
"""envs of one role in one run (and evaluation episodes of one evaluation), at most"""

ROLLOUT_OFFSET = 0
SELF_PLAY_OFFSET = 1_000_003
EVALUATION_OFFSET = 10_000_019
RESEEDED_START = 2**36
RESEEDED_SPAN = 2**40


class Reseed(enum.IntEnum):
    """Why envs start again on new seeds."""

    RESUME = 1
    WORKER_REPLACED = 2
    ENV_REBUILT = 3


def rollout_seed(experiment_seed: int) -> int:
    """The seed of PPO's rollout env 0 (env i: + i)."""
    return experiment_seed + ROLLOUT_OFFSET


def self_play_seed(experiment_seed: int) -> int:
    """The seed of MuZero's self-play env 0 (env i: + i)."""
    return experiment_seed + SELF_PLAY_OFFSET


def evaluation_seed(experiment_seed: int) -> int:
    """The seed of every evaluation's episode 0 (episode i: + i): the same starts at every evaluation,
    none of them a training env's."""
    return experiment_seed + EVALUATION_OFFSET


def reseeded(seed: int, why: Reseed, count: int) -> int:
    """The first seed of envs that start again instead of those seeded from `seed` (the count-th time,
    for the reason `why`); their env i gets + i, i < MAX_ENVS. count 0 is the original: `seed` itself."""
    if count == 0:
        return seed
    words = np.random.SeedSequence([seed, int(why), count]).generate_state(2, np.uint32)
    drawn = (int(words[0]) << 32 | int(words[1])) % (RESEEDED_SPAN - MAX_ENVS)
    return RESEEDED_START + drawn


def role_ranges(experiment_seed: int) -> dict[str, range]:
    """The seeds each role may use in an experiment (for the test that they never overlap)."""
    return {
        "rollout": range(rollout_seed(experiment_seed), rollout_seed(experiment_seed) + MAX_ENVS),
        "self_play": range(self_play_seed(experiment_seed), self_play_seed(experiment_seed) + MAX_ENVS),
        "evaluation": range(evaluation_seed(experiment_seed), evaluation_seed(experiment_seed) + MAX_ENVS),
        "reseeded": range(RESEEDED_START, RESEEDED_START + RESEEDED_SPAN),
    }
