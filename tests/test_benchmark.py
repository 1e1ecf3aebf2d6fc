"""launch/benchmark.py's own parsing (the benchmark itself is a script that prints figures, not a test)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

from benchmark import BenchmarkArgs, _parse_overrides, run_cleanrl_peer, run_sb3_peer  # noqa: E402

from training.errors import ConfigError  # noqa: E402


def test_set_overrides_take_each_fields_type():
    out = _parse_overrides(("num_envs=16", "normalize_obs=true", "hidden_sizes=32,32", "target_kl=none",
                            "policy_memory=none", "learning_rate=1e-3"))  # fmt: skip
    assert out == {"num_envs": 16, "normalize_obs": True, "hidden_sizes": (32, 32), "target_kl": None,
                   "policy_memory": "none", "learning_rate": 1e-3}  # fmt: skip
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_overrides(("no_such_field=1",))


def test_cleanrl_peer_reads_its_episode_and_sps_lines(tmp_path):
    # A stand-in printing what CleanRL's ppo.py prints: one episode line per finished episode, "SPS: N"
    # per iteration. One episode of 12, then 480s: the first full window (12 and 99 of 480) already
    # averages 475.32 >= 475, so solved at the 100th episode, global_step 118.
    script = tmp_path / "ppo.py"
    script.write_text(
        "import sys\n"
        "assert sys.argv[sys.argv.index('--total-timesteps') + 1] == '5000'\n"
        "print('global_step=10, episodic_return=[12.]')\n"
        "for i in range(100): print(f'global_step={20 + i}, episodic_return=[480.0]')\n"
        "print('SPS: 1234')\nprint('SPS: 4321')\n"
    )
    args = BenchmarkArgs(peer_python=sys.executable, cleanrl_script=str(script), budget=5000)
    r = run_cleanrl_peer(args, "CartPole-v1", 1)
    assert r is not None and r.peer == "cleanrl"
    assert (r.solved, r.steps_to_solve, r.sps, r.total_steps) == (True, 118, 4321.0, 5000)
    assert r.final_mean_return == 480.0


def test_a_failing_peer_is_reported_not_raised(tmp_path, capsys):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'No module named stable_baselines3' >&2\nexit 1\n")
    broken.chmod(0o755)
    assert run_sb3_peer(BenchmarkArgs(peer_python=str(broken)), "CartPole-v1", 1) is None
    assert "No module named stable_baselines3" in capsys.readouterr().err


def test_the_muzero_report_tabulates_each_seeds_evaluations_and_whether_it_held(tmp_path, monkeypatch):
    """benchmark.py --muzero end to end on a tiny budget, two seeds side by side, whole budgets: a row per
    seed with its evaluations and the summary row (a threshold of 1 that every policy reaches)."""
    from benchmark import muzero_report

    import training.muzero.benchmark as muzero_benchmark

    # The throughput table is search_throughput's own test; here a cheap stand-in keeps the report quick.
    monkeypatch.setattr(muzero_benchmark, "search_throughput",
                        lambda cfg, roots, sims, model, device: muzero_benchmark.ThroughputResult(roots, sims, model, 1.0, device))  # fmt: skip
    args = BenchmarkArgs(muzero=True, seeds=2, parallel=2, budget=320, stop=False, runs_dir=str(tmp_path),
                         muzero_set=("warmup_steps=160", "batch_size=32", "num_simulations=4", "eval_every=160",
                                     "eval_episodes=2", "stop_return=1"))  # fmt: skip
    rows = muzero_report(args)
    seed_rows = [r for r in rows if r.startswith("| 1 |") or r.startswith("| 2 |")]
    assert len(seed_rows) == 2 and all("160: " in r and "320: " in r for r in seed_rows)
    summary = next(r for r in rows if r.startswith("| CartPole-v1 |"))
    fields = [f.strip() for f in summary.split("|")[1:-1]]
    assert fields[1:3] == ["2/2", "160 (160-160)"] and fields[4] == "2/2"  # solved, at 160; both held after


def test_two_benchmark_modes_in_one_command_are_refused_with_one_line():
    proc = subprocess.run([sys.executable, "launch/benchmark.py", "--muzero", "--sc2-table"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --muzero and --sc2-table are separate benchmarks: give one of them per command"


def test_a_stop_of_the_benchmark_stops_its_run_with_a_checkpoint(tmp_path):
    """`kill PID` of benchmark.py alone (not its process group): the run in its child process hears of it,
    saves a checkpoint and ends with its one line, and the benchmark ends with 143. Before, the parent
    printed its line and then waited at exit for a child that went on training."""
    import os
    import re
    import signal
    import time

    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "launch/benchmark.py", "--envs", "CartPole-v1", "--seeds", "1",
                             "--budget", "50000000", "--no-stop", "--out-dir", "", "--runs-dir", str(runs),
                             "--set", "checkpoint_every=4096", "eval_episodes=0"],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(runs.glob("*/checkpoints/step_*.pt")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert list(runs.glob("*/checkpoints/step_*.pt")), "no checkpoint within 120 s"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    (run_dir,) = runs.iterdir()
    line = re.search(rf"interrupted \(SIGTERM\): checkpoint (\S+) written; continue with: "
                     rf"python launch/train_ppo.py --resume {re.escape(str(run_dir))}\n", err)  # fmt: skip
    assert line, err[-3000:]
    assert Path(line.group(1)) == sorted((run_dir / "checkpoints").glob("step_*.pt"))[-1]
    assert "Traceback" not in err, err[-3000:]
