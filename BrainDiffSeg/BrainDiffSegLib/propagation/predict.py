"""Whole-volume prediction with a trained ensemble, coarse to fine.

Classifying every native head pixel (1.5 M for a BraTS volume) took most of a propagation, yet most of a head is
background far from any tumour. So each batch of slices is first classified on a coarse grid over the model box,
half the model grid's resolution (64 x 64 cells): decoder activations sampled bilinearly at the cell centres (or
gathered, for a block at that resolution), likewise the native intensity features. Native pixels are then
classified exactly (decoder activations upsampled to the model grid and sampled at each pixel,
`PixelEnsemble.classify`) only in the coarse cells where the ensemble's probability of a tumour class reaches
`roi_threshold` or its members disagree, dilated by `roi_margin` cells. The other head pixels are background, with
the entropy and disagreement of their coarse cell. `roi_threshold` 0 classifies every head pixel natively (the
exact, slower prediction).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import PixelEnsemble
from .features import FeatureExtractor
from ..preprocess import bilinear_at

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Class indices (into the label values), normalised entropy and disagreement of the predicted slices,
    (X, Y, len(zs)) arrays, plus how many head pixels were classified natively."""

    classes: np.ndarray
    entropy: np.ndarray
    disagreement: np.ndarray
    native_pixels: int = 0
    head_pixels: int = 0
    probabilities: np.ndarray | None = None  # (X, Y, len(zs), C) mean class probabilities, if asked for


def _coarse_size(parts: list[torch.Tensor], model_size: int) -> int:
    """Half the model grid (64 x 64 cells for 128 x 128), or the finest decoder block if coarser. Measured on three
    cases (docs/results section 8): with the 128 x 128 block as the coarse grid the coarse pass cost nearly as much
    as the native one; at 64 x 64 cells (margin 1 cell, the same 2 model pixels) the labels are identical to
    classifying every pixel and an update is 1-3 s faster."""
    half = max(1, model_size // 2)
    if parts:
        return int(min(half, max(p.shape[-1] for p in parts)))
    return half


def _cell_of(grid, n_cells: int, coords: torch.Tensor, origin: int) -> torch.Tensor:
    """Index of the coarse cell (of n_cells across the box) holding native coordinates `coords`."""
    return ((coords - origin) * n_cells // grid.side).clamp(0, n_cells - 1)


def _columns(blocks: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """`torch.cat(blocks, dim=1).to(dtype)`, each block converted as it is copied into its columns (one pass
    instead of two; the values are the same, each element being rounded once either way)."""
    out = torch.empty((blocks[0].shape[0], sum(b.shape[1] for b in blocks)), dtype=dtype, device=blocks[0].device)
    offset = 0
    for b in blocks:
        out[:, offset:offset + b.shape[1]].copy_(b)
        offset += b.shape[1]
    return out


def _coarse_features(parts: list[torch.Tensor], coarse_intensities: torch.Tensor | None,
                     cells: tuple[torch.Tensor, ...], c: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Features (P, C) at the coarse cells (n, i, j) of a c x c grid over the model box, in `dtype`: each decoder
    part gathered there (a part at c x c) or resampled bilinearly there (a coarser part, as upsampling would), then
    the intensity features at the cell centres (`FeatureExtractor.coarse_intensities`, (N, Ci, c, c))."""
    n, i, j = cells
    x = []
    for part in parts:
        if part.shape[-1] == c:
            x.append(part.permute(0, 2, 3, 1)[n, i, j])
        else:
            x.append(bilinear_at(part, n, i, j, (c, c)))
    if coarse_intensities is not None:
        x.append(coarse_intensities.permute(0, 2, 3, 1)[n, i, j])
    return _columns(x, dtype)


def _upsample_into(out: torch.Tensor, parts: list[torch.Tensor]) -> None:
    """`out[:] = torch.cat([F.interpolate(p, out's size, bilinear) for p in parts], 1)` for one slice (batch 1, so
    each part's channel range of `out` is contiguous), without allocating the upsampled parts."""
    size = list(out.shape[-2:])
    offset = 0
    for part in parts:
        dst = out[:, offset:offset + part.shape[1]]
        if list(part.shape[-2:]) == size:
            dst.copy_(part)
        else:
            torch._C._nn.upsample_bilinear2d(part, size, False, None, None, out=dst)
        offset += part.shape[1]


@torch.no_grad()
def predict_slices(ens: PixelEnsemble, extractor: FeatureExtractor, zs: list[int], foreground: np.ndarray,
                   roi_threshold: float = 0.1, roi_margin: int = 2,
                   check_cancel: Callable[[], None] | None = None, probabilities: bool = False,
                   keep: np.ndarray | None = None) -> Prediction:
    """Predict slices `zs` (a batch) of the case of `extractor`; `foreground` (X, Y, Z) is the head mask; `keep`
    (X, Y, Z, optional): where a tumour label may stay (the 3D gate): native pixels elsewhere are not classified
    (background, with their coarse cell's entropy and disagreement).

    `probabilities`: also return the ensemble's mean class probabilities (native ones in the region of interest,
    the coarse cell's elsewhere in the head, background 1 outside the head)."""
    device = extractor.device
    grid = extractor.grid
    fg = torch.from_numpy(np.ascontiguousarray(np.moveaxis(foreground[..., zs], -1, 0)))
    w0, b0, rest = ens.folded()
    folded = (w0, b0, rest)
    parts = extractor.diffusion_parts(zs) or []
    inten = extractor.intensity_maps(zs, as_kept=True)  # float16 in a cache: only the native ROI pixels converted
    c = _coarse_size(parts, grid.size)

    # 1. coarse pass over the cells touching the head
    cells = F.adaptive_max_pool2d(grid.crop(fg[:, None].float(), 0.0), c)[:, 0] > 0
    at = torch.nonzero(cells, as_tuple=True)
    coarse_i = extractor.coarse_intensities(zs, c, inten) if inten is not None else None
    x = _coarse_features(parts, coarse_i, tuple(t.to(device) for t in at), c, ens.input_dtype)
    del coarse_i
    p, ent, dis = ens.classify(x, folded)
    del x
    tumour = torch.zeros(cells.shape, dtype=torch.bool)
    tumour[at] = ((1 - p[:, 0]) >= roi_threshold) | (dis > 0)
    coarse_ent, coarse_dis = torch.zeros(cells.shape), torch.zeros(cells.shape)
    coarse_ent[at], coarse_dis[at] = ent, dis
    if probabilities:
        coarse_p = torch.zeros(cells.shape + (p.shape[1],))
        coarse_p[at] = p
    if roi_margin > 0:
        tumour = F.max_pool2d(tumour[:, None].float(), 2 * roi_margin + 1, stride=1, padding=roi_margin)[:, 0] > 0

    # 2. native pixels of the region of interest, one slice at a time: explicit features, the ensemble
    n, xs, ys = torch.nonzero(fg, as_tuple=True)
    cx, cy = _cell_of(grid, c, xs, grid.x0), _cell_of(grid, c, ys, grid.y0)
    in_roi = tumour[n, cx, cy]
    if keep is not None:
        in_roi &= torch.from_numpy(np.ascontiguousarray(np.moveaxis(keep[..., zs], -1, 0)))[n, xs, ys]
    classes = torch.zeros(len(n), dtype=torch.int64)
    entropy, disagreement = coarse_ent[n, cx, cy], coarse_dis[n, cx, cy]
    probs = coarse_p[n, cx, cy] if probabilities else None
    roi = torch.zeros(fg.shape, dtype=torch.bool)
    roi[n[in_roi], xs[in_roi], ys[in_roi]] = True
    rows = torch.nonzero(in_roi).flatten()  # positions, in the head pixels' order, of the ROI pixels
    start = 0
    # one slice's decoder maps on the model grid, reused for every slice: upsampling into it (`out=`) instead of
    # concatenating fresh upsampled parts halves this step (measured 4 vs 8-9 ms per slice, 1 thread, BraTS)
    maps = torch.empty((1, sum(q.shape[1] for q in parts), grid.size, grid.size), device=device) if parts else None
    for s in range(len(zs)):
        m = roi[s:s + 1].to(device)
        count = int(m.sum())
        if count == 0:
            continue
        if check_cancel is not None:
            check_cancel()
        x = []
        if parts:
            _upsample_into(maps, [q[s:s + 1] for q in parts])
            x.append(grid.sample_native(maps, m))
        if inten is not None:
            x.append(inten[s:s + 1].permute(0, 2, 3, 1)[m].float())
        pr, e, d = ens.classify(_columns(x, ens.input_dtype), folded)
        idx = rows[start:start + count]
        classes[idx], entropy[idx], disagreement[idx] = pr.argmax(1), e, d
        if probs is not None:
            probs[idx] = pr
        start += count

    out = []
    for values, dtype in ((classes, np.int64), (entropy, np.float32), (disagreement, np.float32)):
        block = np.zeros(tuple(fg.shape), dtype=dtype)
        block[n.numpy(), xs.numpy(), ys.numpy()] = values.numpy()
        out.append(np.moveaxis(block, 0, -1))
    full = None
    if probs is not None:
        full = np.zeros(tuple(fg.shape) + (probs.shape[1],), dtype=np.float32)
        full[..., 0] = 1.0
        full[n.numpy(), xs.numpy(), ys.numpy()] = probs.numpy()
        full = np.moveaxis(full, 0, -2)
    return Prediction(*out, native_pixels=int(in_roi.sum()), head_pixels=len(n), probabilities=full)
