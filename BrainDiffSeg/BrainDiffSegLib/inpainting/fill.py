"""Simple fills of a mask in a T1 volume from the tissue around it: the brain's mean, and the inverse-distance-weighted
mean of the nearest tissue. The benchmark's baselines (`BrainDiffSegBench.inpaint_metrics`), and the distance-weighted fill
is the starting point of the DDPM's sampling (`inpaint.inpaint_volume`, `strength` < 1)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .masks import brain_of


def tissue_outside(t1: np.ndarray, mask: np.ndarray, brain: np.ndarray | None) -> np.ndarray:
    """The brain's voxels outside the mask (`brain`: the brain mask, default `brain_of` the voided image)."""
    brain = brain_of(np.where(mask, 0, t1)) | mask if brain is None else brain
    return brain & ~mask


def fill_mean(t1: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """The mean intensity of the brain's tissue outside the mask, everywhere inside it."""
    out = np.array(t1, np.float32, copy=True)
    out[mask] = float(np.mean(t1[tissue_outside(t1, mask, brain)]))
    return out


def fill_distance_weighted(t1: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None, ring: int = 3,
                           power: float = 2.0, neighbours: int = 16) -> np.ndarray:
    """Inverse-distance-weighted mean of the `neighbours` nearest tissue voxels of a `ring` voxels thick shell
    around the mask (per voxel; k-d tree)."""
    from scipy.spatial import cKDTree

    tissue = tissue_outside(t1, mask, brain)
    shell = ndimage.binary_dilation(mask, iterations=ring) & tissue
    if not shell.any():
        return fill_mean(t1, mask, brain)
    src = np.argwhere(shell)
    tree = cKDTree(src)
    dst = np.argwhere(mask)
    k = min(neighbours, len(src))
    dist, idx = tree.query(dst, k=k)
    dist, idx = dist.reshape(len(dst), k), idx.reshape(len(dst), k)
    w = 1.0 / np.maximum(dist, 1e-6) ** power
    vals = t1[tuple(src.T)][idx]
    out = np.array(t1, np.float32, copy=True)
    out[tuple(dst.T)] = (w * vals).sum(1) / w.sum(1)
    return out
