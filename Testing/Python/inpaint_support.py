"""Shared pieces of the inpainting tests: real LGG cases with a T1 (small, 128 x 128 x Z) and a tiny model."""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_INPAINT = dict(crop=32, block_out_channels=(8, 16), attention_levels=(1,), norm_num_groups=4,
                    attention_head_dim=8)


_FOUND: dict = {}


def lgg_t1_cases(data_root: Path, n: int = 3) -> list[Path]:
    """The first `n` LGG patients (sorted) whose T1 ('pre') is not a copy of FLAIR and who have a tumour."""
    if (data_root, n) not in _FOUND:
        _FOUND[(data_root, n)] = _lgg_t1_cases(data_root, n)
    return _FOUND[(data_root, n)]


def _lgg_t1_cases(data_root: Path, n: int) -> list[Path]:
    import numpy as np

    from BrainDiffSegLib.io import find_cases, load_case

    found = []
    for d in find_cases(data_root / "lgg128"):
        case = load_case(d)
        if "t1" in case.images and case.label is not None and np.count_nonzero(case.label) > 500:
            found.append(d)
        if len(found) == n:
            return found
    pytest.skip("not enough LGG cases with a T1 in the shared data")


def tiny_inpaint_model(folder: Path, pseudo3d: bool = False, seed: int = 0, context_norm: bool = False) -> Path:
    """An untrained tiny inpainting checkpoint."""
    import torch

    from BrainDiffSegLib.inpainting.model import InpaintConfig, build_inpaint_net
    from BrainDiffSegLib.model import save_backbone

    cfg = InpaintConfig(pseudo3d=pseudo3d, context_norm=context_norm, **TINY_INPAINT)
    torch.manual_seed(seed)
    return save_backbone(folder, build_inpaint_net(cfg).state_dict(), cfg)
