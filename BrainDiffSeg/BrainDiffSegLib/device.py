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


def autocast(device: torch.device, precision: str = "fp32"):
    """Autocast context for 'bf16' / 'fp16' (GPU) or a no-op for 'fp32'."""
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
