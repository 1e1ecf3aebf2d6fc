"""The watch and evaluate commands, end to end as subprocesses, on a short trained run."""

import re
import subprocess
import sys
from pathlib import Path

import imageio
import imageio.v3 as iio
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADLESS = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONUNBUFFERED": "1"}  # no DISPLAY


def _launch(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "launch" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=HEADLESS)


def _episodes(stdout: str) -> list[tuple[float, int, str]]:
    rows = re.findall(r"episode \d+: return (-?[\d.]+), length (\d+)(?: -> (\S+))?", stdout)
    return [(float(r), int(n), path) for r, n, path in rows]


def test_watch_without_a_display_writes_mp4s_frame_for_step(short_cartpole_run):
    _, result = short_cartpole_run
    proc = _launch("watch.py", str(result.run_dir), "--episodes", "2", "--overlay")
    assert proc.returncode == 0, proc.stderr
    assert "no display: writing the episodes to video files" in proc.stdout
    episodes = _episodes(proc.stdout)
    assert len(episodes) == 2
    for _, length, path in episodes:
        assert Path(path).parent == result.run_dir / "videos" and path.endswith(".mp4")
        assert imageio.get_reader(path).count_frames() == length + 1  # a frame per step, and the final state


def test_watch_gif_plays_for_as_long_as_the_episode(short_cartpole_run):
    _, result = short_cartpole_run
    early = result.run_dir / "checkpoints" / "step_000000002048.pt"  # a named checkpoint: short episodes
    proc = _launch("watch.py", str(early), "--episodes", "1", "--gif", "--save", "--fps", "25")
    assert proc.returncode == 0, proc.stderr
    ((_, length, path),) = _episodes(proc.stdout)
    assert "after 2048 env steps" in proc.stdout and path.endswith(".gif")
    # GIF encoders merge identical consecutive frames into one longer frame, so compare playing time.
    meta = [iio.immeta(path, index=i) for i in range(iio.improps(path, index=None).shape[0])]
    assert sum(m["duration"] for m in meta) == pytest.approx((length + 1) * 40, abs=1)


def test_evaluate_prints_episodes_and_their_mean(short_cartpole_run):
    _, result = short_cartpole_run
    proc = _launch("evaluate.py", str(result.run_dir), "--episodes", "7", "--stochastic")
    assert proc.returncode == 0, proc.stderr
    episodes = _episodes(proc.stdout)
    assert len(episodes) == 7
    m = re.search(r"stochastic: mean return (-?[\d.]+) \+- ([\d.]+), mean length ([\d.]+)", proc.stdout)
    returns = np.array([r for r, _, _ in episodes])
    assert float(m.group(1)) == pytest.approx(returns.mean(), abs=0.01)
    assert float(m.group(2)) == pytest.approx(returns.std(), abs=0.01)
    assert float(m.group(3)) == pytest.approx(np.mean([n for _, n, _ in episodes]), abs=0.1)


def test_watch_no_render_is_an_evaluation(short_cartpole_run):
    _, result = short_cartpole_run
    videos_before = sorted((result.run_dir / "videos").iterdir())
    proc = _launch("watch.py", str(result.run_dir), "--no-render", "--episodes", "3", "--best")
    assert proc.returncode == 0, proc.stderr
    assert "checkpoints/best.pt" in proc.stdout
    assert len(_episodes(proc.stdout)) == 3 and "greedy: mean return" in proc.stdout and " -> " not in proc.stdout
    assert sorted((result.run_dir / "videos").iterdir()) == videos_before


@pytest.mark.parametrize("script", ["watch.py", "evaluate.py"])
def test_bad_paths_give_one_clear_line(script, tmp_path):
    proc = _launch(script, str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: no such run folder or checkpoint: {tmp_path / 'nowhere'}"
    proc = _launch(script, str(tmp_path))
    assert proc.returncode == 2 and "holds no checkpoint" in proc.stderr and proc.stderr.count("\n") == 1
