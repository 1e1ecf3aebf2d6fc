"""Learning curves: read a scalar from runs' TensorBoard event files and draw the mean and spread over
seeds, the picture people put in reports. Used by launch/plot.py and the benchmark."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from training.errors import ConfigError


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob("events.out.tfevents.*"))


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders among paths: each path is a run folder itself, or a folder (such as runs/) whose
    subfolders are run folders."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"no such run folder: {path}")
        if is_run_dir(path):
            found.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if is_run_dir(p)) if path.is_dir() else []
        if not inside:
            raise ConfigError(f"{path} holds no TensorBoard event files, and no run folders that do")
        found += inside
    return found


def group_name(run_dir: Path) -> str:
    """Runs of the same env and experiment, whatever the seed: '{env}__{exp}' of runs/{env}__{exp}__{seed}__{time}."""
    parts = run_dir.name.split("__")
    return "__".join(parts[:2]) if len(parts) >= 4 else run_dir.name


def read_scalar(run_dir: Path, tag: str) -> np.ndarray:
    """[N, 2] array of (step, value) for a scalar tag, every event kept, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return np.empty((0, 2))
    events = sorted((e.step, e.value) for e in acc.Scalars(tag))
    return np.array(events, dtype=np.float64).reshape(-1, 2)


def plot_seed_band(ax, curves: Sequence[np.ndarray], color: str = "tab:blue", label: str = "", points: int = 200) -> None:
    """Each seed's curve thin, their mean thick and the min-max band shaded, on a common x grid.

    curves are [N, 2] arrays of (x, y). A seed that stopped early (solved) holds its last value from then
    on; the mean and band are drawn only where every seed has begun.
    """
    curves = [c for c in curves if len(c)]
    if not curves:
        return
    grid = np.linspace(0, max(c[-1, 0] for c in curves), points)
    ys = np.stack([np.interp(grid, c[:, 0], c[:, 1], left=np.nan) for c in curves])
    full = ~np.isnan(ys).any(0)
    for y in ys:
        ax.plot(grid, y, color=color, alpha=0.25, lw=1)
    seeds = f"{len(curves)} run{'s' if len(curves) > 1 else ''}"
    text = f"{label}: mean of {seeds}" if label else f"mean of {seeds}"
    ax.plot(grid[full], ys[:, full].mean(0), color=color, lw=2, label=text)
    ax.fill_between(grid[full], ys[:, full].min(0), ys[:, full].max(0), color=color, alpha=0.15)
