"""The propagation benchmark: several methods on cases with ground truth under the project's protocol (k annotated
slices simulated from the ground truth, scores on the other slices).

Everything runs headless through the same engine calls that the Slicer Logic uses (or, with a `propagator`, through
the Logic itself: `BrainDiffSeg/SlicerScripts/benchmark.py`). Results are written as JSON (one record per case x k x
method x backbone x classifier seed, Dice and HD95 per region), a Markdown table and PNG plots (`report`).

Dimensions beyond the method: `backbones` (hybrid-mlp and diffusion-mlp only; `backbones.resolve_backbones`:
'bundled', 'random', a checkpoint folder) and classifier `seeds` (the classifier methods hybrid-mlp, diffusion-mlp
and raw-mlp; the other methods run once, with the first seed). Each record names its `backbone` (None for methods without one) and `seed`.

The annotation (`annotation`): `slices`, the protocol's complete axial slices (scores on the other slices), or
`seeds` (issue 23), the strokes of the seed simulator (`BrainDiffSegLib.strokes`) on k slices of `orientation`,
given identically to every method (ours in seeds mode, Grow from seeds seeded with them); scores over the whole
volume (the seeds are a few hundred voxels, the same for every method). `growcut-<sequence>`: Grow from seeds on
that one sequence (`growcut` uses FLAIR for the whole tumour and T1ce for the core).
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.io import Case, load_case
from BrainDiffSegLib.propagation.propagate import PropagationOptions, propagate
from BrainDiffSegLib.constants import ROLES
from BrainDiffSegLib.preprocess import foreground_mask
from BrainDiffSegLib.protocol import region_dice, simulate_annotation
from BrainDiffSegLib.strokes import ORIENTATIONS, simulate_strokes

from .backbones import Backbone, resolve_backbones
from .metrics import region_hd95
from .report import machine, plot_dice_vs_k, round_nan, write_table

log = logging.getLogger(__name__)
GROWCUT_SINGLE = {f"growcut-{r}": r for r in ROLES}  # Grow from seeds on one sequence
METHODS = ("hybrid-mlp", "diffusion-mlp", "raw-mlp", "unet-patient", "growcut", "fill-between", *GROWCUT_SINGLE)
SLICES_ONLY = ("unet-patient", "fill-between")  # methods that need complete slices
# the classifier methods and their engine method: hybrid-mlp is the product's default (diffusion features, plus an
# ensemble on the intensities alone mixed in with `intensity_weight`), diffusion-mlp the diffusion features alone
CLASSIFIER_METHODS = {"hybrid-mlp": "diffusion", "diffusion-mlp": "diffusion", "raw-mlp": "raw"}
BACKBONE_METHODS = ("hybrid-mlp", "diffusion-mlp")
# propagator(case, annotation, method, options) -> label volume: replaces the engine call of the classifier methods
Propagator = Callable[[Case, np.ndarray, str, PropagationOptions], np.ndarray]


def method_options(method: str, options: PropagationOptions) -> PropagationOptions:
    """The engine options of a classifier method: `options` with its engine method; diffusion-mlp without the
    intensity ensemble (`intensity_weight` 0), hybrid-mlp with `options.intensity_weight` (InputError if 0)."""
    if method == "hybrid-mlp" and options.intensity_weight <= 0:
        raise InputError("hybrid-mlp mixes in an intensity ensemble: give --intensity-weight > 0 (or run "
                         "diffusion-mlp)")
    out = replace(options, method=CLASSIFIER_METHODS[method])
    return replace(out, intensity_weight=0.0) if method == "diffusion-mlp" else out


def run_method(case: Case, annotation: np.ndarray, method: str, options: PropagationOptions,
               propagator: Propagator | None = None, unet_options=None) -> np.ndarray:
    """One method's label volume. `propagator` (if given) runs the classifier methods instead of the engine's
    `propagate` (the Slicer script passes one that goes through `BrainDiffSegLogic.propagate`)."""
    if method in CLASSIFIER_METHODS:
        opts = method_options(method, options)
        if propagator is not None:
            return propagator(case, annotation, method, opts)
        return propagate(case.images, annotation, opts).labels
    if method == "unet-patient":
        from .unet_patient import propagate_unet_patient

        return propagate_unet_patient(case.images, annotation, unet_options)
    from . import baselines

    background = options.background_label if options.annotation_mode == "seeds" else None
    if method == "growcut":
        return baselines.growcut_brats(case.images, annotation, background)
    if method in GROWCUT_SINGLE:
        role = GROWCUT_SINGLE[method]
        if role not in case.images:
            raise InputError(f"{method} needs the {role} sequence; {case.name} has {sorted(case.images)}.")
        return baselines.grow_from_seeds(case.images[role], annotation, background)
    if method == "fill-between":
        return baselines.fill_between(annotation)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _warm_up_baselines(methods: list[str]) -> None:
    """Run the ITK baselines once on a tiny volume, untimed: ITK loads its wrapped filters lazily on first use
    (seconds), which would otherwise be counted in the first case's time."""
    if not {"growcut", "fill-between", *GROWCUT_SINGLE} & set(methods):
        return
    from . import baselines

    ann = np.zeros((8, 8, 3), np.uint8)
    ann[3:5, 3:5, [0, 2]] = 2
    if "fill-between" in methods:
        baselines.fill_between(ann)
    if "growcut" in methods or set(GROWCUT_SINGLE) & set(methods):
        baselines.grow_from_seeds(np.random.default_rng(0).random(ann.shape).astype(np.float32), ann)


def variants(method: str, backbones: list[Backbone], seeds: list[int]) -> list[tuple[Backbone | None, int]]:
    """The (backbone, classifier seed) runs of a method: hybrid-mlp and diffusion-mlp per backbone x seed, raw-mlp
    per seed, the other methods once (first seed, no backbone)."""
    bs = backbones if method in BACKBONE_METHODS else [None]
    return [(b, s) for b in bs for s in (seeds if method in CLASSIFIER_METHODS else seeds[:1])]


def variant_options(options: PropagationOptions, backbone: Backbone | None, seed: int) -> PropagationOptions:
    """`options` with the run's seed (the classifier's too, as `--seed` sets them) and backbone."""
    checkpoint = str(backbone.checkpoint) if backbone is not None else options.checkpoint
    return replace(options, seed=seed, classifier=replace(options.classifier, seed=seed), checkpoint=checkpoint)


def benchmark_propagation(case_dirs: list[Path], ks: list[int], methods: list[str], out: Path,
                          options: PropagationOptions | None = None, overlays: int = 3,
                          propagator: Propagator | None = None, unet_options=None,
                          backbones: list[str] | None = None, seeds: list[int] | None = None,
                          annotation: str = "slices", orientation: str = "axial") -> list[dict]:
    """Every method on every case with ground truth at every k (and per backbone / classifier seed, see the module's
    docstring); `unet_options`: unet_patient.PatientUNetOptions; `annotation`, `orientation`: see the module's
    docstring."""
    options = options or PropagationOptions()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown propagation method(s) {unknown}; choose from {list(METHODS)}")
    if annotation not in ("slices", "seeds"):
        raise InputError(f"Unknown annotation {annotation!r}; use slices or seeds.")
    if annotation == "seeds":
        if orientation not in ORIENTATIONS:
            raise InputError(f"Unknown orientation {orientation!r}; use one of {', '.join(ORIENTATIONS)}.")
        unfit = [m for m in methods if m in SLICES_ONLY]
        if unfit:
            raise InputError(f"{', '.join(unfit)} need complete slices: run them with --annotation slices.")
    elif orientation != "axial":
        raise InputError("Complete slices are axial: --orientation needs --annotation seeds.")
    options = replace(options, annotation_mode=annotation)
    seeds = list(seeds or [options.seed])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="braindiffseg-backbones-") as tmp:
        chosen = resolve_backbones(backbones, Path(tmp), options.checkpoint)
        header = {"machine": machine(), "backbones": {b.name: b.describe() for b in chosen}, "seeds": seeds,
                  "annotation": annotation, "orientation": orientation}
        return _run_cases(case_dirs, ks, methods, out, options, overlays, propagator, unet_options, chosen, seeds,
                          header)


def _run_cases(case_dirs, ks, methods, out, options, overlays, propagator, unet_options, chosen, seeds,
               header) -> list[dict]:
    """The loop of `benchmark_propagation` over cases, k, methods and their variants; results.json after each case."""
    _warm_up_baselines(methods)
    records = []
    for ci, cdir in enumerate(case_dirs):
        case = load_case(cdir)
        if case.label is None:
            log.warning("%s has no ground truth; skipped", cdir)
            continue
        for k in ks:
            extra = {}
            if options.annotation_mode == "seeds":  # strokes; scores over the whole volume
                annotation, painted = simulate_strokes(case.label, foreground_mask(case.images), k,
                                                       header["orientation"], seed=options.seed,
                                                       background_label=options.background_label)
                zs = []
                extra = {"annotation": "seeds", "orientation": header["orientation"], "planes": painted,
                         "seed_voxels": int((annotation != 0).sum())}
            else:
                annotation, zs = simulate_annotation(case.label, k)
            preds = {}
            for method in methods:
                if method in GROWCUT_SINGLE and GROWCUT_SINGLE[method] not in case.images:
                    log.info("%s: no %s sequence, %s skipped", case.name, GROWCUT_SINGLE[method], method)
                    continue
                for backbone, seed in variants(method, chosen, seeds):
                    t = time.perf_counter()
                    pred = run_method(case, annotation, method, variant_options(options, backbone, seed),
                                      propagator, unet_options)
                    seconds = time.perf_counter() - t
                    name = backbone.name if backbone is not None else None
                    if seed == seeds[0]:
                        preds[method if name is None or len(chosen) == 1 else f"{method}_{name}"] = pred
                    rec = {"case": case.name, "k": k, "method": method, "backbone": name, "seed": seed,
                           "annotated": zs, "seconds": round(seconds, 2),
                           "dice": {r: round(v, 4) for r, v in region_dice(pred, case.label, zs).items()},
                           "hd95": {r: round_nan(v)
                                    for r, v in region_hd95(pred, case.label, zs, case.spacing).items()},
                           "spacing": list(case.spacing), **extra}
                    records.append(rec)
                    log.info("[%d/%d] %s k=%d %-14s %s seed %d Dice %s HD95 %s (%.1f s)", ci + 1, len(case_dirs),
                             case.name, k, method, name or "", seed,
                             " ".join(f"{r} {v:.3f}" for r, v in rec["dice"].items()),
                             " ".join(f"{r} {v:.1f}" for r, v in rec["hd95"].items()), seconds)
            if ci < overlays:
                from BrainDiffSegLib.overlay import save_overlay

                img = case.images.get("flair", next(iter(case.images.values())))
                for label, pred in preds.items():
                    save_overlay(out / f"overlay_{case.name}_k{k}_{re.sub(r'[^A-Za-z0-9._-]+', '-', label)}.png",
                                 img, pred, case.label, zs, title=f"{case.name} k={k} {label}")
        (out / "results.json").write_text(json.dumps(dict(header, records=records), indent=1, allow_nan=True))
    write_table(records, out / "table.md")
    plot_dice_vs_k(records, out / "dice_vs_k.png")
    return records
