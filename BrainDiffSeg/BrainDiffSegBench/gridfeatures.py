"""Features on the model grid and a plain ensemble prediction: what the experiments (few-shot, speed, features) use
and the product does not (the product samples the native grid: `BrainDiffSegLib.propagation.features` and
`predict`)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from BrainDiffSegLib.propagation.classifier import PixelEnsemble
from BrainDiffSegLib.propagation.features import FeatureExtractor, gaussian_blur


@torch.no_grad()
def grid_maps(ex: FeatureExtractor, zs: list[int]) -> torch.Tensor:
    """(len(zs), C, S, S) feature maps of slices zs on the model grid (float32, on the extractor's device): the
    decoder activations upsampled to the grid, then the grid's intensities (and their smoothed copies)."""
    x0 = ex.grid.to_model(np.moveaxis(ex.stack[..., zs], -1, 0)).to(ex.device)
    parts = []
    if ex.unet is not None and ex.spec.blocks:
        parts += [F.interpolate(a.float(), size=x0.shape[-2:], mode="bilinear", align_corners=False)
                  for a in ex.diffusion_parts(zs)]
    if ex.spec.intensities:
        x = x0[:, torch.from_numpy(ex.present).to(ex.device)]
        parts += [x] + [gaussian_blur(x, s) for s in ex.spec.smoothing]
    return torch.cat(parts, dim=1)


def grid_features(ex: FeatureExtractor, zs: list[int], masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Features (P, C) float16 of the True pixels of model-grid `masks` (len(zs), S, S), slice-major."""
    out = []
    masks = torch.as_tensor(masks, dtype=torch.bool)
    for s in range(0, len(zs), ex.batch_size):
        zb = list(zs[s:s + ex.batch_size])
        maps = grid_maps(ex, zb)
        m = masks[s:s + len(zb)].to(maps.device)
        out.append(maps.permute(0, 2, 3, 1)[m].to(torch.float16))
    return torch.cat(out) if out else torch.zeros((0, ex.n_channels), dtype=torch.float16)


@torch.no_grad()
def ensemble_predict(ens: PixelEnsemble, x: torch.Tensor, chunk: int = 65536
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member run as trained (not folded): mean probabilities (P, K) float32, normalised entropy (P,) and member
    disagreement (P,) in [0, 1] of features x (P, C)."""
    if not ens.members:
        raise RuntimeError("the ensemble is not trained")
    probs, ent, dis = [], [], []
    for s in range(0, len(x), chunk):
        xb = ens.standardise(x[s:s + chunk])
        member_p = torch.stack([F.softmax(net(xb), dim=1) for net in ens.members])  # (M, B, K)
        for out, value in zip((probs, ent, dis), ens.combine(member_p)):
            out.append(value)
    return torch.cat(probs), torch.cat(ent), torch.cat(dis)
