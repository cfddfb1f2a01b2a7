"""Intensity normalisation, foreground mask, label/region mapping, and the in-plane grid of the model (128x128).

The model grid is the square in-plane bounding box of the head (with a margin), resized to `size` x `size`; the same
box is used for every axial slice of a case, so features map back to the native grid by one resize per slice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .constants import REGIONS_BRATS, ROLES



def foreground_mask(images: dict[str, np.ndarray], rel_threshold: float = 0.05) -> np.ndarray:
    """Head/brain voxels: any sequence above a small fraction of its robust maximum, holes filled per slice."""
    mask = np.zeros(next(iter(images.values())).shape, dtype=bool)
    for img in images.values():
        hi = np.percentile(img[img > 0], 99.5) if np.any(img > 0) else img.max()
        mask |= img > rel_threshold * hi
    for z in range(mask.shape[-1]):
        if mask[..., z].any():
            mask[..., z] = ndimage.binary_fill_holes(mask[..., z])
    return mask


def normalize(img: np.ndarray, mask: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Robust per-sequence scaling: percentiles of the foreground to [-1, 1], background -1."""
    values = img[mask]
    if values.size == 0:
        values = img.ravel()
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        hi = lo + 1.0
    out = np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0
    out[~mask] = -1.0
    return out.astype(np.float32)


def normalize_case(images: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    mask = foreground_mask(images)
    return {r: normalize(v, mask) for r, v in images.items()}, mask


def stack_roles(images: dict[str, np.ndarray], roles: tuple[str, ...] = ROLES) -> tuple[np.ndarray, np.ndarray]:
    """(R, X, Y, Z) array in role order (absent roles zero) and the (R,) presence vector."""
    shape = next(iter(images.values())).shape
    stack = np.zeros((len(roles),) + shape, dtype=np.float32)
    present = np.zeros(len(roles), dtype=bool)
    for i, r in enumerate(roles):
        if r in images:
            stack[i] = images[r]
            present[i] = True
    return stack, present


@dataclass(frozen=True)
class ModelGrid:
    """Square in-plane box [x0, x0+side) x [y0, y0+side) of the native grid, shown to the model at size x size."""

    x0: int
    y0: int
    side: int
    size: int
    native_xy: tuple[int, int]

    @classmethod
    def from_mask(cls, mask: np.ndarray, size: int = 128, margin: int = 4) -> "ModelGrid":
        proj = mask.any(axis=-1)
        if not proj.any():
            proj = np.ones_like(proj)
        xs, ys = np.nonzero(proj)
        x0, x1 = xs.min() - margin, xs.max() + 1 + margin
        y0, y1 = ys.min() - margin, ys.max() + 1 + margin
        side = int(max(x1 - x0, y1 - y0))
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        return cls(int(cx - side // 2), int(cy - side // 2), side, size, tuple(mask.shape[:2]))

    def crop(self, vol: torch.Tensor, fill: float) -> torch.Tensor:
        """vol (..., X, Y) -> (..., side, side), padding with `fill` outside the native grid."""
        X, Y = self.native_xy
        out = vol.new_full(vol.shape[:-2] + (self.side, self.side), fill)
        sx0, sy0 = max(self.x0, 0), max(self.y0, 0)
        sx1, sy1 = min(self.x0 + self.side, X), min(self.y0 + self.side, Y)
        out[..., sx0 - self.x0:sx1 - self.x0, sy0 - self.y0:sy1 - self.y0] = vol[..., sx0:sx1, sy0:sy1]
        return out

    def to_model(self, slices: np.ndarray | torch.Tensor, fill: float = -1.0) -> torch.Tensor:
        """(N, C, X, Y) native slices -> (N, C, size, size) model input (bilinear, antialiased)."""
        t = torch.as_tensor(slices, dtype=torch.float32)
        t = self.crop(t, fill)
        return F.interpolate(t, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)

    def to_native(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) maps on the model box -> (N, C, X, Y) native grid (bilinear); zero outside the box."""
        X, Y = self.native_xy
        up = F.interpolate(maps, size=(self.side, self.side), mode="bilinear", align_corners=False)
        out = maps.new_zeros(maps.shape[:2] + (X, Y))
        sx0, sy0 = max(self.x0, 0), max(self.y0, 0)
        sx1, sy1 = min(self.x0 + self.side, X), min(self.y0 + self.side, Y)
        out[..., sx0:sx1, sy0:sy1] = up[..., sx0 - self.x0:sx1 - self.x0, sy0 - self.y0:sy1 - self.y0]
        return out


    def sample_native(self, maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Values (P, C) of `maps` (N, C, h, w) on the model box, bilinearly resampled at the True pixels of the native
        `mask` (N, X, Y), in row-major order: `to_native(maps).permute(0, 2, 3, 1)[mask]` without building the
        native maps (only the four neighbours of each requested pixel are read: far cheaper than resampling whole
        slices when the pixels are a small part of them). Pixels outside the box get 0."""
        n, xs, ys = torch.nonzero(mask, as_tuple=True)
        bx, by = xs - self.x0, ys - self.y0
        inside = (bx >= 0) & (bx < self.side) & (by >= 0) & (by < self.side)
        out = bilinear_at(maps, n, bx, by, (self.side, self.side))
        if not bool(inside.all()):
            out[~inside] = 0
        return out


def _source(i: torch.Tensor, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear source of output indices i when an axis of n_in cells is resized to n_out, as
    `F.interpolate(..., mode="bilinear", align_corners=False)` computes it: lower index, upper index, upper weight."""
    src = ((i.to(torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    i0 = src.floor().long().clamp(0, n_in - 1)
    i1 = (i0 + 1).clamp_max(n_in - 1)
    return i0, i1, src - i0


def bilinear_at(maps: torch.Tensor, n: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(maps, size, mode="bilinear", align_corners=False)[n, :, i, j]` (P, C) for maps (N, C, h, w),
    computed only at the requested positions: four rows of the channels-last maps per position."""
    _, c, h, w = maps.shape
    rows = maps.permute(0, 2, 3, 1).reshape(-1, c)  # no copy when the maps are channels-last
    i0, i1, li = _source(i, h, size[0])
    j0, j1, lj = _source(j, w, size[1])
    base = n * (h * w)
    out = None
    for ii, wi in ((i0, 1 - li), (i1, li)):
        for jj, wj in ((j0, 1 - lj), (j1, lj)):
            term = rows[base + ii * w + jj] * (wi * wj).to(rows.dtype)[:, None]
            out = term if out is None else out.add_(term)
    return out


def label_values(label: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(label)]


def is_brats_labels(values) -> bool:
    vals = set(int(v) for v in values) - {0}
    return bool(vals) and vals <= {1, 2, 4} and bool(vals & {2, 4})


def regions_of(label: np.ndarray, brats: bool | None = None) -> dict[str, np.ndarray]:
    """Evaluation regions: BraTS WT/TC/ET, or WT = any label for a 0/1 (or other) mask."""
    if brats is None:
        brats = is_brats_labels(label_values(label))
    if brats:
        return {name: np.isin(label, vals) for name, vals in REGIONS_BRATS.items()}
    return {"WT": label > 0}
