"""Evaluation: fair episode counts, the best checkpoint, training's periodic evaluation and videos."""

import gymnasium as gym
import imageio
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.networks import ActorCritic
from training.checkpoint import CheckpointError
from training.evaluation import (
    evaluate_policy,
    greedy_by_default,
    make_render_env,
    play_episode,
)
from training.seeds import evaluation_seed
from training.trained_agent import load_trained_agent


class ConstantPolicy(torch.nn.Module):
    """Always the same action: CartPole then falls after a number of steps set by its start state."""

    def __init__(self, action: int = 0):
        super().__init__()
        self.action = action
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def act(self, obs, generator=None, deterministic=True):
        n = next(iter(obs.values())).shape[0]
        return torch.full((n,), self.action), torch.zeros(n), torch.zeros(n)


def _sequential_returns(seed: int, episodes: int) -> list[float]:
    env = gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1"))
    env.reset(seed=seed)
    out = []
    while len(out) < episodes:
        _, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            out.append(float(info["episode"]["r"]))
            env.reset()
    return out


def test_each_env_plays_its_own_share_of_episodes():
    # 7 episodes on 3 envs: envs 0, 1, 2 play 3, 2, 2 whole episodes in a row. Counting whichever episodes
    # end first would favour short ones; the result must equal each env's own episodes played in order.
    result = evaluate_policy(ConstantPolicy(), "CartPole-v1", episodes=7, seed=100, num_envs=3)
    expected = _sequential_returns(100, 3) + _sequential_returns(101, 2) + _sequential_returns(102, 2)
    assert sorted(result.returns.tolist()) == sorted(expected)
    assert result.lengths.tolist() == [int(r) for r in result.returns]  # CartPole: +1 per step
    assert len(set(expected)) > 1  # the starts differ, so the check has teeth


def test_evaluation_is_reproducible_and_episodes_are_validated():
    a = evaluate_policy(ConstantPolicy(1), "CartPole-v1", episodes=5, seed=3)
    b = evaluate_policy(ConstantPolicy(1), "CartPole-v1", episodes=5, seed=3)
    assert np.array_equal(a.returns, b.returns)
    assert "over 5 episodes" in a.summary()
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        evaluate_policy(ConstantPolicy(), "CartPole-v1", episodes=0, seed=0)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "LunarLander-v3", "ALE/Breakout-v5"])
def test_every_env_family_renders_frames_for_watching(env_id):
    env = make_render_env(env_id, seed=0)
    policy = ActorCritic(env.observation_space, env.action_space)
    frames = []

    def on_frame(frame, step, episode_return, value):
        frames.append(frame)
        return len(frames) < 5  # stop after 5 frames: the path, not a whole episode

    episode = play_episode(policy, env, seed=0, on_frame=on_frame)
    env.close()
    assert not episode.completed and len(frames) == 5 and len(episode.values) == 5
    assert frames[0].ndim == 3 and frames[0].shape[2] == 3 and frames[0].dtype == np.uint8


def test_training_evaluates_keeps_the_best_and_logs_it(short_cartpole_run):
    cfg, result = short_cartpole_run
    best = load_trained_agent(result.run_dir, best=True)
    assert best.checkpoint.name == "best.pt" and best.payload["eval_return"] >= result.eval_return - 1e-9
    acc = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    evals = acc.Scalars("eval/episodic_return")
    assert [e.step for e in evals] == [2048, 4096]
    assert evals[-1].value == pytest.approx(result.eval_return)
    assert max(e.value for e in evals) == pytest.approx(best.payload["eval_return"])
    assert {"system/num_workers", "system/learner_rss_mib", "eval/episodic_length"} <= set(acc.Tags()["scalars"])


def test_capture_video_writes_files_and_tensorboard_gifs(short_cartpole_run):
    cfg, result = short_cartpole_run
    videos = sorted((result.run_dir / "videos").glob("train_step*.mp4"))
    assert [v.name for v in videos] == ["train_step000002048.mp4", "train_step000004096.mp4"]
    # The last video is the final policy's greedy episode from the evaluation seed: replaying it gives
    # an episode exactly as long as the video.
    final = load_trained_agent(result.run_dir)
    env = make_render_env(cfg.env_id, evaluation_seed(cfg.seed))
    episode = play_episode(final.policy, env, evaluation_seed(cfg.seed))
    env.close()
    assert imageio.get_reader(videos[-1]).count_frames() == episode.length + 1  # and the final state
    acc = EventAccumulator(str(result.run_dir), size_guidance={"images": 0})
    acc.Reload()
    images = acc.Images("eval/video")
    assert [e.step for e in images] == [2048, 4096]
    gif = images[-1].encoded_image_string
    assert gif[:6] == b"GIF89a" and imageio.v3.improps(gif, extension=".gif", index=None).shape[0] > 1


def test_missing_best_checkpoint_says_how_to_get_one(tmp_path, short_cartpole_run):
    _, result = short_cartpole_run
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / result.checkpoint.name).write_bytes(result.checkpoint.read_bytes())
    assert load_trained_agent(run).global_step == 4096
    with pytest.raises(CheckpointError, match="no best checkpoint.*--eval-every"):
        load_trained_agent(run, best=True)


def test_resume_keeps_the_best_evaluation_score(short_cartpole_run, tmp_path):
    import dataclasses
    import shutil

    from training.checkpoint import load_checkpoint
    from training.ppo.train import train

    cfg, result = short_cartpole_run
    run = shutil.copytree(result.run_dir, tmp_path / result.run_dir.name)
    best_before = load_checkpoint(run / "checkpoints" / "best.pt")
    mtime = (run / "checkpoints" / "best.pt").stat().st_mtime_ns
    # The run had finished: resuming it evaluates the same final policy again, which cannot beat the
    # restored best score, so best.pt stays as it was.
    resumed = train(dataclasses.replace(cfg, resume=str(run)))
    assert resumed.eval_return == pytest.approx(result.eval_return)
    assert (run / "checkpoints" / "best.pt").stat().st_mtime_ns == mtime
    assert load_checkpoint(resumed.checkpoint)["best_eval_return"] == best_before["eval_return"]


class _PerfectTicTacToe(torch.nn.Module):
    """A policy that plays TicTacToe's minimax moves (the lowest of the best), PPO's acting interface."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # where evaluation looks for the device

    def act(self, obs, generator=None, deterministic=True):
        from agents.networks import Acted
        from envs.board_games import perfect_moves

        board = tuple(int(x) for x in obs["obs"][0].tolist())
        return Acted(torch.tensor([perfect_moves(board)[0]]), torch.zeros(1), torch.zeros(1), None)


def test_perfect_play_draws_every_game_as_a_plain_zero():
    from training.evaluation import play_against_board_opponent

    result = play_against_board_opponent(_PerfectTicTacToe(), "rlgames/TicTacToe-v0", games=6, seed=0)
    # Half the games end on the opponent's move; their draws too are +0.0, which print as "0.00".
    assert np.all(result.returns == 0) and not np.signbit(result.returns).any()
    assert [f"{r:.2f}" for r in result.returns] == ["0.00"] * 6


# A position the audit meets (against one line of perfect play) that no 100-game match of training's
# evaluations reached (seeds 1-3 checked): the mover must block at 7, and 8 gives the game away.
_UNPLAYED = (1, -1, -1, -1, -1, 1, 1, 0, 0)


class _TicTacToeWithOneFlaw(torch.nn.Module):
    """Minimax moves on a batch of boards, except optionally one losing move in _UNPLAYED."""

    def __init__(self, flawed: bool):
        super().__init__()
        self.flawed = flawed
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def act(self, obs, generator=None, deterministic=True):
        from agents.networks import Acted
        from envs.board_games import perfect_moves

        boards = [tuple(int(x) for x in row) for row in obs["obs"].tolist()]
        moves = [8 if self.flawed and b == _UNPLAYED else perfect_moves(b)[0] for b in boards]
        return Acted(torch.tensor(moves), torch.zeros(len(moves)), torch.zeros(len(moves)), None)


def _idle_playing(policies: list[torch.nn.Module]) -> type:
    """A learner for the run skeleton that plays nothing (50 env steps a round) and whose policy is
    policies[i] after round i + 1 (the last one from then on): the tests are the skeleton's evaluations."""
    from training.run import Algorithm, StepReport

    class Idle(Algorithm):
        name, dashboard = "idle", {}

        def __init__(self, cfg, context):
            self.policy, self.rounds = policies[0], 0

        def step(self, global_step):
            self.policy = policies[min(self.rounds, len(policies) - 1)]
            self.rounds += 1
            return StepReport(steps=50, episode_returns=np.zeros(0), episode_lengths=np.zeros(0, np.int64))

        def state_dict(self):
            return {"rounds": self.rounds}

        def faults(self):
            return {}

        def close(self):
            pass

    return Idle


@pytest.mark.parametrize("flawed", [False, True])
def test_tictactoe_is_solved_only_when_the_audit_finds_no_losing_move(tmp_path, flawed):
    """Training's evaluation of TicTacToe: a match of 100 games against the perfect player without a loss
    solves the run only if the audit of every perfect line finds no losing move either. A policy that
    gives one position away that the match never reaches draws every game and is still not solved."""
    from training.run import run_training
    from training.run_config import RunConfig

    cfg = RunConfig(env_id="rlgames/TicTacToe-v0", total_timesteps=150, eval_every=50, eval_episodes=100,
                    solved_by="evaluation", runs_dir=str(tmp_path), progress=False)  # fmt: skip
    result = run_training(cfg, "idle", lambda cfg: None, _idle_playing([_TicTacToeWithOneFlaw(flawed)]))
    assert all(r == 0 for _, _, r in result.eval_history)  # every match drawn
    acc = EventAccumulator(str(result.run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    losing = [e.value for e in acc.Scalars("eval/losing_moves")]
    if flawed:
        assert losing == [1, 1, 1] and not result.solved and result.solved_at is None
        assert result.global_step == 150
    else:
        assert losing == [0] and result.solved and result.solved_at[0] == 50 and result.global_step == 50


def test_the_best_tictactoe_checkpoint_is_the_one_without_a_losing_move(tmp_path):
    """Every match against the perfect player is drawn (mean 0), so the mean alone would keep the first
    evaluation as best.pt; the audit ranks the flawless policy of the second above it, and the flawed one
    of the third does not take its place."""
    from training.checkpoint import load_checkpoint
    from training.run import run_training
    from training.run_config import RunConfig

    policies = [_TicTacToeWithOneFlaw(True), _TicTacToeWithOneFlaw(False), _TicTacToeWithOneFlaw(True)]
    cfg = RunConfig(env_id="rlgames/TicTacToe-v0", total_timesteps=150, eval_every=50, eval_episodes=20,
                    runs_dir=str(tmp_path), progress=False)  # fmt: skip
    result = run_training(cfg, "idle", lambda cfg: None, _idle_playing(policies))
    assert [r for _, _, r in result.eval_history] == [0, 0, 0]
    best = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert (best["global_step"], best["rounds"], best["eval_return"], best["eval_losing_moves"]) == (100, 2, 0, 0)


@pytest.mark.parametrize(("env_id", "stochastic", "greedy"), [
    ("CartPole-v1", None, True), ("MinAtar/Breakout-v0", None, True), ("rlgames/TicTacToe-v0", None, True),
    ("ALE/Breakout-v5", None, False), ("CartPole-v1", True, False), ("ALE/Pong-v5", False, True),
])  # fmt: skip
def test_evaluations_are_greedy_except_on_atari_unless_asked(env_id, stochastic, greedy):
    assert greedy_by_default(env_id, stochastic) is greedy
