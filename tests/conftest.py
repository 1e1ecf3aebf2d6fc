import adversarial_envs  # noqa: F401 - registers the misbehaving envs (tests/...)
import gymnasium as gym
import numpy as np
import pytest
import torch


class MaskedChoiceEnv(gym.Env):
    """A 4-action bandit-like game whose observation carries an action mask; reward 1 for the highest
    allowed action, 10 steps an episode. Used to check that masked actions are never taken."""

    def __init__(self):
        self.observation_space = gym.spaces.Dict(
            {"obs": gym.spaces.Box(0, 1, (4,), np.float32), "action_mask": gym.spaces.MultiBinary(4)}
        )
        self.action_space = gym.spaces.Discrete(4)
        self.t = 0

    def _obs(self):
        mask = self.np_random.integers(0, 2, 4).astype(np.int8)
        mask[self.np_random.integers(0, 4)] = 1
        self.mask = mask
        return {"obs": mask.astype(np.float32), "action_mask": mask}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        if not self.mask[action]:
            raise AssertionError(f"masked action {action} taken with mask {self.mask}")
        reward = float(action == np.flatnonzero(self.mask).max())
        self.t += 1
        return self._obs(), reward, self.t >= 10, False, {}


if "tests/MaskedChoice-v0" not in gym.registry:
    gym.register("tests/MaskedChoice-v0", entry_point=MaskedChoiceEnv)


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def short_cartpole_run(tmp_path_factory):
    """A short CartPole run (8 updates) with evaluation every 2048 steps and --capture-video every 4
    updates: enough to hold checkpoints, a best checkpoint, videos and every dashboard tag."""
    import dataclasses

    from training.ppo.config import PPOConfig, apply_preset
    from training.ppo.train import train

    cfg = dataclasses.replace(
        apply_preset(PPOConfig(env_id="CartPole-v1")), runs_dir=str(tmp_path_factory.mktemp("runs")),
        total_timesteps=4096, num_envs=8, num_steps=64, eval_every=2048, eval_episodes=4, capture_video=True,
        video_every=4, checkpoint_every=2048, stop_when_solved=False, progress=False,
    )  # fmt: skip
    return cfg, train(cfg)
