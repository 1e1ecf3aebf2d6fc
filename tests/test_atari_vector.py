"""Atari's two paths (envs/atari.py): ale-py's C++ AtariVectorEnv (the default) and gymnasium's wrappers
give the same frames, rewards and episode statistics; episodes end on game over or the frame limit only;
the train, watch and evaluate commands run on the fast path."""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("ale_py")

from envs.atari import (  # noqa: E402
    AtariOptions,
    AtariVectorEpisodes,
    NoopsThenFire,
    make_atari_env,
    make_atari_vector_env,
)
from envs.factory import make_env, make_vector_env, probe_spaces  # noqa: E402
from envs.seed_folding import C_INT_SEEDS, fold_seeds  # noqa: E402
from training.evaluation import evaluate_policy, greedy_by_default  # noqa: E402
from training.seeds import Reseed, reseeded, rollout_seed  # noqa: E402

# No random no-ops and no sticky actions: the emulator is deterministic, so one action sequence plays the
# same game on both paths.
SCRIPTED = AtariOptions(noop_max=0, repeat_action_probability=0.0)


def _play_both(env_id: str, episodes: int, seed: int = 3) -> list[tuple[float, int, int]]:
    """Play random actions on both paths side by side, asserting equal frames, clipped rewards and ends on
    every step; return the (score, frames, agent steps) of each episode, equal on both paths."""
    single = make_atari_env(env_id, options=SCRIPTED)
    vector = make_atari_vector_env(env_id, 1, SCRIPTED)
    single_obs, _ = single.reset(seed=seed)
    vector_obs, _ = vector.reset(seed=[seed])
    assert np.array_equal(single_obs, vector_obs[0])
    rng = np.random.default_rng(seed)
    stats, steps = [], 0
    while len(stats) < episodes:
        steps += 1
        action = int(rng.integers(0, single.action_space.n))
        single_obs, single_reward, single_term, single_trunc, single_info = single.step(action)
        vector_obs, vector_reward, vector_term, vector_trunc, vector_info = vector.step(np.array([action]))
        ended = vector_term[0] or vector_trunc[0]
        assert np.array_equal(single_obs, vector_info["final_obs"][0] if ended else vector_obs[0])
        assert (single_reward, single_term, single_trunc) == (vector_reward[0], vector_term[0], vector_trunc[0])
        if ended:
            final = vector_info["final_info"]
            assert final["_episode"][0] and vector_info["_final_obs"][0]
            episode = (float(final["episode"]["r"][0]), int(final["episode"]["l"][0]))
            assert episode == (single_info["episode"]["r"], single_info["episode"]["l"])
            stats.append((*episode, steps))
            steps = 0
            # The vector env has begun its next episode; the single env starts the same one.
            single_obs, _ = single.reset()
            assert np.array_equal(single_obs, vector_obs[0])
    single.close()
    vector.close()
    return stats


def test_both_paths_play_the_same_breakout_and_report_the_game_score():
    stats = _play_both("ALE/Breakout-v5", episodes=2)
    # Lengths in emulator frames: FIRE's one frame, then 4 a step, the last step cut at game over.
    assert all(4 * (steps - 1) < frames - 1 <= 4 * steps for _, frames, steps in stats)
    assert all(score == int(score) >= 0 for score, _, _ in stats)


def test_both_paths_play_the_same_game_without_a_fire_button():
    """Ms. Pac-Man has no FIRE: neither path may press action 1 (UP there) at reset."""
    ((score, frames, steps),) = _play_both("ALE/MsPacman-v5", episodes=1)
    assert 4 * (steps - 1) < frames <= 4 * steps and score > 0


def test_spaces_match_the_wrapper_path_and_the_factory_picks_the_fast_one():
    for env_id in ("ALE/Pong-v5", "ALE/MsPacman-v5"):
        obs_space, act_space = probe_spaces(env_id)
        vector = make_vector_env(env_id, 2, seed=0)
        assert isinstance(vector, AtariVectorEpisodes)
        assert vector.single_observation_space == obs_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
        assert vector.single_action_space == act_space
        vector.close()
    wrappers = make_vector_env("ALE/Pong-v5", 2, seed=0, env_kwargs={"options": AtariOptions(vector="wrappers")})
    assert isinstance(wrappers, gym.vector.SyncVectorEnv)
    wrappers.close()


def test_a_lost_life_is_not_an_episode_end_and_rewards_are_clipped_game_scores_are_not():
    """Breakout with the id's own sticky actions and no-op starts: lives go 5 -> 0 inside one episode, which
    terminates only at game over; training sees rewards of 0/1 while the statistics keep the points (4-7
    a brick in the upper rows)."""
    envs = make_vector_env("ALE/Breakout-v5", 4, seed=0)
    envs.reset(seed=[0, 1, 2, 3])
    rng = np.random.default_rng(0)
    lives_seen, rewards, clipped_sum = set(), set(), np.zeros(4)
    for _ in range(5000):
        _, reward, terminated, truncated, info = envs.step(rng.integers(0, 4, 4))
        clipped_sum += reward
        rewards.update(reward.tolist())
        lives_seen.update(info["lives"][~terminated].tolist())
        if terminated.any():
            i = int(np.flatnonzero(terminated)[0])
            assert not truncated[i] and info["final_info"]["_episode"][i]
            score, frames = info["final_info"]["episode"]["r"][i], info["final_info"]["episode"]["l"][i]
            assert score >= clipped_sum[i] and frames > 4 * 5  # five lives lost, each after a few steps
            break
    else:
        pytest.fail("no game ended")
    assert {1, 2, 3, 4, 5} <= lives_seen and rewards <= {0.0, 1.0}
    envs.close()


def test_the_frame_limit_truncates_on_the_same_step_and_frame_count_as_the_wrappers():
    """A 400-frame limit: FIRE's frame and 99 steps of 4 leave 3 frames for step 100, where both paths
    truncate (not terminate) with 400 frames."""
    from ale_py.vector_env import AtariVectorEnv

    envs = AtariVectorEpisodes(AtariVectorEnv(
        "pong", 2, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP, max_num_frames_per_episode=400,
        reward_clipping=False, noop_max=0,
    ), max_frames=400)  # fmt: skip
    envs.reset(seed=[0, 1])
    steps, truncated = 0, np.zeros(2, bool)
    while not truncated.any() and steps < 200:
        _, _, terminated, truncated, info = envs.step(np.zeros(2, np.int64))
        steps += 1
    assert truncated.all() and not terminated.any() and steps == 100
    assert info["final_info"]["episode"]["l"].tolist() == [400, 400]
    envs.close()
    single = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0, max_num_frames_per_episode=400)
    single = gym.wrappers.AtariPreprocessing(NoopsThenFire(gym.wrappers.RecordEpisodeStatistics(single), 0), noop_max=0)
    single.reset(seed=0)
    steps, truncated = 0, False
    while not truncated and steps < 200:
        _, _, terminated, truncated, info = single.step(0)
        steps += 1
    assert not terminated and steps == 100 and info["episode"]["l"] == 400
    single.close()


def test_a_partial_reset_keeps_the_other_games_scores():
    envs = make_vector_env("ALE/Pong-v5", 2, seed=0)
    envs.reset(seed=[0, 1])
    while not envs.returns[1]:  # Pong scores a point every few hundred frames
        envs.step(np.zeros(2, np.int64))
    kept = envs.returns[1]
    envs.reset(seed=np.array([5]), options={"reset_mask": np.array([True, False])})
    assert envs.returns[0] == 0.0 and envs.returns[1] == kept
    envs.close()


def test_seeds_decide_the_game():
    """The same seeds replay the same games (no-ops and sticky actions come from them); other seeds differ."""

    def frames(seeds):
        envs = make_vector_env("ALE/Breakout-v5", len(seeds), seed=0)
        obs, _ = envs.reset(seed=seeds)
        out = [obs]
        for a in np.random.default_rng(0).integers(0, 4, (60, len(seeds))):
            out.append(envs.step(a)[0])
        envs.close()
        return np.stack(out)

    first = frames([5, 6])
    assert np.array_equal(first, frames([5, 6]))
    assert not np.array_equal(first[:, 0], first[:, 1])
    assert not np.array_equal(first, frames([7, 8]))


def test_seeds_beyond_a_c_int_are_folded_into_one_as_ale_py_needs():
    """ale-py's vector env takes C ints and refused a resumed run's seeds (2**36 and above): they are
    folded below 2**31, the same way each time; an int seed still seeds the envs being reset in turn."""
    seed = reseeded(rollout_seed(1), Reseed.RESUME, 128)
    envs = make_vector_env("ALE/Breakout-v5", 2, seed=0)
    big, _ = envs.reset(seed=[seed, seed + 1])
    folded, _ = envs.reset(seed=list(fold_seeds([seed, seed + 1], C_INT_SEEDS)))
    counted, _ = envs.reset(seed=seed)
    envs.reset(seed=seed, options={"reset_mask": np.array([False, True])})  # one seed for the one env reset
    envs.close()
    np.testing.assert_array_equal(big, folded)
    np.testing.assert_array_equal(big, counted)


def test_single_env_builds_follow_the_run_options():
    """watch.py and the videos build one env through make_env with the run's options: the wrapper path
    with the same sticky-action setting."""
    env = make_env("ALE/Pong-v5", 0, env_kwargs={"options": SCRIPTED})()
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
    env.close()
    env = make_env("ALE/Pong-v5", 0)()
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)
    env.close()


def test_train_watch_and_evaluate_on_the_fast_path(tmp_path):
    """The real commands on Pong: a short run through AtariVectorEnv, then a watched video and an evaluation."""
    root = Path(__file__).resolve().parents[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def launch(script, *args):
        return subprocess.run([sys.executable, str(root / "launch" / script), *args], capture_output=True, text=True,
                              cwd=root, timeout=300, env=env)  # fmt: skip

    train = launch("train_ppo.py", "--env-id", "ALE/Pong-v5", "--total-timesteps", "2048", "--num-steps", "64",
                   "--backend", "inprocess", "--eval-episodes", "0", "--no-progress",
                   "--runs-dir", str(tmp_path / "runs"))  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    assert "finished ALE/Pong-v5 after 2048 env steps" in train.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    watched = launch("watch.py", str(run_dir), "--episodes", "1", "--save")
    assert watched.returncode == 0 and ".mp4" in watched.stdout, watched.stderr[-3000:]
    # Atari evaluates with sampled actions unless asked for the greedy ones (training's evaluations too).
    evaluated = launch("evaluate.py", str(run_dir), "--episodes", "1", "--quiet")
    assert evaluated.returncode == 0 and "stochastic: mean return" in evaluated.stdout, evaluated.stderr[-3000:]
    evaluated = launch("evaluate.py", str(run_dir), "--episodes", "1", "--quiet", "--greedy")
    assert evaluated.returncode == 0 and "greedy: mean return" in evaluated.stdout, evaluated.stderr[-3000:]
    both = launch("evaluate.py", str(run_dir), "--greedy", "--stochastic")
    assert both.returncode == 2 and "--stochastic and --greedy contradict each other" in both.stderr


class NoopWhenGreedy(torch.nn.Module):
    """An untrained Breakout policy's worst case: NOOP is its most likely action everywhere, and sampling
    gives any of the four."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def act(self, obs, generator=None, deterministic=True):
        n = next(iter(obs.values())).shape[0]
        action = torch.zeros(n, dtype=torch.int64) if deterministic else torch.randint(4, (n,), generator=generator)
        return action, torch.zeros(n), torch.zeros(n)


def test_atari_evaluations_sample_so_a_policy_that_never_fires_cannot_stall_them():
    # Greedy, the policy waits after its first lost life: Breakout brings a new ball only on FIRE, and the
    # episode would run to the 108,000-frame limit (~27,000 agent steps).
    env = make_env("ALE/Breakout-v5", 0)()
    env.reset(seed=0)
    lives = []
    for _ in range(1500):
        _, reward, terminated, truncated, info = env.step(0)
        assert reward == 0 and not (terminated or truncated)
        lives.append(info["lives"])
    env.close()
    assert lives[0] == 5 and lives[-1] == 4 and lives[-300:] == [4] * 300
    # Atari's evaluations sample by default, and the same policy's episodes end in a few thousand frames.
    assert not greedy_by_default("ALE/Breakout-v5") and greedy_by_default("ALE/Breakout-v5", stochastic=False)
    result = evaluate_policy(NoopWhenGreedy(), "ALE/Breakout-v5", episodes=2, seed=0,
                             deterministic=greedy_by_default("ALE/Breakout-v5"))  # fmt: skip
    assert result.lengths.max() < 10_000  # emulator frames
