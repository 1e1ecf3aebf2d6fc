"""Range checks that every algorithm's config shares, each giving the flag, its valid range and what
was given. NaN fails every range (a plain `x <= 0` lets it through), and so does infinity where a
finite number is needed."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from training.errors import ConfigError

# Names that become part of a path (run folders): letters, digits and . _ - only, not '.' or '..'.
_PATH_SAFE = re.compile(r"[A-Za-z0-9._-]+")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Each range range_problems checks: whether a value lies in it, and how its message names it.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive": (lambda v: _number(v) and v > 0, "must be a finite number > 0"),
    "non_negative": (lambda v: _number(v) and v >= 0, "must be a finite number >= 0"),
    "unit": (lambda v: _number(v) and 0 <= v <= 1, "must lie in [0, 1]"),
    "positive_unit": (lambda v: _number(v) and 0 < v <= 1, "must lie in (0, 1]"),
    "optional_positive": (lambda v: v is None or (_number(v) and v > 0), "must be a finite number > 0, or left out"),
}


def range_problems(cfg: Any, positive: Iterable[str] = (), non_negative: Iterable[str] = (),
                   unit: Iterable[str] = (), positive_unit: Iterable[str] = (),
                   optional_positive: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """The fields of cfg outside their range: positive (finite, > 0), non_negative (finite, >= 0), unit
    (in [0, 1]), positive_unit (in (0, 1]: a fraction or a discount that 0 would make meaningless),
    optional_positive (None, or finite and > 0)."""
    fields = {"positive": positive, "non_negative": non_negative, "unit": unit, "positive_unit": positive_unit,
              "optional_positive": optional_positive}  # fmt: skip
    problems = []
    for kind, names in fields.items():
        inside, requirement = _RANGES[kind]
        for name in names:
            value = getattr(cfg, name)
            if not inside(value):
                problems.append(f"{flag(name)} {requirement} (got {value})")
    return problems


def run_problems(cfg: Any) -> list[str]:
    """The settings every training run has: seed, device, experiment name, runs folder, stop threshold."""
    problems = []
    if not 0 <= cfg.seed < 2**32:
        problems.append(f"--seed must lie in [0, 2**32 - 1] (numpy's seed range; got {cfg.seed})")
    problems += device_problems(cfg.device)
    if not _PATH_SAFE.fullmatch(cfg.exp_name) or cfg.exp_name in (".", ".."):
        problems.append(f"--exp-name becomes part of the run folder's name: use letters, digits, '.', '_' and '-' "
                        f"only (got {cfg.exp_name!r})")  # fmt: skip
    problems += runs_dir_problems(cfg.runs_dir)
    if cfg.stop_return is not None and not _number(cfg.stop_return):
        problems.append(f"--stop-return must be a finite number (got {cfg.stop_return})")
    return problems


def device_problems(name: str) -> list[str]:
    if name == "auto":
        return []
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return [f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got {name!r})"]
    if device.type not in ("cpu", "cuda"):
        return [f"--device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got {name!r})"]
    return []


def resolve_device(name: str, convolutional: Callable[[], bool] = lambda: True) -> torch.device:
    """The torch device a --device value names; ConfigError if it names none or CUDA is missing.

    'auto' is CUDA when there is one and the net is convolutional (`convolutional()`, asked only then),
    else the CPU: a small MLP's update is a long row of tiny kernels, each paying a launch and a sync.
    Measured on an H200 beside 16 Xeon cores (2026-12-04): PPO CartPole 1,270 SPS on CUDA vs 9,458 on
    the CPU (MuZero's CartPole MLP: the same 67 env steps/s either way); PPO MinAtar Breakout's CNN
    14,543 vs 5,939 SPS."""
    for problem in device_problems(name):
        raise ConfigError(problem)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() and convolutional() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")  # fmt: skip
    return device


def native_bfloat16(device: torch.device) -> bool:
    """Whether the device multiplies bfloat16 matrices in hardware: a CUDA GPU with bf16, a CPU with AVX512_BF16
    or AMX-BF16. Elsewhere oneDNN emulates them, and a bfloat16 autocast runs slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_learner_precision(choice: str, conv_trunk: bool, device: torch.device) -> torch.dtype | None:
    """The dtype of an update's autocast (None: float32 throughout) for --learner-precision `choice`, given
    whether the net has a convolutional trunk, the only part that takes it (each algorithm's validation
    refuses an explicit 'bfloat16' for a net without one)."""
    if choice == "float32" or not conv_trunk:
        return None
    return torch.bfloat16 if choice == "bfloat16" or native_bfloat16(device) else None


def precision_name(dtype: torch.dtype | None) -> str:
    """What config.json records as `resolved_learner_precision`: 'bfloat16', or 'float32' for no autocast."""
    return str(dtype or torch.float32).removeprefix("torch.")


def runs_dir_problems(runs_dir: str) -> list[str]:
    """A runs folder that is a file, or that cannot be written (read-only, no permission), where it is or
    at its nearest existing parent (where it would be made)."""
    path = Path(runs_dir)
    if path.exists() and not path.is_dir():
        return [f"--runs-dir {runs_dir} is a file, not a folder"]
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return [f"--runs-dir {runs_dir}: {existing} is not a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"--runs-dir {runs_dir}: {existing} cannot be written (read-only or no permission)"]
    return []
