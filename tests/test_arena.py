"""The arena: Elo from a Bradley-Terry fit (checked by hand), round robins with sides shared fairly, and
launch/arena.py on reference players and a MuZero run."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.arena import PairResult, Player, Tally, fit_elo, play_game, reference_players, round_robin

ROOT = Path(__file__).resolve().parents[1]


def test_elo_of_three_wins_in_four_is_400_log10_3_apart():
    a, b = fit_elo([PairResult(3, 0, 1, a="a", b="b")], prior_games=0)
    assert (a.name, b.name) == ("a", "b")
    assert a.elo - b.elo == pytest.approx(400 * math.log10(3), abs=1e-6)  # 190.85: the odds 3:1
    assert (a.elo + b.elo) / 2 == pytest.approx(1000.0)
    assert a.total == Tally(3, 0, 1) and b.total == Tally(1, 0, 3)
    # Draws count half: 2 wins and 2 draws in 4 games are 3:1 odds too.
    a2, b2 = fit_elo([PairResult(2, 2, 0, a="a", b="b")], prior_games=0)
    assert a2.elo - b2.elo == pytest.approx(a.elo - b.elo, abs=1e-6)


def test_an_unbeaten_player_gets_a_finite_rating_and_the_order_follows_the_results():
    ratings = fit_elo([PairResult(10, 0, 0, a="a", b="b"), PairResult(6, 2, 2, a="b", b="c"),
                       PairResult(5, 0, 0, a="a", b="c")])  # fmt: skip
    assert [r.name for r in ratings] == ["a", "b", "c"]
    assert all(np.isfinite(r.elo) for r in ratings) and ratings[0].elo - ratings[1].elo > 200
    assert ratings[0].opponents == {"b": Tally(10, 0, 0), "c": Tally(5, 0, 0)}
    assert ratings[2].opponents == {"b": Tally(2, 2, 6), "a": Tally(0, 0, 5)}


def test_a_league_sized_fit_equals_the_full_table_minorization_maximization():
    # A league's ratings: 120 snapshots, each against two reference players and the one before it, a pair
    # played twice. fit_elo iterates over the pairs that played; the same MM update over the full n x n
    # table of games (Hunter 2004, with the prior of one half-won game against strength 1) gives the same.
    rng = np.random.default_rng(0)
    results = []
    for i in range(120):
        for opponent in ("random", "lookahead", *([f"s{i - 1}"] if i else [])):
            wins, draws = int(rng.integers(0, 15)), int(rng.integers(0, 6))
            results.append(PairResult(wins, draws, 20 - wins - draws, a=f"s{i}", b=opponent))
    results.append(PairResult(3, 1, 6, a="s7", b="s6"))
    names = list(dict.fromkeys(n for r in results for n in (r.a, r.b)))
    k = {n: i for i, n in enumerate(names)}
    score, games = np.full(len(names), 0.5), np.zeros((len(names), len(names)))
    for r in results:
        score[k[r.a]] += r.wins + r.draws / 2
        score[k[r.b]] += r.losses + r.draws / 2
        games[k[r.a], k[r.b]] += r.games
        games[k[r.b], k[r.a]] += r.games
    s = np.ones(len(names))
    for _ in range(20_000):
        s = score / ((games / (s[:, None] + s[None, :])).sum(1) + 1.0 / (s + 1.0))
    elo = 400 / math.log(10) * np.log(s)
    elo += 1000 - elo.mean()
    fitted = {r.name: r.elo for r in fit_elo(results)}
    assert len(fitted) == 122
    assert max(abs(fitted[n] - elo[k[n]]) for n in names) < 1e-6


def test_round_robin_shares_the_first_move_and_the_perfect_player_never_loses():
    firsts = []

    def recording(rng):
        def choose(env, obs):
            if not env.board.any():
                firsts.append(True)  # this player moved first
            return int(np.flatnonzero(env.legal_moves())[0])

        return choose

    players = [Player("first-free", recording), *reference_players("rlgames/TicTacToe-v0").values()]
    results = round_robin("rlgames/TicTacToe-v0", players, games=10, seed=3)
    assert [(r.a, r.b) for r in results] == [("first-free", "random"), ("first-free", "perfect (minimax)"),
                                            ("random", "perfect (minimax)")]  # fmt: skip
    assert len(firsts) == 10  # 5 of 10 games in each of its two pairs
    assert all(r.games == 10 for r in results)
    assert results[1].wins == 0 and results[2].wins == 0  # nobody beats perfect play
    # The same seed plays the same games.
    again = round_robin("rlgames/TicTacToe-v0", players, games=10, seed=3)
    assert [(r.wins, r.draws, r.losses) for r in again] == [(r.wins, r.draws, r.losses) for r in results]


def test_an_illegal_move_loses_the_game():
    illegal = Player("centre", lambda rng: lambda env, obs: 4)
    assert play_game("rlgames/TicTacToe-v0", illegal, illegal, seed=0) == 1  # the second player repeats the centre


def _arena(*args, tmp_path):
    cmd = [sys.executable, str(ROOT / "launch" / "arena.py"), *args]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def test_arena_rates_a_muzero_run_against_the_reference_players(tmp_path):
    from training.muzero.config import MuZeroConfig
    from training.muzero.train import train_muzero

    cfg = MuZeroConfig(env_id="rlgames/ConnectFour-v0", runs_dir=str(tmp_path), total_timesteps=120, warmup_steps=60,
                       batch_size=16, num_simulations=4, eval_episodes=0, stop_when_solved=False, progress=False)  # fmt: skip
    run_dir = train_muzero(cfg).run_dir
    proc = _arena(str(run_dir), "--games", "4", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "Elo" not in line]
    assert len(rows) == 3 and any(run_dir.name in r for r in rows)
    assert sum(int(r.split("|")[3]) for r in rows) == sum(int(r.split("|")[5]) for r in rows)  # wins = losses
    assert "vs lookahead (4 plies): " in proc.stdout
    bad = _arena(str(run_dir), "--references", "perfect", tmp_path=tmp_path)
    assert bad.returncode == 2 and "rlgames/ConnectFour-v0 has random, lookahead" in bad.stderr
    assert bad.stderr.count("\n") == 1
