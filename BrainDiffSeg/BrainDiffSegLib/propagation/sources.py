"""The one seam through which `propagate` gets its features: a feature source.

A source turns the images into a `NormalizedVolume` (`volume(images, digest)`) and gives that volume's
`FeatureExtractor` for the options (`extractor(volume, options, device)`). Three kinds:

- `FreshFeatures` (the default): everything computed for this run, nothing kept;
- `cache.VolumeCache`: kept between runs on one volume (interactive use: the normalised images, the backbone and the
  decoder activations of every slice computed so far);
- `GivenExtractor`: an extractor the caller built (experiments that serve features from their own store).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from ..options import PropagationOptions
from ..preprocess import ModelGrid
from .features import FeatureExtractor
from .volume import NormalizedVolume, build_extractor, feature_spec_of, normalize_volume


class FeatureSource(Protocol):
    def volume(self, images: dict[str, np.ndarray], digest: str | None = None) -> NormalizedVolume: ...

    def extractor(self, volume: NormalizedVolume, opt: PropagationOptions,
                  device: torch.device) -> FeatureExtractor: ...


class FreshFeatures:
    """Features computed for one run (float32), nothing kept."""

    def volume(self, images: dict[str, np.ndarray], digest: str | None = None) -> NormalizedVolume:
        return normalize_volume(images)

    def extractor(self, volume: NormalizedVolume, opt: PropagationOptions, device: torch.device) -> FeatureExtractor:
        return build_extractor(volume, opt, device)


class GivenExtractor(FreshFeatures):
    """The caller's extractor, checked against the case (its model grid) and the method."""

    def __init__(self, extractor: FeatureExtractor):
        self._extractor = extractor

    def extractor(self, volume: NormalizedVolume, opt: PropagationOptions, device: torch.device) -> FeatureExtractor:
        feature_spec_of(opt)  # the method must be known
        ex = self._extractor
        if ex.grid != ModelGrid.from_mask(volume.foreground, ex.cfg.sample_size if ex.cfg else 128):
            raise ValueError("the given extractor was built for another case")
        return ex
