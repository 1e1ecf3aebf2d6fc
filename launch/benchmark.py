"""Benchmark PPO: env steps and wall seconds to solve each env, SPS and peak memory, per seed.

    python launch/benchmark.py                                  # CartPole-v1, Acrobot-v1, LunarLander-v3 x 3 seeds
    python launch/benchmark.py --envs CartPole-v1 --seeds 5 --json
    python launch/benchmark.py --envs CartPole-v1 --preset cleanrl --no-stop --budget 100000   # SPS only
    python launch/benchmark.py --envs LunarLander-v3 --budget 163840 --sweep-backends inprocess multiprocess ray
    python launch/benchmark.py --sc2-table --seeds 3               # StarCraft II mini-games (needs the game)
    python launch/benchmark.py --muzero --seeds 3                  # MuZero: search throughput, CartPole to solve
    python launch/benchmark.py --envs CartPole-v1 --seeds 10 --peer-python .peers/bin/python   # beside SB3 + rl-zoo
    python launch/benchmark.py --peer-python PY --cleanrl-script cleanrl/ppo.py --seeds 3   # beside CleanRL, SPS
    python launch/benchmark.py --op-costs --envs CartPole-v1 LunarLander-v3   # per-operation costs, torch vs kernel

Each run is a fresh process (so peak memory is the run's own). Prints one line per run (or one JSON
object per run with --json), then writes a Markdown table and PNG plots (return vs env steps and vs wall
time, mean and spread over seeds) into --out-dir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing as mp
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import typing
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import numpy as np
import torch
import tyro

from envs.factory import make_env, solved_return
from envs.sc2 import is_sc2, sc2_map_name
from training.cli import exit_process, run_cli, run_in_child
from training.errors import ConfigError
from training.interrupts import children_stop_too
from training.plots import plot_seed_band
from training.ppo.config import PPOConfig, apply_preset
from training.provenance import collect, describe


@dataclass
class BenchmarkArgs:
    envs: tuple[str, ...] = ("CartPole-v1", "Acrobot-v1", "LunarLander-v3")
    """env ids to benchmark"""
    seeds: int = 3
    """seeds per env (--first-seed .. --first-seed + seeds - 1)"""
    first_seed: int = 1
    """the first seed (to split one benchmark's seeds over several processes)"""
    budget: int | None = None
    """env-step budget per run; default: each preset's total_timesteps"""
    preset: str = "auto"
    """preset for every run ('auto' = each env's own; 'cleanrl' = CleanRL's ppo.py defaults)"""
    set: tuple[str, ...] = ()
    """extra config overrides, KEY=VALUE with PPOConfig field names, e.g. --set num_envs=16 update_epochs=10"""
    stop: bool = True
    """stop each run once solved (--no-stop: run the whole budget, to measure SPS)"""
    json: bool = False
    """print one JSON object per run instead of a text line"""
    out_dir: str = "docs/benchmark"
    """where the Markdown table and the plots go ('' to write nothing)"""
    label: str = ""
    """name of this benchmark's table and plots (default: the preset)"""
    runs_dir: str = "runs/benchmark"
    """run folders of the benchmark runs"""
    sweep_backends: tuple[str, ...] = ()
    """measure SPS (whole budget, no early stop) for each of these backends (inprocess, multiprocess, ray) x --sweep-workers, instead of the learning benchmark"""
    sweep_workers: tuple[int, ...] = (1, 2)
    """worker counts for --sweep-backends (in-process runs use 1)"""
    sc2_table: bool = False
    """StarCraft II: train each mini-game's preset (--envs default: all seven sc2/<map>) and write our greedy score (--sc2-eval-episodes episodes at the end) beside the SC2LE paper's and Reaver's published scores"""
    muzero: bool = False
    """MuZero instead of PPO: search simulations per second (16, 64 and 256 roots x 50 simulations, the real CartPole model and a constant stand-in), then env steps and wall time to solve CartPole-v1 per seed (--muzero-set overrides its config)"""
    parallel: int = 1
    """MuZero solve runs at a time (each in its own process on one torch thread; 2 uses both of a 2-core machine's cores)"""
    muzero_set: tuple[str, ...] = ()
    """MuZero config overrides for the solve runs, KEY=VALUE with MuZeroConfig field names (e.g. gumbel=true num_simulations=4)"""
    sc2_eval_episodes: int = 100
    """episodes of the final greedy evaluation behind each --sc2-table score (the SC2LE paper and Reaver report means over 100)"""
    peer_python: str = ""
    """a Python interpreter with stable-baselines3 and rl_zoo3 (`make peers` builds .peers/bin/python; they are not our dependencies): run SB3's PPO with rl-zoo's tuned settings beside each of our runs, seed by seed, interleaved, and print both with the ratios"""
    op_costs: bool = False
    """instead of training: the cost of PPO's operations for each --envs preset (one step of its vector env in this process, acting for its envs, one minibatch step of the update), through torch and through the compiled kernel (--mlp-kernel), median of repeated timings"""
    env_steps: bool = False
    """instead of training: raw env steps/s of each --envs preset's vector env in this process (random actions, median of --env-steps-repeats interleaved timings); Atari ids on both paths, ale-py's C++ vector env and gymnasium's wrappers"""
    env_steps_repeats: int = 5
    """timings per env and path for --env-steps (each 2,000 vector steps)"""
    cleanrl_script: str = ""
    """with --peer-python: the path of CleanRL's ppo.py (from a CleanRL checkout; that interpreter needs its packages): the peer is CleanRL with its defaults instead, ours runs --preset cleanrl without evaluation episodes (CleanRL's script plays none), both for the whole --budget (default 100000)"""


@dataclass
class SolveResult:
    """What every benchmarked run reports, ours or a peer's."""

    env_id: str
    seed: int
    solved: bool
    steps_to_solve: int | None
    seconds_to_solve: float | None
    total_steps: int
    total_seconds: float
    sps: float


@dataclass
class RunResult(SolveResult):
    rollout_seconds: float
    update_seconds: float
    peak_rss_mib: float
    final_mean_return: float | None
    eval_return: float | None = None
    torch_threads: int = 1
    """the run's own intra-op thread count, for the table's provenance line"""
    history: list = field(default_factory=list)


def _parse_overrides(pairs: tuple[str, ...], config_class: type = PPOConfig) -> dict:
    """KEY=VALUE pairs as config fields; KEY may name a field of a nested options dataclass (atari.vector)."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        head, dot, rest = key.partition(".")
        if sep and dot and head in fields and dataclasses.is_dataclass(hints[head]):
            nested = out.get(head, getattr(config_class(), head))
            out[head] = dataclasses.replace(nested, **_parse_overrides((f"{rest}={raw}",), hints[head]))
            continue
        if not sep or key not in fields:
            raise ConfigError(f"{pair!r}: expected KEY=VALUE with KEY one of {config_class.__name__}'s fields")
        default = getattr(config_class(), key)
        # A field whose default is None ("auto") takes its value's type from its annotation.
        kinds = [k for k in (bool, int, float, tuple) if k.__name__ in str(hints[key])]
        kind = type(default) if default is not None else (kinds[0] if kinds else float)
        if kind is bool and raw.lower() != "none":
            out[key] = raw.lower() in ("1", "true", "yes")
        elif kind is tuple:
            out[key] = tuple(int(x) for x in raw.split(","))
        elif raw.lower() == "none" and kind is not str:  # a string field may hold 'none'
            out[key] = None
        else:
            out[key] = kind(raw)
    return out


def _run_one(cfg: PPOConfig, queue: mp.Queue) -> None:
    from training.ppo.train import train

    result = train(cfg)
    # Solved as the run itself judges it: by the training episodes' last-100 mean or by evaluations.
    first = result.solved_at or (None, None)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    queue.put(RunResult(
        env_id=cfg.env_id, seed=cfg.seed, solved=first[0] is not None, steps_to_solve=first[0],
        seconds_to_solve=first[1], total_steps=result.global_step, total_seconds=result.seconds, sps=result.sps,
        rollout_seconds=result.rollout_seconds, update_seconds=result.update_seconds,
        peak_rss_mib=rss_kib / 1024, final_mean_return=result.mean_return, eval_return=result.eval_return,
        torch_threads=torch.get_num_threads(), history=result.history,
    ))  # fmt: skip


def _run_ours(env_id: str, seed: int, args: BenchmarkArgs, overrides: dict) -> RunResult | None:
    """One of our runs in a fresh process (so its peak memory is its own); None if it failed."""
    cfg = apply_preset(PPOConfig(env_id=env_id, preset=args.preset))
    cfg = dataclasses.replace(cfg, seed=seed, progress=False, exp_name="benchmark", runs_dir=args.runs_dir,
                              stop_when_solved=args.stop, **overrides)  # fmt: skip
    if args.budget:
        cfg = dataclasses.replace(cfg, total_timesteps=args.budget)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=run_in_child, args=("train_ppo.py", _run_one, cfg, queue))
    with children_stop_too(lambda: [proc]):
        proc.start()
        proc.join()
    if proc.exitcode != 0:
        print(f"{env_id} seed {seed}: run failed (exit code {proc.exitcode})", file=sys.stderr)
        return None
    return queue.get()


def _solve_text(solved: bool, steps: int | None, seconds: float | None, mean_return: float | None) -> str:
    return f"solved at {steps} steps, {seconds:.1f}s" if solved else f"not solved (last-100 mean {mean_return})"


def run_benchmark(args: BenchmarkArgs) -> list[RunResult]:
    overrides = _parse_overrides(args.set)
    results = []
    for env_id in args.envs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            r = _run_ours(env_id, seed, args, overrides)
            if r is None:
                continue
            results.append(r)
            if args.json:
                print(json.dumps({k: v for k, v in dataclasses.asdict(r).items() if k != "history"}), flush=True)
            else:
                solve = _solve_text(r.solved, r.steps_to_solve, r.seconds_to_solve, r.final_mean_return)
                print(f"{env_id:16s} seed {seed}: {solve}; {r.sps:.0f} SPS (rollout {r.rollout_seconds:.1f}s, "
                      f"update {r.update_seconds:.1f}s), peak RSS {r.peak_rss_mib:.0f} MiB", flush=True)  # fmt: skip
    return results


@functools.cache
def _started() -> dict:
    """This benchmark's record, read once when it starts (the commit then is the one measured)."""
    return collect()


def provenance_line(torch_threads: Iterable[int]) -> str:
    """What measured a table: this process's machine, versions, commit and command, with the torch thread
    counts that the measured runs set for themselves (each run is its own process)."""
    return describe(_started(), sorted(set(torch_threads)))


def _fmt(values: list[float], digits: int = 0) -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{median(values):.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def write_report(results: list[RunResult], out_dir: Path, label: str) -> Path:
    """Markdown table (median and range over seeds) and one PNG per env: return vs steps and vs seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        f"## {label}",
        "",
        "| env | solved | env steps to solve | wall s to solve | SPS | rollout / update s | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for env_id in dict.fromkeys(r.env_id for r in results):
        rs = [r for r in results if r.env_id == env_id]
        ok = [r for r in rs if r.solved]
        lines.append(
            f"| {env_id} | {len(ok)}/{len(rs)} | {_fmt([r.steps_to_solve for r in ok])} | "
            f"{_fmt([r.seconds_to_solve for r in ok], 1)} | {_fmt([r.sps for r in rs])} | "
            f"{median(r.rollout_seconds for r in rs):.1f} / {median(r.update_seconds for r in rs):.1f} | "
            f"{_fmt([r.peak_rss_mib for r in rs])} |"
        )
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, col, xlabel in ((axes[0], 0, "env steps"), (axes[1], 1, "wall seconds")):
            # history rows are (env steps, wall seconds, last-100 mean return)
            plot_seed_band(ax, [np.array(r.history)[:, [col, 2]] for r in rs if r.history])
            if solved_return(env_id) is not None:
                ax.axhline(solved_return(env_id), color="gray", ls="--", lw=1, label="solved")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("mean return, last 100 episodes")
            ax.grid(alpha=0.3)
        axes[0].legend(loc="lower right")
        fig.suptitle(f"PPO on {env_id} ({label})")
        fig.tight_layout()
        fig.savefig(out_dir / f"{label}_{env_id.replace('/', '-')}.png", dpi=90)
        plt.close(fig)
    lines += ["", provenance_line(r.torch_threads for r in results)]
    table = out_dir / f"{label}.md"
    table.write_text("\n".join(lines) + "\n")
    return table


def sweep_backends(args: BenchmarkArgs) -> list[str]:
    """SPS per env, backend and worker count (one seed each, the whole budget): Markdown table rows."""
    rows = ["| env | backend | workers | SPS | rollout / update s |", "|---|---|---|---|---|"]
    threads: list[int] = []
    for backend in args.sweep_backends:
        for workers in (1,) if backend == "inprocess" else args.sweep_workers:
            combo = dataclasses.replace(args, seeds=1, stop=False, set=(*args.set, f"backend={backend}",
                                        f"num_workers={workers}", "eval_episodes=0"))  # fmt: skip
            for r in run_benchmark(combo):
                rows.append(f"| {r.env_id} | {backend} | {workers} | {r.sps:.0f} | "
                            f"{r.rollout_seconds:.1f} / {r.update_seconds:.1f} |")  # fmt: skip
                threads.append(r.torch_threads)
    return [*rows, "", provenance_line(threads)] if len(rows) > 2 else rows


# Published mean scores on the mini-games: (random policy, FullyConv, StarCraft GrandMaster) from the
# SC2LE paper's Table 1 (Vinyals et al. 2017), and Reaver's A2C FullyConv (Ring 2018, mean over 100
# test episodes; it reports only these two maps).
SC2LE_SCORES = {
    "MoveToBeacon": (1, 26, 28), "CollectMineralShards": (17, 103, 177), "FindAndDefeatZerglings": (4, 45, 61),
    "DefeatRoaches": (1, 100, 215), "DefeatZerglingsAndBanelings": (23, 62, 727),
    "CollectMineralsAndGas": (12, 3978, 7566), "BuildMarines": (0, 3, 133),
}  # fmt: skip
REAVER_SCORES = {"MoveToBeacon": 26.3, "CollectMineralShards": 102.8}


def random_policy_score(env_id: str, episodes: int, seed: int, options) -> float:
    """The SC2LE paper's random policy on a StarCraft II env: a uniformly random available function with
    uniformly random arguments, every step; the mean score over `episodes`."""
    env = make_env(env_id, seed, env_kwargs={"options": options})()
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    scores = []
    for _ in range(episodes):
        total, done = 0.0, False
        while not done:
            action = env.action_space.sample()
            action[0] = rng.choice(np.flatnonzero(obs["available_actions"]))
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        scores.append(total)
        obs, _ = env.reset()
    env.close()
    return float(np.mean(scores))


def sc2_table(args: BenchmarkArgs) -> list[str]:
    """Train each mini-game's preset over the seeds and tabulate the final greedy scores (median and
    range over seeds) beside the published ones. The game's maps (sc2/<map>) and the simulated ones
    (sc2-sim/<map>) fill separate columns, so that no simulator score stands where a StarCraft II score
    would; for a simulated map the table also measures the random policy on the simulator. Runs on
    pysc2's mock say so in the header: the mock's scores are not StarCraft II results either."""
    envs = args.envs if args.envs != BenchmarkArgs.envs else tuple(f"sc2/{m}" for m in SC2LE_SCORES)
    if not all(is_sc2(e) for e in envs):
        raise ConfigError(f"--sc2-table takes StarCraft II env ids (sc2/<map>, sc2-sim/<map>), got {', '.join(envs)}")
    mock = any(e.startswith("sc2-mock/") for e in envs)
    combo = dataclasses.replace(args, envs=envs, stop=False, set=(*args.set, f"eval_episodes={args.sc2_eval_episodes}"))
    results = run_benchmark(combo)
    game = "ours on pysc2's MOCK (not StarCraft II scores)" if mock else "ours, StarCraft II (PPO FullyConv)"
    # The simulated maps show the greedy score and the sampled policy's last 100 training episodes (the
    # SC2LE paper's agent scores are of the policy as it trains, i.e. sampled).
    rows = [f"| map | SC2LE random | SC2LE FullyConv | GrandMaster | Reaver (A2C) | {game} | env steps | "
            "random (all functions), SIMULATED | ours, SIMULATED (sc2-sim: not StarCraft II), greedy | "
            "ours, SIMULATED, sampled last 100 | env steps, simulated |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in dict.fromkeys(sc2_map_name(e) for e in envs):
        cells = []
        for prefix in ("sc2/" if not mock else "sc2-mock/", "sc2-sim/"):
            env_id = prefix + name
            scores = [r.eval_return for r in results if r.env_id == env_id and r.eval_return is not None]
            steps = [r.total_steps for r in results if r.env_id == env_id]
            sampled = [r.final_mean_return for r in results if r.env_id == env_id and r.final_mean_return is not None]
            cells.append((_fmt(scores, 1), _fmt(steps), _fmt(sampled, 1)) if env_id in envs else ("-", "-", "-"))
        sim_random = "-"
        if f"sc2-sim/{name}" in envs:
            # the paper's random policy chooses among all the functions, not just the preset's
            options = dataclasses.replace(apply_preset(PPOConfig(env_id=f"sc2-sim/{name}")).sc2, functions=(), offer_no_op=True)
            sim_random = f"{random_policy_score(f'sc2-sim/{name}', args.sc2_eval_episodes, args.first_seed, options):.1f}"
        random_score, fully_conv, grandmaster = SC2LE_SCORES.get(name, ("-", "-", "-"))
        rows.append(f"| {name} | {random_score} | {fully_conv} | {grandmaster} | {REAVER_SCORES.get(name, '-')} | "
                    f"{cells[0][0]} | {cells[0][1]} | {sim_random} | {cells[1][0]} | {cells[1][2]} | {cells[1][1]} |")  # fmt: skip
    return [*rows, "", provenance_line(r.torch_threads for r in results)]


def muzero_report(args: BenchmarkArgs) -> list[str]:
    """Search throughput table, then one line per seed of the CartPole solve runs and their summary."""
    from training.muzero.benchmark import search_throughput, time_to_solve
    from training.muzero.config import MuZeroConfig, apply_muzero_preset

    # Evaluations as the target measures them: 20 greedy episodes every 1,000 env steps; the
    # env's preset as train_muzero.py would take it, then --muzero-set.
    base = apply_muzero_preset(MuZeroConfig(eval_every=1_000, eval_episodes=20))
    cfg = dataclasses.replace(base, **_parse_overrides(args.muzero_set, MuZeroConfig))
    # The model's inference on the GPU too where there is one (the tree stays in numpy on the CPU).
    runs = [("real", "cpu"), *([("real", "cuda")] if torch.cuda.is_available() else []), ("constant", "cpu")]
    rows = ["| roots x simulations | model | inference on | simulations/s |", "|---|---|---|---|"]
    for roots in (16, 64, 256):
        for model, device in runs:
            r = search_throughput(cfg, roots, 50, model, device=device)
            name = f"{cfg.env_id} model" if model == "real" else "constant stand-in"
            rows.append(f"| {roots} x 50 | {name} | {device if model == 'real' else '-'} | {r.simulations_per_second:,.0f} |")
            print(rows[-1], flush=True)
    rows += ["", provenance_line([torch.get_num_threads()])]  # search_throughput ran here, on one thread
    # --no-stop runs each seed through the whole budget: what happens after the first solve (collapse?).
    solve_cfg = dataclasses.replace(cfg, exp_name="benchmark", runs_dir=args.runs_dir, stop_when_solved=args.stop)
    if args.budget:
        solve_cfg = dataclasses.replace(solve_cfg, total_timesteps=args.budget)
    results = time_to_solve(solve_cfg, args.seeds, args.first_seed, args.parallel)
    rows += ["", "| seed | greedy evaluations (env steps: return) | solved at | wall s to solve | env steps/s |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        curve = ", ".join(f"{s // 1000}k: {v:.0f}" if s % 1000 == 0 else f"{s}: {v:.0f}" for s, v in r.evaluations)
        rows.append(f"| {r.seed} | {curve} | {r.env_steps if r.solved else '-'} | "
                    f"{f'{r.seconds:.0f}' if r.solved else '-'} | {r.steps_per_second:.0f} |")  # fmt: skip
        print(rows[-1], flush=True)
    ok = [r for r in results if r.solved]
    floor = round(HELD_FRACTION * (solved_return(cfg.env_id, cfg.stop_return) or 0.0), -1)
    held = sum(bool(r.held(floor)) for r in ok)
    rows += ["", f"| env | solved | env steps to solve | wall s to solve | stayed >= {floor:.0f} after solving | "
             "env steps/s |", "|---|---|---|---|---|---|",
             f"| {cfg.env_id} | {len(ok)}/{len(results)} | {_fmt([r.env_steps for r in ok])} | "
             f"{_fmt([r.seconds for r in ok])} | {held}/{len(ok)}{'' if not args.stop else ' (runs stopped at solving)'} | "
             f"{_fmt([r.steps_per_second for r in results])} |", "",
             provenance_line(r.torch_threads for r in results)]  # fmt: skip
    return rows


# "No collapse": once solved, later evaluations stay at >= 95% of the solved return, in tens (CartPole: 450).
HELD_FRACTION = 0.95


@dataclass
class PeerResult(SolveResult):
    """One peer run, in our terms (the peer's own scripts print these)."""

    peer: str
    final_mean_return: float | None
    torch_threads: int = 1
    versions: dict = field(default_factory=dict)


def run_sb3_peer(args: BenchmarkArgs, env_id: str, seed: int) -> PeerResult | None:
    """SB3 + rl-zoo's tuned settings for env_id under --peer-python (launch/peer_sb3.py); None if it failed."""
    cmd = [args.peer_python, str(Path(__file__).with_name("peer_sb3.py")), "--env-id", env_id, "--seed", str(seed)]
    if (threshold := solved_return(env_id)) is not None:
        cmd += ["--threshold", str(threshold)]
    cmd += [*(["--budget", str(args.budget)] if args.budget else []), *([] if args.stop else ["--no-stop"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"{env_id} seed {seed}: the SB3 peer failed (exit code {proc.returncode}): {why}", file=sys.stderr)
        return None
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return PeerResult(**{f.name: data[f.name] for f in dataclasses.fields(PeerResult) if f.name in data})


# What CleanRL's ppo.py prints: a line per finished episode and the SPS once per iteration.
_CLEANRL_EPISODE = re.compile(r"global_step=(\d+), episodic_return=\[?\s*([-+\d.eE]+)")
_CLEANRL_SPS = re.compile(r"^SPS:\s*([\d.]+)")


def run_cleanrl_peer(args: BenchmarkArgs, env_id: str, seed: int) -> PeerResult | None:
    """CleanRL's ppo.py with its defaults for --budget steps, on one torch thread (OMP_NUM_THREADS=1), in
    a scratch working directory (it writes runs/ there). Solved (the last-100 mean of its printed episode
    returns) is timed by when its line arrived, from the start of the process."""
    budget = args.budget or 100_000
    threshold = solved_return(env_id)
    cmd = [args.peer_python, str(Path(args.cleanrl_script).resolve()), "--env-id", env_id, "--seed", str(seed),
           "--total-timesteps", str(budget), "--no-cuda"]  # fmt: skip
    recent: deque[float] = deque(maxlen=100)
    solved_at, sps, last = None, None, ""
    with tempfile.TemporaryDirectory() as cwd:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            last = line.strip() or last
            if m := _CLEANRL_EPISODE.search(line):
                recent.append(float(m.group(2)))
                full = len(recent) == recent.maxlen
                if solved_at is None and threshold is not None and full and sum(recent) / len(recent) >= threshold:
                    solved_at = (int(m.group(1)), time.perf_counter() - start)
            elif m := _CLEANRL_SPS.search(line):
                sps = float(m.group(1))
        seconds = time.perf_counter() - start
    if proc.wait() != 0 or sps is None:
        print(f"{env_id} seed {seed}: CleanRL's ppo.py failed (exit code {proc.returncode}): {last}", file=sys.stderr)
        return None
    return PeerResult(
        peer="cleanrl", env_id=env_id, seed=seed, solved=solved_at is not None,
        steps_to_solve=solved_at[0] if solved_at else None, seconds_to_solve=solved_at[1] if solved_at else None,
        total_steps=budget, total_seconds=seconds, sps=sps, final_mean_return=sum(recent) / len(recent) if recent else None,
    )  # fmt: skip


def peer_report(args: BenchmarkArgs) -> list[str]:
    """Ours and a peer, seed by seed, interleaved (odd seeds ours first, even seeds the peer first, so a
    drift of the machine's speed falls on both), then a table of both and the ratios."""
    cleanrl = bool(args.cleanrl_script)
    if cleanrl:
        # The same work on both sides: CleanRL's script plays no evaluation episodes, so ours plays none either.
        args = dataclasses.replace(args, preset="cleanrl", stop=False, budget=args.budget or 100_000,
                                   set=(*args.set, "eval_episodes=0"))  # fmt: skip
    run_peer = run_cleanrl_peer if cleanrl else run_sb3_peer
    overrides = _parse_overrides(args.set)
    pairs: list[tuple[RunResult, PeerResult]] = []
    for env_id in args.envs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if seed % 2:
                ours, peer = _run_ours(env_id, seed, args, overrides), run_peer(args, env_id, seed)
            else:
                peer = run_peer(args, env_id, seed)
                ours = _run_ours(env_id, seed, args, overrides)
            if ours is None or peer is None:
                continue
            pairs.append((ours, peer))
            solve = [_solve_text(r.solved, r.steps_to_solve, r.seconds_to_solve, r.final_mean_return) for r in (ours, peer)]
            print(f"{env_id} seed {seed}: ours {solve[0]}, {ours.sps:.0f} SPS | {peer.peer} {solve[1]}, "
                  f"{peer.sps:.0f} SPS | SPS ratio {ours.sps / peer.sps:.2f}x", flush=True)  # fmt: skip
    rows = ["| env | library | solved | env steps to solve | wall s to solve | SPS |", "|---|---|---|---|---|---|"]
    for env_id in dict.fromkeys(o.env_id for o, _ in pairs):
        both = [(o, p) for o, p in pairs if o.env_id == env_id]
        for name, side in (("ours", [o for o, _ in both]), (both[0][1].peer, [p for _, p in both])):
            ok = [r for r in side if r.solved]
            rows.append(f"| {env_id} | {name} | {len(ok)}/{len(side)} | {_fmt([r.steps_to_solve for r in ok])} | "
                        f"{_fmt([r.seconds_to_solve for r in ok], 1)} | {_fmt([r.sps for r in side])} |")  # fmt: skip
        wall = [p.seconds_to_solve / o.seconds_to_solve for o, p in both if o.solved and p.solved]
        # Both ratios say how many times ours is ahead: the peer's wall time over ours, our SPS over the peer's.
        ratios = [f"{_fmt(r, 2)}x" if r else "-" for r in (wall, [o.sps / p.sps for o, p in both])]
        rows.append(f"| {env_id} | ours ahead by (per seed) | | | {ratios[0]} | {ratios[1]} |")
    if not pairs:
        return rows
    peer = pairs[0][1]
    versions = ", ".join(f"{k} {v}" for k, v in peer.versions.items()) or f"CleanRL ppo.py {args.cleanrl_script}"
    peer_line = f"Peer: {peer.peer} ({versions}), {peer.torch_threads} torch thread(s)."
    return [*rows, "", provenance_line(o.torch_threads for o, _ in pairs), "", peer_line]


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    """The median wall time of one call, over `repeats` timed calls after one untimed (compiles, caches)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return median(times)


def op_costs(args: BenchmarkArgs) -> list[str]:
    """One row per env preset: its vector env's step, acting for its envs and one minibatch step of the
    update (its minibatch size), through torch and through agents.ppo_kernel, on one torch thread."""
    import numpy as np

    from agents.ppo import ppo_update
    from agents.ppo_kernel import ppo_kernel_update
    from envs.factory import make_vector_env, probe_spaces
    from training.ppo.train import build_agent, hyperparams

    torch.set_num_threads(1)
    rows = ["| env (preset) | envs | env step us | act us: torch / kernel | minibatch | minibatch step ms: torch / kernel |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for env_id in args.envs:
        cfg = apply_preset(PPOConfig(env_id=env_id, preset=args.preset))
        envs = make_vector_env(env_id, cfg.num_envs, 0)
        obs, _ = envs.reset(seed=0)
        actions = np.stack([envs.single_action_space.sample() for _ in range(cfg.num_envs)])
        env_us = 1e6 * _median_seconds(lambda: envs.step(actions), 300)  # noqa: B023
        envs.close()
        observation_space, action_space = probe_spaces(env_id)
        agent = build_agent(cfg, observation_space, action_space)
        if not agent.kernel_compatible:
            rows.append(f"| {env_id} ({cfg.preset}) | {cfg.num_envs} | {env_us:.0f} | not a kernel net | | |")
            continue
        obs_t = {"obs": torch.as_tensor(obs)}
        generator = torch.Generator().manual_seed(0)
        n = cfg.batch_size
        batch = {"obs": {"obs": torch.randn(n, *observation_space.shape)}, "actions": torch.randint(0, int(action_space.n), (n,)),
                 "log_probs": torch.full((n,), -0.7), "values": torch.zeros(n), "advantages": torch.randn(n), "returns": torch.randn(n)}  # fmt: skip
        hp = dataclasses.replace(hyperparams(cfg), update_epochs=1)
        act_us, step_ms = [], []
        for kernel in (False, True):
            agent.kernels = kernel
            optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)
            update = ppo_kernel_update if kernel else ppo_update
            act_us.append(1e6 * _median_seconds(lambda: agent.act(obs_t, generator), 500))  # noqa: B023
            epoch = _median_seconds(lambda: update(agent, optimizer, batch, hp, generator), 20)  # noqa: B023
            step_ms.append(1e3 * epoch / cfg.num_minibatches)
        rows.append(f"| {env_id} ({cfg.preset}) | {cfg.num_envs} | {env_us:.0f} | {act_us[0]:.0f} / {act_us[1]:.0f} | "
                    f"{cfg.minibatch_size} | {step_ms[0]:.2f} / {step_ms[1]:.2f} |")  # fmt: skip
        print(rows[-1], flush=True)
    return [*rows, "", provenance_line([1])]


def env_steps(args: BenchmarkArgs) -> list[str]:
    """Raw env steps/s of each --envs preset's vector env stepped in this process with random actions; for
    Atari ids both paths (ale-py's C++ vector env on its threads, gymnasium's wrappers one env at a time),
    timed in turn so that both see the same machine."""
    from envs.atari import AtariOptions
    from envs.factory import is_atari, make_vector_env

    rows = ["| env | envs | path | env steps/s (median of timings) | vs wrappers |", "|---|---|---|---|---|"]
    vector_steps = 2000
    for env_id in args.envs:
        num_envs = apply_preset(PPOConfig(env_id=env_id, preset=args.preset)).num_envs
        paths = {"ale": {"options": AtariOptions()}, "wrappers": {"options": AtariOptions(vector="wrappers")}} if is_atari(env_id) else {"-": None}
        envs = {name: make_vector_env(env_id, num_envs, 0, kwargs) for name, kwargs in paths.items()}
        timings: dict[str, list[float]] = {name: [] for name in envs}
        for env in envs.values():
            env.reset(seed=list(range(num_envs)))
            env.action_space.seed(0)
        for _ in range(args.env_steps_repeats):
            for name, env in envs.items():
                # drawn before the clock starts, from the env's own (batched) space: any action type
                actions = [env.action_space.sample() for _ in range(vector_steps)]
                start = time.perf_counter()
                for a in actions:
                    env.step(a)
                timings[name].append(vector_steps * num_envs / (time.perf_counter() - start))
        for env in envs.values():
            env.close()
        base = median(timings["wrappers"]) if "wrappers" in timings else None
        for name, values in timings.items():
            ratio = f"{median(values) / base:.2f}x" if base else "-"
            rows.append(f"| {env_id} | {num_envs} | {name} | {median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f}) | {ratio} |")
            print(rows[-1], flush=True)
    return [*rows, "", provenance_line([torch.get_num_threads()])]


def _print_and_write(rows: list[str], out_dir: str, name: str) -> None:
    print("\n".join(rows))
    if out_dir:
        table = Path(out_dir) / f"{name}.md"
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text("\n".join(rows) + "\n")
        print(f"wrote {table}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(BenchmarkArgs, args=argv, description=__doc__.split("\n")[0])
    modes = [flag for flag, on in (("--muzero", args.muzero), ("--sc2-table", args.sc2_table), ("--op-costs", args.op_costs),
             ("--env-steps", args.env_steps), ("--peer-python", bool(args.peer_python)),
             ("--sweep-backends", bool(args.sweep_backends))) if on]  # fmt: skip
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} are separate benchmarks: give one of them per command")
    _started()
    if args.muzero:
        _print_and_write(muzero_report(args), args.out_dir, args.label or "muzero")
        return 0
    if args.sc2_table:
        _print_and_write(sc2_table(args), args.out_dir, args.label or "sc2")
        return 0
    if args.op_costs:
        _print_and_write(op_costs(args), args.out_dir, args.label or "op-costs")
        return 0
    if args.env_steps:
        _print_and_write(env_steps(args), args.out_dir, args.label or "env-steps")
        return 0
    if args.peer_python:
        rows = peer_report(args)
        _print_and_write(rows, args.out_dir, args.label or ("peers-cleanrl" if args.cleanrl_script else "peers-sb3"))
        return 0 if len(rows) > 2 else 1
    if args.cleanrl_script:
        raise ConfigError("--cleanrl-script needs --peer-python (the interpreter that runs CleanRL's ppo.py)")
    if args.sweep_backends:
        rows = sweep_backends(args)
        _print_and_write(rows, args.out_dir, args.label or "backends")
        return 0 if len(rows) > 2 else 1
    results = run_benchmark(args)
    if args.out_dir and results:
        table = write_report(results, Path(args.out_dir), args.label or args.preset)
        print(f"wrote {table} and its plots", file=sys.stderr)
    return 0 if results else 1


if __name__ == "__main__":
    exit_process(run_cli(main))
