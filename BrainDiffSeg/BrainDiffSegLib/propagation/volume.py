"""One case's images made ready for features, and the feature extractor of a case: built in one place.

`check_images` and `normalize_volume` turn the sequences (role -> array, axial last) into a `NormalizedVolume`;
`build_extractor` makes its `FeatureExtractor` for the options (the backbone loaded from `checkpoint_of(options)`
unless one is passed in). The feature sources (`sources.FreshFeatures`, `cache.VolumeCache`) and the benchmarks
build every extractor through it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..constants import ROLES
from ..errors import InputError
from ..model import load_backbone
from ..options import FeatureSpec, PropagationOptions
from ..preprocess import ModelGrid, normalize_case, stack_roles
from ..resources import default_checkpoint
from .features import FeatureExtractor


@dataclass
class NormalizedVolume:
    """The images of one case ready for feature extraction: (R, X, Y, Z) stack in role order, presence (R,), head
    mask (X, Y, Z); `gate_cache`: what the watershed gate computes once per volume (`refine.watershed_gate`)."""

    stack: np.ndarray
    present: np.ndarray
    foreground: np.ndarray
    gate_cache: dict = field(default_factory=dict, repr=False, compare=False)


def check_images(images: dict[str, np.ndarray]) -> tuple:
    """The common shape of the sequences; InputError for unknown roles, other shapes, NaN or constant images."""
    unknown = set(images) - set(ROLES)
    if unknown or not images:
        raise InputError(f"images must map roles {ROLES} to arrays; got {sorted(images)}")
    shapes = {r: v.shape for r, v in images.items()}
    if len(set(shapes.values())) != 1:
        raise InputError(f"The sequences have different shapes {shapes}: they must share one grid.")
    for r, v in images.items():
        if not np.all(np.isfinite(v)):
            raise InputError(f"Sequence '{r}' contains NaN or infinite values.")
        if float(v.max()) == float(v.min()):
            raise InputError(f"Sequence '{r}' is constant: it carries no information.")
    return next(iter(shapes.values()))


def normalize_volume(images: dict[str, np.ndarray]) -> NormalizedVolume:
    norm, fg = normalize_case(images)
    stack, present = stack_roles(norm)
    return NormalizedVolume(stack, present, fg)


def feature_spec_of(opt: PropagationOptions) -> FeatureSpec:
    """The features a method uses: 'raw' keeps only the (smoothed) intensities."""
    if opt.method == "raw":
        return FeatureSpec(blocks=(), timesteps=(), intensities=True,
                           smoothing=opt.features.smoothing or (1.0, 2.0, 4.0))
    if opt.method != "diffusion":
        raise InputError(f"Unknown propagation method {opt.method!r}; use 'diffusion' or 'raw'.")
    return opt.features


def checkpoint_of(opt: PropagationOptions) -> Path:
    """The backbone folder of the options: theirs, else the bundled model (or $BRAINDIFFSEG_MODEL)."""
    return Path(opt.checkpoint) if opt.checkpoint else Path(default_checkpoint())


def build_extractor(volume: NormalizedVolume, opt: PropagationOptions, device: torch.device, backbone=None,
                    extractor_class=FeatureExtractor, noise: torch.Tensor | None = None) -> FeatureExtractor:
    """The feature extractor of a case. `backbone`: an already loaded (unet, cfg), else loaded from
    `checkpoint_of(opt)` (diffusion method only); `noise`: the fixed noise per noise level (default: drawn from the
    features' `noise_seed`, see `FeatureExtractor`)."""
    spec = feature_spec_of(opt)
    unet, cfg = None, None
    if opt.method == "diffusion":
        unet, cfg = backbone or load_backbone(checkpoint_of(opt), device=device)
    grid = ModelGrid.from_mask(volume.foreground, cfg.sample_size if cfg else 128)
    return extractor_class(unet, cfg, spec, volume.stack, volume.present, grid, device, opt.precision,
                           opt.batch_size, noise)
