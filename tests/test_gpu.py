"""The CUDA path, run for real: skipped without an NVIDIA GPU, selected alone with `pytest -m gpu`.

What only a GPU can show: the learners' updates on CUDA agree with the CPU's on the same data, DDP's
gradient averaging and the gathers run over NCCL, MuZero's search takes its model on the GPU, both
commands train there end to end (checkpoints load on a CPU-only machine) and log the GPU's memory."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.muzero.networks import root_inference, search_callback
from agents.muzero.policies import run_policy
from envs import probe_spaces
from training.distributed import SINGLE, DataParallel, run_data_parallel
from training.muzero.config import MuZeroConfig, build_model, model_spaces, search_config
from training.muzero.train import train_muzero
from training.ppo.config import PPOConfig, apply_preset
from training.ppo.executors import InProcessExecutor
from training.ppo.train import PPOLearner, build_agent, train
from training.trained_agent import load_trained_agent

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)"),
]

CFG = PPOConfig(env_id="CartPole-v1", preset="cleanrl", num_envs=4, num_steps=32, num_minibatches=2, update_epochs=3,
                normalize_obs=True, target_kl=None, eval_episodes=0, progress=False)  # fmt: skip


def _rollout_and_agent():
    torch.manual_seed(0)
    obs_space, act_space = probe_spaces(CFG.env_id)
    agent = build_agent(CFG, obs_space, act_space)
    with InProcessExecutor(CFG.env_id, obs_space, act_space, agent, 4, 1, CFG.num_steps, 7) as executor:
        rollout = executor.collect()
    return agent, rollout


def _updated(agent, rollout, device: torch.device, parallel: DataParallel = SINGLE) -> dict:
    agent = copy.deepcopy(agent).to(device)
    torch.manual_seed(1)  # the minibatch order
    PPOLearner(agent, CFG, device, parallel).update(rollout, 1e-3)
    return {k: v.detach().cpu() for k, v in agent.state_dict().items()}


def _assert_close(a: dict, b: dict) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4, msg=k)


def test_a_ppo_update_on_cuda_matches_the_cpus():
    agent, rollout = _rollout_and_agent()
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    on_cpu = _updated(agent, rollout, torch.device("cpu"))
    on_cuda = _updated(agent, rollout, torch.device("cuda"))
    assert any(not torch.equal(on_cpu[k], before[k]) for k in before)  # the update moved the weights
    _assert_close(on_cuda, on_cpu)


class _OneLearnerDDP(DataParallel):
    """A world of one that still goes through DDP and the collectives (one GPU cannot host two NCCL
    ranks): the wrap, the all-reduce of every gradient and the gathers run over NCCL for real."""

    @property
    def enabled(self) -> bool:
        return True


def _update_over_nccl(parallel: DataParallel):
    from torch import distributed as dist

    torch.cuda.set_device(0)
    agent, rollout = _rollout_and_agent()
    weights = _updated(agent, rollout, torch.device("cuda", 0), _OneLearnerDDP(parallel.rank, parallel.world_size))
    gathered = _OneLearnerDDP(0, 1).gather(np.arange(3, dtype=np.float32))
    return dist.get_backend(), weights, gathered


def test_the_data_parallel_update_runs_over_nccl():
    backend, weights, gathered = run_data_parallel(_update_over_nccl, (), 1, use_cuda=True)
    assert backend == "nccl"
    np.testing.assert_array_equal(gathered, [0, 1, 2])
    agent, rollout = _rollout_and_agent()
    _assert_close(weights, _updated(agent, rollout, torch.device("cuda")))  # averaging over one is the identity


def _event_tags(run_dir) -> set[str]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_ppo_solves_cartpole_on_cuda(tmp_path):
    cfg = dataclasses.replace(apply_preset(PPOConfig(env_id="CartPole-v1")), device="cuda", runs_dir=str(tmp_path),
                              progress=False)  # fmt: skip
    result = train(cfg)
    assert result.solved, result.mean_return
    assert {"system/gpu_memory_allocated_mib", "system/gpu_memory_peak_mib"} <= _event_tags(result.run_dir)
    _plays_on_the_cpu(result.run_dir)


def test_muzero_trains_on_cuda(tmp_path):
    cfg = MuZeroConfig(env_id="CartPole-v1", device="cuda", total_timesteps=600, warmup_steps=200, eval_every=600,
                       eval_episodes=2, runs_dir=str(tmp_path), progress=False)  # fmt: skip
    result = train_muzero(cfg)
    assert result.global_step >= 600
    tags = _event_tags(result.run_dir)
    assert {"losses/loss", "system/gpu_memory_allocated_mib"} <= tags, sorted(tags)
    assert _plays_on_the_cpu(result.run_dir).payload["updates"] > 0


def _plays_on_the_cpu(run_dir):
    """A checkpoint written on the GPU rebuilt as watch.py and evaluate.py do on a machine without one."""
    trained = load_trained_agent(run_dir)
    assert {p.device.type for p in trained.policy.parameters()} == {"cpu"}
    return trained


@pytest.mark.parametrize("env_id", ["CartPole-v1", "rlgames/ConnectFour-v0"])
def test_the_search_takes_its_model_on_cuda(env_id):
    torch.manual_seed(0)
    cfg = MuZeroConfig(env_id=env_id)
    model = build_model(cfg).eval()
    on_cuda = copy.deepcopy(model).cuda()
    obs = np.random.default_rng(0).random((8, int(np.prod(model_spaces(env_id).obs_shape))), dtype=np.float32)
    root_cpu, root_cuda = root_inference(model, obs), root_inference(on_cuda, obs)
    np.testing.assert_allclose(root_cuda.value, root_cpu.value, atol=1e-4)
    np.testing.assert_allclose(root_cuda.prior_logits, root_cpu.prior_logits, atol=1e-4)
    actions = torch.arange(8) % model.num_actions
    step_cpu = search_callback(model)(root_cpu.embedding, actions)
    step_cuda = search_callback(on_cuda)(root_cuda.embedding, actions)
    assert step_cuda.embedding.device.type == "cpu"  # the tree keeps states in numpy
    for a, b in zip(step_cuda[:1] + step_cuda[2:], step_cpu[:1] + step_cpu[2:], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    result = run_policy(root_cuda, search_callback(on_cuda), search_config(cfg), np.random.default_rng(0))
    assert result.action_weights.shape == (8, model.num_actions)
    np.testing.assert_allclose(result.action_weights.sum(-1), 1.0, atol=1e-6)

