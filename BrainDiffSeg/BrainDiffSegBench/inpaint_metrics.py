"""The inpainting challenge's metrics and our simple inpainting baselines.

Metrics: the definition of `inpainting.challenge_metrics_2023.generate_metrics` (the BraTS 2023/2024 "Local
Synthesis" challenge package on PyPI), re-implemented in numpy/scipy because that package needs torchmetrics, which
this project does not install: prediction and reference are multiplied by the healthy mask, clipped and scaled to
[0, 1] with the 0.5 / 99.5 percentiles of the whole voided input (lower bound at least 0); SSIM is torchmetrics'
`StructuralSimilarityIndexMeasure` of the (1, X, Y, Z) tensor, which treats X as channels, i.e. 2D SSIM of the Y-Z
planes (Gaussian window 11, sigma 1.5, reflect padding, data range the larger value range of the two volumes),
averaged over the mask; MSE over the mask voxels; PSNR with the data range of the reference's mask voxels (values
clamped to it), and PSNR_01 with the fixed range [0, 1]. `Testing/Python/test_inpaint_metrics.py` checks the match
against numbers computed with the package itself on a small example.

Baselines (arrays in, the image with the mask filled out): the mean of the brain's tissue outside the mask, a
distance-weighted fill from the nearest tissue around the mask, and the contralateral mirror (the brain flipped
left-right about its own centre, falling back on the mean where the mirror lands in the mask or outside the brain).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from BrainDiffSegLib.inpainting.inpaint import intensity_range
from BrainDiffSegLib.inpainting.fill import fill_distance_weighted, fill_mean, tissue_outside


def _scale(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip(v, lo, hi) - lo) / (hi - lo)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    d = np.arange((1 - size) / 2, (1 + size) / 2, 1.0)
    g = np.exp(-((d / sigma) ** 2) / 2)
    return g / g.sum()


def ssim_map(pred: np.ndarray, target: np.ndarray, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """torchmetrics' SSIM image of a (X, Y, Z) volume read as X channels of Y x Z images."""
    data_range = max(pred.max() - pred.min(), target.max() - target.min())
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    w = _gaussian_window()

    def blur(v):
        v = ndimage.correlate1d(v, w, axis=1, mode="mirror")
        return ndimage.correlate1d(v, w, axis=2, mode="mirror")

    p, t = pred.astype(np.float64), target.astype(np.float64)
    mu_p, mu_t = blur(p), blur(t)
    s_pp = np.maximum(blur(p * p) - mu_p ** 2, 0.0)
    s_tt = np.maximum(blur(t * t) - mu_t ** 2, 0.0)
    s_pt = blur(p * t) - mu_p * mu_t
    return ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / ((mu_p ** 2 + mu_t ** 2 + c1) * (s_pp + s_tt + c2))


def _psnr(pred: np.ndarray, target: np.ndarray, lo: float, hi: float) -> float:
    p, t = np.clip(pred, lo, hi), np.clip(target, lo, hi)
    mse = float(np.mean((p - t) ** 2))
    return float(10 * np.log10((hi - lo) ** 2 / mse)) if mse > 0 else float("inf")


def challenge_metrics(prediction: np.ndarray, target: np.ndarray, voided: np.ndarray, mask: np.ndarray) -> dict:
    """SSIM, PSNR, PSNR_01 and MSE inside `mask`, as the challenge computes them (all arrays on one grid)."""
    mask = np.asarray(mask, bool)
    lo, hi = intensity_range(np.asarray(voided, np.float64))
    pred = _scale(np.asarray(prediction, np.float64) * mask, lo, hi).astype(np.float32)
    gt = _scale(np.asarray(target, np.float64) * mask, lo, hi).astype(np.float32)
    p, t = pred[mask].astype(np.float64), gt[mask].astype(np.float64)
    return {"ssim": float(ssim_map(pred, gt)[mask].mean()), "psnr": _psnr(p, t, float(t.min()), float(t.max())),
            "psnr_01": _psnr(p, t, 0.0, 1.0), "mse": float(np.mean((p - t) ** 2))}


# ------------------------------------------------------------------------------------------------------ baselines
# the mean and distance-weighted fills are the engine's (`BrainDiffSegLib.inpainting.fill`; the DDPM starts from the latter)

def fill_mirror(t1: np.ndarray, mask: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """The contralateral hemisphere: the volume mirrored left-right (axis 0) about the brain's centre; voxels whose
    mirror lies in the mask or outside the brain get the tissue mean."""
    tissue = tissue_outside(t1, mask, brain)
    xs = np.nonzero(tissue.any(axis=(1, 2)))[0]
    centre2 = int(xs.min() + xs.max())  # mirror of x is centre2 - x
    x = np.arange(t1.shape[0])
    src = centre2 - x
    valid = (src >= 0) & (src < t1.shape[0])
    mirrored = np.zeros_like(t1, dtype=np.float32)
    ok = np.zeros(t1.shape, bool)
    mirrored[valid] = t1[src[valid]]
    ok[valid] = tissue[src[valid]]
    out = fill_mean(t1, mask, brain)
    use = mask & ok
    out[use] = mirrored[use]
    return out


BASELINES = {"mean": fill_mean, "distance-weighted": fill_distance_weighted, "mirror": fill_mirror}
