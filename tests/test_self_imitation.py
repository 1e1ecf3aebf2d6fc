"""Self-imitation learning: returns and loss against hand-computed values, the replay's stitching of
episodes across rollouts, its priorities and checkpointing, the update's effect on the policy, and a
resumed run of the real command (agents/self_imitation.py, training/ppo/self_imitation.py; its flags'
refusals are in test_errors.py)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.self_imitation import discounted_returns, sil_loss
from envs import probe_spaces
from training.checkpoint import load_checkpoint, save_checkpoint
from training.ppo.config import PPOConfig, apply_preset
from training.ppo.self_imitation import SelfImitationReplay, self_imitation_update
from training.ppo.train import build_agent

ROOT = Path(__file__).resolve().parents[1]


def test_discounted_returns_by_hand():
    # R2 = 2 + 0.5 * 4 = 4, R1 = 0 + 0.5 * 4 = 2, R0 = 1 + 0.5 * 2 = 2
    assert discounted_returns(np.array([1.0, 0.0, 2.0]), 0.5, bootstrap=4.0).tolist() == [2.0, 2.0, 4.0]
    assert discounted_returns(np.array([1.0, 1.0]), 0.9).tolist() == pytest.approx([1.9, 1.0])


def test_sil_loss_follows_only_returns_above_the_value():
    log_prob = torch.tensor([-0.5, -1.0], requires_grad=True)
    value = torch.tensor([1.0, 3.0], requires_grad=True)
    returns, weights = torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0])
    loss, stats, priorities = sil_loss(log_prob, value, returns, weights, value_coef=0.1)
    # (R - V)_+ = [1, 0]: policy -(-0.5 * 1 + 0) / 2 = 0.25, value 0.5 * (1 + 0) / 2 = 0.25
    assert stats["sil_policy_loss"].item() == pytest.approx(0.25)
    assert stats["sil_value_loss"].item() == pytest.approx(0.25)
    assert loss.item() == pytest.approx(0.25 + 0.1 * 0.25)
    assert priorities.tolist() == [1.0, 0.0] and stats["sil_positive_fraction"].item() == 0.5
    loss.backward()
    # The second sample's return is below its value: it moves neither the policy nor the critic.
    assert log_prob.grad.tolist() == pytest.approx([-0.5, 0.0])
    assert value.grad.tolist() == pytest.approx([0.1 * -(2.0 - 1.0) / 2, 0.0])


def _rollout(T, N, rewards, terminated=None, truncated=None, bootstrap=None, start=0):
    """obs[t, n] = [start + t, n] so the stored order can be read back; values all 0."""
    obs = np.stack(np.meshgrid(np.arange(start, start + T), np.arange(N), indexing="ij"), -1).astype(np.float32)
    zeros = np.zeros((T, N), np.float32)
    return dict(obs={"obs": obs}, actions=np.arange(T * N).reshape(T, N), rewards=np.asarray(rewards, np.float32),
                values=zeros, terminated=zeros if terminated is None else np.asarray(terminated, np.float32),
                truncated=zeros if truncated is None else np.asarray(truncated, np.float32),
                bootstrap_values=zeros if bootstrap is None else np.asarray(bootstrap, np.float32))  # fmt: skip


def test_replay_stitches_episodes_across_rollouts_and_bootstraps_time_limits():
    replay = SelfImitationReplay(capacity=100, num_envs=2, gamma=0.5)
    # Env 0 plays on through the first rollout; env 1 is cut by a time limit at its second step (V = 8).
    replay.add_rollout(**_rollout(3, 2, [[1, 2], [1, 4], [1, 0]], truncated=[[0, 0], [0, 1], [0, 0]],
                                  bootstrap=[[0, 0], [0, 8], [0, 0]]))  # fmt: skip
    assert replay.size == 2  # env 1's episode: R1 = 4 + 0.5 * 8 = 8, R0 = 2 + 0.5 * 8 = 6
    assert replay.storage["returns"][:2].tolist() == [6.0, 8.0]
    assert replay.storage["obs/obs"][:2].tolist() == [[0, 1], [1, 1]]
    # Env 0's episode ends for real at the second step of the next rollout: five steps of reward 1.
    replay.add_rollout(**_rollout(3, 2, [[1, 0], [1, 0], [0, 0]], terminated=[[0, 0], [1, 0], [0, 0]], start=3))
    assert replay.size == 7 and replay.episodes_added == 2
    assert replay.storage["returns"][2:7].tolist() == [1.9375, 1.875, 1.75, 1.5, 1.0]
    assert replay.storage["obs/obs"][2:7, 0].tolist() == [0, 1, 2, 3, 4]  # steps 0-2, then 3-4 of the next rollout
    assert replay.storage["actions"][2:7].tolist() == [0, 2, 4, 0, 2]
    # The games still in progress wait: env 0's new episode (one step) and env 1's (four steps).
    assert [sum(len(c["rewards"]) for c in p) for p in replay.pending] == [1, 4]


def test_replay_keeps_the_newest_transitions():
    replay = SelfImitationReplay(capacity=4, num_envs=1, gamma=1.0)
    for start in (0, 3):
        replay.add_rollout(**_rollout(3, 1, [[1], [1], [1]], terminated=[[0], [0], [1]], start=start))
    assert replay.size == 4
    assert sorted(replay.storage["obs/obs"][:, 0].tolist()) == [2, 3, 4, 5]


def test_sampling_favours_positive_advantages_and_priorities_follow_the_learner():
    replay = SelfImitationReplay(capacity=1000, num_envs=1, gamma=1.0)
    rewards = np.zeros((100, 1), np.float32)
    rewards[-1] = 1.0  # values 0: every step's return is 1 ...
    values = np.ones((100, 1), np.float32)
    values[7] = 0.0  # ... and only step 7 was underestimated
    replay.add_rollout(**{**_rollout(100, 1, rewards, terminated=np.eye(100, 1, -99)), "values": values})
    generator = torch.Generator().manual_seed(0)
    slots, sampled, weights = replay.sample(512, generator)
    assert (slots == 7).mean() > 0.95 and weights.max() == 1.0
    replay.update_priorities(np.array([7]), np.array([0.0]))  # the learner now expects it
    slots, _, _ = replay.sample(512, generator)
    assert (slots == 7).mean() < 0.05


def _cartpole(**changes):
    cfg = dataclasses.replace(apply_preset(PPOConfig(env_id="CartPole-v1")), **changes)
    obs_space, act_space = probe_spaces(cfg.env_id)
    torch.manual_seed(0)
    agent = build_agent(cfg, obs_space, act_space)
    return cfg, agent, torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-5)


def _good_episode(agent, length=20):
    """A CartPole episode whose every step chose action 1 and earned far more than the critic expects."""
    obs = np.random.default_rng(0).normal(0, 0.05, (length, 1, 4)).astype(np.float32)
    with torch.no_grad():
        _, values, _ = agent({"obs": torch.as_tensor(obs[:, 0])}, None, None)
    rewards = np.full((length, 1), 10.0, np.float32)
    return {**_rollout(length, 1, rewards, terminated=np.eye(length, 1, -(length - 1))), "obs": {"obs": obs},
            "actions": np.ones((length, 1), np.int64), "values": values.numpy()[:, None]}  # fmt: skip


def test_update_imitates_the_good_episode_and_lifts_the_critic_towards_its_returns():
    cfg, agent, optimizer = _cartpole()
    episode = _good_episode(agent)
    replay = SelfImitationReplay(1000, 1, cfg.gamma)
    replay.add_rollout(**episode)
    obs = torch.as_tensor(episode["obs"]["obs"][:, 0])
    with torch.no_grad():
        dist, value_before, _ = agent({"obs": obs}, None, None)
        p_before = dist.log_prob(torch.ones(len(obs))).exp().mean().item()
    stats = self_imitation_update(agent, optimizer, replay, 50, 64, 0.01, 0.5, torch.Generator().manual_seed(1),
                                  torch.device("cpu"))  # fmt: skip
    with torch.no_grad():
        dist, value_after, _ = agent({"obs": obs}, None, None)
    assert p_before < 0.6 and dist.log_prob(torch.ones(len(obs))).exp().mean().item() > 0.8
    assert (value_after > value_before + 1.0).all()
    assert stats["sil_replay_size"] == 20 and stats["sil_positive_fraction"] > 0.9


def test_replay_in_a_checkpoint_gives_the_same_next_update(tmp_path):
    cfg, agent, optimizer = _cartpole()
    replay = SelfImitationReplay(1000, 1, cfg.gamma)
    replay.add_rollout(**_good_episode(agent))
    generator = torch.Generator().manual_seed(3)
    path = save_checkpoint(tmp_path, {"model": agent.state_dict(), "optimizer": optimizer.state_dict(),
                                      "generator": generator.get_state(), "sil_replay": replay.state_dict()}, 1)  # fmt: skip
    self_imitation_update(agent, optimizer, replay, 3, 8, 0.01, 0.5, generator, torch.device("cpu"))

    payload = load_checkpoint(path)  # weights_only: the replay is plain tensors
    _, other, other_optimizer = _cartpole()
    other.load_state_dict(payload["model"])
    other_optimizer.load_state_dict(payload["optimizer"])
    restored = SelfImitationReplay(1000, 1, cfg.gamma)
    restored.load_state_dict(payload["sil_replay"])
    other_generator = torch.Generator()
    other_generator.set_state(payload["generator"])
    self_imitation_update(other, other_optimizer, restored, 3, 8, 0.01, 0.5, other_generator, torch.device("cpu"))
    for (name, a), b in zip(agent.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert np.array_equal(replay.storage["priorities"], restored.storage["priorities"])


def _train(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "train_ppo.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)  # fmt: skip


def test_a_run_with_self_imitation_checkpoints_its_replay_and_resumes_with_it(tmp_path):
    args = ["--sil-updates", "2", "--sil-batch-size", "64", "--seed", "1", "--runs-dir", str(tmp_path),
            "--no-progress", "--eval-episodes", "0", "--checkpoint-every", "2048"]  # fmt: skip
    first = _train(*args, "--total-timesteps", "6144", "--no-stop-when-solved")
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    saved = load_checkpoint(run_dir)["sil_replay"]
    assert saved["size"] > 0 and len(saved["storage"]["returns"]) == saved["size"]
    resumed = _train("--resume", str(run_dir), "--total-timesteps", "8192", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_checkpoint(run_dir)["sil_replay"]["episodes_added"] > saved["episodes_added"]
