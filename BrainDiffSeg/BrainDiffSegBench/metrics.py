"""HD95, the benchmarks' distance metric (MONAI; the engine's `BrainDiffSegLib.protocol` has the protocol and Dice).

HD95 (95th percentile of the symmetric surface distance, MONAI's `compute_hausdorff_distance(percentile=95)`, in mm
with the voxel spacing) is computed per region in 3D over the slices that were not annotated: the annotated slices
are blanked in both volumes (the volume's geometry is kept, no slices are removed). Empty regions: both empty -> 0.0
(nothing to miss); exactly one empty -> NaN (undefined). NaN values are excluded from means and counted separately
in every table.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from BrainDiffSegLib.preprocess import is_brats_labels, regions_of


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
