"""Device and precision choice, shared by training and feature extraction."""
from __future__ import annotations

import contextlib
import logging

import torch

from .errors import InputError

log = logging.getLogger(__name__)


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


def seed_everything(seed: int) -> torch.Generator:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
