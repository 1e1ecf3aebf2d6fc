"""MinAtar (Young & Tian 2019): five Atari games on a 10x10 grid, one binary channel per kind of object.

The `minatar` package (`pip install -e '.[minatar]'`; GPL-3.0) registers its own Gymnasium ids:
`MinAtar/Breakout-v0`, `Asterix-v0`, `Freeway-v0`, `Seaquest-v0`, `SpaceInvaders-v0` keep the paper's
setting (sticky actions with probability 0.1, all 6 actions, difficulty ramping); `-v1` uses each game's
minimal action set. Here the observation becomes channels-first uint8 ([C, 10, 10], 0 or 1), the layout
of the project's image networks, and frames for watching are the package's colours scaled up to 160x160.
The episode return is the game score (MinAtar rewards are the score's increments, unclipped).
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np

from envs.seed_folding import LEGACY_NUMPY_SEEDS, fold_seed

# The five games, each registered by the package as MinAtar/<game>-v0 and -v1.
MINATAR_GAMES = ("Asterix", "Breakout", "Freeway", "Seaquest", "SpaceInvaders")

# MinAtar sets no time limit, and a game can last for ever: a Seaquest sub that never dives breathes at
# the surface with nothing to hit it, which is just what an early greedy policy does, and its evaluation
# then never returned. Episodes are truncated (not terminated: the state is no end) after as many steps
# as ALE's v5 games allow decisions (108,000 frames at frameskip 4), far beyond the games measured: the
# 5M-frame Seaquest agents with RND play 179-685 steps a game (2026-12-05), and Freeway ends itself at 2,500.
MAX_EPISODE_STEPS = 27_000

# Pixels per MinAtar cell in rendered frames: a 10x10 grid as a 160x160 video.
RENDER_SCALE = 16


class ChannelsFirst(gym.ObservationWrapper):
    """[10, 10, C] bool -> [C, 10, 10] uint8 (0 or 1)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, (c, h, w), np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(observation.transpose(2, 0, 1), dtype=np.uint8)


class ScaledFrames(gym.Wrapper):
    """The package's rgb_array frames (float colours, one pixel per cell) as uint8 RGB, RENDER_SCALE pixels
    per cell, at 10 frames per second (MinAtar has no frame rate of its own)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.metadata = {**env.metadata, "render_fps": 10}

    def render(self):
        frame = self.env.render()
        if frame is None or self.env.render_mode != "rgb_array":
            return frame
        frame = np.round(np.asarray(frame) * 255).astype(np.uint8)
        return frame.repeat(RENDER_SCALE, axis=0).repeat(RENDER_SCALE, axis=1)


class FoldedSeeds(gym.Wrapper):
    """Reset seeds the package's numpy RandomState cannot take (>= 2**32: a resumed run's, a replaced
    worker's) folded into its range; smaller seeds pass unchanged."""

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self.env.reset(seed=None if seed is None else fold_seed(seed, LEGACY_NUMPY_SEEDS), options=options)


def register_minatar() -> None:
    """The package's ids, registered once (importing minatar registers nothing by itself)."""
    if "MinAtar/Breakout-v0" not in gym.registry:
        from minatar.gym import register_envs

        register_envs()


def make_minatar_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    register_minatar()
    with warnings.catch_warnings():
        # Gymnasium calls every -v0 "out of date" once a -v1 exists; MinAtar's v0 is the paper's setting.
        warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)
        # The checker would warn about the package's float frames and missing frame rate, which ScaledFrames
        # turns into uint8 frames at 10 fps.
        env = gym.make(env_id, render_mode=render_mode, disable_env_checker=True, max_episode_steps=MAX_EPISODE_STEPS)
    return ChannelsFirst(ScaledFrames(FoldedSeeds(env)))
