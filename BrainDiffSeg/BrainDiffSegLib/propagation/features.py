"""Per-pixel features from the backbone's decoder: activations of chosen decoder (up) blocks at chosen noise levels,
with fixed seeded noise, upsampled and concatenated, optionally with the normalised intensities.

The forward pass stops after the last decoder block needed; features are produced slice batch by slice batch and
returned only for the requested pixels, in float16. Diffusion features live on the model grid (S x S box around the
head) and are resampled bilinearly to the native grid; intensities are taken on the native grid.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from ..device import autocast
from ..options import FeatureSpec
from ..model import BackboneConfig, build_scheduler, model_input
from ..preprocess import ModelGrid, bilinear_at

log = logging.getLogger(__name__)


def decoder_activations(unet: UNet2DModel, sample: torch.Tensor, timesteps: torch.Tensor,
                        blocks: tuple[int, ...]) -> list[torch.Tensor]:
    """Run `unet` (a diffusers UNet2DModel) up to the last requested decoder block; return those blocks' outputs.

    Mirrors `UNet2DModel.forward` (time embedding, conv_in, down blocks, mid block, up blocks) but returns early.
    """
    last = max(blocks)
    if last >= len(unet.up_blocks) or min(blocks) < 0:
        raise ValueError(f"decoder block indices must lie in 0..{len(unet.up_blocks) - 1}, got {blocks}")
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=sample.dtype))
    h = unet.conv_in(sample)
    skips = (h,)
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += res
    h = unet.mid_block(h, emb)
    out = []
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        res, skips = skips[-n:], skips[:-n]
        h = block(h, res, emb)
        if i in blocks:
            out.append(h)
        if i == last:
            break
    return out


def feature_channels(unet: UNet2DModel, spec: FeatureSpec, n_sequences: int) -> int:
    rev = list(reversed(unet.config.block_out_channels))
    n = sum(rev[b] for b in spec.blocks) * len(spec.timesteps)
    if spec.intensities:
        n += n_sequences * (1 + len(spec.smoothing))
    return n


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of x (N, C, H, W) filtered in plane with a Gaussian of `sigma` pixels (radius round(3 sigma),
    the border replicated), separably: along H, then along W (`_correlate`). (scipy's separable filter,
    `ndimage.correlate1d`, computed it 3x faster than torch's depthwise convolution, but the features then differ by
    float rounding, up to 2.4e-7, which moved the demo's Dice in the third decimal: not kept; results section 14.)"""
    r = max(1, int(round(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    x = _correlate(F.pad(x, (0, 0, r, r), mode="replicate"), k, 2)
    return _correlate(F.pad(x, (r, r, 0, 0), mode="replicate"), k, 3)


def _correlate(padded: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """The valid correlation of `padded` with the taps `k` along `dim`: k[0] x[i] + k[1] x[i + 1] + ..., accumulated
    tap by tap in that order. That is what torch's depthwise convolution (`F.conv2d(..., groups=C)` with a (len(k), 1)
    or (1, len(k)) kernel, which this replaced) computes on the CPU, to the bit: the same features on BraTS2021_00006
    and an LGG case, every sigma, 1 and 2 threads, and the same propagation outputs (`scripts/same_outputs.py`), in
    a fifth of its time (16 BraTS slices, 4 sequences, sigmas 1, 2, 4: 384 -> 72 ms, 2 threads; the convolution's
    CPU kernel for one channel per group is slow). Issue 25, docs/results/speed/README.md."""
    n = padded.shape[dim] - (len(k) - 1)
    out = padded.narrow(dim, 0, n) * k[0]
    for t in range(1, len(k)):
        out.add_(padded.narrow(dim, t, n), alpha=float(k[t]))
    return out


def channels_last(unet: UNet2DModel) -> UNet2DModel:
    """The backbone's convolution weights in channels-last layout (in place; the same values), for the CPU: oneDNN's
    convolutions run faster on channels-last inputs (batches of 16: 81 -> 58 ms a slice through decoder block 2 on
    the 2-core CPU, 2 threads; `scripts/backbone_speed.py`, docs/results/speed/backbone_speed.md). The results equal the contiguous
    layout's up to float rounding."""
    return unet.to(memory_format=torch.channels_last)


@dataclass
class FeatureExtractor:
    """Computes features of axial slices of one case.

    `stack` is the (R, X, Y, Z) normalised image stack in role order, `present` the (R,) presence vector, `grid`
    the case's model grid. `native_features(zs, masks)` gives the features of the pixels `masks` (len(zs), X, Y)
    of slices `zs`; `diffusion_parts` and `intensity_maps` the maps the prediction samples (`predict`).
    """

    unet: UNet2DModel | None
    cfg: BackboneConfig | None
    spec: FeatureSpec
    stack: np.ndarray
    present: np.ndarray
    grid: ModelGrid
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    batch_size: int = 16
    noise: torch.Tensor | None = None  # (T, R, S, S) fixed noise per noise level; None: drawn from spec.noise_seed

    def __post_init__(self):
        if self.unet is not None and self.device.type == "cpu":
            channels_last(self.unet)
        if self.unet is not None:
            sched = build_scheduler(self.cfg)
            self._alphas = sched.alphas_cumprod
            size = self.cfg.sample_size
            shape = (len(self.spec.timesteps), len(self.cfg.roles), size, size)
            if self.noise is None:
                g = torch.Generator().manual_seed(self.spec.noise_seed)
                self.noise = torch.randn(shape, generator=g)
            elif tuple(self.noise.shape) != shape:
                raise ValueError(f"the noise has shape {tuple(self.noise.shape)}; these features need {shape}")
            for t in self.spec.timesteps:
                if not 0 <= t < self.cfg.num_train_timesteps:
                    raise ValueError(f"timestep {t} outside 0..{self.cfg.num_train_timesteps - 1}")

    @property
    def n_channels(self) -> int:
        n = 0 if self.unet is None else feature_channels(self.unet, self.spec, 0)
        if self.spec.intensities:
            n += int(self.present.sum()) * (1 + len(self.spec.smoothing))
        return n

    @torch.no_grad()
    def _activations(self, zs: list[int], x0: torch.Tensor) -> list[torch.Tensor]:
        """Decoder activations (timestep-major, then block) for model-grid inputs x0 (B, R, S, S), at each block's
        own resolution."""
        present = torch.from_numpy(self.present).to(self.device)
        x0 = x0 * present.view(1, -1, 1, 1)
        out = []
        for i, t in enumerate(self.spec.timesteps):
            a = float(self._alphas[t])
            xt = a ** 0.5 * x0 + (1 - a) ** 0.5 * self.noise[i].to(self.device)
            tt = torch.full((len(zs),), t, device=self.device, dtype=torch.long)
            sample = model_input(xt, present)
            if self.device.type == "cpu":  # see `channels_last`
                sample = sample.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                out += [a.contiguous() for a in decoder_activations(self.unet, sample, tt, self.spec.blocks)]
        return out

    @staticmethod
    def _upsampled(acts: list[torch.Tensor], size) -> list[torch.Tensor]:
        return [F.interpolate(a.float(), size=size, mode="bilinear", align_corners=False) for a in acts]

    @property
    def n_diffusion_channels(self) -> int:
        return 0 if self.unet is None else feature_channels(self.unet, self.spec, 0)

    @torch.no_grad()
    def diffusion_parts(self, zs: list[int]) -> list[torch.Tensor] | None:
        """The decoder activations of slices zs, one (len(zs), C_i, h_i, w_i) float32 tensor per noise level and
        block at the block's own resolution (on the device), or None in raw mode. `diffusion_maps` is their
        upsampling to the model grid, concatenated."""
        if self.unet is None or not self.spec.blocks:
            return None
        x0 = self.grid.to_model(np.moveaxis(self.stack[..., zs], -1, 0)).to(self.device)
        return [a.float() for a in self._activations(zs, x0)]

    def diffusion_maps(self, zs: list[int]) -> torch.Tensor | None:
        """(len(zs), Cd, S, S) decoder features on the model grid (float32, on the device), or None in raw mode."""
        parts = self.diffusion_parts(zs)
        if parts is None:
            return None
        return torch.cat(self._upsampled(parts, (self.grid.size, self.grid.size)), dim=1)

    def intensity_maps(self, zs: list[int], as_kept: bool = False) -> torch.Tensor | None:
        """(len(zs), Ci, X, Y) normalised intensities (+ smoothed) on the native grid, or None. `as_kept`: in the
        type they are kept in (float16 in a cache, `cache.CachingFeatureExtractor`), not float32: for reading a
        few pixels of each (`predict`) without converting whole slices."""
        if not self.spec.intensities:
            return None
        x = torch.from_numpy(np.moveaxis(self.stack[self.present][..., zs], -1, 0).copy()).to(self.device)
        return torch.cat([x] + [gaussian_blur(x, s) for s in self.spec.smoothing], dim=1)

    def coarse_intensities(self, zs: list[int], cells: int, maps: torch.Tensor) -> torch.Tensor:
        """(len(zs), Ci, cells, cells) float32: the intensity `maps` of slices zs (`intensity_maps`) on the model box
        (0 outside the native grid), resampled bilinearly at the centres of a cells x cells grid (what upsampling
        the box to that grid gives; `predict`'s coarse pass)."""
        box = self.grid.crop(maps.float(), 0.0)
        n, i, j = (t.reshape(-1) for t in torch.meshgrid(torch.arange(len(zs)), torch.arange(cells),
                                                         torch.arange(cells), indexing="ij"))
        out = bilinear_at(box, n.to(box.device), i.to(box.device), j.to(box.device), (cells, cells))
        return out.view(len(zs), cells, cells, -1).permute(0, 3, 1, 2)

    def native_features(self, zs: list[int], masks: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Features (P, C) float16 of the True pixels of native `masks` (len(zs), X, Y): diffusion features
        bilinearly resampled to the native grid, then native intensities. Used for the (few) training slices;
        prediction materialises them only near possible tumour (see `predict`)."""
        out = []
        masks = torch.as_tensor(masks, dtype=torch.bool)
        for s in range(0, len(zs), self.batch_size):
            zb = list(zs[s:s + self.batch_size])
            m = masks[s:s + len(zb)].to(self.device)
            parts = []
            d = self.diffusion_maps(zb)
            if d is not None:
                parts.append(self.grid.sample_native(d, m))
            i = self.intensity_maps(zb)
            if i is not None:
                parts.append(i.permute(0, 2, 3, 1)[m])
            out.append(torch.cat(parts, dim=1).to(torch.float16))
        return torch.cat(out) if out else torch.zeros((0, self.n_channels), dtype=torch.float16)
