"""One checkpoint format for every algorithm: a dict of tensors and plain Python values.

Written atomically (temp file in the same folder, fsync, rename, fsync the folder), so a run killed at
any moment leaves the previous checkpoint intact. Read with `torch.load(weights_only=True)`, which
refuses any pickle payload that would construct arbitrary objects or run code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from envs.factory import EnvSpecError
from training import interrupts, provenance
from training.errors import ConfigError

FORMAT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step_(\d+)\.pt$")
BEST_NAME = "best.pt"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or not one of ours."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, read-only file system, ...); the older ones stand."""


def step_of(path: Path) -> int:
    """The env step in a periodic checkpoint's name (step_000000004096.pt -> 4096)."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path} is not a periodic checkpoint (step_*.pt)")
    return int(m.group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's periodic checkpoints, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _atomic_save(path: Path, payload: dict, run_dir: Path) -> Path:
    """Write the payload, with the run folder's provenance records (as JSON text), to path atomically.
    The temp file's name is this process's own; on any failure it is removed, so nothing partial is left,
    and a failure of the file system (disk full, read-only) becomes one CheckpointWriteError line."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    records = json.dumps(provenance.read_run(run_dir))
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, "provenance": records, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        # torch.save reports a short write as RuntimeError ("file write failed"), the OS as OSError.
        tmp.unlink(missing_ok=True)
        last = [p.name for p in list_checkpoints(run_dir) if p != path]
        kept = f"the last good checkpoint is {path.parent / last[-1]}" if last else "no earlier checkpoint exists"
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0]
        raise CheckpointWriteError(f"could not write the checkpoint {path} ({reason}); {kept}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(run_dir: Path, payload: dict, step: int, keep: int = 3) -> Path:
    """Write payload as run_dir/checkpoints/step_{step}.pt atomically; keep the newest `keep` files."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = _atomic_save(folder / f"step_{step:012d}.pt", payload, run_dir)
    interrupts.note_checkpoint(path)  # named by the watchdog's last line if a hang cannot be stopped
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        if old != path:  # never the file just written, whatever the names say
            old.unlink(missing_ok=True)
    return path


def save_best_checkpoint(run_dir: Path, payload: dict) -> Path:
    """Write payload as run_dir/checkpoints/best.pt (the best evaluation so far), atomically."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return _atomic_save(folder / BEST_NAME, payload, run_dir)


def find_checkpoint(path: str | Path, best: bool = False) -> Path:
    """A checkpoint file from a file path, a run folder or a checkpoints folder: the newest periodic one,
    or with best=True the one that scored best in evaluation."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"no such run folder or checkpoint: {path}")
    run_dir = path.parent if path.name == CHECKPOINT_DIR else path
    if best:
        if (run_dir / CHECKPOINT_DIR / BEST_NAME).is_file():
            return run_dir / CHECKPOINT_DIR / BEST_NAME
        raise CheckpointError(
            f"{run_dir} has no best checkpoint ({CHECKPOINT_DIR}/{BEST_NAME}): it is written by training's "
            "periodic evaluation (--eval-every > 0); leave out --best to use the newest checkpoint"
        )
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise CheckpointError(f"{path} holds no checkpoint ({CHECKPOINT_DIR}/step_*.pt); was the run started with this project?")
    return candidates[-1]


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder that holds a checkpoint file (run_dir/checkpoints/step_*.pt)."""
    return Path(checkpoint).resolve().parent.parent


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely; raise CheckpointError with the reason when it cannot be used."""
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        opcode = re.search(r"Unsupported operand (\d+)", str(e))
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # the PROTO opcode a pickle stream (protocol >= 2) starts with
        if "Weights only load failed" not in str(e) or (opcode and not pickled):
            reason = "not a checkpoint file" if opcode else str(e).strip()[:200]
            raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({reason})") from None
        # torch's own text goes on to advise weights_only=False: say plainly why the file is refused instead.
        found = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", str(e))
        what = (f"a raw pickle stream (pickle opcode {opcode.group(1)}), not torch's checkpoint format" if opcode
                else f"Python objects other than tensors and plain values ({next(g for g in found.groups() if g)})"
                if found else "Python objects other than tensors and plain values")  # fmt: skip
        raise CheckpointError(
            f"{path} was refused: it holds {what}, and loading such a file could run code. Checkpoints of this "
            "project never do; do not load this file unless you know where it came from"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        older = [p.name for p in list_checkpoints(path.parent.parent) if p != path]
        hint = f"; older checkpoints in the same folder: {', '.join(older)}" if older else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({reason[:200]}){hint}") from None
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a checkpoint of this project (format version {FORMAT_VERSION})")
    return payload


@contextlib.contextmanager
def reading_contents(path: str | Path) -> Iterator[None]:
    """Around code that reads a loaded checkpoint: a missing key, a value of the wrong type or tensors
    whose shapes do not match the model its config builds become one CheckpointError line."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
        if isinstance(e, CheckpointError | ConfigError | EnvSpecError):  # already one line of their own
            raise
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        reason = "; ".join(lines[:2])[:300] or type(e).__name__
        raise CheckpointError(
            f"{path} loads, but its contents do not fit the run its config describes ({type(e).__name__}: {reason}); "
            "was it written by another version of this project, or edited?"
        ) from None


def load_algo_checkpoint(path: str | Path, algo: str) -> tuple[dict, Path]:
    """The payload and file of a run's checkpoint (see find_checkpoint), which must be one of algo's."""
    path = find_checkpoint(path)
    payload = load_checkpoint(path)
    if payload.get("algo") != algo:
        raise CheckpointError(f"{path} is a '{payload.get('algo')}' checkpoint, not a '{algo}' one")
    return payload, path
