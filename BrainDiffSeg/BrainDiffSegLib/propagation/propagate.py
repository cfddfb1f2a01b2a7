"""Patient-level propagation: a few annotated slices, or strokes, of one case -> a label volume for the whole case.

Volumes in (arrays with the axial axis last), label volume out. The annotation is read in its mode
(`annotation.read_annotation`): complete axial slices (every slice with a label is annotated entirely, background
included) or seeds (only painted voxels are known, on any slice of any orientation). The known voxels train the
pixel classifier and keep their labels; every other voxel of the head is predicted. Features of predicted slices are computed batch by batch and discarded after prediction, so
memory stays bounded whatever the volume size.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from ..device import pick_device
from ..errors import CancelledError, EngineError, InputError
from ..options import PropagationOptions
from ..results import PropagationResult
from .annotation import read_annotation
from .cache import VolumeCache
from .classifier import PixelEnsemble
from .features import FeatureExtractor
from .predict import predict_slices
from .refine import (check_refine, core_boundary, core_choice, gate_mask, has_core_and_edema, needs_probabilities,
                     refine_labels, resolve_gate)
from .sources import FeatureSource, FreshFeatures
from .volume import check_images, feature_spec_of

log = logging.getLogger(__name__)
Progress = Callable[[str, float], None]
# seeds mode: an epoch of the classifier's training draws at least this many of the (few hundred) seeded pixels,
# repeating them (`PixelEnsemble.fit`'s min_epoch_samples)
SEEDS_EPOCH_SAMPLES = 4096
# seeds mode: the class weights of the loss (inverse class shares) raised to this power (`PixelEnsemble.fit`):
# strokes give the small core classes a few dozen pixels beside hundreds of Background, and full balance made the
# core spill into the edema; 0.5 against 1 and 0 on the tuning cases (results section 15,
# docs/results/seeds/tuning_strokes_class_weights.md): TC higher at 1, 2 and 3 axial slices, nothing lower
SEEDS_CLASS_WEIGHT_POWER = 0.5
# seeds mode: updates train from scratch whatever `classifier.warm_epochs` says. On the tuning cases a warm start of
# strokes saved under a second of training (strokes give few pixels) and lost BraTS WT at 3 slices (-0.008
# [-0.015, -0.002]); with complete slices it saved about 4 s an update at equal Dice (results section 14,
# docs/results/speed/warm_start_tuning*)
SEEDS_WARM_START = False


def check_annotation(annotation: np.ndarray, shape: tuple, foreground: np.ndarray) -> tuple[list[int], list[int]]:
    """Annotated slice indices and label values of a complete-slice annotation (`annotation.read_annotation`);
    clear errors for empty or one-class annotations."""
    seeds = read_annotation(annotation, shape, foreground, "slices")
    return seeds.complete, seeds.values


def keep_connected_to_annotation(labels: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """Drop predicted tumour islands that are not connected in 3D to any annotated tumour voxel. Computed in the
    tumour's bounding box, which holds every island (the same result as over the volume; 0.14 -> 0.08 s on
    BraTS2021_00006, ad hoc)."""
    tumour = labels > 0
    if not tumour.any():
        return labels
    box = ndimage.find_objects(tumour.astype(np.uint8))[0]
    inside = tumour[box]
    comp, _ = ndimage.label(inside, structure=ndimage.generate_binary_structure(tumour.ndim, 1))
    keep_ids = np.unique(comp[(annotation[box] > 0) & inside])
    out = np.zeros_like(labels)
    out[box] = np.where(np.isin(comp, keep_ids[keep_ids > 0]), labels[box], 0)
    return out


def intensity_columns(extractor: FeatureExtractor, opt: PropagationOptions) -> int:
    """How many of the last feature columns the hybrid's intensity members read (`PixelEnsemble.fit`): the
    intensity columns with the diffusion method and `opt.intensity_weight` > 0, else 0 (no hybrid)."""
    n_int = extractor.n_channels - extractor.n_diffusion_channels
    if opt.intensity_weight == 0 or opt.method != "diffusion" or extractor.n_diffusion_channels == 0:
        return 0
    return n_int


def training_digest(slices: list[int], mask: np.ndarray, y: torch.Tensor) -> str:
    """A digest of what the classifier is trained on (the slices, which of their pixels, their classes): a run on a
    cached volume whose digest is the last run's uses that run's classifier again (re-running gives the same
    result)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (np.asarray(slices, np.int64), np.packbits(np.ascontiguousarray(mask)), y.numpy()):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()


def propagate(images: dict[str, np.ndarray], annotation: np.ndarray, options: PropagationOptions | None = None,
              progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
              features: FeatureSource | None = None, keep_probabilities: bool = False,
              images_key: str | None = None) -> PropagationResult:
    """Segment the whole volume from the annotation. `images`: role -> array (axial last), one grid. `annotation`:
    a label volume on that grid, read in `options.annotation_mode` (`annotation.read_annotation`: complete axial
    slices, or seeds with `options.background_label` as background and 0 unknown). The classifier's labels are refined in 3D (`BrainDiffSegLib.propagation.refine`; by default the watershed gate) and cleaned up
    (tumour connected to the annotated tumour) before they are returned.

    `features`: where the features come from (`sources`): `FreshFeatures()` by default; a
    `BrainDiffSegLib.propagation.cache.VolumeCache` kept between runs on one volume (interactive use: the normalised
    images, the backbone and the decoder activations of every slice computed so far are reused); a `GivenExtractor`
    (experiments that serve features from their own store). A source that keeps the last run's classifier
    (`VolumeCache.keep_ensemble`) lets an update with complete slices warm-start from it (`classifier.warm_epochs`;
    the same annotation as the last run reuses it as it is).
    `images_key`: the images' digest when the caller knows it (`transfer.images_digest`; saves hashing them again).
    Nothing process-global is changed (no global seed, no torch flag): every random draw comes from generators
    seeded by `options` (the classifier's `classifier.seed`, the features' `noise_seed`).
    `keep_probabilities`: return the ensemble's class probabilities (X, Y, Z, C; one-hot annotation on the annotated
    slices) in the result, before refinement and post-processing (experiments: `BrainDiffSegBench.refine_experiment`).

    With the watershed gate on class labels (the default), the gate is computed before the prediction, and only the slices and pixels where it lets tumour stay are predicted (labels elsewhere are
    background, as the gate would make them): the same labels in about half the prediction time. The entropy and
    disagreement maps are then 0 on the slices the gate excludes and the coarse cell's (`predict`) outside it.
    """
    opt = options or PropagationOptions()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    report = progress or (lambda stage, f: None)

    def check_cancel():
        if cancelled is not None and cancelled():
            raise CancelledError("propagation cancelled")

    shape = check_images(images)
    source = features if features is not None else FreshFeatures()
    if opt.annotation_mode == "seeds" and type(source) is FreshFeatures:
        # strokes touch axial slices that are predicted too: their features are computed once, kept for this run
        source = VolumeCache()
    volume = source.volume(images, images_key)
    fg = volume.foreground
    seeds = read_annotation(annotation, shape, fg, opt.annotation_mode, opt.background_label)
    zs_ann, values, known = seeds.slices, seeds.values, seeds.known
    seeded = seeds.labels
    refine = check_refine(opt)  # bad settings fail before any work
    opt = replace(opt, gate=resolve_gate(opt.gate, seeds.slices == seeds.complete))
    if not 0 <= opt.intensity_weight < 1:
        raise InputError(f"intensity_weight must be in [0, 1), got {opt.intensity_weight}")
    device = pick_device(opt.device)
    report("preparing", 0.0)
    extractor = source.extractor(volume, opt, device)
    timings["load"] = time.perf_counter() - t0

    # 1. training pixels: every known head pixel (and every labelled pixel) of the slices the annotation touches
    t = time.perf_counter()
    train_mask = np.moveaxis(known[..., zs_ann] & (fg[..., zs_ann] | (seeded[..., zs_ann] > 0)), -1, 0)
    x = extractor.native_features(zs_ann, train_mask)
    if not bool(torch.isfinite(x).all()):
        raise EngineError("The features of the annotated slices are not finite (NaN or infinite values): the "
                          "backbone's weights or the images are damaged; nothing was segmented.")
    y = torch.from_numpy(np.searchsorted(values, np.moveaxis(seeded[..., zs_ann], -1, 0)[train_mask]))
    timings["features_annotated"] = time.perf_counter() - t
    check_cancel()

    # 2. the ensemble
    t = time.perf_counter()
    report("training classifier", 0.1)
    ens = PixelEnsemble(x.shape[1], len(values), opt.classifier, device)
    warm, warm_key, trained_on, last = None, None, None, None
    if (opt.classifier.warm_epochs > 0 and hasattr(source, "warm_ensemble")  # an update on a cached volume
            and (seeds.mode == "slices" or SEEDS_WARM_START)):
        warm_key = (replace(opt.classifier, warm_epochs=0), feature_spec_of(opt), opt.method, opt.intensity_weight,
                    seeds.mode, tuple(int(v) for v in values), x.shape[1], str(device))
        trained_on = training_digest(zs_ann, train_mask, y)
        last = source.warm_ensemble(warm_key)
        warm = last[0] if last is not None else None
    if last is not None and last[1] == trained_on:  # Propagate again, nothing painted since: the same result
        ens = warm
        log.info("the annotation is the last run's: its classifier is used again")
    else:
        ens.fit(x, y, progress=lambda f: report("training classifier", round(0.1 + 0.2 * f, 6)), cancelled=cancelled,
                intensity_columns=intensity_columns(extractor, opt), intensity_weight=opt.intensity_weight,
                min_epoch_samples=SEEDS_EPOCH_SAMPLES if seeds.mode == "seeds" else 0,
                class_weight_power=SEEDS_CLASS_WEIGHT_POWER if seeds.mode == "seeds" else 1.0,
                warm=warm, max_epochs=opt.classifier.warm_epochs if warm is not None else None)
        if warm is not None:
            log.info("classifier warm-started from the previous run's members (at most %d epochs)",
                     opt.classifier.warm_epochs)
    if warm_key is not None:
        source.keep_ensemble(warm_key, ens, trained_on)
    del x
    timings["train_classifier"] = time.perf_counter() - t

    # 3. predict the other slices, batch by batch, coarse to fine (`predict.predict_slices`)
    t = time.perf_counter()
    ldt = np.int16 if all(-2**15 <= v < 2**15 for v in values) else np.int32  # the painted values, exactly
    labels = np.zeros(shape, dtype=ldt)
    entropy = np.zeros(shape, dtype=np.float32)
    disagreement = np.zeros(shape, dtype=np.float32)
    # the 3D gate first (`refine.watershed_gate`: it needs the annotation only), then only the slices and pixels
    # where it lets tumour stay are predicted. (Computed in a thread of its own beside the classifier's training it
    # saved nothing on the 2-core CPU: torch's threads and the watershed took turns; again with torch at one thread
    # fewer meanwhile, the update 5.4 / 5.8 s against 5.6 / 5.7 s, medians of 3: results section 14.) Its box and
    # gradient are the volume's (`NormalizedVolume.gate_cache`), computed once.
    gate = None
    # seeds: the gate's markers are the seeds, and outside the head is background
    markers = None if seeds.mode == "slices" else known | ~fg

    def seeds_watershed() -> np.ndarray:  # the plain watershed gate, the annotation (or the seeds) as its markers
        return gate_mask("watershed", images, seeded, zs_ann, fg, opt, known=markers, cache=volume.gate_cache)

    if refine and opt.gate == "watershed" and not needs_probabilities(opt) and not keep_probabilities:
        report("gating", 0.3)
        gate = seeds_watershed()
        timings["gate"] = time.perf_counter() - t
        check_cancel()
        t = time.perf_counter()
    complete = set(seeds.complete)
    todo = [z for z in range(shape[-1]) if z not in complete and fg[..., z].any()
            and (gate is None or gate[..., z].any())]
    values_arr = np.array(values, dtype=ldt)
    step = max(1, opt.batch_size)
    probs = tumour = None
    if keep_probabilities or (refine and needs_probabilities(opt)):
        probs = np.zeros(tuple(shape) + (len(values),), dtype=np.float32)
        probs[..., 0] = 1.0
    core = refine and opt.gate == "watershed-core"  # its markers need P(tumour) of the whole prediction
    if core and probs is None:
        tumour = np.zeros(shape, dtype=np.float32)
    # `refine.core_boundary`: which core class (necrotic or enhancing) each voxel would take, the more probable
    banded = opt.core_band > 0 and has_core_and_edema(values)
    choice = np.zeros(shape, dtype=ldt) if banded and probs is None else None
    native = head = 0
    for s in range(0, len(todo), step):
        check_cancel()
        zb = todo[s:s + step]
        pred = predict_slices(ens, extractor, zb, fg, opt.roi_threshold, opt.roi_margin, check_cancel,
                              probabilities=probs is not None or tumour is not None or choice is not None, keep=gate)
        if not np.isfinite(pred.entropy).all():
            raise EngineError("The prediction is not finite (NaN or infinite probabilities): the features of the "
                              "predicted slices are damaged; nothing was segmented.")
        labels[..., zb] = np.where(fg[..., zb], values_arr[pred.classes], 0)
        if probs is not None:
            probs[..., zb, :] = pred.probabilities
        elif tumour is not None:
            tumour[..., zb] = 1.0 - pred.probabilities[..., 0]
        if choice is not None:
            choice[..., zb] = core_choice(pred.probabilities, values)
        entropy[..., zb], disagreement[..., zb] = pred.entropy, pred.disagreement
        native += pred.native_pixels
        head += pred.head_pixels
        report("predicting", 0.3 + 0.65 * min(1.0, (s + step) / max(1, len(todo))))
    timings["predict"] = time.perf_counter() - t
    log.info("classified %d of %d head pixels natively", native, head)
    labels[known] = seeded[known]
    entropy[known] = disagreement[known] = 0.0
    if probs is not None:  # one-hot where known
        probs[known] = np.eye(len(values), dtype=np.float32)[np.searchsorted(values, seeded[known])]
    if core:
        t = time.perf_counter()
        report("gating", 0.95)
        tumour = 1.0 - probs[..., 0] if probs is not None else tumour
        tumour[known] = seeded[known] > 0
        gate = gate_mask("watershed-core", images, seeded, zs_ann, fg, opt,
                         known=markers if markers is not None else known, labels=labels, tumour=tumour,
                         cache=volume.gate_cache)
        del tumour
        timings["gate"] = time.perf_counter() - t
    predicted = labels

    def finish(gate_mask_: np.ndarray | None) -> np.ndarray:
        out = predicted
        if refine:  # (seeds outside the head are background: labels there are 0)
            out = refine_labels(probs, seeded, zs_ann, values, fg, opt, images, labels=predicted, gate=gate_mask_,
                                known=markers)
        return keep_connected_to_annotation(out, seeded) if opt.postprocess else out

    t = time.perf_counter()
    if refine:
        report("refining", 0.95)
    labels = finish(gate)
    warnings = list(seeds.warnings)
    if core and spread_share(labels, fg) > SPREAD_WARNING_SHARE:
        # the classifier's confident tumour, one of this gate's markers, took healthy tissue: the plain watershed
        # (the seeds alone as markers) on the same prediction (docs/results/seeds/gate_robustness)
        labels = finish(seeds_watershed())
        log.info("the tumour covered more than %.0f %% of the head: gated by the seeds' watershed instead",
                 100 * SPREAD_WARNING_SHARE)
    if refine:
        timings["refine"] = time.perf_counter() - t
    spread = spread_warning(labels, fg, seeds.mode)
    if spread:
        warnings.append(spread)
        log.warning("%s", spread)
    if banded:
        t = time.perf_counter()
        if choice is None:  # the probabilities were kept
            choice = core_choice(probs, values)
        labels = core_boundary(images, labels, seeded, known, choice, opt.core_band)
        timings["refine"] = timings.get("refine", 0.0) + time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    report("done", 1.0)
    log.info("propagated %s (%d slices touched) to %d slices in %.1f s on %s", seeds.mode, len(zs_ann), len(todo),
             timings["total"], device)
    return PropagationResult(labels, entropy, disagreement, list(seeds.complete), values, timings, str(device),
                             probs if keep_probabilities else None, warnings=warnings,
                             seeded_slices=list(zs_ann), annotation_mode=seeds.mode)


# the share of the head above which a tumour is implausible: the gate for strokes falls back to the seeds' watershed,
# and a result still above it is flagged. The whole tumour of the BraTS cases outside the test split covers at most
# 10.3 % of the head (11 cases); with strokes on 1 axial slice of Brats18_2013_11_1 the classifier's tumour flooded
# 28 % of it through the gate for strokes (docs/results/seeds/gate_robustness)
SPREAD_WARNING_SHARE = 0.25


def spread_share(labels: np.ndarray, head: np.ndarray) -> float:
    """The share of the head's voxels that `labels` calls tumour; 0 without a head, and 0 where the head reaches an
    in-plane edge of the volume: a volume cropped around the tumour (a common step in Slicer) or a field of view
    that cuts the head, where the share says nothing about a flood (a test crop of a BraTS case: 35 %)."""
    n_head = int(np.count_nonzero(head))
    if n_head == 0 or head[0].any() or head[-1].any() or head[:, 0].any() or head[:, -1].any():
        return 0.0
    return np.count_nonzero((labels > 0) & head) / n_head


def spread_warning(labels: np.ndarray, head: np.ndarray, mode: str) -> str | None:
    """A sentence for the user when the segmented tumour covers more than `SPREAD_WARNING_SHARE` of the head (a
    classifier that took healthy tissue for tumour, as too little Background painted can make it), else None (also
    for a cropped volume: `spread_share`). The labels are not changed."""
    share = spread_share(labels, head)
    if share <= SPREAD_WARNING_SHARE:
        return None
    fix = ("paint Background where healthy tissue was segmented (strokes in the result count as seeds of the next "
           "update)" if mode == "seeds" else "annotate a slice where healthy tissue was segmented")
    return (f"The segmented tumour covers {100 * share:.0f} % of the head, more than any tumour is likely to: check "
            f"the result and {fix}.")

