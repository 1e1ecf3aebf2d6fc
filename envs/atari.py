"""The standard Atari preprocessing (Mnih et al. 2015; Machado et al. 2018), from gymnasium's wrappers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class FireResetEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Press FIRE after reset: games such as Breakout do not start until the player fires. It records its
    constructor's arguments, as gymnasium's own wrappers do, so that an env rebuilt from its spec (as
    gymnasium's check_env does) has it too."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


def make_atari_env(env_id: str, render_mode: str | None = None) -> gym.Env:
    import ale_py

    gym.register_envs(ale_py)
    # frameskip=1 in the emulator: AtariPreprocessing does the skipping with a max over the last two
    # frames, which removes the flicker of sprites drawn on alternate frames.
    env = gym.make(env_id, frameskip=1, render_mode=render_mode)
    # Episode statistics before reward clipping, so that the logged return is the game score.
    env = gym.wrappers.RecordEpisodeStatistics(env)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireResetEnv(env)
    env = gym.wrappers.TransformReward(env, np.sign)
    return gym.wrappers.FrameStackObservation(env, 4)
