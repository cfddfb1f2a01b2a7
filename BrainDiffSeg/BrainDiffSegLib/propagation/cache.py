"""What stays the same between propagations of one volume, kept for interactive use (paint one more slice,
propagate again): the normalised images, the loaded backbone, and the backbone's decoder activations and the
(smoothed) intensity features of every slice computed so far.

Activations are stored per slice at each decoder block's own resolution (before upsampling), in float16 on the CPU:
for the default backbone and features (blocks 1 + 2, one noise level) that is 3.1 MB a slice, about 0.45 GB for the
~140 head slices of a BraTS volume; the 16 intensity maps add 1.8 MB a native 240 x 240 slice (0.25 GB), and
their samples at the prediction's coarse cells 0.26 MB (float32, 64 x 64 cells).
`max_bytes` bounds the total; slices beyond it are computed each time (never
wrong, only slower). Everything is keyed by what it depends on - a digest of the image arrays, the backbone files,
the feature options, precision and device - and recomputed when any of them changes.

Every run through a cache reads the stored float16 features, the first run included, and each slice is always
computed in the same batch of slices, so with `classifier.warm_epochs` 0 an update gives exactly the result of a
from-scratch run through a fresh cache with the same seeds (while the cache has room). A run without a cache keeps
the features in float32: the two differ by the float16 rounding of the features.

The cache also keeps the last run's classifier (`keep_ensemble`): by default (`warm_epochs` 3) an update with
complete slices starts its ensemble from it and trains a few epochs instead of up to twelve (results section 14).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..model import load_backbone
from ..options import PropagationOptions
from ..transfer import images_digest
from .features import FeatureExtractor
from .volume import NormalizedVolume, build_extractor, checkpoint_of, feature_spec_of, normalize_volume

log = logging.getLogger(__name__)
DEFAULT_MAX_BYTES = 2 * 1024 ** 3


def backbone_key(checkpoint: str | Path) -> tuple:
    folder = Path(checkpoint).resolve()
    stamp = []
    for name in ("model.safetensors", "config.json"):
        path = folder / name
        st = path.stat() if path.is_file() else None
        stamp.append((name, st.st_size, st.st_mtime_ns) if st else (name, None, None))
    return str(folder), tuple(stamp)


class CachingFeatureExtractor(FeatureExtractor):
    """A FeatureExtractor whose decoder activations are kept per slice (float16, CPU) in a shared store."""

    store: dict  # ("a", z) -> decoder activations [(C_i, h_i, w_i)], ("i", z) -> intensity maps [(Ci, X, Y)]: fp16;
    # ("c", z, cells) -> the intensity maps at the coarse cells [(Ci, cells, cells)]: float32
    budget: "VolumeCache"
    head: np.ndarray  # (Z,) bool: slices with head voxels

    def _group(self, z: int) -> list[int]:
        """The slices computed together with z: the head slices of z's block of `batch_size` consecutive slices.
        A slice's activations thus always come from the same batch, whatever was asked before (batch composition
        changes the last bits of a convolution's result)."""
        b = max(1, self.batch_size)
        group = [i for i in range(z - z % b, min(z - z % b + b, len(self.head))) if self.head[i]]
        return group if z in group else [z]

    def _keep(self, key, value: list[torch.Tensor]) -> None:
        if key not in self.store and self.budget.admit(sum(t.numel() * t.element_size() for t in value)):
            self.store[key] = value

    def diffusion_parts(self, zs: list[int]) -> list[torch.Tensor] | None:
        if self.unet is None or not self.spec.blocks:
            return None
        zs = [int(z) for z in zs]
        computed = {}
        for z in dict.fromkeys(zs):
            if ("a", z) in self.store or z in computed:
                continue
            group = self._group(z)
            x0 = self.grid.to_model(np.moveaxis(self.stack[..., group], -1, 0)).to(self.device)
            acts = self._activations(group, x0)
            for j, g in enumerate(group):
                computed[g] = [a[j].to("cpu", torch.float16) for a in acts]
                self._keep(("a", g), computed[g])
        per_slice = [self.store.get(("a", z)) or computed[z] for z in zs]
        return [_stacked_float32([s[i] for s in per_slice], self.device) for i in range(len(per_slice[0]))]

    def intensity_maps(self, zs: list[int], as_kept: bool = False) -> torch.Tensor | None:
        """As FeatureExtractor.intensity_maps, kept per slice in float16 (the smoothing is a large part of an
        update's prediction otherwise); `as_kept`: returned in float16."""
        if not self.spec.intensities:
            return None
        zs = [int(z) for z in zs]
        missing = [z for z in dict.fromkeys(zs) if ("i", z) not in self.store]
        computed = {}
        if missing:
            maps = super().intensity_maps(missing).to("cpu", torch.float16)
            for z, m in zip(missing, maps):
                computed[z] = [m]
                self._keep(("i", z), computed[z])
        maps = torch.stack([(self.store.get(("i", z)) or computed[z])[0] for z in zs])
        return maps.to(self.device) if as_kept else maps.to(self.device, torch.float32)

    def coarse_intensities(self, zs: list[int], cells: int, maps: torch.Tensor) -> torch.Tensor:
        """As FeatureExtractor.coarse_intensities, kept per slice (float32, 0.26 MB a slice for 16 maps on 64 x 64
        cells): an update's coarse pass then neither converts nor crops whole native slices (0.3 s of a BraTS
        update). The same values: each cell is resampled on its own."""
        zs = [int(z) for z in zs]
        missing = [s for s, z in enumerate(zs) if ("c", z, cells) not in self.store]
        computed = {}
        if missing:
            fresh = super().coarse_intensities([zs[s] for s in missing], cells, maps[missing])
            for s, m in zip(missing, fresh):
                computed[zs[s]] = [m.to("cpu").contiguous()]
                self._keep(("c", zs[s], cells), computed[zs[s]])
        return torch.stack([(self.store.get(("c", z, cells)) or computed[z])[0] for z in zs]).to(self.device)


def _stacked_float32(slices: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """`torch.stack(slices).to(device, torch.float32)` in one pass: each kept float16 slice converted as it is
    copied into its place (the same values: float16 -> float32 is exact), not stacked in float16 first (measured,
    ad hoc: 27 against 38 ms for 16 slices of three decoder blocks)."""
    out = torch.empty((len(slices),) + tuple(slices[0].shape), dtype=torch.float32, device=device)
    for k, piece in enumerate(slices):
        out[k].copy_(piece)
    return out


class VolumeCache:
    """Cache of one volume's preparation and features across propagations (see the module docstring); a feature
    source of `propagate` (`sources.FeatureSource`).

    Not thread-safe: one propagation at a time per cache (each front end runs one at a time per volume)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._digest = None
        self._volume: NormalizedVolume | None = None
        self._backbones: dict = {}
        self._stores: dict = {}
        self._full_warned = False
        self._ensemble: tuple | None = None  # (key, the last run's PixelEnsemble, its training digest)

    def clear(self) -> None:
        """Forget everything (the hit / miss counts stay)."""
        self.nbytes = 0
        self._digest, self._volume = None, None
        self._backbones, self._stores = {}, {}
        self._full_warned = False
        self._ensemble = None

    def admit(self, nbytes: int) -> bool:
        if self.nbytes + nbytes > self.max_bytes:
            if not self._full_warned:
                log.warning("feature cache full (%.2f GB): further slices are recomputed each run",
                            self.nbytes / 1024 ** 3)
                self._full_warned = True
            return False
        self.nbytes += nbytes
        return True

    def volume(self, images: dict[str, np.ndarray], digest: str | None = None) -> NormalizedVolume:
        """The normalised images; a new volume (other arrays) clears the whole cache. `digest`: the images'
        `transfer.images_digest` when the caller knows it (hashing a BraTS volume takes a few tenths of a second)."""
        digest = digest or images_digest(images)
        if digest != self._digest:
            if self._digest is not None:
                log.info("feature cache: new images, cleared")
            self.clear()
            self._digest = digest
            self._volume = normalize_volume(images)
            self.misses += 1
        else:
            self.hits += 1
        return self._volume

    def extractor(self, volume: NormalizedVolume, opt: PropagationOptions, device: torch.device) -> FeatureExtractor:
        """An extractor for the cached volume whose activations persist across calls with the same features."""
        if volume is not self._volume:
            raise ValueError("call VolumeCache.volume(images) first: the extractor belongs to the cached volume")
        spec = feature_spec_of(opt)
        backbone, bkey = None, None
        if opt.method == "diffusion":
            checkpoint = checkpoint_of(opt)
            bkey = (backbone_key(checkpoint), str(device))
            backbone = self._backbones.get(bkey)
            if backbone is None:
                backbone = load_backbone(checkpoint, device=device)
                self._backbones = {bkey: backbone}
        extractor = build_extractor(volume, opt, device, backbone=backbone,
                                    extractor_class=CachingFeatureExtractor)
        key = (bkey, spec.blocks, spec.timesteps, spec.noise_seed, opt.precision, extractor.grid, spec.intensities,
               spec.smoothing)
        store = self._stores.get(key)
        if store is None:  # other features than last time: only the current ones are kept
            store = {}
            self._stores = {key: store}
            self.nbytes = 0
            self._full_warned = False
        extractor.store, extractor.budget = store, self
        extractor.head = volume.foreground.reshape(-1, volume.foreground.shape[-1]).any(axis=0)
        return extractor

    def warm_ensemble(self, key) -> tuple | None:
        """(the last run's ensemble, the digest of what it was trained on) when that run on this volume trained
        under the same `key` (classifier and feature options, classes, annotation mode: see `propagate`), else
        None."""
        return self._ensemble[1:] if self._ensemble is not None and self._ensemble[0] == key else None

    def keep_ensemble(self, key, ensemble, trained_on: str) -> None:
        """Keep this run's ensemble (only the last one; a few hundred kB) and the digest of what it was trained on
        (`propagate.training_digest`) for the next run: its warm start, or the same ensemble for the same
        annotation."""
        self._ensemble = (key, ensemble, trained_on)

    def describe(self) -> dict:
        return {"bytes": self.nbytes, "slices": len({k[1] for s in self._stores.values() for k in s}), "hits": self.hits,
                "misses": self.misses, "max_bytes": self.max_bytes}
