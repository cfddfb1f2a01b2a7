"""The seed simulator (issue 23): strokes a user would paint, drawn from the ground truth, for the seeds mode.

On each of `k` slices of the chosen orientation - the protocol's slices (`protocol.protocol_slices`) along that
axis: evenly spaced through the tumour's extent - the simulated user paints, with a round brush of radius
`brush` voxels:

* in every tumour class present on the slice (at least `min_area` voxels): `strokes` strokes, each a smooth random
  walk of up to `length` voxels that starts at a random voxel of the class eroded by the brush and stops where the
  brush would leave the class (strokes stay inside the class, as a careful user's do);
* Background: one loop around the whole tumour of the slice, `ring` voxels outside its border (in the head only),
  and `strokes` strokes in the head at least `far` voxels from the tumour;
* a slice without tumour (possible for the first or last slice of an orientation): the background strokes only -
  "no tumour here".

`orientation`: axial (the last axis), sagittal (the first), coronal (the second), or mixed (sagittal, coronal,
axial, sagittal, ... in turn: k = 2 is one sagittal and one coronal slice). Every random draw comes from
`numpy.random.default_rng(seed)`: the same arguments give the same seeds. Returned as a seeds-mode annotation
(0 unknown, `background_label` background, tumour classes with the ground truth's values; `annotation`).

`axial_strokes`: the same user painting axial slices one at a time (the interactive loop of `benchmark update`):
each slice's strokes drawn once from a generator of its own, seeded by (`seed`, the slice), so a slice's strokes
do not depend on which slices were painted before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .constants import BACKGROUND_LABEL
from .errors import InputError
from .protocol import protocol_slices

ORIENTATIONS = ("axial", "sagittal", "coronal", "mixed")
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
MIXED_ORDER = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class StrokeStyle:
    """How the simulated user paints (voxels): see the module docstring."""

    brush: int = 1
    strokes: int = 2
    length: int = 20
    ring: int = 4
    far: int = 15
    min_area: int = 10


def planes(label: np.ndarray, k: int, orientation: str) -> list[tuple[int, int]]:
    """The (axis, index) of the k simulated slices (see the module docstring)."""
    if orientation not in ORIENTATIONS:
        raise InputError(f"Unknown orientation {orientation!r}; use one of {', '.join(ORIENTATIONS)}.")
    if orientation != "mixed":
        axis = AXES[orientation]
        return [(axis, i) for i in protocol_slices(np.moveaxis(label, axis, -1), k)]
    counts = {o: sum(1 for i in range(k) if MIXED_ORDER[i % 3] == o) for o in MIXED_ORDER}
    out = []
    for o in MIXED_ORDER:
        if counts[o]:
            out += [(AXES[o], i) for i in protocol_slices(np.moveaxis(label, AXES[o], -1), counts[o])]
    return out


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r


def _walk(region: np.ndarray, start: tuple[int, int], length: int, rng: np.random.Generator) -> list[tuple]:
    """A smooth random walk of unit steps from `start`, at most `length` steps, stopping where it leaves `region`."""
    pts = [start]
    angle = rng.uniform(0, 2 * np.pi)
    p = np.array(start, float)
    for _ in range(length):
        angle += rng.normal(0, 0.3)
        p = p + (np.cos(angle), np.sin(angle))
        q = tuple(int(round(v)) for v in p)
        if not (0 <= q[0] < region.shape[0] and 0 <= q[1] < region.shape[1]) or not region[q]:
            break
        pts.append(q)
    return pts


def _strokes(region: np.ndarray, n: int, style: StrokeStyle, rng: np.random.Generator) -> np.ndarray:
    """n strokes of the brush inside `region` (2D bool): walks in the region eroded by the brush, then the brush."""
    inner = ndimage.binary_erosion(region, _disk(style.brush)) if style.brush > 0 else region
    if not inner.any():
        inner = region
    out = np.zeros(region.shape, bool)
    pts = np.argwhere(inner)
    if len(pts) == 0:
        return out
    for _ in range(n):
        start = tuple(int(v) for v in pts[rng.integers(len(pts))])
        for q in _walk(inner, start, style.length, rng):
            out[q] = True
    if style.brush > 0:
        out = ndimage.binary_dilation(out, _disk(style.brush))
    return out & region


def paint_plane(truth: np.ndarray, head: np.ndarray, style: StrokeStyle, rng: np.random.Generator,
                background_label: int = BACKGROUND_LABEL) -> np.ndarray:
    """The strokes on one slice: `truth` its ground truth (2D), `head` its head mask; seeds-mode values."""
    out = np.zeros(truth.shape, truth.dtype if np.issubdtype(truth.dtype, np.integer) else np.int16)
    tumour = truth > 0
    for value in sorted(int(v) for v in np.unique(truth[tumour])):
        region = truth == value
        if region.sum() >= style.min_area:
            out[_strokes(region, style.strokes, style, rng)] = value
    background = np.zeros(truth.shape, bool)
    if tumour.any():
        grown = ndimage.binary_dilation(tumour, _disk(style.ring))
        loop = grown & ~ndimage.binary_erosion(grown, _disk(max(1, style.brush)))
        background |= loop & head & ~tumour
    far = head & ~tumour
    if tumour.any():
        far &= ndimage.distance_transform_edt(~tumour) >= style.far
    background |= _strokes(far, style.strokes, style, rng)
    out[background & (out == 0)] = background_label
    return out


def axial_strokes(label: np.ndarray, head: np.ndarray, slices: list[int], seed: int = 0,
                  style: StrokeStyle | None = None, background_label: int = BACKGROUND_LABEL) -> dict[int, np.ndarray]:
    """The strokes of each axial slice in `slices` (X, Y; see the module docstring), each drawn from
    `numpy.random.default_rng([seed, z])`."""
    if label.shape != head.shape:
        raise InputError(f"The ground truth has shape {label.shape} but the head mask {head.shape}.")
    style = style or StrokeStyle()
    return {int(z): paint_plane(label[..., z], head[..., z], style, np.random.default_rng([seed, int(z)]),
                                background_label) for z in slices}


def simulate_strokes(label: np.ndarray, head: np.ndarray, k: int, orientation: str = "axial", seed: int = 0,
                     style: StrokeStyle | None = None, background_label: int = BACKGROUND_LABEL
                     ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Seeds on k slices of `orientation` (see the module docstring): the seeds-mode annotation and the (axis,
    index) of the painted slices. `label`: the ground truth (X, Y, Z, axial last); `head`: the head mask."""
    if label.shape != head.shape:
        raise InputError(f"The ground truth has shape {label.shape} but the head mask {head.shape}.")
    style = style or StrokeStyle()
    rng = np.random.default_rng(seed)
    out = np.zeros(label.shape, np.int16)
    chosen = planes(label, k, orientation)
    for axis, index in chosen:
        sel = [slice(None)] * 3
        sel[axis] = index
        sel = tuple(sel)
        painted = paint_plane(label[sel], head[sel], style, rng, background_label)
        region = out[sel]
        region[painted != 0] = painted[painted != 0]
    return out, chosen
