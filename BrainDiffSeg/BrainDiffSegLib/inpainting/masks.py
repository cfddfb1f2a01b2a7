"""Healthy masks for inpainting: tumour-shaped masks taken from other cases, flipped and rotated at random, placed
inside the brain away from the case's own tumour (as the BraTS 2023 inpainting challenge made its training masks).

Constraints of a placed mask: every voxel at least `margin` voxels away from the case's tumour dilated by `dilate`
voxels, at least `min_inside` of the placed shape inside the brain; the mask kept is the part inside the brain. Each
placement is a record (source case, flips, rotation, offset) that `mask_from_record` turns back into the same mask; the
random draws of a case follow (seed, case name) only, so they do not depend on the order or number of cases.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..preprocess import foreground_mask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskRules:
    dilate: int = 2  # the tumour is dilated by this many voxels ...
    margin: int = 5  # ... and the mask keeps at least this many voxels away from the dilated tumour
    min_inside: float = 0.75  # fraction of the placed shape that must lie inside the brain
    max_fraction: float = 0.25  # source shapes larger than this fraction of the target brain are skipped
    min_voxels: int = 200  # source shapes smaller than this are skipped
    tries: int = 300  # placements tried per source shape


def brain_of(t1: np.ndarray) -> np.ndarray:
    """Brain (head) voxels of a T1 volume: the engine's foreground mask (intensity above 5 % of the robust maximum,
    holes filled per slice)."""
    return foreground_mask({"t1": np.asarray(t1, np.float32)})


def forbidden_zone(label: np.ndarray | None, rules: MaskRules = MaskRules()) -> np.ndarray:
    """Voxels closer than `margin` to the tumour dilated by `dilate` (all False without a tumour)."""
    if label is None or not np.any(label > 0):
        return np.zeros(np.shape(label) if label is not None else (0, 0, 0), bool)
    dist = ndimage.distance_transform_edt(label == 0)
    return dist < rules.dilate + rules.margin + 1  # dist 0: tumour; 1..dilate: dilated tumour; then margin more


def source_shape(label: np.ndarray) -> np.ndarray:
    """The whole-tumour shape of a label volume, cropped to its bounding box."""
    wt = np.asarray(label) > 0
    if not wt.any():
        raise InputError("the source case has no tumour to take a mask shape from")
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(wt))
    return wt[box]


def transform_shape(shape: np.ndarray, flip_x: bool, flip_y: bool, angle: float) -> np.ndarray:
    """Flip along x / y and rotate in plane by `angle` degrees (nearest neighbour), cropped to the bounding box."""
    out = shape[::-1] if flip_x else shape
    out = out[:, ::-1] if flip_y else out
    if angle % 360:
        out = ndimage.rotate(out.astype(np.uint8), angle, axes=(0, 1), reshape=True, order=0) > 0
    nz = np.nonzero(out)
    if not len(nz[0]):
        return out
    return out[tuple(slice(int(i.min()), int(i.max()) + 1) for i in nz)]


def _case_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def place_healthy_mask(name: str, t1: np.ndarray, label: np.ndarray | None, sources: dict[str, np.ndarray],
                       seed: int = 0, rules: MaskRules = MaskRules(), brain: np.ndarray | None = None,
                       forbidden: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """One healthy mask for case `name`: (bool mask, record). `sources` maps other cases' names to their tumour
    shapes (`source_shape`); the case itself is never its own source. `brain` and `forbidden` (`brain_of`,
    `forbidden_zone`) may be given when already computed. Raises InputError when nothing fits."""
    brain = brain_of(t1) if brain is None else brain
    if forbidden is None:
        forbidden = forbidden_zone(label, rules) if label is not None else np.zeros(brain.shape, bool)
    allowed_centres = np.argwhere(brain & ~forbidden)
    rng = _case_rng(seed, name)
    names = sorted(n for n in sources if n != name)
    if not names or not len(allowed_centres):
        raise InputError(f"{name}: no source shapes or no healthy brain to place a mask in")
    n_brain = int(brain.sum())
    attempts = max(20, 3 * len(names))
    for attempt in range(attempts):
        src = names[int(rng.integers(len(names)))]
        fx, fy = bool(rng.integers(2)), bool(rng.integers(2))
        angle = float(np.round(rng.uniform(0, 360), 1))
        shape = transform_shape(sources[src], fx, fy, angle)
        n_shape = int(shape.sum())
        if n_shape < rules.min_voxels or n_shape > rules.max_fraction * n_brain:
            continue
        if any(s > b for s, b in zip(shape.shape, brain.shape)):
            continue
        for _ in range(rules.tries):
            c = allowed_centres[int(rng.integers(len(allowed_centres)))]
            off = [int(np.clip(ci - s // 2, 0, b - s)) for ci, s, b in zip(c, shape.shape, brain.shape)]
            box = tuple(slice(o, o + s) for o, s in zip(off, shape.shape))
            if np.any(forbidden[box] & shape):
                continue
            inside = float((brain[box] & shape).sum()) / n_shape
            if inside < rules.min_inside:
                continue
            record = {"case": name, "source": src, "flip_x": fx, "flip_y": fy, "angle": angle, "offset": off,
                      "seed": seed}
            mask = mask_from_record(record, sources[src], brain)
            record.update(voxels=int(mask.sum()), inside_brain=round(inside, 4))
            return mask, record
    raise InputError(f"{name}: no healthy mask fits inside the brain away from the tumour "
                     f"(tried {attempts} source shapes)")


def mask_from_record(record: dict, source: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Rebuild a placed mask from its record and the source's tumour shape (`source_shape` of the source label)."""
    shape = transform_shape(source, record["flip_x"], record["flip_y"], record["angle"])
    mask = np.zeros(brain.shape, bool)
    box = tuple(slice(o, o + s) for o, s in zip(record["offset"], shape.shape))
    mask[box] = shape
    return mask & brain


def healthy_masks(cases: list, seed: int = 0, per_case: int = 1, rules: MaskRules = MaskRules(),
                  pool: list | None = None) -> list[tuple[np.ndarray, dict]]:
    """Healthy masks for loaded cases (`io.Case` with a T1 and a label): `per_case` masks each (seeds seed,
    seed+1, ...). Source shapes come from `pool` (default: the same cases) of the same in-plane grid size when there
    are any, so that a BraTS shape is not dropped into a coarser LGG grid. A case where no mask fits is skipped with
    a warning (each record names its case)."""
    pool = cases if pool is None else pool
    shapes = {c.name: (source_shape(c.label), c.shape[:2]) for c in pool
              if c.label is not None and np.any(c.label > 0)}
    out = []
    for case in cases:
        same = {n: s for n, (s, xy) in shapes.items() if xy == case.shape[:2] and n != case.name}
        sources = same or {n: s for n, (s, _) in shapes.items() if n != case.name}
        brain = brain_of(case.images["t1"])
        forbidden = forbidden_zone(case.label, rules) if case.label is not None else np.zeros(brain.shape, bool)
        for k in range(per_case):
            try:
                out.append(place_healthy_mask(case.name, case.images["t1"], case.label, sources, seed + k, rules,
                                              brain, forbidden))
            except InputError as exc:
                log.warning("skipped: %s", exc)
    return out
