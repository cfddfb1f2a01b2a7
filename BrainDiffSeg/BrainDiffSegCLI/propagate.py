"""`braindiffseg propagate` (a case and an annotation, or one simulated from the ground truth) and `braindiffseg demo`
(the patient-level demo on BraTS2021_00006 with 3 simulated slices)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from BrainDiffSegLib.options import add_arguments, options_from_arguments

log = logging.getLogger("braindiffseg")
DEMO_CASE = "brats2021/BraTS2021_00006"


def add_parsers(sub) -> None:
    p = sub.add_parser("propagate", help="segment a case from a few annotated axial slices")
    p.add_argument("--case", required=True, help="case folder (BraTS, BraTS 2023 or LGG layout)")
    p.add_argument("--annotation", help="label volume on the case's grid: complete axial slices (slices with any "
                   "label are annotated), or seeds with --annotation-mode seeds (0 unknown, --background-label "
                   "background)")
    p.add_argument("--simulate-annotation", type=int, metavar="K",
                   help="take K slices from the case's ground truth by the benchmark protocol (with "
                   "--annotation-mode seeds: the seed simulator's strokes on K slices of --orientation)")
    p.add_argument("--orientation", choices=["axial", "sagittal", "coronal", "mixed"], default="axial",
                   help="--simulate-annotation in seeds mode: the orientation of the painted slices")
    p.add_argument("--out", required=True, help="output label volume (.nii.gz)")
    p.add_argument("--uncertainty", help="output entropy volume (.nii.gz)")
    p.add_argument("--overlay", help="output PNG with a few predicted slices")
    p.add_argument("--json", help="write the summary (Dice, timings) to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_arguments(p)

    p = sub.add_parser("demo", help="the patient-level demo on BraTS2021_00006 with 3 simulated slices")
    p.add_argument("--case", default=None, help=f"default: $BRAINDIFFSEG_DATA/{DEMO_CASE}")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--out-dir", default="out/demo")
    add_arguments(p)


def _progress():
    last = {"stage": None, "t": 0.0}

    def report(stage: str, frac: float):
        now = time.time()
        if stage != last["stage"] or now - last["t"] > 2 or frac >= 1:
            log.info("%-20s %3.0f%%", stage, 100 * frac)
            last.update(stage=stage, t=now)
    return report


def run_propagate(a) -> dict:
    """One propagation as the parsed command line asks; writes the outputs and returns the summary."""
    import numpy as np

    from BrainDiffSegLib.errors import BrainDiffSegError
    from BrainDiffSegLib.io import load_case, load_label, save_volume
    from BrainDiffSegLib.outputs import atomic, check_outputs
    from BrainDiffSegLib.propagation.propagate import propagate
    from BrainDiffSegLib.protocol import region_dice, simulate_annotation

    case = load_case(a.case)
    # every output, the summary JSON included, is checked before any work is done (BrainDiffSegLib.outputs)
    check_outputs({"--out": (a.out, "volume"), "--uncertainty": (a.uncertainty, "volume"),
                   "--overlay": (a.overlay, "png"), "--json": (getattr(a, "json", None), "json")},
                  inputs=[*case.paths.values(), a.annotation], force=a.force)
    if a.simulate_annotation:
        if case.label is None:
            raise BrainDiffSegError(f"--simulate-annotation needs the case's ground truth (*_seg.nii.gz) in {a.case}")
        options = options_from_arguments(a)
        if options.annotation_mode == "seeds":
            from BrainDiffSegLib.preprocess import foreground_mask
            from BrainDiffSegLib.strokes import simulate_strokes

            annotation, _ = simulate_strokes(case.label, foreground_mask(case.images), a.simulate_annotation,
                                             a.orientation, seed=options.seed,
                                             background_label=options.background_label)
        else:
            annotation, _ = simulate_annotation(case.label, a.simulate_annotation)
    elif a.annotation:
        annotation = load_label(a.annotation, case.native(next(iter(case.images.values()))).shape, case.affine,
                                case.axial_axis)
    else:
        raise BrainDiffSegError("give --annotation LABELS.nii.gz or --simulate-annotation K")
    from BrainDiffSegLib.outputs import size_warning

    warning = size_warning(case.shape, len(case.images))
    if warning:  # before a long run, what to expect
        log.warning("%s", warning)
    t = time.perf_counter()
    res = propagate(case.images, annotation, options_from_arguments(a), progress=_progress())  # (warnings logged)
    seconds = time.perf_counter() - t
    save_volume(case, res.labels, a.out, force=a.force)  # labels in a type that holds their values
    if a.uncertainty:
        save_volume(case, res.entropy, a.uncertainty, force=a.force, dtype=np.float32)
    summary = {"case": case.name, "sequences": list(case.roles), "annotated_slices": res.annotated_slices,
               "seconds": round(seconds, 2), "timings": {k: round(v, 2) for k, v in res.timings.items()},
               "device": res.device, "least_certain_slices": [z for z, _ in res.least_certain_slices()],
               "annotation_mode": res.annotation_mode, "seeded_slices": res.seeded_slices, "warnings": res.warnings}
    import resource

    summary["peak_memory_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)
    predicted = [z for z in range(res.labels.shape[-1]) if z not in set(res.annotated_slices)]
    if not predicted:
        summary["note"] = "every axial slice is annotated: nothing was predicted (no Dice to report)"
    elif case.label is not None and not case.label[..., predicted].any():
        summary["note"] = ("every slice with tumour in the ground truth is annotated: nothing to compare on the "
                           "other slices (no Dice to report)")
    elif case.label is not None:
        summary["dice"] = {k: round(v, 4) for k, v in region_dice(res.labels, case.label,
                                                                   res.annotated_slices).items()}
    if a.overlay:
        from BrainDiffSegLib.overlay import save_overlay

        img = case.images.get("flair", next(iter(case.images.values())))
        with atomic(a.overlay) as tmp:
            save_overlay(tmp, img, res.labels, case.label, res.annotated_slices,
                         title=f"{case.name}: {len(res.annotated_slices)} annotated slices {res.annotated_slices}; "
                               + " ".join(f"{k} {v:.3f}" for k, v in summary.get("dice", {}).items()))
    return summary


def _print_summary(s: dict) -> None:
    print(f"case {s['case']} ({', '.join(s['sequences'])}); annotated slices {s['annotated_slices']}")
    if "dice" in s:
        print("Dice on the non-annotated slices: " + "  ".join(f"{k} {v:.3f}" for k, v in s["dice"].items()))
    if "note" in s:
        print(s["note"][:1].upper() + s["note"][1:] + ".")
    print(f"time {s['seconds']:.1f} s on {s['device']}, peak memory {s['peak_memory_gb']:.2f} GB; stages "
          + json.dumps(s["timings"]))


def run(a) -> int:
    """`propagate` or `demo` (the demo: propagate with fixed outputs in --out-dir, overwritten)."""
    from BrainDiffSegLib.outputs import write_text
    from BrainDiffSegLib.resources import data_root

    if a.command == "demo":
        out = Path(a.out_dir)
        a.case = a.case or str(data_root() / DEMO_CASE)
        a.simulate_annotation, a.annotation, a.force, a.json = a.k, None, True, str(out / "summary.json")
        a.out, a.uncertainty, a.overlay = str(out / "segmentation.nii.gz"), str(out / "uncertainty.nii.gz"), \
            str(out / "overlay.png")
    summary = run_propagate(a)
    if a.json:
        write_text(a.json, json.dumps(summary, indent=2))
    _print_summary(summary)
    if a.command == "demo":
        print(f"wrote {a.out}, {a.uncertainty}, {a.overlay}")
    return 0
