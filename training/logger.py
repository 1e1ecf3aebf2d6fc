"""The run folder, TensorBoard logging (CleanRL's tag names) and the progress bar. Only the driver
process logs; workers return their statistics inside the rollout."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


def run_name(env_id: str, exp_name: str, seed: int) -> str:
    """runs/{env}__{exp}__{seed}__{time}, with '/' in env ids (ALE/Breakout-v5) made file-safe."""
    return f"{env_id.replace('/', '-')}__{exp_name}__{seed}__{int(time.time())}"


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """Create runs_dir/name, or name-2, name-3, ... when runs started in the same second share a name."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = runs_dir / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"too many run folders named {name} in {runs_dir}")


def config_markdown(config: dict) -> str:
    rows = "\n".join(f"|{k}|{v}|" for k, v in config.items())
    return f"|param|value|\n|-|-|\n{rows}"


class RunLogger:
    """Scalars and text into run_dir's TensorBoard event files.

    On resume, `purge_step` drops events logged after the checkpoint, so curves do not double back.
    """

    def __init__(self, run_dir: Path, config: dict | None = None, purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.writer = SummaryWriter(str(self.run_dir), purge_step=purge_step)
        if config is not None:
            self.writer.add_text("hyperparameters", config_markdown(config), global_step=purge_step or 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Progress:
    """tqdm bar over env steps with SPS and recent return in its postfix. When stderr is not a terminal
    (CI, a log file), one plain line every `interval` seconds instead of a bar."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, interval: float = 10.0):
        from tqdm import tqdm

        self.tty = sys.stderr.isatty()
        self.enabled, self.interval, self.total = enabled, interval, total
        self.bar = tqdm(total=total, initial=initial, unit="step", unit_scale=True, dynamic_ncols=True,
                        disable=not (enabled and self.tty))  # fmt: skip
        self.last_step, self.last_print, self.start = initial, time.perf_counter(), time.perf_counter()

    def update(self, step: int, sps: float, recent_return: float | None) -> None:
        ret = "n/a" if recent_return is None else f"{recent_return:.1f}"
        if self.bar.disable:
            now = time.perf_counter()
            if self.enabled and now - self.last_print >= self.interval:
                eta = (self.total - step) / sps if sps > 0 else float("inf")
                print(f"step {step}/{self.total}  SPS {sps:.0f}  return(100) {ret}  ETA {eta:.0f}s", file=sys.stderr)
                self.last_print = now
        else:
            self.bar.set_postfix_str(f"SPS={sps:.0f} return={ret}", refresh=False)
            self.bar.update(step - self.last_step)
        self.last_step = step

    def close(self) -> None:
        self.bar.close()
