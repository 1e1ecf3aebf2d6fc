"""The run folder, TensorBoard logging (CleanRL's tag names) and the progress bar. Only the driver
process logs; workers return their statistics inside the rollout."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from training import provenance

CONFIG_FILE = "config.json"

# The figures that the HParams tab shows beside each run's hyperparameters (their latest values).
HPARAM_METRICS = ("eval/episodic_return", "charts/mean_return_100", "charts/SPS")


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

    On resume at env step `resumed_at`, events the abandoned run logged after that step are dropped (the
    points at the step itself, its evaluation included, belong to the checkpoint and stay), so curves do
    not double back.
    """

    def __init__(self, run_dir: Path, config: dict | None = None, resumed_at: int | None = None):
        self.run_dir = Path(run_dir)
        # TensorBoard purges events at or after purge_step: one past the checkpoint's own step.
        self.writer = SummaryWriter(str(self.run_dir), purge_step=None if resumed_at is None else resumed_at + 1)
        # This process's machine, threads, versions, commit and command, beside the config; a resume adds one.
        self.provenance = provenance.record_run(self.run_dir)
        self.writer.add_text("provenance", provenance.describe(self.provenance[-1]), global_step=resumed_at or 0)
        if config is not None:
            self.writer.add_text("hyperparameters", config_markdown(config), global_step=resumed_at or 0)
            provenance.write_json_atomically(self.run_dir / CONFIG_FILE, config)

    def dashboards(self, hparams: dict, layout: dict) -> None:
        """The custom-scalars layout (the algorithm's own page: TensorBoard's Custom Scalars tab), and this run's
        hyperparameters for the HParams tab (where runs are compared by HPARAM_METRICS). Values other
        than numbers, strings and booleans are shown as text."""
        self.writer.add_custom_scalars(layout)
        plain = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hparams.items()}
        file_writer = self.writer._get_file_writer()
        for summary in hparams_summaries(plain, dict.fromkeys(HPARAM_METRICS, 0.0)):
            file_writer.add_summary(summary)

    def video(self, tag: str, frames: Sequence[np.ndarray], fps: float, step: int) -> None:
        """An animated GIF in the Images tab. torch's add_video needs moviepy 1.x (with moviepy 2 it warns
        and writes nothing, pytorch issue 147317), so the GIF is encoded here with imageio."""
        from training.video import encode_gif

        h, w = frames[0].shape[:2]
        image = Summary.Image(height=h, width=w, colorspace=3, encoded_image_string=encode_gif(frames, fps))
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def system(self, num_workers: int, worker_pids: Sequence[int], device: torch.device, step: int) -> None:
        """Worker count and memory: resident memory of the learner and of the worker processes now, and
        the GPU memory torch holds when the learner runs on CUDA."""
        values = {"system/num_workers": num_workers, "system/learner_rss_mib": current_rss_mib()}
        if worker_pids:
            values["system/workers_rss_mib"] = sum(current_rss_mib(pid) for pid in worker_pids)
        if device.type == "cuda":
            values["system/gpu_memory_allocated_mib"] = torch.cuda.memory_allocated(device) / 2**20
            values["system/gpu_memory_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        self.scalars(values, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """All values at this step as one event (what add_scalar writes per tag, `simple_value`s, read back
        the same): add_scalar costs ~90 us a tag here, ~20 tags an update; one event of 20 costs ~170 us."""
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self.writer._get_file_writer().add_summary(summary, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def current_rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process (default: this one) now, from Linux's /proc; where /proc is missing,
    this process's peak (and 0 for others)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        if pid is not None:
            return 0.0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


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

    def update(self, step: int, sps: float, recent_return: float | None, seconds_left: float | None = None) -> None:
        """seconds_left: what --train-for-minutes leaves, when set; the ETA is the sooner of it and the
        steps still to go at this SPS."""
        ret = "n/a" if recent_return is None else f"{recent_return:.1f}"
        if self.bar.disable:
            now = time.perf_counter()
            if self.enabled and now - self.last_print >= self.interval:
                eta = (self.total - step) / sps if sps > 0 else float("inf")
                if seconds_left is not None:
                    eta = min(eta, max(seconds_left, 0.0))
                print(f"step {step}/{self.total}  SPS {sps:.0f}  return(100) {ret}  ETA {eta:.0f}s", file=sys.stderr)
                self.last_print = now
        else:
            self.bar.set_postfix_str(f"SPS={sps:.0f} return={ret}", refresh=False)
            self.bar.update(step - self.last_step)
        self.last_step = step

    def close(self) -> None:
        self.bar.close()
