"""3D refinement of the classifier's labels (issue 10 §3; measured in docs/results/refine and results §10).

The pixel classifier sees one slice at a time; the tumour is continuous in 3D. Three steps, each an option of
`PropagationOptions`:

* the gate (**on by default**, `gate = "auto"`, `gate_margin = 2`): predicted tumour is kept only within
  `gate_margin` voxels of the tumour side of a seeded watershed (scikit-image) on the gradient of the smoothed FLAIR
  (or T2, T1ce, T1), its markers the annotation's tumour and background. The classifier's false positives far
  from the annotated tumour (tissue of similar intensity, e.g. towards the skull base) are seldom reached by the
  region grown from the annotation, whose own leaks the classifier seldom shares. It works on the labels.
  `auto` (`resolve_gate`) is `watershed` when every slice the annotation touches is complete (always in the
  complete-slice mode), else `watershed-core`: with strokes, the Background drawn around the tumour of one slice
  lies inside the tumour of the next ones and the background side floods it, so the tumour markers also include
  the classifier's confident tumour (`classifier_core`: P(tumour) >= 0.9, eroded by 1 voxel, in 3D components
  that hold a tumour seed), which the flood cannot take. Chosen on the tuning cases (results section 15,
  `scripts/seeds_gate_variants.py`); it needs the prediction first, so it does not narrow the prediction as the
  plain watershed does;
* smoothing (off by default: it helped less and cost ET): each class probability filtered with a 3D Gaussian
  (`smooth_xy` voxels in plane, `smooth_z` across slices);
* the decision (`argmax` by default): or `regions`, the BraTS regions' nesting (tumour where P(tumour) >= 1/2, core
  where P(necrotic) + P(enhancing) >= P(edema), enhancing where P(enhancing) >= P(necrotic)); it measured worse.
  For a 0/1 mask both agree.

Voxels outside the head stay background; the annotated slices keep the annotation exactly.

Then, with BraTS labels, the core's border (`core_band`, **off by default**): the classifier draws the border
between the tumour core (necrotic, enhancing) and the edema from features on the backbone's coarser grid, and with
strokes it spilled core into the edema. Within `core_band` voxels of that border it can be redrawn by a watershed on
the gradient of the smoothed T1ce, whose edges are voxel-sharp (`core_boundary`). With 2 voxels it gained TC on the
tuning cases but lost ET at 3 axial slices of strokes on the test split (results section 15): not the default.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError

DECISIONS = ("argmax", "regions")
GATES = ("auto", "none", "watershed", "watershed-core")
WATERSHEDS = ("watershed", "watershed-core")
# `classifier_core`, chosen on the tuning cases among P >= 0.5 / 0.9 and erosion 1 / 2 / 3 (results section 15)
CORE_PROBABILITY = 0.9
CORE_EROSION = 1
GATE_ROLES = ("flair", "t2", "t1ce", "t1")  # the sequences where the whole tumour is best seen, in that order
CORE_CLASSES, EDEMA = (1, 4), 2  # BraTS: necrotic and enhancing core, edema


def resolve_gate(gate: str, complete: bool = True) -> str:
    """The gate that runs: `gate`, with 'auto' the watershed when the annotation is complete slices (`complete`:
    every slice it touches is complete; its markers then cover whole slices) and the watershed with the
    classifier's core as more tumour markers otherwise (strokes; see the module docstring)."""
    if gate == "auto":
        return "watershed" if complete else "watershed-core"
    return gate


def has_core_and_edema(values) -> bool:
    """Whether the label values hold edema and a core class (what `core_boundary` works on)."""
    return EDEMA in values and any(v in values for v in CORE_CLASSES)


def core_choice(probabilities: np.ndarray, values) -> np.ndarray:
    """`core_boundary`'s `core_choice`: the core class (a label value) each voxel would take, the more probable
    of the core classes in `values`; `probabilities` (..., len(values)) in the order of `values`."""
    values = list(values)
    cores = [values.index(v) for v in CORE_CLASSES if v in values]
    return np.asarray(values)[np.array(cores)[np.argmax(probabilities[..., cores], axis=-1)]]


def core_boundary(images: dict[str, np.ndarray], labels: np.ndarray, seeded: np.ndarray, known: np.ndarray,
                  core_choice: np.ndarray, band: int) -> np.ndarray:
    """BraTS labels with the border between the core (1, 4) and the edema (2) redrawn within `band` voxels of it:
    a watershed on the 3D gradient magnitude of the T1ce (smoothed with a 1-voxel Gaussian), confined to the whole
    tumour (which does not change), its core markers the core eroded by `band` voxels and the core seeds, its edema
    markers the tumour farther than `band` voxels from the core and the edema seeds. Core the flood gives to the
    edema becomes edema; edema it gives to the core becomes the core class in `core_choice` (the classifier's more
    probable of the two there). Known voxels (`known`, labels `seeded`) keep their class, and a core component too
    thin to keep a marker stays as it is. Without a T1ce, a core or edema, `labels` are returned unchanged."""
    core = np.isin(labels, CORE_CLASSES)
    tumour = labels > 0
    if band <= 0 or "t1ce" not in images or not core.any() or not (labels == EDEMA).any():
        return labels
    from skimage.segmentation import watershed

    box = tuple(slice(max(0, s.start - band - 3), s.stop + band + 3)
                for s in ndimage.find_objects(tumour.astype(np.uint8))[0])
    c, w, lab = core[box], tumour[box], labels[box]
    k, sd = known[box], seeded[box]
    smooth = ndimage.gaussian_filter(np.asarray(images["t1ce"][box], dtype=np.float32), 1.0)
    grad = np.sqrt(sum(ndimage.sobel(smooth, axis=a) ** 2 for a in range(3)))
    cross = ndimage.generate_binary_structure(3, 1)
    core_seed, edema_seed = k & np.isin(sd, CORE_CLASSES), k & (sd == EDEMA)
    inner = ndimage.binary_erosion(c, cross, iterations=band) | core_seed
    outer = (w & ~ndimage.binary_dilation(c, cross, iterations=band)) | edema_seed
    markers = np.zeros(c.shape, np.int32)
    markers[outer] = 1
    markers[inner] = 2
    flood = watershed(grad, markers, mask=w)
    parts, n = ndimage.label(c)
    marked = np.zeros(n + 1, bool)
    marked[np.unique(parts[inner & c])] = True
    marked[0] = False
    out = lab.copy()
    out[c & marked[parts] & (flood == 1) & ~k] = EDEMA
    gain = w & ~c & (flood == 2) & ~k
    out[gain] = core_choice[box][gain]
    result = labels.copy()
    result[box] = out
    return result


def check_refine(opt) -> bool:
    """Whether `opt` (PropagationOptions) asks for a refinement; InputError for a bad setting."""
    if opt.decision not in DECISIONS:
        raise InputError(f"Unknown decision {opt.decision!r}; use one of {', '.join(DECISIONS)}.")
    if opt.gate not in GATES:
        raise InputError(f"Unknown gate {opt.gate!r}; use one of {', '.join(GATES)}.")
    if opt.smooth_xy < 0 or opt.smooth_z < 0:
        raise InputError(f"Smoothing widths must be >= 0 voxels, got {opt.smooth_xy} / {opt.smooth_z}.")
    return opt.smooth_xy > 0 or opt.smooth_z > 0 or opt.decision != "argmax" or opt.gate != "none"


def smooth_probabilities(probs: np.ndarray, sigma_xy: float, sigma_z: float) -> np.ndarray:
    """(X, Y, Z, C) probabilities filtered per class with a 3D Gaussian (in place on a float32 copy)."""
    out = np.array(probs, dtype=np.float32, copy=True)
    if sigma_xy <= 0 and sigma_z <= 0:
        return out
    for c in range(out.shape[-1]):
        ndimage.gaussian_filter(out[..., c], (sigma_xy, sigma_xy, sigma_z), output=out[..., c], mode="nearest",
                                truncate=3.0)
    return out


def decide(probs: np.ndarray, values: list[int], decision: str) -> np.ndarray:
    """Class indices (X, Y, Z) from (X, Y, Z, C) probabilities; `values` are the label values of the classes."""
    if decision == "argmax" or set(values) != {0, 1, 2, 4}:
        return probs.argmax(-1)
    i = {v: n for n, v in enumerate(values)}
    p0, p1, p2, p4 = (probs[..., i[v]] for v in (0, 1, 2, 4))
    tumour = p0 <= 0.5
    core = tumour & (p1 + p4 >= p2)
    out = np.full(probs.shape[:-1], i[0], dtype=np.int64)
    out[tumour] = i[2]
    out[core & (p4 < p1)] = i[1]
    out[core & (p4 >= p1)] = i[4]
    return out


def gate_gradient(images: dict[str, np.ndarray]) -> np.ndarray:
    """The image the watershed floods: the 3D gradient magnitude (Sobel) of the first of `GATE_ROLES` in `images`,
    smoothed with a 1-voxel Gaussian (float32)."""
    role = next((r for r in GATE_ROLES if r in images), None)
    if role is None:
        raise InputError(f"The watershed gate needs one of the sequences {GATE_ROLES}; got {sorted(images)}.")
    smooth = ndimage.gaussian_filter(np.asarray(images[role], dtype=np.float32), 1.0)
    return np.sqrt(sum(ndimage.sobel(smooth, axis=a) ** 2 for a in range(3)))


def flood_between_slices(grad: np.ndarray, annotation: np.ndarray, annotated: list[int],
                         kept: dict | None = None) -> np.ndarray:
    """`watershed(grad, markers) == 2` (scikit-image, connectivity 1) for markers on the complete axial slices
    `annotated` (2 where `annotation` > 0, else 1), computed gap by gap: every voxel of a marked slice is a marker,
    so no flood crosses it, and the volume falls into independent parts - from each marked slice to the next, and
    beyond the first and the last - each flooded on its own with its two (or one) bounding slices as markers. The
    same voxels as one watershed of the whole volume: within a part the flood visits the same voxels in the same
    order (priority, then age; the neighbours in the same order), whatever happens in the others - except where
    marker voxels tie in value, whose order scikit-image leaves to its heap's layout (every marker has age 0), in
    the whole volume as in a part: both are then watersheds of the markers. An MR head's gradient has no such ties
    inside the head (`test_refine.py`; identical masks on the tuning and test cases, `scripts/gate_parts.py`).

    `kept`: the parts of the last call (a dict, replaced by this call's): a part whose bounding slices and their
    markers are unchanged is reused, so an update that adds one slice floods only the gap that slice splits
    (on BraTS2021_00006 about half the volume)."""
    from skimage.segmentation import watershed

    depth = grad.shape[2]
    zs = sorted({int(z) for z in annotated if 0 <= z < depth})
    if not zs:  # no marker (no marked slice in the gate's box): nothing floods
        return np.zeros(grad.shape, bool)
    cuts = sorted({0, depth - 1, *zs})
    parts = list(zip(cuts[:-1], cuts[1:])) or [(0, 0)]
    out = np.zeros(grad.shape, bool)
    now = {}
    for lo, hi in parts:
        ends = [z for z in dict.fromkeys((lo, hi)) if z in zs]
        key = (lo, hi) + tuple((z, np.packbits(annotation[..., z] > 0).tobytes()) for z in ends)
        part = None if kept is None else kept.get(key)
        if part is None:
            markers = np.zeros(grad.shape[:2] + (hi - lo + 1,), np.int32)
            for z in ends:
                markers[..., z - lo] = np.where(annotation[..., z] > 0, 2, 1)
            part = watershed(grad[..., lo:hi + 1], markers) == 2
        now[key] = part
        out[..., lo:hi + 1] |= part
    if kept is not None:
        kept.clear()
        kept.update(now)
    return out


def watershed_tumour(images: dict[str, np.ndarray], annotation: np.ndarray, annotated: list[int],
                     scale: int = 1, known: np.ndarray | None = None, gradient: np.ndarray | None = None,
                     kept: dict | None = None) -> np.ndarray:
    """(X, Y, Z) bool: the tumour side of a seeded watershed on the 3D gradient magnitude of the first of
    `GATE_ROLES` in `images`, smoothed with a 1-voxel Gaussian; markers: the annotated slices' tumour (any nonzero
    label) and their background, flooded gap by gap (`flood_between_slices`, reusing the parts in `kept`;
    `gradient`: `gate_gradient(images)` when the caller has it). (Computing it only in a box around the predicted
    tumour was faster but worse: with fewer background markers the tumour side flooded the box on 2 of 10 LGG
    tuning cases.)

    `known` (seeds, `annotation.Seeds`): the markers are the known voxels instead (tumour where `annotation` > 0,
    background elsewhere; `annotated` is then unused).

    `scale` > 1: the watershed floods every `scale`-th voxel in plane (the gradient computed at full resolution,
    then sampled; a cell is a tumour marker where any of its voxels is), and each of its voxels stands for its
    `scale` x `scale` cell: the watershed, most of the gate's time, on a quarter of the voxels for 2."""
    from skimage.segmentation import watershed

    grad = gate_gradient(images) if gradient is None else gradient
    if scale <= 1 and known is None and annotated:  # complete slices: each gap on its own, its markers built there
        return flood_between_slices(grad, annotation, annotated, kept)
    markers = np.zeros(annotation.shape, np.int32)
    if known is None:
        markers[..., annotated] = np.where(annotation[..., annotated] > 0, 2, 1)
    else:
        markers[known] = np.where(annotation[known] > 0, 2, 1)
    if scale <= 1:
        return watershed(grad, markers) == 2
    coarse = markers[::scale, ::scale]
    tumour = ndimage.maximum_filter(markers == 2, size=(scale, scale, 1), origin=(-(scale // 2), -(scale // 2), 0))
    coarse = np.where(tumour[::scale, ::scale], 2, coarse)
    inside = watershed(grad[::scale, ::scale], coarse) == 2
    full = np.repeat(np.repeat(inside, scale, axis=0), scale, axis=1)
    return full[:annotation.shape[0], :annotation.shape[1]]


def gate_box(foreground: np.ndarray | None, margin: float, shape: tuple) -> tuple[slice, ...]:
    """The box `watershed_gate` floods: the bounding box of `foreground` (the head) grown by the margin and 2
    voxels, within `shape` (the whole volume without a head mask)."""
    if foreground is None or not foreground.any():
        return tuple(slice(None) for _ in shape)
    pts = np.argwhere(foreground)
    pad = int(np.ceil(margin)) + 2
    lo, hi = np.maximum(pts.min(0) - pad, 0), np.minimum(pts.max(0) + pad + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def watershed_gate(images: dict[str, np.ndarray], annotation: np.ndarray, annotated: list[int], margin: float,
                   foreground: np.ndarray | None = None, scale: int = 1, known: np.ndarray | None = None,
                   cache: dict | None = None) -> np.ndarray:
    """Where predicted tumour may stay: within `margin` voxels of `watershed_tumour` (the classifier keeps the
    heterogeneous tumour borders where the watershed stops short, and loses its far false positives). Computed in
    the bounding box of `foreground` (the head), grown by the margin: 5.0 s -> 1.8 s on a BraTS volume (the same mask).
    `scale`, `known`: see `watershed_tumour`. `cache`: a dict kept with the volume (`NormalizedVolume.gate_cache`,
    so with the images and the head mask): the box and the gradient are computed once per volume, not per run
    (0.3 s of an update on a BraTS volume), and the last run's flooded parts between complete slices are reused
    (`flood_between_slices`); the same mask."""
    cache = {} if cache is None else cache
    box = cache.get(("box", margin))
    if box is None:
        box = cache[("box", margin)] = gate_box(foreground, margin, annotation.shape)
    region = {r: v[box] for r, v in images.items()}
    key = ("gradient", next((r for r in GATE_ROLES if r in images), None),
           tuple(b.indices(n) for b, n in zip(box, annotation.shape)))  # (slices are hashable from Python 3.12)
    if key not in cache:
        cache[key] = gate_gradient(region)
    z0 = box[2].indices(annotation.shape[2])[0]
    inside = watershed_tumour(region, annotation[box], [z - z0 for z in annotated], scale,
                              None if known is None else known[box], cache[key], cache.setdefault(("parts",) + key, {}))
    if margin > 0:
        inside = within_margin(inside, margin)
    out = np.zeros(annotation.shape, bool)
    out[box] = inside
    return out


def classifier_core(labels: np.ndarray, tumour: np.ndarray, seeded: np.ndarray,
                    probability: float = CORE_PROBABILITY, erosion: int = CORE_EROSION) -> np.ndarray:
    """(X, Y, Z) bool: the classifier's confident tumour - a tumour label (`labels` > 0) with P(tumour) (`tumour`)
    >= `probability` - eroded by `erosion` voxels (thin bridges to false positives cut), in the 3D components (with
    the tumour seeds, `seeded` > 0) that hold a tumour seed; the seeds themselves excluded."""
    conf = (tumour >= probability) & (labels > 0)
    if erosion > 0:
        conf = ndimage.binary_erosion(conf, iterations=erosion)
    conf |= seeded > 0
    comp, _ = ndimage.label(conf, structure=ndimage.generate_binary_structure(3, 1))
    ids = np.unique(comp[seeded > 0])
    return np.isin(comp, ids[ids > 0]) & (seeded <= 0)


def core_gate(images: dict[str, np.ndarray], labels: np.ndarray, tumour: np.ndarray, seeded: np.ndarray,
              markers: np.ndarray, margin: float, foreground: np.ndarray | None = None, scale: int = 1,
              probability: float = CORE_PROBABILITY, erosion: int = CORE_EROSION, cache: dict | None = None) -> np.ndarray:
    """The `watershed-core` gate: `watershed_gate` with `markers` (the known voxels: tumour where `seeded` > 0,
    background elsewhere) and the `classifier_core` of the predicted `labels` and P(tumour) `tumour` as tumour
    (`probability`, `erosion`: see `classifier_core`; `cache`: see `watershed_gate`)."""
    core = classifier_core(labels, tumour, seeded, probability, erosion)
    return watershed_gate(images, np.where(core, 1, seeded), [], margin, foreground, scale, markers | core, cache)


def gate_mask(kind: str, images: dict[str, np.ndarray] | None, annotation: np.ndarray, annotated: list[int],
              foreground: np.ndarray, opt, known: np.ndarray | None = None, labels: np.ndarray | None = None,
              tumour: np.ndarray | None = None, cache: dict | None = None) -> np.ndarray:
    """The mask of the watershed gate `kind` (`WATERSHEDS`, resolved), built in this one place for `propagate` and
    `refine_labels`: `watershed_gate` with the known voxels as markers (`known`, seeds mode; else every voxel of the
    `annotated` slices), or `core_gate`, which also needs the predicted `labels` and P(tumour) `tumour`. `cache`:
    the volume's (`watershed_gate`)."""
    if images is None:
        raise InputError("The watershed gate needs the images.")
    if kind == "watershed":
        return watershed_gate(images, annotation, annotated, opt.gate_margin, foreground, opt.gate_scale, known,
                              cache)
    if kind != "watershed-core":
        raise InputError(f"Unknown watershed gate '{kind}'; use one of {', '.join(WATERSHEDS)}.")
    if labels is None or tumour is None:
        raise InputError("The watershed-core gate needs the class probabilities.")
    marked = known
    if marked is None:
        marked = np.zeros(annotation.shape, bool)
        marked[..., annotated] = True
    return core_gate(images, labels, tumour, np.where(marked, annotation, 0), marked, opt.gate_margin, foreground,
                     opt.gate_scale, cache=cache)


def within_margin(mask: np.ndarray, margin: float) -> np.ndarray:
    """Voxels within `margin` (Euclidean, voxels) of `mask`: `distance_transform_edt(~mask) <= margin`, computed in
    the box of `mask` grown by the margin (the same voxels: every voxel of the mask lies in the box; 0.44 s -> a few
    hundredths on a BraTS volume)."""
    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    pts = np.argwhere(mask)
    pad = int(np.floor(margin)) + 1
    lo, hi = np.maximum(pts.min(0) - pad, 0), np.minimum(pts.max(0) + pad + 1, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    out[box] = ndimage.distance_transform_edt(~mask[box]) <= margin
    return out


def needs_probabilities(opt) -> bool:
    """Whether the refinement of `opt` works on the class probabilities (else on the classifier's labels)."""
    return opt.smooth_xy > 0 or opt.smooth_z > 0 or opt.decision != "argmax"


def refine_labels(probs: np.ndarray | None, annotation: np.ndarray, annotated: list[int], values: list[int],
                  foreground: np.ndarray, opt, images: dict[str, np.ndarray] | None = None,
                  labels: np.ndarray | None = None, gate: np.ndarray | None = None,
                  known: np.ndarray | None = None) -> np.ndarray:
    """Labels (X, Y, Z, int16) from the probabilities (X, Y, Z, C) after `opt.smooth_*`, `opt.decision` and
    `opt.gate` (`images`: the sequences by role, for the watershed gate; `gate`: the gate's mask when the caller
    computed it already, `watershed_gate`). `labels`: the classifier's own (argmax) labels, used instead of the
    probabilities where `opt` needs none (`needs_probabilities`). `known` (seeds mode, `annotation.Seeds.known`):
    the voxels that keep `annotation` (else every voxel of the `annotated` slices) and the gate's markers."""
    if labels is None or needs_probabilities(opt):
        if probs is None or probs.shape[:-1] != annotation.shape or probs.shape[-1] != len(values):
            raise InputError(f"probabilities {None if probs is None else probs.shape} do not match the annotation "
                             f"{annotation.shape} and {len(values)} classes")
        p = smooth_probabilities(probs, opt.smooth_xy, opt.smooth_z)
        labels = np.asarray(values, dtype=np.int32 if max(map(abs, values)) >= 2**15 else np.int16)[
            decide(p, values, opt.decision)]
    else:
        labels = np.array(labels, copy=True)
    labels[~foreground] = 0
    kind = resolve_gate(opt.gate, known is None)
    if kind in WATERSHEDS:
        if gate is None:
            tumour = None
            if kind == "watershed-core" and probs is not None:
                tumour = 1.0 - probs[..., values.index(0)] if 0 in values else np.ones(annotation.shape, np.float32)
            gate = gate_mask(kind, images, annotation, annotated, foreground, opt, known, labels, tumour)
        labels[~gate] = 0
    if known is None:
        labels[..., annotated] = annotation[..., annotated]
    else:
        labels[known] = annotation[known]
    return labels
