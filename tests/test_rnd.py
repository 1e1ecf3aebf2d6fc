"""Random network distillation: the bonus falls where the agent has been and stays where it has not, the
reward of each step is the novelty of the observation after it, the intrinsic return runs across episode
ends (checked against a hand-computed sum), and the real command trains and logs with it
(agents/rnd.py, training/ppo/exploration.py; resuming it bit-identically is in test_checkpoint.py, its
flags' refusals in test_errors.py)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs import probe_spaces
from training.ppo.config import PPOConfig, apply_preset, parse_ppo_config
from training.ppo.executors import InProcessExecutor
from training.ppo.exploration import RNDLearner
from training.ppo.rollout import Rollout
from training.ppo.train import PPOLearner, build_agent

ROOT = Path(__file__).resolve().parents[1]
DIM = 8


def _rollout(obs: np.ndarray, last_obs: np.ndarray, terminated: np.ndarray | None = None) -> Rollout:
    """A rollout of observations [T, N, DIM] and the observations after it [N, DIM]; only what RND reads."""
    steps, envs = obs.shape[:2]
    zeros = np.zeros((steps, envs), np.float32)
    return Rollout(obs={"obs": obs}, last_obs={"obs": last_obs}, actions=zeros.astype(np.int64), log_probs=zeros,
                   values=zeros, rewards=zeros, terminated=zeros if terminated is None else terminated,
                   truncated=zeros, bootstrap_values=zeros, last_values=zeros[0], policy_version=0)  # fmt: skip


def _one_hots(cells: np.ndarray) -> np.ndarray:
    return np.eye(DIM, dtype=np.float32)[cells]


def _learner(seed: int = 0, envs: int = 4, gamma: float = 0.99, gae_lambda: float = 0.95) -> RNDLearner:
    torch.manual_seed(seed)
    return RNDLearner((DIM,), envs, gamma, gae_lambda, 1.0, 1e-3, torch.device("cpu"))


def _targets(learner: RNDLearner, rollout: Rollout):
    """What the PPO learner hands RND: the rollout's observations flattened time-major, and the last ones."""
    obs = rollout.obs["obs"]
    return learner.targets(torch.as_tensor(obs.reshape(-1, *obs.shape[2:])), rollout.last_obs["obs"])


def test_the_bonus_falls_on_states_visited_and_stays_on_states_never_seen():
    learner = _learner()
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    # The agent only ever sees cells 0-3; the novelty of cells 4-7 is what must survive.
    seen = lambda: _one_hots(rng.integers(0, 4, (16, 4)))  # noqa: E731
    first = _targets(learner, _rollout(seen(), _one_hots(rng.integers(0, 4, 4))))
    for _ in range(60):
        learner.update(_targets(learner, _rollout(seen(), _one_hots(rng.integers(0, 4, 4)))), 1e-3, 2, 2, 0.5, generator)
    with torch.no_grad():
        rnd = learner.rnd

        def bonus(cells):
            x = rnd.whitened(torch.as_tensor(_one_hots(np.array(cells))))
            return rnd.intrinsic_rewards(x, rnd.target(x))

        familiar, novel = bonus([0, 1, 2, 3]), bonus([4, 5, 6, 7])
    assert familiar.max() < 0.05 * first.stats["rnd_intrinsic_reward"]
    assert novel.min() > 20 * familiar.max()


def test_each_steps_bonus_is_the_novelty_of_the_observation_it_led_to():
    learner = _learner(envs=2)
    # Every observation of the rollout is cell 0; only the one after its last step (env 1) is new.
    obs = _one_hots(np.zeros((5, 2), np.int64))
    _targets(learner, _rollout(obs, _one_hots(np.array([0, 0]))))  # whitening statistics: cell 0 only
    rewards = _targets(learner, _rollout(obs, _one_hots(np.array([0, 5])))).rewards
    # The last step of env 1 led to the new cell: its bonus stands out; every other step led to cell 0.
    others = np.delete(rewards.reshape(-1), 4 * 2 + 1)
    assert rewards[4, 1] > 10 * others.max()
    np.testing.assert_allclose(others, others[0], rtol=1e-6)


def test_the_intrinsic_return_runs_on_across_episode_ends():
    """With a critic that answers 0, GAE's advantage is sum_k (gamma lambda)^k r_{t+k}, the rewards the raw
    prediction errors over the running std of their discounted sum: computed here by hand, and equal
    whether or not the rollout has episode ends."""
    gamma, lam = 0.9, 0.5
    rng = np.random.default_rng(1)
    obs, last = _one_hots(rng.integers(0, DIM, (6, 3))), _one_hots(rng.integers(0, DIM, 3))
    ends = np.zeros((6, 3), np.float32)
    ends[2, 0] = ends[4, 2] = 1.0
    results = []
    for terminated in (None, ends):
        learner = _learner(seed=3, envs=3, gamma=gamma, gae_lambda=lam)
        torch.nn.init.zeros_(learner.rnd.intrinsic_critic[-1].weight)
        torch.nn.init.zeros_(learner.rnd.intrinsic_critic[-1].bias)
        results.append(_targets(learner, _rollout(obs, last, terminated)))
        raw_stats = learner.reward_scaler
    plain, ended = results
    np.testing.assert_array_equal(plain.advantages, ended.advantages)

    rnd = _learner(seed=3, envs=3).rnd  # the same networks, before any statistics
    rnd.observe(torch.as_tensor(np.concatenate([obs[1:], last[None]]).reshape(-1, DIM)))
    with torch.no_grad():
        x = rnd.whitened(torch.as_tensor(np.concatenate([obs[1:], last[None]]).reshape(-1, DIM)))
        raw = rnd.intrinsic_rewards(x, rnd.target(x)).numpy().reshape(6, 3).astype(np.float64)
    discounted = np.zeros((6, 3))
    running = np.zeros(3)
    for t in range(6):  # the scaler's non-episodic discounted sums, then their variance
        running = running * gamma + raw[t]
        discounted[t] = running
    assert raw_stats.var == pytest.approx(discounted.var(), rel=1e-6)
    rewards = raw / np.sqrt(discounted.var() + 1e-8)
    expected = np.zeros((6, 3))
    for t in range(6):
        expected[t] = sum((gamma * lam) ** k * rewards[t + k] for k in range(6 - t))
    np.testing.assert_allclose(plain.advantages, expected, rtol=1e-5)


def test_at_a_bonus_weight_of_zero_the_policy_learns_what_plain_ppo_learns():
    """--anneal-rnd's last updates weigh the bonus by ~0: the policy's step is then plain PPO's, bit for bit,
    while the predictor and the intrinsic critic go on learning."""
    cfg = dataclasses.replace(apply_preset(PPOConfig(env_id="CartPole-v1")), num_minibatches=4, update_epochs=2)
    obs_space, act_space = probe_spaces(cfg.env_id)
    learners = []
    for rnd_coef in (0.0, 0.5, 0.5):  # plain PPO, the bonus weighed by 0, the bonus at its full weight
        torch.manual_seed(1)
        learners.append(PPOLearner(build_agent(cfg, obs_space, act_space), dataclasses.replace(cfg, rnd_coef=rnd_coef),
                                   torch.device("cpu")))  # fmt: skip
    plain, bonus, weighted = learners
    with InProcessExecutor(cfg.env_id, obs_space, act_space, plain.agent, cfg.num_envs, 1, cfg.num_steps, 7) as ex:
        rollout = ex.collect()
    predictor_before = [p.clone() for p in bonus.rnd.rnd.predictor.parameters()]
    plain.update(rollout, 1e-3)
    bonus.update(rollout, 1e-3, rnd_coef=0.0)
    for (name, a), b in zip(plain.agent.state_dict().items(), bonus.agent.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(predictor_before, bonus.rnd.rnd.predictor.parameters(), strict=True))
    # At its full weight the bonus moves the policy elsewhere.
    weighted.update(rollout, 1e-3)
    assert any(not torch.equal(a, b) for a, b in zip(plain.agent.parameters(), weighted.agent.parameters(), strict=True))


def test_train_ppo_with_rnd_logs_the_bonus_and_evaluates_without_it(tmp_path):
    args = ["--rnd-coef", "0.5", "--anneal-rnd", "--rnd-anneal-fraction", "0.5", "--total-timesteps", "4096", "--seed", "1", "--runs-dir", str(tmp_path),
            "--no-progress", "--eval-episodes", "0", "--no-stop-when-solved"]  # fmt: skip
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "train_ppo.py"), *args], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("rnd_predictor_loss", "rnd_value_loss", "rnd_intrinsic_reward", "rnd_explained_variance"):
        assert f"losses/{tag}" in tags
    rewards = [e.value for e in acc.Scalars("losses/rnd_intrinsic_reward")]
    assert all(np.isfinite(rewards)) and rewards[-1] < rewards[0]  # the predictor catches up with CartPole's states
    # --anneal-rnd: the bonus's weight falls linearly from 0.5 at the first update to 0 halfway
    # (--rnd-anneal-fraction 0.5), and stays 0 for the second half.
    coefs = [e.value for e in acc.Scalars("charts/rnd_coef")]
    updates = len(coefs)
    assert updates >= 8 and updates % 2 == 0
    expected = [0.5 * (1 - i / (updates / 2)) for i in range(updates // 2)] + [0.0] * (updates // 2)
    np.testing.assert_allclose(coefs, expected, rtol=1e-6, atol=1e-9)
    # The bonus is training's business: the policy evaluates from its checkpoint like any other.
    evaluated = subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), str(run_dir), "--episodes", "2"],
                               capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


def test_minatar_presets_turn_the_bonus_and_reward_scaling_on_where_measured_and_flags_turn_them_off():
    seaquest = parse_ppo_config(["--env-id", "MinAtar/Seaquest-v0"])
    assert (seaquest.rnd_coef, seaquest.anneal_rnd, seaquest.normalize_reward, seaquest.learning_rate) == (2.0, True, True, 1e-3)
    assert parse_ppo_config(["--env-id", "MinAtar/Seaquest-v0", "--rnd-coef", "0", "--no-anneal-rnd"]).rnd_coef == 0.0
    assert not parse_ppo_config(["--env-id", "MinAtar/Seaquest-v0", "--no-normalize-reward"]).normalize_reward
    breakout = parse_ppo_config(["--env-id", "MinAtar/Breakout-v0"])
    assert (breakout.rnd_coef, breakout.normalize_reward, breakout.anneal_lr) == (0.0, True, False)
    asterix = parse_ppo_config(["--env-id", "MinAtar/Asterix-v0"])
    assert (asterix.rnd_coef, asterix.normalize_reward) == (0.0, False)
