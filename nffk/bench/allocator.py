"""How the C allocator of a benchmark process treats big freed blocks.

PyTorch's CPU tensors come from the C library's malloc, which has no cache for big blocks: glibc
serves a block of 32 MiB or more (less at first) with a fresh mmap and unmaps it on free, so
every big temporary starts with one page fault per 4 KiB. On our VM a fresh 36 MB product costs
17 ms against 2 ms in place, and implementations with more and bigger temporaries (the peers)
pay it most. PyTorch's CPU tuning guides have such processes run with a caching allocator
(jemalloc, tcmalloc); the bench asks glibc for the same, for every implementation alike: serve
big blocks from the heap and keep freed memory for reuse. `--malloc system` measures the
library's default instead. (nffk's own big outputs come from its pool of kept mappings,
csrc/cpu/mapped_outputs.cpp, under either policy.)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

POLICIES = ("keep", "system")
# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1  # bytes: mallopt takes an int


def _glibc(function: str):
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), function)
    except (OSError, AttributeError):
        return None


def apply(policy: str) -> str:
    """Set the process's malloc policy; returns what is in effect, as the report says it."""
    if policy not in POLICIES:
        raise ValueError(f"malloc policy {policy!r}: expected one of {', '.join(POLICIES)}")
    if policy == "system":
        return "system"
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return "system (keep needs glibc)"
    # Blocks from the heap instead of mmap, and freed heap memory not given back (up to 2 GiB at its top).
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM) != 1:
        return "system (mallopt refused)"
    return "keep"


def release() -> None:
    """Gives the memory that freed blocks keep back to the system (between cases): under `keep`
    nothing is ever returned, so the temporaries of every case so far would stay resident. A full
    run once grew to the machine's 24 GB and was killed in high-order's double backward, whose
    temporaries alone take 3.4 (nffk), 4.3 (e3nn) and 9.7 GB (cuequivariance) at 2,000 edges.
    No gc.collect() here: with the peers imported it takes ~185 ms (the timing collects once per
    group of rounds), and the calls' temporaries are freed by reference counting."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)
    from nffk.ops import _outputs  # nffk's pool of kept output mappings
    _outputs.empty_cache()


# Peak memory of a call, from Linux's per-process high-water mark (VmHWM), which writing 5 to
# /proc/self/clear_refs resets to the current resident size. None where either is unavailable.
def _proc_kb(path: str, field: str):
    """The kB number of `field` in a /proc file of "Field: N kB" lines, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_growth_bytes(resident_kb_before):
    """Bytes the high-water mark rose above `resident_kb_before` (VmRSS read right after reset_peak())."""
    peak = _proc_kb("/proc/self/status", "VmHWM")
    if peak is None or resident_kb_before is None:
        return None
    return max(0, peak - resident_kb_before) * 1024


def resident_kb():
    return _proc_kb("/proc/self/status", "VmRSS")


def available_bytes():
    """The system's MemAvailable, or None."""
    kb = _proc_kb("/proc/meminfo", "MemAvailable")
    return None if kb is None else kb * 1024
