"""Seeds folded into a simulator's narrower seed type (envs/seed_folding.py)."""

import numpy as np

from envs.seed_folding import C_INT_SEEDS, LEGACY_NUMPY_SEEDS, fold_seed, fold_seeds
from training.seeds import EVALUATION_OFFSET, MAX_EXPERIMENT_SEED, Reseed, reseeded


def test_seeds_in_range_pass_unchanged_so_fresh_runs_keep_their_games():
    for bound in (C_INT_SEEDS, LEGACY_NUMPY_SEEDS):
        for seed in (0, 1, 1_000_003, bound - 1):
            assert fold_seed(seed, bound) == seed


def test_restarted_envs_seeds_fold_into_range_apart_and_the_same_every_time():
    """Seeds of resumed runs and replaced workers lie at 2**36 and above: every one of them (here the first
    seeds of 2,000 resumes, and their 8 envs each) lands in range, folds the same way twice, and apart from
    the others."""
    starts = [reseeded(1_000_003 + seed, Reseed.RESUME, step) for seed in range(20) for step in range(1, 101)]
    seeds = np.array([s + i for s in starts for i in range(8)])
    for bound in (C_INT_SEEDS, LEGACY_NUMPY_SEEDS):
        folded = fold_seeds(seeds, bound)
        assert folded.dtype == np.int64 and folded.min() >= 0 and folded.max() < bound
        np.testing.assert_array_equal(folded, fold_seeds(list(seeds), bound))
        assert len(set(folded.tolist())) == len(seeds)


def test_an_experiment_seed_at_the_top_of_numpys_range_evaluates_on_c_int_seeds():
    """--seed 4294967295 is valid; its evaluation seeds pass 2**32 and are folded, episode by episode apart."""
    seeds = MAX_EXPERIMENT_SEED + EVALUATION_OFFSET + np.arange(10)
    folded = fold_seeds(seeds, C_INT_SEEDS)
    assert folded.max() < C_INT_SEEDS and len(set(folded.tolist())) == 10
