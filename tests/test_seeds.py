"""Seeds in one place: every role's seeds lie in a range no other role reaches, for any experiment seed."""

import itertools

import numpy as np

from training.seeds import (
    MAX_ENVS,
    MAX_EXPERIMENT_SEED,
    RESEEDED_SPAN,
    RESEEDED_START,
    Reseed,
    evaluation_seed,
    reseeded,
    role_ranges,
    rollout_seed,
    self_play_seed,
)


def test_the_roles_never_overlap_within_an_experiment():
    for seed in (0, 1, 12345, MAX_EXPERIMENT_SEED):
        ranges = role_ranges(seed)
        for (a, ra), (b, rb) in itertools.combinations(ranges.items(), 2):
            assert ra.stop <= rb.start or rb.stop <= ra.start, (seed, a, b)


def test_restarted_envs_land_in_their_own_range_and_apart():
    firsts = set()
    for base, why, count in itertools.product((1, 77, 2**36 + 5), Reseed, range(1, 40)):
        first = reseeded(base, why, count)
        # Env i of the restarted group gets first + i, i < MAX_ENVS: all inside the range.
        assert first >= RESEEDED_START and first + MAX_ENVS <= RESEEDED_START + RESEEDED_SPAN
        firsts.add(first)
    assert len(firsts) == 3 * len(Reseed) * 39  # every restart its own seeds
    # A group of MAX_ENVS envs from one restart overlaps another's with probability ~ 2 * MAX_ENVS / span.
    gaps = np.diff(sorted(firsts))
    assert gaps.min() > 0


def test_fresh_runs_keep_the_seeds_they_always_had():
    # The offsets the README's figures were measured with: changing them changes every fresh run.
    assert (rollout_seed(1), self_play_seed(1), evaluation_seed(1)) == (1, 1_000_004, 10_000_020)
    assert reseeded(1000, Reseed.RESUME, 0) == 1000
