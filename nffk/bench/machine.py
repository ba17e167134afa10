"""What the numbers were measured on: the machine, the package versions, and the two floors
every kernel is judged against, measured in the same process as the kernels."""
from __future__ import annotations

import importlib.metadata
import os
import platform

import torch

from nffk.bench.timing import Rotation, last_level_cache_bytes, summarize, time_interleaved

# Distribution names of nffk's dependencies and of the peers it is compared with.
PACKAGES = ("nffk", "torch", "numpy", "e3nn", "opt_einsum_fx", "cuequivariance", "cuequivariance-torch",
            "cuequivariance-ops-torch-cu12", "cuequivariance-ops-torch-cu13", "openequivariance",
            "sphericart-torch", "vesin", "vesin-torch", "matscipy", "ase", "triton", "pytest-benchmark")


ENVIRONMENT = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_PROC_BIND", "MKL_NUM_THREADS",
               "NFFK_BACKEND", "TRITON_INTERPRET", "CUDA_VISIBLE_DEVICES", "LD_PRELOAD", "MALLOC_MMAP_MAX_",
               "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def package_versions() -> dict:
    """Installed version of each package in PACKAGES (None when absent)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    if versions["nffk"] is None:  # running from a checkout
        import nffk
        versions["nffk"] = f"{nffk.__version__} (source tree)"
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def describe_machine(device: torch.device) -> dict:
    """CPU, cores, threads, memory, cache, load and (on a GPU run) the GPU."""
    from nffk import _ext
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _memory_bytes(),
        "last_level_cache_bytes": last_level_cache_bytes(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "nffk_extension": "loaded" if _ext.loaded() else f"missing ({_ext.ERROR})",
        # Settings that change what is measured: threading and nffk's backend override.
        "environment": {k: os.environ[k] for k in ENVIRONMENT if k in os.environ},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["cuda"] = torch.version.cuda
    return info


def copy_bandwidth(device: torch.device | str = "cpu", nbytes: int | None = None, repeat: int = 7) -> float:
    """Bytes/s of a large copy (read + write both counted): the floor of memory-bound kernels.
    The buffer is 4x the last-level cache (at least 64 MiB) on CPU and 1 GiB on GPU, so the
    copy streams from memory."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = (1 << 30) if device.type == "cuda" else max(64 << 20, 4 * last_level_cache_bytes())
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = time_interleaved({"copy": lambda: dst.copy_(src)}, Rotation([()]), warmup=2, repeat=repeat,
                             device=device)["copy"]
    return 2 * nbytes / summarize(times)["median_s"]


def matmul_rate(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
                repeat: int = 7) -> float:
    """FLOP/s of a square matrix multiply (2 n^3 FLOPs): the attainable compute rate of this
    process, with the threads it has (n = 1024 on CPU, 8192 on GPU)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    times = time_interleaved({"mm": lambda: torch.mm(a, b, out=out)}, Rotation([()]), warmup=2, repeat=repeat,
                             device=device)["mm"]
    return 2 * n ** 3 / summarize(times)["median_s"]


def measure_floors(device: torch.device, dtype: torch.dtype = torch.float32, quick: bool = False) -> dict:
    """Copy bandwidth (bytes/s) and matrix-multiply rate (FLOP/s) of this machine, now."""
    repeat = 5 if quick else 11
    return {"copy_bytes_per_s": copy_bandwidth(device, repeat=repeat),
            "matmul_flops_per_s": matmul_rate(device, dtype, repeat=repeat),
            "matmul_dtype": str(dtype).replace("torch.", "")}
