"""Checkpoints: atomic files, safe loading, clear errors, and resume that repeats the next update exactly."""

import dataclasses
import os
import pickle

import pytest
import torch

from agents.networks import ActorCritic
from envs import probe_spaces
from training.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
from training.ppo.config import PPOConfig, apply_preset
from training.ppo.executors import InProcessExecutor
from training.ppo.train import PPOLearner, build_agent


def test_save_is_atomic_and_keeps_the_newest(tmp_path):
    for step in (10, 20, 30, 40):
        path = save_checkpoint(tmp_path, {"algo": "x", "w": torch.full((3,), float(step))}, step, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000000030.pt", "step_000000000040.pt"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert load_checkpoint(tmp_path)["w"][0] == 40.0  # a run folder resolves to its newest checkpoint
    assert load_checkpoint(path)["w"][0] == 40.0


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, {"w": torch.zeros(1000)}, 1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(path)


def test_missing_checkpoint_gives_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_loading_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoints" / "step_000000000001.pt"
    path.parent.mkdir()
    torch.save({"format_version": 1, "payload": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
    # A plain pickle file is refused too.
    path.write_bytes(pickle.dumps({"format_version": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def _learner(cfg, seed):
    obs_space, act_space = probe_spaces(cfg.env_id)
    torch.manual_seed(seed)
    return PPOLearner(build_agent(cfg, obs_space, act_space), dataclasses.replace(cfg, seed=seed), torch.device("cpu"))


@pytest.mark.parametrize("rnd_coef", [0.0, 0.5], ids=["ppo", "with-rnd"])
def test_resume_gives_identical_parameters_and_the_same_next_update(tmp_path, rnd_coef):
    cfg = dataclasses.replace(apply_preset(PPOConfig(env_id="CartPole-v1")), normalize_obs=True, normalize_reward=True,
                              num_minibatches=4, update_epochs=2, rnd_coef=rnd_coef)  # fmt: skip
    learner = _learner(cfg, seed=1)
    obs_space, act_space = probe_spaces(cfg.env_id)
    with InProcessExecutor(cfg.env_id, obs_space, act_space, learner.agent, cfg.num_envs, 1, cfg.num_steps, 7) as ex:
        learner.update(ex.collect(), 1e-3)
        ex.set_weights(learner.agent.state_dict(), 1)
        path = save_checkpoint(tmp_path, {"learner": learner.state_dict()}, 1)
        rollout = ex.collect()
        stats_a = learner.update(rollout, 1e-3)

        restored = _learner(cfg, seed=99)  # different init and minibatch RNG, all overwritten by the checkpoint
        restored.load_state_dict(load_checkpoint(path)["learner"])
        stats_b = restored.update(rollout, 1e-3)

    assert stats_a == stats_b
    for (name, a), (_, b) in zip(learner.agent.state_dict().items(), restored.agent.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert restored.reward_scaler.state_dict()["stats"].tolist() == learner.reward_scaler.state_dict()["stats"].tolist()
    if rnd_coef:  # the predictor, intrinsic critic, whitening statistics and intrinsic scale as well
        for (name, a), b in zip(learner.rnd.rnd.state_dict().items(), restored.rnd.rnd.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
        assert restored.rnd.reward_scaler.state_dict()["stats"].tolist() == learner.rnd.reward_scaler.state_dict()["stats"].tolist()


def test_checkpoint_holds_observation_normalisation(tmp_path):
    obs_space, act_space = probe_spaces("CartPole-v1")
    agent = ActorCritic(obs_space, act_space, normalize_obs=True)
    agent.obs_normalizer.update(torch.randn(100, 4) * 3 + 1)
    save_checkpoint(tmp_path, {"model": agent.state_dict()}, 1)
    other = ActorCritic(obs_space, act_space, normalize_obs=True)
    other.load_state_dict(load_checkpoint(tmp_path)["model"])
    assert torch.equal(other.obs_normalizer.mean, agent.obs_normalizer.mean)
    assert torch.equal(other.obs_normalizer.var, agent.obs_normalizer.var)
