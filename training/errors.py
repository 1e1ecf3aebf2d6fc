"""The errors that mean bad input: each becomes one line on stderr and exit code 2 in every command."""

from __future__ import annotations


class ConfigError(ValueError):
    """Settings that cannot work together, or a value out of range."""


class TrainingDiverged(RuntimeError):
    """Too many updates in a row had a NaN or inf loss or gradient; the run stops (exit code 1)."""
