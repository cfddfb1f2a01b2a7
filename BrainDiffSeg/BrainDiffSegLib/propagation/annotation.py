"""What an annotation's voxels mean: the two annotation modes (issue 23), read into one form, `Seeds`.

* `slices` (complete axial slices, the first mode): every axial slice with a nonzero voxel is annotated entirely -
  its unpainted voxels are background - and is not predicted; a slice without tumour cannot be annotated.
* `seeds` (strokes, as Slicer's Grow from seeds): only painted voxels are known: 0 is *unknown*, the value
  `background_label` is background (the Background segment), the tumour classes keep their values. Strokes may lie
  on any axial, sagittal or coronal slice; a stroke of background only ("no tumour here") is an annotation.

Both become a `Seeds`: the known voxels, their class values (background 0), the axial slices the known voxels touch
(their features train the classifier) and the *complete* axial slices (every head voxel known: kept as painted,
never predicted). Complete slices in `slices` mode are exactly today's annotated slices, so that mode's results do
not change.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..constants import BACKGROUND_LABEL
from ..errors import InputError

log = logging.getLogger(__name__)
MODES = ("slices", "seeds")


@dataclass
class Seeds:
    """An annotation read in its mode (see the module docstring). Arrays (X, Y, Z), axial axis last."""

    mode: str
    labels: np.ndarray  # the class value of every known voxel (background 0); 0 where unknown
    known: np.ndarray  # bool, the known voxels (in slices mode every voxel of the annotated slices)
    values: list[int]  # the class values, sorted, 0 first
    slices: list[int]  # axial slices with a known voxel: their features train the classifier
    complete: list[int]  # axial slices whose head voxels are all known: kept as painted, not predicted
    warnings: list[str] = field(default_factory=list)

    def tumour(self) -> np.ndarray:
        """The known tumour voxels (any class but background)."""
        return self.labels > 0


def _check_values(annotation: np.ndarray) -> None:
    if not (np.issubdtype(annotation.dtype, np.integer) or np.issubdtype(annotation.dtype, np.bool_)):
        if not np.all(np.isfinite(annotation)):
            raise InputError("The annotation contains NaN or infinite values: it must hold integer labels.")
        if np.any(np.mod(annotation, 1) != 0):
            raise InputError("The annotation must hold integer labels.")


def read_annotation(annotation: np.ndarray, shape: tuple, foreground: np.ndarray, mode: str = "slices",
                    background_label: int = BACKGROUND_LABEL) -> Seeds:
    """The annotation in its mode as `Seeds`; InputError (one sentence naming what to paint) for an annotation the
    classifier cannot learn from: no label, one class only, no background, or the whole head as tumour.
    `foreground`: the head mask (X, Y, Z); seeds outside it are ignored, with a warning."""
    if mode not in MODES:
        raise InputError(f"Unknown annotation mode {mode!r}; use one of {', '.join(MODES)}.")
    annotation = np.asarray(annotation)
    if annotation.shape != tuple(shape):
        raise InputError(f"The annotation has shape {annotation.shape} but the images have {tuple(shape)}.")
    _check_values(annotation)
    if mode == "slices":
        return _read_slices(annotation, foreground)
    return _read_seeds(annotation, foreground, int(background_label))


def _read_slices(annotation: np.ndarray, foreground: np.ndarray) -> Seeds:
    zs = [int(z) for z in np.nonzero(annotation.reshape(-1, annotation.shape[-1]).any(axis=0))[0]]
    if not zs:
        raise InputError("The annotation contains no tumour label: paint the tumour on at least one axial slice.")
    ann = annotation[..., zs]
    if not np.any((ann == 0) & foreground[..., zs]):
        raise InputError("The annotated slices contain no background: the whole head is labelled as tumour; "
                         "paint only the tumour.")
    values = [int(v) for v in np.unique(ann)]  # 0 among them (the check above found background)
    known = np.zeros(annotation.shape, bool)
    known[..., zs] = True
    return Seeds("slices", annotation, known, values, zs, zs)


def _read_seeds(annotation: np.ndarray, foreground: np.ndarray, background: int) -> Seeds:
    if background == 0:
        raise InputError("In seeds mode 0 means 'unknown': give the Background segment another label value "
                         "(--background-label).")
    known = annotation != 0
    if not known.any():
        raise InputError("The annotation has no seeds: paint a few strokes in each tumour class and some "
                         "Background around the tumour.")
    warnings = []
    outside = known & ~foreground
    if outside.any():
        n = int(outside.sum())
        warnings.append(f"{n} seed voxel{'s' if n > 1 else ''} lie outside the head and were ignored.")
        log.warning("%s", warnings[-1])
        known = known & foreground
        if not known.any():
            raise InputError("Every seed lies outside the head: paint the strokes on the brain.")
    labels = np.where(known & (annotation != background), annotation, 0).astype(
        annotation.dtype if np.issubdtype(annotation.dtype, np.integer) else np.int32)
    has_background = bool(np.any(known & (annotation == background)))
    tumour_values = sorted(int(v) for v in np.unique(annotation[known & (annotation != background)]))
    if not tumour_values:
        raise InputError("The seeds are all Background: paint at least one tumour class too.")
    if not has_background:
        raise InputError(f"The seeds have no Background (label {background}): paint some Background around the "
                         "tumour, so the classifier learns what is not tumour.")
    zs = [int(z) for z in np.nonzero(known.reshape(-1, known.shape[-1]).any(axis=0))[0]]
    complete = [z for z in zs if foreground[..., z].any() and not np.any(foreground[..., z] & ~known[..., z])]
    return Seeds("seeds", labels, known, [0] + tumour_values, zs, complete, warnings)


def seeds_in_background_label(seeds: Seeds, background_label: int = BACKGROUND_LABEL) -> np.ndarray:
    """The seeds as a seeds-mode annotation (0 unknown, `background_label` background): e.g. a complete-slice
    annotation given to a tool that takes seeds (Grow from seeds, `BrainDiffSegBench.baselines`)."""
    return np.where(seeds.known, np.where(seeds.labels == 0, background_label, seeds.labels), 0)


def complete_slices_as_seeds(label: np.ndarray, zs: list[int], head: np.ndarray,
                             background_label: int = BACKGROUND_LABEL) -> np.ndarray:
    """Axial slices `zs` of `label` painted completely, as a seeds-mode annotation (int16): their labels, and
    Background over the rest of their head (a slice without tumour is Background alone: "no tumour here")."""
    out = np.zeros(label.shape, np.int16)
    zs = list(zs)
    sl = label[..., zs]
    out[..., zs] = np.where(sl > 0, sl, np.where(head[..., zs], background_label, 0))
    return out
