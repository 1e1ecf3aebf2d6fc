"""Partially observed variants of classic-control games, for policies with memory.

`rlgames/CartPoleNoVel-v1` is CartPole-v1 with the cart's velocity and the pole's angular velocity
removed from the observation (the position and the angle are left), as SB3-contrib's and rl-zoo's
`CartPoleNoVel-v1`: a feed-forward policy sees one frame and cannot tell which way the pole swings, a
policy with memory can infer the velocities from consecutive frames. Dynamics, rewards, the 500-step time
limit and rendering are CartPole-v1's.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class MaskVelocity(gym.ObservationWrapper):
    """Keeps only the observation entries `keep` (for CartPole: 0 = cart position, 2 = pole angle)."""

    def __init__(self, env: gym.Env, keep: tuple[int, ...]):
        super().__init__(env)
        self.keep = np.array(keep)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[self.keep]


def cartpole_without_velocities(render_mode: str | None = None) -> gym.Env:
    return MaskVelocity(CartPoleEnv(render_mode=render_mode), keep=(0, 2))


def register_partial_observability_envs() -> None:
    """Register rlgames/CartPoleNoVel-v1 (once; the env factory calls this when it is imported)."""
    if "rlgames/CartPoleNoVel-v1" not in gym.registry:
        gym.register(
            "rlgames/CartPoleNoVel-v1", entry_point=cartpole_without_velocities, max_episode_steps=500,
            reward_threshold=475.0,
        )  # fmt: skip
