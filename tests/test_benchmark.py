"""launch/benchmark.py's own parsing (the benchmark itself is a script that prints figures, not a test)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))

from benchmark import _parse_overrides  # noqa: E402

from training.errors import ConfigError  # noqa: E402


def test_set_overrides_take_each_fields_type():
    out = _parse_overrides(("num_envs=16", "normalize_obs=true", "hidden_sizes=32,32", "target_kl=none",
                            "policy_memory=none", "learning_rate=1e-3"))  # fmt: skip
    assert out == {"num_envs": 16, "normalize_obs": True, "hidden_sizes": (32, 32), "target_kl": None,
                   "policy_memory": "none", "learning_rate": 1e-3}  # fmt: skip
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_overrides(("no_such_field=1",))
