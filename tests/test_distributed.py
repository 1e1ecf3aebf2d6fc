"""Data-parallel learners (DDP) on CPU with gloo and 2 processes: replicas stay identical, and the
training command runs with --num-learners 2."""

import atexit
import dataclasses
import os

import numpy as np
import pytest
import torch

from envs import probe_spaces
from training.distributed import DataParallel, run_data_parallel
from training.ppo.config import PPOConfig
from training.ppo.executors import InProcessExecutor
from training.ppo.train import PPOLearner, build_agent, train

CFG = PPOConfig(env_id="CartPole-v1", preset="cleanrl", num_envs=4, num_steps=32, num_minibatches=2, update_epochs=3,
                normalize_obs=True, normalize_reward=True, target_kl=0.002, eval_episodes=0, progress=False)  # fmt: skip


def _two_updates(parallel: DataParallel):
    torch.set_num_threads(1)
    obs_space, act_space = probe_spaces(CFG.env_id)
    torch.manual_seed(100 + parallel.rank)  # different initial weights: DDP must start both from rank 0's
    agent = build_agent(CFG, obs_space, act_space)
    initial = {k: v.clone() for k, v in agent.state_dict().items()}
    learner = PPOLearner(agent, CFG, torch.device("cpu"), parallel)
    checksums = []
    # Each learner steps its own 2 envs on its own seeds: different data, one shared update.
    with InProcessExecutor(CFG.env_id, obs_space, act_space, agent, 2, 1, CFG.num_steps, 10 + 2 * parallel.rank) as ex:
        for version in range(2):
            rollout = ex.collect()
            checksums.append(float(rollout.obs["obs"].sum()))
            stats = learner.update(rollout, 1e-3)
            ex.set_weights(agent.state_dict(), version + 1)
    state = {k: v.clone() for k, v in agent.state_dict().items()}
    return parallel.gather_objects((initial, state, checksums, stats["epochs"]))


def test_ddp_replicas_stay_identical_after_updates():
    (init0, state0, data0, epochs0), (init1, state1, data1, epochs1) = run_data_parallel(_two_updates, (), 2, False)
    assert data0 != data1  # the two learners trained on different rollouts
    assert any(not torch.equal(init0[k], init1[k]) for k in init0)  # and started from different weights
    for k in state0:
        assert torch.equal(state0[k], state1[k]), k  # weights and observation statistics alike
    assert any(not torch.equal(state0[k], init0[k]) for k in state0)
    assert epochs0 == epochs1  # the target-KL stop was taken together (apart, one would wait forever)


def test_train_with_two_learners(tmp_path):
    cfg = dataclasses.replace(CFG, total_timesteps=1024, runs_dir=str(tmp_path), backend="inprocess", num_learners=2,
                              target_kl=None)  # fmt: skip
    result = train(cfg)
    # 4 envs in all (2 per learner) x 32 steps = 128 env steps an update, counted across both learners.
    assert result.global_step == 1024
    (run_dir,) = tmp_path.iterdir()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000000001024.pt"]
    assert np.isfinite(result.sps)


def _sum_then_abort_at_exit(value: int, abort_rank: int | None, parallel: DataParallel):
    """The ranks' values summed; the learner abort_rank aborts at its interpreter's exit (SIGABRT), as
    gloo's transport thread can while the group is torn down. None: every learner raises instead."""
    if abort_rank is None:
        raise RuntimeError("a learner failed")
    if parallel.rank == abort_rank:
        atexit.register(os.abort)
    return int(parallel.mean(torch.tensor(float(value + parallel.rank))).item() * parallel.world_size)


@pytest.mark.parametrize("abort_rank", [0, 1])
def test_a_learner_dying_after_the_run_is_complete_loses_nothing(abort_rank, capsys):
    assert run_data_parallel(_sum_then_abort_at_exit, (10, abort_rank), 2, False) == 21  # 10 + 11
    assert "after the run was complete; nothing lost" in capsys.readouterr().err


def test_a_learner_failing_during_the_run_fails_the_run():
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="a learner failed"):
        run_data_parallel(_sum_then_abort_at_exit, (10, None), 2, False)


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* write them) of the sockets listening on port."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    found.append(local.rsplit(":", 1)[0])
    return found


def test_the_rendezvous_store_listens_on_loopback_only():
    from training.distributed import _free_port, loopback_store

    port = _free_port()
    store = loopback_store(0, 1, port)
    store.set("k", "v")
    assert store.get("k") == b"v"
    assert _listening(port) == ["0100007F"]  # 127.0.0.1, and no 0.0.0.0 or :: socket beside it
