"""The standard Atari preprocessing (Mnih et al. 2015; Machado et al. 2018), on two paths that give the same
observations, rewards and episode statistics:

- `AtariVectorEpisodes` (the default): ale-py's C++ `AtariVectorEnv`, which steps all the envs of a worker
  on its own threads and does the preprocessing in C++ (frame skip with a max over the last two frames,
  grayscale, 84x84 area resize, no-op starts, FIRE at reset, a stack of 4 frames);
- `make_atari_env`: one gymnasium env per game behind gymnasium's wrappers (`--atari.vector wrappers`), the
  path for rendering and for anyone who wants to change a wrapper.

Both follow the env id's own settings (ALE/*-v5: sticky actions with probability 0.25, the minimal action
set, 108,000 frames at most), both report the game score (unclipped) and the episode length in emulator
frames (no-op and FIRE frames included, as CleanRL's statistics count them) while the agent is trained on
rewards clipped to their sign. Losing a life does not end an episode: only game over terminates one, the
frame limit truncates it. tests/test_atari_vector.py checks that both paths give the same frames, rewards
and statistics on scripted games.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from envs.seed_folding import C_INT_SEEDS, fold_seeds

FRAME_SKIP = 4
FRAME_STACK = 4
SCREEN_SIZE = 84


@dataclass(frozen=True)
class AtariOptions:
    """How the Atari envs (ALE/...) are stepped and preprocessed."""

    vector: Literal["ale", "wrappers"] = "ale"
    """'ale': all of a worker's games in ale-py's C++ AtariVectorEnv (threads, preprocessing in C++); 'wrappers': one gymnasium env per game behind gymnasium's AtariPreprocessing (same frames and statistics, slower)"""
    num_threads: int = 0
    """threads of each worker's AtariVectorEnv; 0 = one per usable core, at most one per env"""
    noop_max: int = 30
    """start each episode with 0..noop_max random no-ops (Mnih et al. 2015)"""
    repeat_action_probability: float | None = None
    """sticky actions (Machado et al. 2018): the chance that the emulator repeats the previous action each frame; None = the env id's own (0.25 for ALE/*-v5)"""


def atari_problems(options: AtariOptions) -> list[str]:
    problems = []
    if options.num_threads < 0:
        problems.append(f"--atari.num-threads must be >= 0 (0 = one per usable core), got {options.num_threads}")
    if options.noop_max < 0:
        problems.append(f"--atari.noop-max must be >= 0, got {options.noop_max}")
    p = options.repeat_action_probability
    if p is not None and not 0.0 <= p < 1.0:
        problems.append(f"--atari.repeat-action-probability must be in [0, 1) (or None for the env id's own), got {p}")
    return problems


def _game_settings(env_id: str, options: AtariOptions) -> dict[str, Any]:
    """The registered id's game, action set, frame limit and sticky-action probability (options override it)."""
    import ale_py

    gym.register_envs(ale_py)
    kwargs = gym.spec(env_id).kwargs
    sticky = kwargs.get("repeat_action_probability", 0.25)
    return {
        "game": kwargs["game"],
        "full_action_space": kwargs.get("full_action_space", False),
        "max_num_frames_per_episode": kwargs.get("max_num_frames_per_episode", 108_000),
        "repeat_action_probability": sticky if options.repeat_action_probability is None else options.repeat_action_probability,
    }


class NoopsThenFire(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """0..noop_max no-ops, then FIRE for one frame where the game has it (Breakout does not start until the
    player fires), after each reset of the raw (frameskip 1) env: how ale-py's vector env starts an
    episode, so both paths play the same game; gymnasium's AtariPreprocessing then runs with noop_max=0.
    It records its constructor's arguments, as gymnasium's own wrappers do, so that an env rebuilt from
    its spec (as gymnasium's check_env does) has it too."""

    def __init__(self, env: gym.Env, noop_max: int):
        gym.utils.RecordConstructorArgs.__init__(self, noop_max=noop_max)
        gym.Wrapper.__init__(self, env)
        self.noop_max = noop_max
        meanings = env.unwrapped.get_action_meanings()
        self.fire = [meanings.index("FIRE")] if "FIRE" in meanings else []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        noops = int(self.unwrapped.np_random.integers(0, self.noop_max + 1)) if self.noop_max else 0
        for action in [0] * noops + self.fire:
            obs, _, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def make_atari_env(env_id: str, render_mode: str | None = None, options: AtariOptions | None = None) -> gym.Env:
    """One game behind gymnasium's wrappers (the rendering path, and `--atari.vector wrappers`)."""
    options = options or AtariOptions()
    settings = _game_settings(env_id, options)
    # frameskip=1 in the emulator: AtariPreprocessing does the skipping with a max over the last two
    # frames, which removes the flicker of sprites drawn on alternate frames.
    env = gym.make(
        env_id, frameskip=1, render_mode=render_mode, repeat_action_probability=settings["repeat_action_probability"]
    )
    # Episode statistics before reward clipping, so that the logged return is the game score; counted in
    # emulator frames, below the frame skip.
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = NoopsThenFire(env, options.noop_max)
    env = gym.wrappers.AtariPreprocessing(
        env, noop_max=0, frame_skip=FRAME_SKIP, screen_size=SCREEN_SIZE, grayscale_obs=True
    )
    env = gym.wrappers.TransformReward(env, np.sign)
    # Zeros before an episode's first frame, as the vector env stacks them.
    return gym.wrappers.FrameStackObservation(env, FRAME_STACK, padding_type="zero")


class AtariVectorEpisodes(gym.vector.VectorWrapper):
    """ale-py's AtariVectorEnv in the layout `make_vector_env` promises: SAME_STEP autoreset with
    `info["final_obs"]` and `info["final_info"]["episode"]` ({"r": game score, "l": frames}, masked by
    "_episode") on the step an episode ends, rewards clipped to their sign for training, and `reset`
    taking a list of seeds (one per env).

    The C++ env reports no finished episode's length, only each env's running frame counter
    (`frame_number`, all episodes) and the new episode's (`episode_frame_number`, its reset frames): the
    frames of the episode that ended are the first minus the second minus where that episode began. At
    the frame limit both paths truncate on the same step, but the C++ env plays that step's frame skip to
    its end where gymnasium's stops at the limit: a truncated episode counts `max_frames`, as there.
    """

    def __init__(self, env: gym.vector.VectorEnv, max_frames: int):
        super().__init__(env)
        self.max_frames = max_frames
        self.returns = np.zeros(self.num_envs)
        self.episode_first_frame = np.zeros(self.num_envs, np.int64)

    def reset(self, *, seed: int | list[int] | np.ndarray | None = None, options: dict | None = None):
        if isinstance(seed, (int, np.integer)):  # consecutive seeds for the envs being reset, as ale-py does
            seed = int(seed) + np.arange(np.count_nonzero((options or {}).get("reset_mask", np.ones(self.num_envs))))
        if seed is not None:  # ale-py takes C ints: a larger seed (a resumed run's) is folded into them
            seed = fold_seeds(seed, C_INT_SEEDS)
        obs, info = self.env.reset(seed=seed, options=options)
        # ale-py's partial reset (options["reset_mask"]) leaves the other envs' episodes running.
        self.returns[(options or {}).get("reset_mask", slice(None))] = 0.0
        self.episode_first_frame[:] = info["frame_number"] - info["episode_frame_number"]
        return obs, info

    def step(self, actions: np.ndarray):
        obs, reward, terminated, truncated, info = self.env.step(np.asarray(actions, dtype=np.int64))
        self.returns += reward
        done = terminated | truncated
        if done.any():
            next_first_frame = info["frame_number"] - info["episode_frame_number"]
            frames = next_first_frame - self.episode_first_frame
            frames = np.where(truncated & ~terminated, np.minimum(frames, self.max_frames), frames)
            info["final_info"] = {
                "episode": {"r": np.where(done, self.returns, 0.0), "l": np.where(done, frames, 0)},
                "_episode": done.copy(),
            }
            info["_final_obs"] = done.copy()
            self.returns[done] = 0.0
            self.episode_first_frame[done] = next_first_frame[done]
        return obs, np.sign(reward).astype(np.float32), terminated, truncated, info


def make_atari_vector_env(env_id: str, num_envs: int, options: AtariOptions | None = None) -> AtariVectorEpisodes:
    """`num_envs` games of `env_id` in one AtariVectorEnv, not reset yet (see make_vector_env)."""
    from ale_py.vector_env import AtariVectorEnv

    options = options or AtariOptions()
    threads = options.num_threads or min(num_envs, len(os.sched_getaffinity(0)))
    settings = _game_settings(env_id, options)
    env = AtariVectorEnv(
        num_envs=num_envs, num_threads=threads, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        img_height=SCREEN_SIZE, img_width=SCREEN_SIZE, grayscale=True, stack_num=FRAME_STACK, frameskip=FRAME_SKIP,
        maxpool=True, noop_max=options.noop_max, use_fire_reset=True, episodic_life=False, reward_clipping=False,
        **settings,
    )  # fmt: skip
    return AtariVectorEpisodes(env, settings["max_num_frames_per_episode"])
