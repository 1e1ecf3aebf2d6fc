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
    # A position drawn twice in one batch keeps its last new priority; sampling follows the new values.
    replay.update_priorities([(0, 1), (1, 0), (0, 1)], np.array([3.0, 1.0, 2.0]))
    assert replay.games[0].priorities.tolist() == pytest.approx([0.5, 2.0], abs=1e-5)
    _, _, keys = replay.sample(60_000)
    counts = np.bincount([sum(replay.games[g].num_starts for g in range(gi)) + pos for gi, pos in keys]) / 60_000
    np.testing.assert_allclose(counts, np.array([0.5, 2.0, 1.0, 7.0, 0.25]) / 10.75, atol=0.01)  # alpha 1


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


def test_the_replay_survives_a_checkpoint_file_whole(tmp_path):
    """state_dict() through torch.save and a weights_only load: the same games field by field (a segment's
    starts, action masks, uint8 boards), the same priorities, and the restored sampler draws the same
    positions with the same weights as the original from then on."""
    import torch

    rng = np.random.default_rng(3)
    replay = PrioritizedReplay(capacity=100, alpha=0.6, beta=0.4, seed=7)
    for length, terminated, starts in ((5, True, None), (7, False, 3), (1, True, None)):
        replay.add(Game(rng.integers(0, 2, size=(length + 1, 2, 3, 3), dtype=np.uint8), rng.integers(4, size=length),
                        rng.normal(size=length), rng.dirichlet(np.ones(4), size=length).astype(np.float32),
                        rng.normal(size=length + 1), terminated, num_starts=starts,
                        legal_actions=rng.integers(0, 2, size=(length, 4)).astype(bool)))  # fmt: skip
    _, _, keys = replay.sample(8)
    replay.update_priorities(keys, rng.uniform(0.1, 5.0, size=8))
    torch.save(replay.state_dict(), tmp_path / "replay.pt")

    restored = PrioritizedReplay(capacity=100, alpha=0.6, beta=0.4, seed=0)
    restored.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    assert (restored.num_positions, restored.games_seen, len(restored.games)) == (5 + 3 + 1, 3, 3)
    for a, b in zip(replay.games, restored.games, strict=True):
        assert (a.terminated, a.num_starts) == (b.terminated, b.num_starts)
        for name in ("observations", "actions", "rewards", "policies", "root_values", "priorities", "legal_actions"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert getattr(a, name).dtype == getattr(b, name).dtype
    for _ in range(3):
        (_, w_a, keys_a), (_, w_b, keys_b) = replay.sample(16), restored.sample(16)
        assert keys_a == keys_b
        np.testing.assert_array_equal(w_a, w_b)
    restored.update_priorities(keys_b[:1], np.array([9.0]))  # the restored priorities are its own, writable
    assert restored.games[keys_b[0][0]].priorities[keys_b[0][1]] == pytest.approx(9.0)

    empty = PrioritizedReplay(capacity=10)
    empty.load_state_dict(PrioritizedReplay(capacity=10).state_dict())
    assert empty.num_positions == 0 and not empty.games
