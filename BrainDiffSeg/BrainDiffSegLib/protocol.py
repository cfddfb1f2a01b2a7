"""The benchmark protocol used everywhere in this project, and the Dice score.

With lo and hi the first and last axial slice containing tumour, annotate z_i = round(lo + (hi - lo)(i+1)/(k+1))
for i = 0..k-1; annotated slices keep all their labels (background included); Dice per region is computed in 3D over
all slices that were not annotated. (HD95, which needs MONAI, is a benchmark metric: `BrainDiffSegBench.metrics`.)
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .preprocess import is_brats_labels, regions_of


def protocol_slices(label: np.ndarray, k: int) -> list[int]:
    """Axial indices (axial axis last) of the k annotated slices."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    zs = np.nonzero(label.reshape(-1, label.shape[-1]).any(axis=0))[0]
    if len(zs) == 0:
        raise InputError("the ground truth contains no tumour: cannot place annotated slices")
    lo, hi = int(zs[0]), int(zs[-1])
    # Python's round() (half to even) as written in the protocol
    return sorted({int(round(lo + (hi - lo) * (i + 1) / (k + 1))) for i in range(k)})


def simulate_annotation(label: np.ndarray, k: int) -> tuple[np.ndarray, list[int]]:
    """The annotation a user would paint under the protocol: ground truth on k slices, zero elsewhere."""
    zs = protocol_slices(label, k)
    ann = np.zeros_like(label)
    ann[..., zs] = label[..., zs]
    return ann, zs


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def region_dice(pred: np.ndarray, truth: np.ndarray, annotated: list[int] | None = None,
                brats: bool | None = None) -> dict[str, float]:
    """Dice per region (BraTS WT/TC/ET, or WT for a mask) over the slices not in `annotated`."""
    keep = np.ones(truth.shape[-1], dtype=bool)
    if annotated:
        keep[list(annotated)] = False
    if brats is None:
        brats = is_brats_labels(np.unique(truth))
    rt = regions_of(truth[..., keep], brats)
    rp = regions_of(pred[..., keep], brats)
    return {name: dice(rp[name], rt[name]) for name in rt}
