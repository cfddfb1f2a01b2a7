"""Classical baselines from 3D Slicer's Segment Editor, on the same inputs as `propagate`.

* `fill_between`: "Fill between slices" - ITK's morphological contour interpolation of the annotated slices.
* `grow_from_seeds`: "Grow from seeds" - ITK's FastGrowCut seeded with every label of the annotated slices.
* `growcut_brats`: the benchmark's growcut method for BraTS labels (whole tumour on FLAIR, core on T1ce).

The growcut functions also take a seeds-mode annotation (issue 23; `BrainDiffSegLib.propagation.annotation`): with
`background_label` given, only the painted voxels are seeds (0 unknown, `background_label` background), exactly
the seeds our seeds mode gets, and they are returned unchanged.

Arrays have the axial axis last. As everywhere in this project, slices of the annotation that contain any nonzero
label are the annotated slices; they keep all their labels (background 0 included) and are returned unchanged.
ITK (`itk`, `itk-growcut`, `itk-morphologicalcontourinterpolation`: the `baselines` extra) is imported only when a
function runs, so this module imports without it.
"""
from __future__ import annotations

import threading

import numpy as np

from BrainDiffSegLib.constants import BACKGROUND_LABEL, ROLES
from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.preprocess import is_brats_labels
from BrainDiffSegLib.propagation.annotation import read_annotation

WT_ROLES = ("flair", "t2", "t1ce", "t1")
"""Sequence of the whole-tumour growcut run: the first one available."""
CORE_ROLES = ("t1ce", "t1", "flair")
"""Sequence of the tumour-core growcut run (labels 1 and 4): the first one available."""


def _import_itk():
    try:
        import itk
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("The Slicer baselines need ITK: pip install 'braindiffseg[baselines]' "
                          "(itk, itk-growcut, itk-morphologicalcontourinterpolation).") from exc
    return itk


def annotated_slices(annotation: np.ndarray) -> list[int]:
    """Axial indices of the slices that contain a nonzero label; InputError if there are none."""
    annotation = np.asarray(annotation)
    if annotation.ndim != 3:
        raise InputError(f"The annotation must be a 3D label volume, got shape {annotation.shape}.")
    zs = [int(z) for z in np.nonzero(annotation.reshape(-1, annotation.shape[-1]).any(axis=0))[0]]
    if not zs:
        raise InputError("The annotation contains no tumour label: paint the tumour on at least one axial slice.")
    return zs


def _check_labels(annotation: np.ndarray) -> None:
    if not np.issubdtype(annotation.dtype, np.integer) and not np.issubdtype(annotation.dtype, np.bool_):
        if np.any(np.mod(annotation, 1) != 0):
            raise InputError("The annotation must hold integer labels.")
    if np.any(annotation < 0):
        raise InputError("The annotation must hold non-negative labels.")


def _compact(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Map each value of `labels` to its rank in the sorted `values` (which must contain all of them)."""
    return np.searchsorted(values, labels).astype(np.uint8)


def _mci(itk, image):
    mci = itk.MorphologicalContourInterpolator[type(image)].New()
    mci.SetInput(image)
    mci.SetAxis(0)
    # The interpolator keeps ITK filters in thread_local variables of the threads that run it. On the default
    # (TBB) threader those are long-lived pool threads whose thread-locals are only destroyed during process exit;
    # with itk 5.4.7 / itk-morphologicalcontourinterpolation 2.1.2 this often aborted the process at exit
    # ("malloc_consolidate(): unaligned fastbin chunk detected", raised from the pool thread's TLS destructors).
    # A platform threader starts and joins its threads within the call, and the calling thread is a short-lived
    # one (see _run_isolated), so every thread-local is destroyed before we return.
    if hasattr(itk, "PlatformMultiThreader"):
        mci.SetMultiThreader(itk.PlatformMultiThreader.New())
    mci.Update()
    return itk.GetArrayFromImage(mci.GetOutput())


def _run_isolated(fn):
    """Run fn() in a short-lived thread (so its thread-local state is destroyed on return); re-raise its error."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="braindiffseg-mci")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def fill_between(annotation: np.ndarray) -> np.ndarray:
    """Slicer's "Fill between slices": morphological contour interpolation along the axial axis, every label.

    Runs `itk.MorphologicalContourInterpolator` on the annotation restricted to its annotated slices, interpolating
    along the axial axis only (the last numpy axis, which is ITK's axis 0). Each label is interpolated between the
    annotated slices that contain it; nothing is extrapolated above the first or below the last annotated slice.
    Returns a label volume of the annotation's shape and dtype with the annotated slices unchanged.
    """
    annotation = np.asarray(annotation)
    zs = annotated_slices(annotation)
    _check_labels(annotation)
    values = np.union1d(np.unique(annotation[..., zs]), [0])  # sorted label values, 0 first
    if len(values) > 256:
        raise InputError(f"The annotation has {len(values) - 1} labels; at most 255 are supported.")
    seeds = np.zeros(annotation.shape, np.uint8)
    seeds[..., zs] = _compact(values, annotation[..., zs])  # monotone: same label order as the input values

    itk = _import_itk()
    # numpy (X, Y, Z), C order -> ITK image of size (Z, Y, X): numpy's last (axial) axis is ITK's axis 0.
    # (GetImageFromArray reads a Fortran-ordered array with the axes the other way round: always pass C order.)
    image = itk.GetImageFromArray(np.ascontiguousarray(seeds))
    out = _run_isolated(lambda: _mci(itk, image))
    result = values[out].astype(annotation.dtype)
    result[..., zs] = annotation[..., zs]
    return result


def fast_growcut(image: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """`itk.FastGrowCut` of a 3D image from a uint8 seed volume (0: unknown, 1..K: seed labels); the labels
    (int64, 0 where no seed reaches)."""
    itk = _import_itk()
    # FastGrowCut is wrapped for double, float, short, uchar and ushort images with a uchar label image.
    itk_image = itk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float32))
    itk_seeds = itk.GetImageFromArray(np.ascontiguousarray(seeds, dtype=np.uint8))
    gc = itk.FastGrowCut[type(itk_image), type(itk_seeds)].New()
    gc.SetInput(itk_image)
    gc.SetSeedImage(itk_seeds)
    gc.Update()
    return itk.GetArrayFromImage(gc.GetOutput()).astype(np.int64)


def _seed_volume(annotation: np.ndarray, background_label: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FastGrowCut's seeds (uint8: 0 none, 1 background, 2..K the labels), the label values (sorted, 0 first) and
    the known voxels: the annotated slices entirely, or (`background_label` given) the painted voxels. Read, and
    refused with the engine's sentences, by `propagation.annotation.read_annotation` (every voxel counts as head:
    Grow from seeds has no head mask)."""
    mode = "slices" if background_label is None else "seeds"
    read = read_annotation(annotation, annotation.shape, np.ones(annotation.shape, bool), mode,
                           BACKGROUND_LABEL if background_label is None else background_label)
    known, labels = read.known, read.labels
    values = np.asarray(read.values)
    if len(values) > 255:
        raise InputError(f"The annotation has {len(values) - 1} labels; at most 254 are supported.")
    seeds = np.zeros(annotation.shape, np.uint8)
    seeds[known] = _compact(values, labels[known]) + 1  # background -> 1, labels -> 2..K
    return seeds, values, known


def grow_from_seeds(image: np.ndarray, annotation: np.ndarray, background_label: int | None = None) -> np.ndarray:
    """Slicer's "Grow from seeds": `itk.FastGrowCut` on one sequence, seeded by the annotated slices.

    Seeds: every label of the annotation, and the background (0) of the annotated slices as a label of its own;
    label values are mapped to 1..K for the filter and back. The filter runs on the whole volume (no cropping to the
    seeds' extent, no mask, no distance penalty). Returns a label volume of the annotation's shape and dtype with the
    annotated slices unchanged.
    """
    image = np.asarray(image)
    annotation = np.asarray(annotation)
    if image.ndim != 3 or image.shape != annotation.shape:
        raise InputError(f"The annotation has shape {annotation.shape} but the image has {image.shape}: "
                         "they must share one 3D grid.")
    _check_labels(annotation)
    if not np.all(np.isfinite(image)):
        raise InputError("The image contains NaN or infinite values.")
    seeds, values, known = _seed_volume(annotation, background_label)

    out = fast_growcut(image, seeds)
    # every voxel connected to a seed gets a seed label; anything left unlabelled (0) is background
    result = values[np.clip(out - 1, 0, len(values) - 1)].astype(annotation.dtype)
    result[known] = values[seeds[known] - 1]
    return result


def _first(images: dict[str, np.ndarray], roles: tuple[str, ...], what: str) -> np.ndarray:
    for r in roles:
        if r in images:
            return images[r]
    raise InputError(f"The {what} growcut run needs one of the sequences {roles}; got {sorted(images)}.")


def growcut_brats(images: dict[str, np.ndarray], annotation: np.ndarray,
                  background_label: int | None = None) -> np.ndarray:
    """The benchmark's growcut method: `grow_from_seeds` on the sequences where each region is visible.

    For BraTS labels (nonzero values within {1, 2, 4}, with 2 or 4 present):

    * whole tumour (WT) = the tumour (any nonzero label) of a run on FLAIR, or the first available of flair, t2,
      t1ce, t1, seeded with all labels;
    * core = a run on T1ce, or the first available of t1ce, t1, flair, seeded with all labels;
    * combined: a voxel outside WT is 0; a voxel in WT gets the core run's label there if it is 1 or 4, else 2
      (else the WT run's own label, in the rare case that the annotation has no label 2).

    For any other annotation (a 0/1 mask): a single run on FLAIR (or the first available of the WT list).
    Annotated slices are returned unchanged; the output holds only label values of the annotation.
    """
    unknown = set(images) - set(ROLES)
    if unknown or not images:
        raise InputError(f"images must map roles {ROLES} to arrays; got {sorted(images)}")
    annotation = np.asarray(annotation)
    for r, v in images.items():
        if np.shape(v) != annotation.shape:
            raise InputError(f"The annotation has shape {annotation.shape} but sequence '{r}' has {np.shape(v)}: "
                             "they must share one grid.")
    seeds, values, known = _seed_volume(annotation, background_label)
    wt_image = _first(images, WT_ROLES, "whole-tumour")
    if not is_brats_labels(values):
        return grow_from_seeds(wt_image, annotation, background_label)
    wt_run = grow_from_seeds(wt_image, annotation, background_label)
    wt = wt_run > 0
    core = grow_from_seeds(_first(images, CORE_ROLES, "tumour-core"), annotation, background_label)
    result = np.zeros_like(annotation)
    result[wt] = 2 if 2 in values else wt_run[wt]
    core_in_wt = wt & np.isin(core, (1, 4))
    result[core_in_wt] = core[core_in_wt]
    result[known] = values[seeds[known] - 1]
    return result
