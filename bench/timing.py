"""Timing helpers for scripts in bench/: re-exported from `nffk.bench.timing` (the harness of
`nffk bench`), where warm-up, medians, rotated inputs and device synchronisation live."""
from nffk.bench.machine import copy_bandwidth, matmul_rate  # noqa: F401
from nffk.bench.timing import Rotation, median_time, summarize, time_interleaved  # noqa: F401
