"""MuZero's benchmark figures: search throughput (simulations per second) and env steps / wall time to
solve an env, each run in a fresh process. launch/benchmark.py --muzero prints and tabulates them."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from queue import Empty

import numpy as np
import torch

from agents.muzero.networks import root_inference, search_callback
from agents.muzero.policies import run_policy
from agents.muzero.search import RecurrentFnOutput
from training.cli import run_in_child
from training.interrupts import children_stop_too
from training.muzero.config import MuZeroConfig, build_model, model_spaces, search_config
from training.muzero.train import train_muzero


def constant_model(num_actions: int, hidden_state: int):
    """A stand-in for the learned model that costs (almost) nothing: every step gives reward 0, the
    same hidden state, uniform prior logits and value 0. Timing the search with it shows the tree's own
    cost."""

    def recurrent_fn(state: torch.Tensor, action: torch.Tensor):
        batch = len(action)
        return RecurrentFnOutput(np.zeros(batch), state, np.zeros((batch, num_actions)), np.zeros(batch))

    return recurrent_fn


@dataclass
class ThroughputResult:
    roots: int
    simulations: int
    model: str
    simulations_per_second: float
    device: str = "cpu"


def search_throughput(
    cfg: MuZeroConfig, roots: int, simulations: int, model: str = "real", repeats: int = 5, seed: int = 0,
    device: str = "cpu",
) -> ThroughputResult:
    """Simulations per second of one batched search of `roots` roots x `simulations` simulations (the
    best of `repeats`, after one warm-up), with the env's model as MuZero builds it ('real', freshly
    initialised: the cost does not depend on the weights) or the constant stand-in ('constant'). The
    tree lives in numpy either way; `device` is where the real model's inference runs."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    net = build_model(cfg).eval().to(device)
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((roots, int(np.prod(model_spaces(cfg.env_id).obs_shape)))).astype(np.float32)
    root = root_inference(net, obs)
    recurrent = search_callback(net) if model == "real" else constant_model(net.num_actions, root.embedding.shape[-1])
    search = dataclasses.replace(search_config(cfg), num_simulations=simulations)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        run_policy(root, recurrent, search, rng)
        best = min(best, time.perf_counter() - start)
    return ThroughputResult(roots, simulations, model, roots * simulations / best, str(device))


@dataclass
class SolveResult:
    env_id: str
    seed: int
    solved: bool
    env_steps: int | None
    """env steps of self-play at the first greedy evaluation that reached the threshold"""
    seconds: float | None
    final_eval_return: float | None
    total_steps: int
    torch_threads: int
    """the run's own intra-op thread count, for the table's provenance line"""
    evaluations: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    """(env steps, greedy evaluation return) of every evaluation of the run"""
    steps_per_second: float = 0.0
    """env steps of self-play (with its learning, evaluations included) per wall-clock second"""

    def held(self, floor: float) -> bool | None:
        """Whether every evaluation after the first solve stayed >= floor (None if never solved; True if
        the run stopped at its first solve, so nothing came after)."""
        if self.env_steps is None:
            return None
        return all(r >= floor for s, r in self.evaluations if s > self.env_steps)


def _solve_one(cfg: MuZeroConfig, queue: mp.Queue) -> None:
    start = time.perf_counter()
    result = train_muzero(cfg)
    wall = time.perf_counter() - start
    first = result.solved_at or (None, None)  # solved as the run judges it (TicTacToe: its audit too)
    queue.put(SolveResult(cfg.env_id, cfg.seed, first[0] is not None, first[0], first[1], result.eval_return,
                          result.global_step, torch.get_num_threads(), [(s, r) for s, _, r in result.eval_history],
                          result.global_step / wall))  # fmt: skip


def time_to_solve(cfg: MuZeroConfig, seeds: int, first_seed: int = 1, parallel: int = 1) -> list[SolveResult]:
    """train_muzero once per seed (first_seed .. first_seed + seeds - 1), each in a fresh process,
    `parallel` at a time (one torch thread each); results in seed order."""
    ctx = mp.get_context("spawn")
    pending = list(range(first_seed, first_seed + seeds))
    running: list[tuple[BaseProcess, mp.Queue]] = []
    results = []
    with children_stop_too(lambda: [proc for proc, _ in running]):  # a stop ends the seeds' runs too
        while pending or running:
            while pending and len(running) < parallel:
                queue = ctx.Queue()
                seed_cfg = dataclasses.replace(cfg, seed=pending.pop(0), progress=False)
                proc = ctx.Process(target=run_in_child, args=("train_muzero.py", _solve_one, seed_cfg, queue))
                proc.start()
                running.append((proc, queue))
            for proc, queue in list(running):
                # Take the result before join: a child does not exit while its queued result is unread.
                if queue.empty() and proc.is_alive():
                    continue
                with contextlib.suppress(Empty):  # empty: the run failed (its error went to stderr)
                    results.append(queue.get(timeout=2.0))
                proc.join()
                running.remove((proc, queue))
            time.sleep(0.2)
    return sorted(results, key=lambda r: r.seed)
