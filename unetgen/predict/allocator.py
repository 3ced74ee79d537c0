"""The process's memory as the operating system sees it: its resident size now (`resident_bytes`,
the baseline the CLI adds to `estimate_memory`) and glibc's allocator made predictable
(`fix_mmap_threshold`). docs/large-images.md explains what glibc adds and how to cap it."""

from __future__ import annotations

import ctypes
import os
import resource
import sys

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold", "resident_bytes"]

MMAP_THRESHOLD = 1 << 20
"""Bytes from which `fix_mmap_threshold` has glibc serve an allocation with its own mmap (and
give it back to the system when it is freed)."""
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)


def resident_bytes() -> int:
    """The resident set size of this process now (Linux: /proc/self/statm); elsewhere its peak
    so far (getrusage), which is at least that."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc's malloc serve every allocation of `threshold` bytes or more with mmap, for the
    rest of this process, as ``MALLOC_MMAP_THRESHOLD_=threshold`` would; True if it was set.

    By default glibc raises that threshold (up to 32 MiB) each time a large block is freed, so
    the tensors of a forward pass, freed and allocated again in other sizes, come from its heap
    and arenas afterwards, and freed memory stays in the process (measured: a peak RSS up to 60%
    above the tensors alive; benchmarks/predict_memory.py). With the threshold fixed, a freed
    tensor goes back to the system at once and the peak RSS follows `estimate_memory`. Not
    changed: a threshold set in the environment (``MALLOC_MMAP_THRESHOLD_``), and any C library
    other than glibc (returns False). The cost: fresh pages for every large tensor (measured in
    benchmarks/predict_memory.py)."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
