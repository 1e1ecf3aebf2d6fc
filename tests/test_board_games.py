"""TicTacToe and Connect Four as Gymnasium envs for self-play, and the players they are measured against
(TicTacToe's perfect minimax player, Connect Four's lookahead player)."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs.board_games import (
    ConnectFourEnv,
    TicTacToeEnv,
    lookahead_moves,
    other_sides_result,
    perfect_moves,
    solve,
)
from envs.factory import make_env


def _board(cells: str) -> tuple[int, ...]:
    """'XX.OO....' with X to move -> the mover's view."""
    return tuple({"X": 1, "O": -1, ".": 0}[c] for c in cells)


def test_the_env_passes_gymnasiums_checker_and_comes_from_the_factory():
    check_env(TicTacToeEnv(), skip_render_check=True)
    env = make_env("rlgames/TicTacToe-v0", seed=0, render_mode="rgb_array")()
    obs, _ = env.reset(seed=0)
    assert obs["action_mask"].tolist() == [1] * 9 and env.render().shape == (180, 180, 3)


def test_moves_flip_the_view_and_pay_the_mover():
    env = TicTacToeEnv()
    env.reset()
    rewards = []
    for move in (0, 3, 1, 4):
        obs, reward, terminated, _, info = env.step(move)
        rewards.append(reward)
    assert obs["obs"].tolist() == [1, 1, 0, -1, -1, 0, 0, 0, 0] and info["to_play"] == 1  # X to move, X's view
    obs, reward, terminated, _, _ = env.step(2)  # X completes the top row
    assert rewards == [0.0] * 4 and reward == 1.0 and terminated


def test_an_illegal_move_loses():
    env = TicTacToeEnv()
    env.reset()
    env.step(4)
    _, reward, terminated, _, info = env.step(4)
    assert reward == -1.0 and terminated and info["illegal"]


def test_minimax_values_by_hand():
    assert solve((0,) * 9) == 0  # TicTacToe is a draw
    assert solve(_board("XX.OO....")) == 1 and perfect_moves(_board("XX.OO....")) == [2]
    assert perfect_moves(_board("OO..X..X.")) == [2]  # the only move that does not lose
    assert solve(_board("OO..X..X.")) == 0


@pytest.mark.parametrize("first_random", [False, True])
def test_perfect_play_never_loses(first_random):
    rng = np.random.default_rng(0)
    for _ in range(20):
        env = TicTacToeEnv()
        obs, _ = env.reset()
        mover, terminated = 0, False
        while not terminated:
            board = tuple(int(x) for x in obs["obs"])
            legal = np.flatnonzero(obs["action_mask"])
            move = int(rng.choice(legal)) if first_random and mover == 0 else perfect_moves(board)[0]
            obs, reward, terminated, _, _ = env.step(move)
            if terminated and reward == 1.0:
                assert first_random and mover == 1  # only the perfect player ever wins
            mover = 1 - mover
    assert isinstance(gym.make("rlgames/TicTacToe-v0").unwrapped, TicTacToeEnv)


class _ScriptedPolicy:
    """A policy with the act() interface that picks moves by a rule over the mover's board."""

    def __init__(self, rule):
        self.rule = rule

    def parameters(self):
        yield torch.zeros(1)  # evaluation reads the policy's device from its parameters

    def act(self, obs, generator=None, deterministic=True):
        moves = [self.rule(tuple(int(x) for x in row)) for row in obs["obs"].tolist()]
        return torch.tensor(moves), torch.zeros(len(moves)), torch.zeros(len(moves))


def test_matches_against_the_perfect_player_score_the_policys_side():
    from training.evaluation import evaluate_policy, play_against_board_opponent

    perfect = _ScriptedPolicy(lambda board: perfect_moves(board)[0])
    result = play_against_board_opponent(perfect, "rlgames/TicTacToe-v0", games=20, seed=0)
    assert result.returns.tolist() == [0.0] * 20  # perfect against perfect: all draws
    assert set(result.lengths.tolist()) == {9}
    first_empty = _ScriptedPolicy(lambda board: board.index(0))
    naive = evaluate_policy(first_empty, "rlgames/TicTacToe-v0", episodes=20, seed=0)  # dispatches to the match
    assert naive.returns.min() == -1.0 and naive.returns.max() <= 0.0  # it loses, and nobody beats perfect play
    illegal = _ScriptedPolicy(lambda board: 4)  # the centre, again and again: illegal from its second move
    assert play_against_board_opponent(illegal, "rlgames/TicTacToe-v0", games=4, seed=0).returns.tolist() == [-1.0] * 4


def test_the_audit_finds_the_one_losing_move_of_an_otherwise_perfect_policy():
    from training.evaluation import audit_against_perfect_play

    perfect = audit_against_perfect_play(_ScriptedPolicy(lambda board: perfect_moves(board)[0]))
    assert perfect.losing_moves == [] and perfect.positions > 50
    # Against X in a corner only the centre holds the draw: the edge next to it loses.
    x_in_corner = (-1, 0, 0, 0, 0, 0, 0, 0, 0)
    flawed = _ScriptedPolicy(lambda board: 1 if board == x_in_corner else perfect_moves(board)[0])
    audit = audit_against_perfect_play(flawed)
    assert audit.losing_moves == [(x_in_corner, 1)]
    assert "1 losing moves in the" in audit.summary()
    # an illegal move counts as losing too: the centre again once it is taken
    centre_always = audit_against_perfect_play(_ScriptedPolicy(lambda board: 4))
    assert all(board[4] != 0 for board, move in centre_always.losing_moves) and centre_always.losing_moves


@pytest.mark.parametrize(("env_id", "env_class", "count"), [
    ("rlgames/TicTacToe-v0", TicTacToeEnv, 8), ("rlgames/ConnectFour-v0", ConnectFourEnv, 2)])  # fmt: skip
def test_a_symmetric_copy_of_a_game_is_a_game_with_the_same_results(env_id, env_class, count):
    """Each declared symmetry maps a played game to another legal game: replaying the turned moves from the
    start gives the turned boards, the same rewards and the same end, and the turned policy targets put
    their mass on the turned moves."""
    from envs.board_games import board_symmetries
    from envs.symmetries import Symmetries, env_symmetries
    from training.muzero.learner import apply_symmetries

    obs_perms, action_perms = board_symmetries(env_id)
    signs = env_symmetries(env_id).obs_signs
    assert np.array_equal(env_symmetries(env_id).obs_perms, obs_perms) and (signs == 1).all()
    num_cells, num_actions = obs_perms.shape[1], action_perms.shape[1]
    assert obs_perms[0].tolist() == list(range(num_cells)) and len({tuple(p) for p in obs_perms}) == count
    assert board_symmetries("CartPole-v1") is None
    rng = np.random.default_rng(0)
    for _ in range(20):
        env = env_class()
        obs, _ = env.reset()
        boards, moves, rewards = [obs["obs"]], [], []
        while True:
            moves.append(int(rng.choice(np.flatnonzero(obs["action_mask"]))))
            obs, reward, terminated, _, _ = env.step(moves[-1])
            boards.append(obs["obs"])
            rewards.append(reward)
            if terminated:
                break
        # Every position of the game as a sample, each unrolling the whole game, all seen through symmetry g.
        T = len(moves)
        actions = np.array(moves)[None].repeat(T, 0)
        policy = np.eye(num_actions)[moves][None].repeat(T, 0)  # all the mass on the move played
        next_obs = np.stack(boards[1:])[None].repeat(T, 0)
        for g in range(count):
            turned_obs, turned_actions, turned_policy, turned_next = apply_symmetries(
                Symmetries(obs_perms[[g]], signs[[g]], action_perms[[g]]), rng, np.stack(boards[:-1]), actions, policy, next_obs)  # fmt: skip
            replay = env_class()
            replay_obs, _ = replay.reset()
            assert np.array_equal(replay_obs["obs"], turned_obs[0])
            for t, move in enumerate(turned_actions[0]):
                assert turned_policy[0, t].argmax() == move
                replay_obs, reward, terminated, _, _ = replay.step(move)
                assert reward == rewards[t] and terminated == (t == T - 1)
                assert np.array_equal(replay_obs["obs"], turned_next[0, t])
                if t + 1 < T:
                    assert np.array_equal(replay_obs["obs"], turned_obs[t + 1])


def _connect_four(rows: list[str]) -> np.ndarray:
    """Six strings of 7 cells, the top row first ('X' the mover's discs, 'O' the opponent's) -> the board."""
    return np.array([[{"X": 1, "O": -1, ".": 0}[c] for c in row] for row in rows], np.int8)


def test_connect_four_passes_the_checker_and_its_discs_fall():
    check_env(ConnectFourEnv(), skip_render_check=True)
    env = make_env("rlgames/ConnectFour-v0", seed=0, render_mode="rgb_array")()
    obs, _ = env.reset(seed=0)
    assert obs["obs"].shape == (42,) and obs["action_mask"].tolist() == [1] * 7
    assert env.render().shape == (300, 350, 3)
    env = ConnectFourEnv(render_mode="ansi")
    env.reset()
    for column in (3, 3, 4):
        obs, reward, terminated, _, info = env.step(column)
    assert env.render().splitlines()[-2:] == ["...O...", "...XX.."]  # X: the first player, whoever moves
    # O to move sees its own disc as +1: (4, 3) is O's, (5, 3) and (5, 4) are X's.
    assert obs["obs"].reshape(6, 7)[4:, 3:5].tolist() == [[1, 0], [-1, -1]] and info["to_play"] == -1
    for _ in range(4):  # fill column 0
        env.step(0)
    obs, *_ = env.step(0)
    obs, *_ = env.step(0)
    assert obs["action_mask"].tolist() == [0, 1, 1, 1, 1, 1, 1]
    _, reward, terminated, _, info = env.step(0)  # into the full column: an illegal move loses
    assert reward == -1.0 and terminated and info["illegal"]


@pytest.mark.parametrize(("moves", "line"), [
    ((0, 6, 1, 6, 2, 6, 3), "a row"), ((0, 1, 0, 1, 0, 1, 0), "a column"),
    ((0, 1, 1, 2, 2, 3, 2, 3, 3, 6, 3), "a diagonal"), ((3, 2, 2, 1, 1, 0, 1, 0, 0, 6, 0), "the other diagonal"),
])  # fmt: skip
def test_four_in_a_line_wins_for_the_mover(moves, line):
    env = ConnectFourEnv()
    env.reset()
    for move in moves[:-1]:
        _, reward, terminated, _, _ = env.step(move)
        assert reward == 0.0 and not terminated, line
    _, reward, terminated, _, _ = env.step(moves[-1])
    assert reward == 1.0 and terminated, line


def test_the_lookahead_players_bitboards_agree_with_the_env_on_every_win():
    """Two implementations of the rules, checked against each other in every position of random games:
    the moves the env pays as wins are exactly those the lookahead player (on bitboards) sees winning in
    one, and with none it sees nothing to choose between."""
    import copy

    rng = np.random.default_rng(0)
    wins = 0
    for _ in range(100):
        env = ConnectFourEnv()
        obs, _ = env.reset()
        terminated = False
        while not terminated:
            legal = np.flatnonzero(obs["action_mask"]).tolist()
            winning = [m for m in legal if copy.deepcopy(env).step(m)[1] == 1.0]
            assert lookahead_moves(env.board, plies=1) == (winning or legal)
            obs, reward, terminated, _, _ = env.step(int(rng.choice(legal)))
            wins += reward == 1.0
    assert wins > 80  # most random games end with four in a line, so wins were compared


def test_the_lookahead_player_wins_in_one_blocks_in_one_and_sees_a_double_threat():
    win = _connect_four(["......."] * 3 + ["X......", "X......", "X..OOO."])
    assert lookahead_moves(win, plies=4) == [0]
    block = _connect_four(["......."] * 5 + ["XX.OOOX"])
    assert lookahead_moves(block, plies=2) == [2]  # any other move lets the opponent complete its row
    double = _connect_four(["......."] * 4 + ["......O", "..XX..O"])
    assert lookahead_moves(double, plies=1) == list(range(7))  # nothing to see one move ahead
    assert lookahead_moves(double, plies=3) == [1, 4]  # an open three: the opponent can block one end only


def test_connect_fours_evaluation_is_a_match_against_the_lookahead_player():
    from training.evaluation import evaluate_policy

    first_legal = _ScriptedPolicy(lambda board: next(c for c in range(7) if board[c] == 0))
    result = evaluate_policy(first_legal, "rlgames/ConnectFour-v0", episodes=6, seed=0)  # a match, both sides
    assert result.returns.tolist() == [-1.0] * 6


def test_watching_a_game_ends_on_the_winning_move():
    """play_episode's frames: the position before each move, then the final one (value None), so a
    watched game shows the move that won it."""
    from training.evaluation import play_episode

    frames = []
    first_empty = _ScriptedPolicy(lambda board: board.index(0))  # X: 0, 2, 4, 6 (a diagonal); O: 1, 3, 5
    episode = play_episode(first_empty, TicTacToeEnv(render_mode="ansi"), seed=0,
                           on_frame=lambda frame, step, ret, value: frames.append((frame, value)))  # fmt: skip
    assert episode.length == 7 and len(frames) == 8 and frames[-1][1] is None
    assert frames[-2][0] == "XOX\nOXO\n..." and frames[-1][0] == "XOX\nOXO\nX.."


def test_the_other_sides_result_is_the_negation_with_a_plain_zero_draw():
    assert other_sides_result(1.0) == -1.0 and other_sides_result(-1.0) == 1.0  # a win; an illegal move
    draw = other_sides_result(np.float32(0.0))
    assert draw == 0.0 and not np.signbit(draw) and f"{draw:.2f}" == "0.00"
