"""Envs that misbehave as real games do, registered under tests/... for the fault tests of every loop:
NaN rewards, envs that raise (always, once, or only in evaluation) and envs whose step never returns
(always, or only in evaluation). Imported by conftest.py, so every test module has them."""

import time

import gymnasium as gym
import numpy as np


class NaNRewardEnv(gym.Env):
    """10-step episodes paying 1 a step, except the steps nan_from .. nan_until - 1 of the env's life
    (counted across episodes), which pay NaN: a broken reward for the NaN guard."""

    def __init__(self, nan_from: int = 0, nan_until: int = 10**12):
        self.observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.nan_from, self.nan_until = nan_from, nan_until
        self.life = self.t = 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        reward = float("nan") if self.nan_from <= self.life < self.nan_until else 1.0
        self.life += 1
        self.t += 1
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), reward, self.t >= 10, False, {}


for _id, _kwargs in (("tests/NaNRewardAlways-v0", {}), ("tests/NaNRewardOnce-v0", {"nan_from": 300, "nan_until": 301})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=NaNRewardEnv, kwargs=_kwargs)


class CrashingEnv(gym.Env):
    """CartPole-like 1-step-reward env that raises in step once `crash_at` steps of its life have passed
    (a crashed emulator or game); each new instance starts its life again."""

    def __init__(self, crash_at: int = 40):
        self.observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.crash_at, self.life, self.t = crash_at, 0, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        if self.life >= self.crash_at:
            raise RuntimeError("the game crashed")
        self.life += 1
        self.t += 1
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), 1.0, False, self.t >= 25, {}


for _id, _kwargs in (("tests/CrashingEnv-v0", {}), ("tests/AlwaysCrashingEnv-v0", {"crash_at": 0}),
                     ("tests/NeverCrashingEnv-v0", {"crash_at": 10**12})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=CrashingEnv, kwargs=_kwargs)


class EvaluationCrashingEnv(CrashingEnv):
    """Never crashes in training; raises on the first step of any episode started from an evaluation
    seed (training.seeds.evaluation_seed and up): a crash in the loop outside env stepping."""

    def __init__(self):
        super().__init__(crash_at=10**12)

    def reset(self, seed=None, options=None):
        from training.seeds import EVALUATION_OFFSET, RESEEDED_START

        if seed is not None:
            self.crash_at = 0 if EVALUATION_OFFSET <= seed < RESEEDED_START else 10**12
        return super().reset(seed=seed, options=options)


if "tests/EvaluationCrashingEnv-v0" not in gym.registry:
    gym.register("tests/EvaluationCrashingEnv-v0", entry_point=EvaluationCrashingEnv)


class HangingEnv(CrashingEnv):
    """Its step never returns once `hang_at` steps of its life have passed (a deadlocked game or emulator);
    with hang_at=None, only in episodes started from an evaluation seed."""

    def __init__(self, hang_at: int | None = 30):
        super().__init__(crash_at=10**12)
        self.hang_at = hang_at

    def reset(self, seed=None, options=None):
        from training.seeds import EVALUATION_OFFSET, RESEEDED_START

        if self.hang_at is None and seed is not None:
            self.hanging = EVALUATION_OFFSET <= seed < RESEEDED_START
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if (self.life >= self.hang_at) if self.hang_at is not None else getattr(self, "hanging", False):
            while True:
                time.sleep(3600)
        return super().step(action)


for _id, _kwargs in (("tests/HangingEnv-v0", {}), ("tests/HangingInEvaluationEnv-v0", {"hang_at": None})):
    if _id not in gym.registry:
        gym.register(_id, entry_point=HangingEnv, kwargs=_kwargs)
