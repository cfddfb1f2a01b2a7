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

from ..errors import CancelledError, EngineError, InputError
from .fill import fill_distance_weighted
from .masks import brain_of
from .model import (InpaintConfig, InpaintNet, load_inpaint_model, model_input, sample_range,
                     sampling_scheduler)
from ..resources import resources_dir

log = logging.getLogger(__name__)
MAX_BRAIN_FRACTION = 0.5  # a mask covering more of the brain than this leaves too little context
MIN_INSIDE_HEAD = 0.5  # at least this fraction of the mask's surroundings (or of the mask) must be head


def default_inpaint_model() -> Path:
    return resources_dir() / "Models" / "inpaint"


def default_inpaint3d_model() -> Path:
    """The bundled pseudo-3D model (the paper's best variant; slower, `--model` of `braindiffseg inpaint`)."""
    return resources_dir() / "Models" / "inpaint3d"


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


MIN_CONTEXT_PIXELS = 16
# docs/results/inpainting: the mean of 4 samples scores better than one on all three challenge metrics (SSIM +0.09
# for the bundled model on 8 test cases) at 4x the time (45 s for a BraTS volume on one CPU thread)
DEFAULT_SAMPLES = 4
# docs/results/inpainting: sampling from the distance-weighted fill noised to 15 % of the trajectory (SDEdit; 4 of the
# 25 steps) beats the fill itself and sampling from pure noise (strength 1) on SSIM, PSNR and MSE (strengths 0.15,
# 0.3, 0.45 measured on 8 test cases)
DEFAULT_STRENGTH = 0.15


def context_mean(voided: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean (model scale) of the known tissue of the window: outside the mask, brighter than background."""
    ctx = (mask == 0) & (voided > -1.0 + 1e-3)
    if int(ctx.sum()) < MIN_CONTEXT_PIXELS:
        return 0.0
    return float(voided[ctx].mean())


def prepare(t1: np.ndarray, mask: np.ndarray, cfg: InpaintConfig, window_size: int | None = None,
            grow: bool = True) -> dict:
    """The model's view of a case: normalised voided image, mask and clean image on the model grid, cropped to a
    window around the mask, for the slices that touch the mask. Shared by inference and training. With
    `cfg.context_norm`, the mean of the window's known tissue (`context_mean`, `prep["context"]`) is subtracted
    (model values then in [-2, 2]; `paste` adds it back): the model fills relative to its context."""
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
    voided_w, mask_w = win.extract(v[sel], -1.0), win.extract(m[sel].float(), 0.0)
    clean_w = win.extract(to_model_grid(scale(t1), factor, -1.0)[sel], -1.0)
    context = None
    if cfg.context_norm:
        context = context_mean(voided_w, mask_w)
        clean_w = clean_w - context
        voided_w = torch.where(mask_w > 0, torch.tensor(-2.0), voided_w - context)
    return {"voided": voided_w, "mask": mask_w, "clean": clean_w, "context": context,
            "zs": zs, "window": win, "factor": factor, "range": (lo, hi)}


@torch.no_grad()
def sample(net: InpaintNet, cfg: InpaintConfig, voided: torch.Tensor, mask: torch.Tensor, steps: int = 25,
           seed: int = 0, batch: int = 32, progress: Callable | None = None,
           cancelled: Callable[[], bool] | None = None, samples: int = 1, init: torch.Tensor | None = None,
           strength: float = 1.0) -> torch.Tensor:
    """DDIM sampling of (N, H, W) slices given voided images and masks (model scale); the 2D model in batches, the
    pseudo-3D one as one stack of the N (adjacent) slices per sample. With `samples` > 1, that many independent
    samples (one noise draw each) are averaged: an estimate of the posterior mean, which the challenge's
    MSE / PSNR / SSIM reward over a single (sharper, noisier) sample.

    `init` (N, H, W) and `strength` < 1 (SDEdit, Meng et al. 2022): start from `init` noised to the level of the last
    `strength` fraction of the `steps` and run only those steps (at least one); strength 1 starts from pure noise."""
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples}")
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    device = next(net.parameters()).device
    sched = sampling_scheduler(cfg, steps)
    gen = torch.Generator().manual_seed(seed)
    n = len(voided)
    x = torch.randn((samples * n, 1) + tuple(voided.shape[-2:]), generator=gen)
    timesteps = sched.timesteps
    if strength < 1.0:
        if init is None:
            raise InputError("sampling with strength < 1 needs an initial image")
        timesteps = timesteps[len(timesteps) - max(1, round(strength * len(timesteps))):]
        x = sched.add_noise(init[:, None].float().repeat(samples, 1, 1, 1), x, timesteps[:1])
    cond_v = voided[:, None].repeat(samples, 1, 1, 1).to(device)
    cond_m = mask[:, None].repeat(samples, 1, 1, 1).to(device)
    x = x.to(device)
    if cfg.pseudo3d:
        chunks = [slice(s * n, (s + 1) * n) for s in range(samples)]
    else:
        chunks = [slice(i, i + batch) for i in range(0, len(x), batch)]
    for i, t in enumerate(timesteps):
        if cancelled is not None and cancelled():
            raise CancelledError("inpainting cancelled")
        eps = torch.cat([net(model_input(x[c], cond_v[c], cond_m[c]), t.expand(len(x[c])).to(device),
                             depth=len(x[c]) if cfg.pseudo3d else 1) for c in chunks])
        x = sched.step(eps, t, x, generator=gen).prev_sample
        if progress is not None:
            progress("sampling", (i + 1) / len(timesteps))
    bound = sample_range(cfg)
    x = x[:, 0].clamp(-bound, bound)
    return x.view(samples, n, *x.shape[1:]).mean(0).cpu()


def paste(t1: np.ndarray, mask: np.ndarray, pred: torch.Tensor, prep: dict) -> np.ndarray:
    """Model-scale window slices `pred` (N, S, S) -> a copy of `t1` with their values inside `mask` only."""
    lo, hi = prep["range"]
    f, win = prep["factor"], prep["window"]
    if prep.get("context") is not None:
        pred = (pred + prep["context"]).clamp(-1.0, 1.0)
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
                   cancelled: Callable[[], bool] | None = None, device: str = "cpu",
                   samples: int = DEFAULT_SAMPLES, strength: float = DEFAULT_STRENGTH) -> np.ndarray:
    """Synthesise healthy tissue inside `mask` of the T1 volume `t1` (both (X, Y, Z), axial axis last, same grid).

    model: a checkpoint folder (default: the bundled `Resources/Models/inpaint`), or a loaded (net, config) pair.
    samples: independent DDIM samples averaged inside the mask (default `DEFAULT_SAMPLES`; 1: a single sample; more:
    smoother, closer to the ground truth on average, proportionally slower).
    strength: the fraction of the diffusion trajectory sampled, from the distance-weighted fill of the mask
    (`inpaint_fill.fill_distance_weighted`) noised to that level (default `DEFAULT_STRENGTH`); 1.0: from pure
    noise, the plain conditional DDPM.
    progress(stage, fraction) is called with stages 'loading', 'sampling', 'done'; `cancelled()` returning True
    stops the work with `CancelledError`. Returns a new float32 volume equal to `t1` outside the mask; the inputs are
    never modified. Raises InputError for an empty mask, a mask off the image's grid or outside the head, or one
    covering most of the brain."""
    image, m = check_inputs(t1, mask)
    if samples < 1:
        raise InputError(f"samples must be at least 1, got {samples}")
    if not 0.0 < strength <= 1.0:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    if progress is not None:
        progress("loading", 0.0)
    net, cfg = model if isinstance(model, tuple) else load_inpaint_model(model or default_inpaint_model(), device)
    net.eval()
    prep = prepare(image, m, cfg)
    log.info("inpainting %d voxels on %d slices (model grid 1/%d, window %d px, %d DDIM steps, strength %.2f, "
             "%d sample(s), %s)", int(m.sum()), len(prep["zs"]), prep["factor"], prep["window"].size, steps, strength,
             samples, "pseudo-3D" if cfg.pseudo3d else "2D")
    init = None
    if strength < 1.0:  # the fill on the model's grid and scale: prepare() of the filled image gives it as "clean"
        init = prepare(fill_distance_weighted(np.where(m, 0, image).astype(np.float32), m), m, cfg)["clean"]
    pred = sample(net, cfg, prep["voided"], prep["mask"], steps, seed, progress=progress, cancelled=cancelled,
                  samples=samples, init=init, strength=strength)
    out = paste(image, m, pred, prep)
    if not np.isfinite(out[m]).all():
        raise EngineError("The inpainted voxels are not finite (NaN or infinite): the inpainting model's weights are "
                          "damaged; nothing was written.")
    if progress is not None:
        progress("done", 1.0)
    return out
