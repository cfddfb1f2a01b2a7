"""Device and precision choice, shared by training and feature extraction; seeds, threads and deterministic algorithms.

Reproducibility: the same command on the same input gives bit-identical output on the same machine with the same
number of torch threads: every random draw of a propagation comes from its own seeded generator (the engine touches
no global generator or flag), and the processes that are the engine's own (the command line, the engine service)
turn on deterministic algorithms (`use_deterministic_algorithms`; training: `seed_everything`). The thread
count is part of the result: float sums are split over threads, so 1 and 2 threads give (slightly) different
features, and the MLPs trained on them can end up in different places (`set_threads`, the benchmarks' `--threads`).
On a GPU, cuBLAS needs `CUBLAS_WORKSPACE_CONFIG` for deterministic matrix products: it is set here, at import, unless
already set (it must be set before the first cuBLAS call).
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

from .errors import InputError

log = logging.getLogger(__name__)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"A GPU was requested (device '{name}') but torch sees no CUDA device; use 'auto' or 'cpu'.")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"Unknown device '{name}'; use 'auto', 'cpu' or 'cuda'.") from exc


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether bfloat16 is used for `precision` ("auto", "fp32", "bf16"), e.g. the classifier's matrix products: "bf16", or "auto" on a device that has
    native bf16 arithmetic (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX, where oneDNN runs bf16
    products about twice as fast as fp32; elsewhere bf16 is emulated and slower). The backbone's "auto" precision
    follows the same rule (`resolve_precision`)."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where the device computes bfloat16 natively (`use_bf16`), else "fp32"; other values as
    given."""
    if precision == "auto":
        return "bf16" if use_bf16("auto", device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str = "fp32"):
    """Autocast context for 'bf16' / 'fp16' (GPU) or a no-op for 'fp32' ('auto': `resolve_precision`)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_deterministic_algorithms() -> None:
    """Deterministic torch algorithms where torch has them (warn_only: ops without one warn instead of failing; none
    is used by feature extraction or the classifier on the CPU), no cuDNN autotuning (its choice can vary by run)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    # deterministic mode also fills every new tensor with NaN (to expose reads of uninitialised memory): no effect on
    # the results of correct code, but 1 s of an 11 s update went to it (docs/results section 8)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (physical cores or $OMP_NUM_THREADS), at import


def busy_cpus(samples: int = 5, interval: float = 0.02, read=None) -> int | None:
    """How many threads of other work are running on the machine now: Linux's count of runnable threads
    (/proc/loadavg, 4th field) less the one reading it, the median of `samples` reads `interval` s apart (an
    instant count, not the load average, which lags a minute behind). None where there is no such count."""
    import statistics
    import time

    def read_loadavg() -> str:
        with open("/proc/loadavg") as f:
            return f.read()

    read = read or read_loadavg
    counts = []
    for i in range(samples):
        try:
            counts.append(int(read().split()[3].split("/")[0]) - 1)
        except (OSError, IndexError, ValueError):
            return None
        if i < samples - 1:
            time.sleep(interval)
    return max(0, int(statistics.median(counts)))


def adaptive_threads(busy: int | None = None, cores: int | None = None, default: int = DEFAULT_THREADS) -> int:
    """Torch threads for a job of the engine's own process (the service, the command line) that the user did not
    fix: torch's choice on an idle machine, fewer when other work keeps cores busy (`busy_cpus`), at least one.
    Measured (results section 14, BraTS2021_00006 beside 2 CPU-bound processes on the 2-core machine): 2 threads
    54.6 s, 1 thread 36.5 s: threads that wait for each other's turn on a shared core lose more than they gain."""
    if busy is None:
        busy = busy_cpus()
    if busy is None:
        return default
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(default, cores - busy))


def set_threads(threads: int | None) -> int:
    """Use `threads` torch threads (None or 0: keep torch's choice, the number of physical cores or
    $OMP_NUM_THREADS); returns the count in use. Results depend on it (see the module's docstring)."""
    if threads:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) generators, and, with `deterministic`, turn on
    `use_deterministic_algorithms`; returns a fresh torch generator seeded with `seed`."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        use_deterministic_algorithms()
    return torch.Generator().manual_seed(seed)
