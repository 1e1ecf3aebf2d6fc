"""MuZero's prioritised replay: sampling in proportion to priority, importance weights, bounded memory."""

import numpy as np
import pytest

from training.muzero.replay import Game, PrioritizedReplay


def _game(length, priorities=None):
    return Game(np.zeros((length + 1, 4)), np.zeros(length, np.int64), np.ones(length), np.full((length, 2), 0.5),
                np.zeros(length + 1), True, None if priorities is None else np.asarray(priorities, float))  # fmt: skip


def test_positions_are_drawn_in_proportion_to_priority_with_correcting_weights():
    replay = PrioritizedReplay(capacity=100, alpha=1.0, beta=1.0, seed=0)
    replay.add(_game(2, [1.0, 3.0]))
    replay.add(_game(1, [4.0]))
    samples, weights, keys = replay.sample(40_000)
    counts = np.bincount([pos if gi == 0 else 2 for gi, pos in keys], minlength=3) / 40_000
    np.testing.assert_allclose(counts, [1 / 8, 3 / 8, 4 / 8], atol=0.01)
    # w = (N P)^-beta / the batch's largest: P = 1/8, 3/8, 4/8 with N = 3; 40,000 draws include the rarest.
    expected = {0: 1.0, 1: (3 * 3 / 8) ** -1 / (3 / 8) ** -1, 2: (3 * 4 / 8) ** -1 / (3 / 8) ** -1}
    for (gi, pos), w in zip(keys[:50], weights[:50], strict=True):
        assert w == pytest.approx(expected[pos if gi == 0 else 2])
    assert samples[0][0] is replay.games[keys[0][0]]


def test_new_games_get_the_highest_priority_and_updates_apply():
    replay = PrioritizedReplay(capacity=100)
    replay.add(_game(2, [0.5, 7.0]))
    replay.add(_game(3))
    assert replay.games[1].priorities.tolist() == [7.0] * 3
    replay.update_priorities([(1, 2)], np.array([0.25]))
    assert replay.games[1].priorities[2] == pytest.approx(0.25, abs=1e-5)


def test_capacity_in_positions_evicts_the_oldest_games():
    replay = PrioritizedReplay(capacity=10)
    for length in (4, 4, 4):
        replay.add(_game(length))
    assert replay.num_positions == 8 and len(replay.games) == 2 and replay.games_seen == 3
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        PrioritizedReplay(capacity=0)


def test_a_segments_lookahead_positions_are_never_sampled_nor_counted():
    replay = PrioritizedReplay(capacity=100, alpha=0.0)
    segment = _game(6)
    segment.num_starts = 2
    replay.add(segment)
    replay.add(_game(1))
    assert replay.num_positions == 3 and replay.games[0].priorities.shape == (2,)
    _, _, keys = replay.sample(3000)
    assert {pos for gi, pos in keys if gi == 0} == {0, 1}
