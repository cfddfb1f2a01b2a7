"""Unlabelled axial training slices for the backbone: every case's foreground slices on the model grid."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from .io import ROLES, load_case
from .preprocess import ModelGrid, normalize_case, stack_roles

log = logging.getLogger(__name__)


def case_slices(case_dir: Path, size: int = 128, min_foreground: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(N, R, size, size) float16 slices in role order and the (R,) presence vector of one case."""
    case = load_case(case_dir)
    norm, mask = normalize_case(case.images)
    grid = ModelGrid.from_mask(mask, size)
    stack, present = stack_roles(norm)
    keep = np.nonzero(mask.mean(axis=(0, 1)) >= min_foreground)[0]
    vols = np.moveaxis(stack[..., keep], -1, 0)  # (N, R, X, Y)
    out = grid.to_model(vols).numpy()
    out[:, ~present] = 0.0
    return out.astype(np.float16), present


def build_slice_set(case_dirs: list[Path], size: int = 128, cache_dir: Path | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """All slices of all cases: images (N, R, size, size) float16 and presence (N, R) bool, cached on disk."""
    key = hashlib.sha1(("|".join(str(Path(c).resolve()) for c in case_dirs) + f"|{size}|{ROLES}").encode())
    cache = Path(cache_dir) / f"slices-{key.hexdigest()[:12]}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        data = np.load(cache)
        log.info("loaded %d cached slices from %s", len(data["images"]), cache)
        return data["images"], data["present"]
    images, presence = [], []
    for i, c in enumerate(case_dirs):
        imgs, present = case_slices(Path(c), size)
        images.append(imgs)
        presence.append(np.repeat(present[None], len(imgs), axis=0))
        log.info("[%d/%d] %s: %d slices, sequences %s", i + 1, len(case_dirs), Path(c).name, len(imgs),
                 [r for r, p in zip(ROLES, present) if p])
    images_arr, present_arr = np.concatenate(images), np.concatenate(presence)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename: a reader (another DDP rank) or an interrupted write never leaves a partial cache behind
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, images=images_arr, present=present_arr)
            tmp.replace(cache)
        finally:
            tmp.unlink(missing_ok=True)
    return images_arr, present_arr
