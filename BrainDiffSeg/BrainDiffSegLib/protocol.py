"""The benchmark protocol used everywhere in this project, and the scores.

With lo and hi the first and last axial slice containing tumour, annotate z_i = round(lo + (hi - lo)(i+1)/(k+1))
for i = 0..k-1; annotated slices keep all their labels (background included); Dice per region is computed in 3D over
all slices that were not annotated.

HD95 (95th percentile of the symmetric surface distance, MONAI's `compute_hausdorff_distance(percentile=95)`, in mm
with the voxel spacing) is computed per region in 3D over the same slices: the annotated slices are blanked in both
volumes (the volume's geometry is kept, no slices are removed). Empty regions: both empty -> 0.0 (nothing to miss);
exactly one empty -> NaN (undefined). NaN values are excluded from means and counted separately in every table.
"""
from __future__ import annotations

import math
import warnings

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


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...] | None = None) -> float:
    """HD95 in mm of two boolean masks (any dimension): 0.0 when both are empty, NaN when exactly one is empty."""
    from monai.metrics import compute_hausdorff_distance

    p, t = bool(pred.any()), bool(truth.any())
    if not p and not t:
        return 0.0
    if p != t:
        return math.nan
    a = np.asarray(pred, dtype=bool)[None, None]
    b = np.asarray(truth, dtype=bool)[None, None]
    with warnings.catch_warnings():  # MONAI's deprecation notes on get_mask_edges
        warnings.simplefilter("ignore")
        d = compute_hausdorff_distance(a, b, include_background=True, percentile=95,
                                       spacing=None if spacing is None else [float(s) for s in spacing])
    return float(np.asarray(d).ravel()[0])


def region_hd95(pred: np.ndarray, truth: np.ndarray, annotated: list[int] | None = None,
                spacing: tuple[float, ...] | None = None, brats: bool | None = None) -> dict[str, float]:
    """HD95 (mm) per region (BraTS WT/TC/ET, or WT for a mask) over the slices not in `annotated` (blanked in both).

    `spacing`: voxel size in mm, axial axis last (`Case.spacing`); None: 1 per axis (voxels)."""
    if brats is None:
        brats = is_brats_labels(np.unique(truth))
    rt = regions_of(truth, brats)
    rp = regions_of(pred, brats)
    out = {}
    for name in rt:
        a, b = rp[name].copy(), rt[name].copy()
        if annotated:
            a[..., list(annotated)] = False
            b[..., list(annotated)] = False
        out[name] = hd95(a, b, spacing)
    return out
