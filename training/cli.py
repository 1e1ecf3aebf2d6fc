"""What every launch script shares: bad input becomes one clear line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from envs.factory import EnvSpecError
from training.checkpoint import CheckpointError
from training.config import ConfigError

USER_ERRORS = (EnvSpecError, ConfigError, CheckpointError)


def run_cli(main: Callable[[], int]) -> int:
    """Bad input exits 2 and a run that had to stop (training diverged) exits 1, each with one line."""
    from training.ppo_trainer import TrainingDiverged

    try:
        return main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 1
