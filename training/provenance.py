"""Where a run or a benchmark figure came from: the machine, its thread settings, the library versions, the
code's commit and the command line.

Machines of the same kind differ (CPU model, float rounding, speed), so a figure without its machine
cannot be compared with anything. Every run folder keeps `provenance.json` (one record for each process
that trained in it: the start and every resume), every checkpoint carries the same records, and every
benchmark table is printed with the record of the process that measured it.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PROVENANCE_FILE = "provenance.json"
# The libraries whose versions change results or speed; an extra that is not installed reads as such.
PACKAGES = ("torch", "numpy", "numba", "gymnasium", "tensorboard", "ray", "ale-py", "pysc2")
# Environment variables that set thread pools behind torch's and numpy's back.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_REPO = Path(__file__).resolve().parents[1]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, which a container or `taskset` narrows), not the
    machine's count and not OMP_NUM_THREADS."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_state(repo: Path = _REPO) -> dict[str, Any]:
    """The commit checked out in this project's folder and whether tracked or new files differ from it
    (None for both outside a git checkout or without git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def collect(argv: list[str] | None = None) -> dict[str, Any]:
    """This process's record, read now (so call it after the thread count is set)."""
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python " + shlex.join(sys.argv if argv is None else argv),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "thread_variables": {v: os.environ[v] for v in THREAD_VARIABLES if v in os.environ},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: package_version(name) for name in PACKAGES},
        **git_state(),
    }


def describe(record: dict[str, Any], torch_threads: list[int] | None = None) -> str:
    """One Markdown line for under a table: what measured it, where, with what. `torch_threads`: the thread
    counts of the runs measured, where they ran in processes of their own (default: the record's)."""
    versions = ", ".join(f"{k} {v}" for k, v in record["packages"].items() if v != "not installed")
    commit = (record["commit"] or "unknown")[:10] + (" (dirty)" if record["dirty"] else "")
    variables = ", ".join(f"{k}={v}" for k, v in record["thread_variables"].items())
    threads = "/".join(str(t) for t in torch_threads or [record["torch_threads"]])
    return (
        f"Measured {record['time']} on {record['cpu']} ({record['usable_cores']} of {record['cores']} cores usable), "
        f"{threads} torch thread(s){'; ' + variables if variables else ''}; Python {record['python']}, "
        f"{versions}; commit {commit}; `{record['command']}`"
    )


def record_run(run_dir: Path, record: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Append this process's record to run_dir/provenance.json (written whole to a temp file, then
    renamed, so a crash leaves the previous list); returns the list."""
    records = read_run(run_dir)
    records.append(record or collect())
    write_json_atomically(Path(run_dir) / PROVENANCE_FILE, records)
    return records


def write_json_atomically(path: Path, value: Any) -> None:
    """JSON text written whole to a temp file of this process's own, then renamed over path."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(value, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """The run folder's records, oldest first ([] for a folder without any)."""
    path = Path(run_dir) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return []
