"""Playing against an agent: the terminal front end driven by scripted input (bad moves get a line and
another try), the game loop's results, and launch/play.py end to end on a MuZero TicTacToe run."""

import io
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from envs.board_games import perfect_moves
from training.human_play import TerminalMoves, board_text, parse_move, play_game

ROOT = Path(__file__).resolve().parents[1]


class _FirstFreePolicy:
    """Plays the lowest free cell or column; its value estimate is always 0.25."""

    def parameters(self):
        yield torch.zeros(1)

    def act(self, obs, generator=None, deterministic=True):
        move = int(np.flatnonzero(obs["action_mask"][0].numpy())[0])
        return torch.tensor([move]), torch.zeros(1), torch.tensor([0.25])


def _play(env_id, typed, person_first=True):
    out = io.StringIO()
    record = play_game(_FirstFreePolicy(), env_id, person_first, TerminalMoves(io.StringIO(typed), out))
    return record, out.getvalue()


def test_typed_moves_win_against_a_weak_agent_and_bad_input_is_asked_again():
    # Me X on 1, 5, 9 (the diagonal); the agent takes the lowest free cells, 2 and 3.
    record, shown = _play("rlgames/TicTacToe-v0", "1\nfive\n2\n5\n10\n9\n")
    assert record.result == "you win" and record.moves == [0, 1, 4, 2, 8]
    assert "'five' is not a cell number: type one of 3 4 5 6 7 8 9 (q quits)" in shown
    assert "cell 2 is taken: type one of 3 4 5 6 7 8 9" in shown
    assert "there is no cell 10: type one of 4 6 7 8 9" in shown
    assert "the agent plays cell 2 (its value estimate for itself: +0.25)" in shown
    assert record.agent_values == [0.25, 0.25] and shown.rstrip().endswith("Game over: you win.")


def test_the_agent_can_win_and_quitting_or_end_of_input_stops_the_game():
    # Moving second on Connect Four while I pile on column 7, the agent stacks column 1 and wins.
    record, shown = _play("rlgames/ConnectFour-v0", "7\n7\n7\n", person_first=False)
    assert record.result == "the agent wins" and record.moves == [0, 6, 0, 6, 0, 6, 0]
    assert "you play O (second), the agent X" in shown and "1 2 3 4 5 6 7" in shown
    assert _play("rlgames/TicTacToe-v0", "q\n")[0] is None
    assert _play("rlgames/TicTacToe-v0", "1\n")[0] is None  # input ends before the game does


def test_a_full_column_is_refused():
    env = gym.make("rlgames/ConnectFour-v0").unwrapped
    env.reset(seed=0)
    for _ in range(6):
        env.step(2)
    assert parse_move("3", env.legal_moves(), "column") == (None, "column 3 is full: type one of 1 2 4 5 6 7 (q quits)")
    assert parse_move(" 4 ", env.legal_moves(), "column") == (3, "")
    assert board_text(env).splitlines()[0] == ". . O . . . ."  # the top disc is the second player's


def test_play_py_in_the_terminal_against_a_muzero_run(tmp_path):
    from training.muzero.config import MuZeroConfig
    from training.muzero.train import train_muzero

    cfg = MuZeroConfig(env_id="rlgames/TicTacToe-v0", runs_dir=str(tmp_path), total_timesteps=160, warmup_steps=80,
                       batch_size=16, num_simulations=8, eval_episodes=0, stop_when_solved=False,
                       progress=False)  # fmt: skip
    run_dir = train_muzero(cfg).run_dir
    # Whatever the agent does, typing every cell in turn makes legal moves until the game ends.
    typed = "".join(f"{c}\n" for c in range(1, 10)) * 2
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no DISPLAY: the terminal
    cmd = [sys.executable, str(ROOT / "launch" / "play.py"), str(run_dir), "--side", "alternate", "--games", "2"]
    proc = subprocess.run(cmd, input=typed, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "you play X (first), the agent O" in proc.stdout and "you play O (second), the agent X" in proc.stdout
    assert proc.stdout.count("Game over:") == 2 and "its value estimate for itself" in proc.stdout
    assert "2 game(s): you won" in proc.stdout
    # A run of another env is refused with one line.
    bad = subprocess.run([sys.executable, str(ROOT / "launch" / "play.py"), str(tmp_path / "nope")],
                         capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_perfect_play_by_hand_never_loses_to_the_agent():
    """Typing the perfect player's moves (worked out from the printed board) draws or wins every game."""
    for person_first in (True, False):
        env = gym.make("rlgames/TicTacToe-v0").unwrapped

        class PerfectTyping:
            def show(self, env, message):
                pass

            def ask(self, env):
                return perfect_moves(tuple(int(x) for x in env.board))[0]

        record = play_game(_FirstFreePolicy(), "rlgames/TicTacToe-v0", person_first, PerfectTyping())
        assert record.result in ("you win", "draw"), record
        del env
