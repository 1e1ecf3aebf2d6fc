"""Keep the memory a training step frees for the next step, instead of handing it back to the OS (glibc).

glibc's malloc serves a large allocation with fresh pages from mmap (above its mmap threshold) and gives
the freed top of its heap back to the OS (above its trim threshold). A training step allocates and frees
the same tens of MiB of activations and gradients every time, so with those defaults every step faults
its pages in again and the kernel zeroes each one: on MinAtar, 25,000-45,000 minor page faults per
MuZero update and a fifth of the update's time spent in the kernel (measured 2026-12-05, AMD EPYC, one
torch thread; README, "Speed"). Pinning the mmap threshold at glibc's largest allowed value and raising
the trim threshold keeps those pages in the heap, as jemalloc or tcmalloc would.

The price is that the resident memory stays near its peak instead of falling between steps. A user who
sets glibc's malloc variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ or GLIBC_TUNABLES) keeps
theirs: nothing is changed then.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above half its largest heap: 32 MiB on 64-bit systems. Larger
# allocations keep coming from mmap; the ones a step repeats here (activations of up to ~14 MiB on MinAtar
# and Atari minibatches) stay below it.
MMAP_THRESHOLD_BYTES = 32 << 20
# mallopt takes an int: the largest, 2 GiB of free heap top before any of it goes back to the OS.
TRIM_THRESHOLD_BYTES = 2**31 - 1
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process, and through the environment for the processes
    it starts (workers). Returns whether they were set: False off Linux, without glibc (musl), or where the
    user set glibc's malloc variables."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        return False
    # glibc reads these at a process's start: worker processes (spawned, not forked) begin the same way.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD_BYTES)
    os.environ["MALLOC_TRIM_THRESHOLD_"] = str(TRIM_THRESHOLD_BYTES)
    return True
