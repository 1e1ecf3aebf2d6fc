"""The learners' reduced precision, shared by PPO and MuZero: an update runs its convolutional trunk under
a bfloat16 autocast (`reduced_precision`), where its FLOPs are, and turns the autocast off again for the
parts whose rounding would show (`full_precision`): memory cores, MLP bodies, policy and value heads."""

from __future__ import annotations

import contextlib

import torch


def reduced_precision(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """A learner's autocast to dtype (torch.bfloat16 for --learner-precision; None: none), under which a
    net rounds only its convolutional trunk (full_precision keeps the rest in float32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """Turns a surrounding autocast off: a net's cores, bodies and heads run in float32 under a learner's
    bfloat16 autocast. Logits rounded to bfloat16 (8 bits of mantissa) would move the PPO ratio of an
    unchanged policy by ~1% and a value by as much; the heads' FLOPs are a small part of an update.
    Without an autocast it does nothing (entering torch.autocast costs ~50 us, 10% of acting for 4 boards)."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)
