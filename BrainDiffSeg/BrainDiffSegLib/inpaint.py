"""Healthy-tissue inpainting of a T1 volume inside a mask with the conditional DDPM (`inpaint_model`).

`inpaint_volume(t1, mask)` is the engine's entry point (the CLI, the Slicer module and the browser call it): the
input is voided inside the mask, scaled to [-1, 1] with the 0.5 / 99.5 percentiles of the voided volume (the
challenge's normalisation), brought to the model grid (in-plane average pooling by an integer factor so that the
volume is at most `max_in_plane` pixels wide: 2 for 240 x 240 BraTS, 1 for 128 x 128 LGG), cropped to a square
window around the mask; only the slices that touch the mask are sampled (DDIM, `steps` steps); the result is
upsampled (bilinear) and pasted inside the mask only: outside it the output equals the input exactly.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .errors import CancelledError, InputError
from .inpaint_masks import brain_of
from .inpaint_model import InpaintConfig, InpaintNet, load_inpaint_model, model_input, sampling_scheduler
from .resources import resources_dir

log = logging.getLogger(__name__)
MAX_BRAIN_FRACTION = 0.5  # a mask covering more of the brain than this leaves too little context
MIN_INSIDE_HEAD = 0.5  # at least this fraction of the mask's surroundings (or of the mask) must be head


def default_inpaint_model() -> Path:
    return resources_dir() / "Models" / "inpaint"


def check_inputs(t1: np.ndarray, mask: np.ndarray, head: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Refuse masks that cannot be inpainted; returns (float32 image, bool mask), copies of the inputs."""
    t1 = np.asarray(t1)
    mask = np.asarray(mask)
    if t1.ndim != 3:
        raise InputError(f"the image must be a 3D volume, got shape {t1.shape}")
    if mask.shape != t1.shape:
        raise InputError(f"the mask has shape {mask.shape} but the image {t1.shape}: the mask must be on the grid "
                         "of the image (resample it onto the image first)")
    if not np.all(np.isfinite(t1)):
        raise InputError("the image contains NaN or infinite values")
    m = mask > 0
    n = int(m.sum())
    if n == 0:
        raise InputError("the mask is empty: paint or choose the region to inpaint first")
    # the head of the image as given (voided or not); the mask counts as inside where its surroundings are head
    head = brain_of(np.where(m, 0, t1)) if head is None else head
    brain = int((head | m).sum())
    if n > MAX_BRAIN_FRACTION * brain:
        raise InputError(f"the mask covers {100 * n / brain:.0f} % of the brain; at most "
                         f"{100 * MAX_BRAIN_FRACTION:.0f} % can be inpainted (too little healthy context is left)")
    ring = ndimage.binary_dilation(m, iterations=3) & ~m
    around = float((ring & head).sum()) / max(int(ring.sum()), 1)
    if around < MIN_INSIDE_HEAD and int((m & head).sum()) < MIN_INSIDE_HEAD * n:
        raise InputError(f"the mask lies outside the head ({100 * around:.0f} % of its surroundings are head): "
                         "is it the mask of another image?")
    return t1.astype(np.float32, copy=True), m


def intensity_range(voided: np.ndarray) -> tuple[float, float]:
    """The challenge's normalisation: 0.5 / 99.5 percentiles of the whole voided volume, the lower one at least 0."""
    lo, hi = np.percentile(voided, [0.5, 99.5])
    lo = max(float(lo), 0.0)
    return lo, max(float(hi), lo + 1e-6)


@dataclass(frozen=True)
class Window:
    """A square in-plane window [x0, x0+size) x [y0, y0+size) of the model grid (may extend beyond it)."""
    x0: int
    y0: int
    size: int

    def extract(self, vol: torch.Tensor, fill: float) -> torch.Tensor:
        """(..., X, Y) -> (..., size, size), `fill` outside the grid."""
        X, Y = vol.shape[-2:]
        out = vol.new_full(vol.shape[:-2] + (self.size, self.size), fill)
        sx0, sy0, sx1, sy1 = max(self.x0, 0), max(self.y0, 0), min(self.x0 + self.size, X), min(self.y0 + self.size, Y)
        if sx1 > sx0 and sy1 > sy0:
            out[..., sx0 - self.x0:sx1 - self.x0, sy0 - self.y0:sy1 - self.y0] = vol[..., sx0:sx1, sy0:sy1]
        return out


def window_around(mask2d: np.ndarray, size: int, multiple: int = 8, margin: int = 8,
                  grow: bool = True) -> Window:
    """A window centred on the mask's bounding box; with `grow`, enlarged (to a multiple) to hold it plus margin."""
    xs, ys = np.nonzero(mask2d)
    cx, cy = (xs.min() + xs.max() + 1) // 2, (ys.min() + ys.max() + 1) // 2
    if grow:
        need = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) + 2 * margin
        size = max(size, int(math.ceil(need / multiple) * multiple))
    return Window(int(cx - size // 2), int(cy - size // 2), size)


def pool_factor(shape: tuple[int, ...], cfg: InpaintConfig) -> int:
    return max(1, int(math.ceil(max(shape[0], shape[1]) / cfg.max_in_plane)))


def to_model_grid(vol: np.ndarray, factor: int, fill: float) -> torch.Tensor:
    """(X, Y, Z) -> (Z, X', Y') average-pooled by `factor` in plane (padded with `fill`)."""
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(vol, -1, 0), dtype=np.float32))[:, None]
    if factor > 1:
        px, py = (-t.shape[-2]) % factor, (-t.shape[-1]) % factor
        t = F.pad(t, (0, py, 0, px), value=fill)
        t = F.avg_pool2d(t, factor)
    return t[:, 0]


def prepare(t1: np.ndarray, mask: np.ndarray, cfg: InpaintConfig, window_size: int | None = None,
            grow: bool = True) -> dict:
    """The model's view of a case: normalised voided image, mask and clean image on the model grid, cropped to a
    window around the mask, for the slices that touch the mask. Shared by inference and training."""
    voided = np.where(mask, 0.0, t1).astype(np.float32)
    lo, hi = intensity_range(voided)
    factor = pool_factor(t1.shape, cfg)
    scale = lambda v: np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0  # noqa: E731
    m = to_model_grid(mask.astype(np.float32), factor, 0.0) > 0
    zs = np.nonzero(mask.any(axis=(0, 1)))[0]
    win = window_around(m.any(0).numpy(), window_size or cfg.crop, cfg.multiple, grow=grow)
    v = to_model_grid(scale(voided), factor, -1.0)
    v[m] = -1.0
    sel = torch.from_numpy(zs)
    return {"voided": win.extract(v[sel], -1.0), "mask": win.extract(m[sel].float(), 0.0),
            "clean": win.extract(to_model_grid(scale(t1), factor, -1.0)[sel], -1.0),
            "zs": zs, "window": win, "factor": factor, "range": (lo, hi)}


@torch.no_grad()
def sample(net: InpaintNet, cfg: InpaintConfig, voided: torch.Tensor, mask: torch.Tensor, steps: int = 25,
           seed: int = 0, batch: int = 32, progress: Callable | None = None,
           cancelled: Callable[[], bool] | None = None) -> torch.Tensor:
    """DDIM sampling of (N, H, W) slices given voided images and masks (model scale); the 2D model in batches, the
    pseudo-3D one as one stack of the N (adjacent) slices."""
    device = next(net.parameters()).device
    sched = sampling_scheduler(cfg, steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((len(voided), 1) + tuple(voided.shape[-2:]), generator=gen)
    cond_v, cond_m = voided[:, None].to(device), mask[:, None].to(device)
    x = x.to(device)
    chunks = [slice(0, len(x))] if cfg.pseudo3d else [slice(i, i + batch) for i in range(0, len(x), batch)]
    for i, t in enumerate(sched.timesteps):
        if cancelled is not None and cancelled():
            raise CancelledError("inpainting cancelled")
        eps = torch.cat([net(model_input(x[c], cond_v[c], cond_m[c]), t.expand(len(x[c])).to(device),
                             depth=len(x[c]) if cfg.pseudo3d else 1) for c in chunks])
        x = sched.step(eps, t, x, generator=gen).prev_sample
        if progress is not None:
            progress("sampling", (i + 1) / len(sched.timesteps))
    return x[:, 0].clamp(-1, 1).cpu()


def paste(t1: np.ndarray, mask: np.ndarray, pred: torch.Tensor, prep: dict) -> np.ndarray:
    """Model-scale window slices `pred` (N, S, S) -> a copy of `t1` with their values inside `mask` only."""
    lo, hi = prep["range"]
    f, win = prep["factor"], prep["window"]
    up = F.interpolate(pred[:, None], scale_factor=f, mode="bilinear", align_corners=False)[:, 0] if f > 1 else pred
    values = ((up.numpy() + 1.0) / 2.0) * (hi - lo) + lo
    out = np.array(t1, dtype=np.float32, copy=True)
    X, Y = t1.shape[:2]
    x0, y0, size = win.x0 * f, win.y0 * f, win.size * f
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + size, X), min(y0 + size, Y)
    for k, z in enumerate(prep["zs"]):
        canvas = out[:, :, z].copy()
        canvas[sx0:sx1, sy0:sy1] = values[k, sx0 - x0:sx1 - x0, sy0 - y0:sy1 - y0]
        m = mask[:, :, z]
        out[:, :, z][m] = canvas[m]
    return out


def inpaint_volume(t1: np.ndarray, mask: np.ndarray, model: str | Path | tuple | None = None, steps: int = 25,
                   seed: int = 0, progress: Callable[[str, float], None] | None = None,
                   cancelled: Callable[[], bool] | None = None, device: str = "cpu") -> np.ndarray:
    """Synthesise healthy tissue inside `mask` of the T1 volume `t1` (both (X, Y, Z), axial axis last, same grid).

    model: a checkpoint folder (default: the bundled `Resources/Models/inpaint`), or a loaded (net, config) pair.
    progress(stage, fraction) is called with stages 'loading', 'sampling', 'done'; `cancelled()` returning True
    stops the work with `CancelledError`. Returns a new float32 volume equal to `t1` outside the mask; the inputs are
    never modified. Raises InputError for an empty mask, a mask off the image's grid or outside the head, or one
    covering most of the brain."""
    image, m = check_inputs(t1, mask)
    if progress is not None:
        progress("loading", 0.0)
    net, cfg = model if isinstance(model, tuple) else load_inpaint_model(model or default_inpaint_model(), device)
    net.eval()
    prep = prepare(image, m, cfg)
    log.info("inpainting %d voxels on %d slices (model grid 1/%d, window %d px, %d DDIM steps, %s)", int(m.sum()),
             len(prep["zs"]), prep["factor"], prep["window"].size, steps, "pseudo-3D" if cfg.pseudo3d else "2D")
    pred = sample(net, cfg, prep["voided"], prep["mask"], steps, seed, progress=progress, cancelled=cancelled)
    out = paste(image, m, pred, prep)
    if progress is not None:
        progress("done", 1.0)
    return out
