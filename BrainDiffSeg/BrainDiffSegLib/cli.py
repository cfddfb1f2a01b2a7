"""The `braindiffseg` command: train-ddpm, propagate, demo, benchmark, web."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from .classifier import ClassifierOptions
from .errors import BrainDiffSegError, InputError
from .features import FeatureSpec
from .io import check_writable, load_case, load_label, save_volume
from .protocol import region_dice, simulate_annotation
from .propagate import PropagationOptions, propagate
from .resources import data_root, default_checkpoint

log = logging.getLogger("braindiffseg")
DEMO_CASE = "brats2021/BraTS2021_00006"


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.replace(",", " ").split())


def _add_propagation_args(p: argparse.ArgumentParser) -> None:
    d, c = FeatureSpec(), ClassifierOptions()
    g = p.add_argument_group("model")
    g.add_argument("--method", choices=["diffusion", "raw"], default="diffusion",
                   help="diffusion: backbone features + intensities (default); raw: intensities + filters only")
    g.add_argument("--checkpoint", default=None, help=f"backbone folder (default: {default_checkpoint()})")
    g.add_argument("--blocks", type=_ints, default=d.blocks, help="decoder blocks, e.g. '1,2'")
    g.add_argument("--timesteps", type=_ints, default=d.timesteps, help="noise levels, e.g. '100' or '25,250'")
    g.add_argument("--smoothing", type=lambda v: tuple(float(x) for x in v.replace(",", " ").split()),
                   default=d.smoothing, help="Gaussian sigmas (pixels) of smoothed-intensity features, e.g. '1,2,4'")
    g.add_argument("--ensemble", type=int, default=c.n_models, help="number of MLPs")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    g.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    g.add_argument("--no-postprocess", action="store_true", help="keep tumour islands not connected to annotation")
    g.add_argument("--seed", type=int, default=0)


def _options(a) -> PropagationOptions:
    spec = FeatureSpec(blocks=a.blocks, timesteps=a.timesteps, smoothing=a.smoothing)
    return PropagationOptions(method=a.method, checkpoint=a.checkpoint, features=spec,
                              classifier=ClassifierOptions(n_models=a.ensemble, seed=a.seed), device=a.device,
                              precision=a.precision, batch_size=a.batch_size, postprocess=not a.no_postprocess,
                              seed=a.seed)


def _progress():
    last = {"stage": None, "t": 0.0}

    def report(stage: str, frac: float):
        now = time.time()
        if stage != last["stage"] or now - last["t"] > 2 or frac >= 1:
            log.info("%-20s %3.0f%%", stage, 100 * frac)
            last.update(stage=stage, t=now)
    return report


def run_propagate(a) -> dict:
    case = load_case(a.case)
    # every output, the summary JSON included, is checked before any work is done
    for target in [a.out] + [t for t in (a.uncertainty, a.overlay, getattr(a, "json", None)) if t]:
        check_writable(target, a.force)
    if a.simulate_annotation:
        if case.label is None:
            raise BrainDiffSegError(f"--simulate-annotation needs the case's ground truth (*_seg.nii.gz) in {a.case}")
        annotation, _ = simulate_annotation(case.label, a.simulate_annotation)
    elif a.annotation:
        annotation = load_label(a.annotation, case.native(next(iter(case.images.values()))).shape, case.affine,
                                case.axial_axis)
    else:
        raise BrainDiffSegError("give --annotation LABELS.nii.gz or --simulate-annotation K")
    t = time.perf_counter()
    res = propagate(case.images, annotation, _options(a), progress=_progress())
    seconds = time.perf_counter() - t
    save_volume(case, res.labels, a.out, force=a.force, dtype=np.uint8)
    if a.uncertainty:
        save_volume(case, res.entropy, a.uncertainty, force=a.force, dtype=np.float32)
    summary = {"case": case.name, "sequences": list(case.roles), "annotated_slices": res.annotated_slices,
               "seconds": round(seconds, 2), "timings": {k: round(v, 2) for k, v in res.timings.items()},
               "device": res.device, "least_certain_slices": [z for z, _ in res.least_certain_slices()]}
    import resource

    summary["peak_memory_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)
    if case.label is not None:
        summary["dice"] = {k: round(v, 4) for k, v in region_dice(res.labels, case.label,
                                                                   res.annotated_slices).items()}
    if a.overlay:
        from .overlay import save_overlay

        img = case.images.get("flair", next(iter(case.images.values())))
        save_overlay(a.overlay, img, res.labels, case.label, res.annotated_slices,
                     title=f"{case.name}: {len(res.annotated_slices)} annotated slices {res.annotated_slices}; "
                           + " ".join(f"{k} {v:.3f}" for k, v in summary.get("dice", {}).items()))
    return summary


def _print_summary(s: dict) -> None:
    print(f"case {s['case']} ({', '.join(s['sequences'])}); annotated slices {s['annotated_slices']}")
    if "dice" in s:
        print("Dice on the non-annotated slices: " + "  ".join(f"{k} {v:.3f}" for k, v in s["dice"].items()))
    print(f"time {s['seconds']:.1f} s on {s['device']}, peak memory {s['peak_memory_gb']:.2f} GB; stages "
          + json.dumps(s["timings"]))


def _channels_config(channels: tuple[int, ...]):
    """The default architecture with other widths: self-attention stays at the lowest resolution."""
    from .model import BackboneConfig

    base = BackboneConfig()
    cfg = BackboneConfig(block_out_channels=tuple(channels), attention_levels=(len(channels) - 1,))
    bad = [c for c in channels if c <= 0 or c % base.norm_num_groups]
    if bad:
        raise InputError(f"--channels {','.join(map(str, channels))}: every width must be a positive multiple of "
                         f"{base.norm_num_groups} (the GroupNorm groups); {bad} is not.")
    if channels[-1] < base.attention_head_dim:
        raise InputError(f"--channels {','.join(map(str, channels))}: the last width ({channels[-1]}, with "
                         f"self-attention) must be at least the attention head size {base.attention_head_dim}.")
    return cfg


def _select_cases(data: list[str] | None, split: str) -> list[Path]:
    from .benchmark import data_split
    from .io import find_cases

    roots = [Path(d) for d in data] if data else [data_root()]
    if len(roots) == 1 and (roots[0] / "brats2018").exists() and split != "all":
        return data_split(roots[0])[split]
    return find_cases(roots)


def _benchmark(a, propagator=None) -> int:
    from . import benchmark

    if a.benchmark == "fewshot":
        from .fewshot import run_fewshot_cli

        return run_fewshot_cli(a)
    if a.benchmark == "speed":
        from .speed import run_speed_cli

        return run_speed_cli(a)
    if a.benchmark == "propagation":
        cases = _select_cases(a.data, a.split)
        cases = cases[:a.max_cases] if a.max_cases else cases
        log.info("%d cases, k=%s, methods %s", len(cases), a.k, a.methods)
        from .segnets import PatientUNetOptions, SegTrainOptions

        unet = PatientUNetOptions(train=SegTrainOptions(steps=a.unet_steps, batch_size=a.unet_batch, seed=a.seed))
        records = benchmark.benchmark_propagation(cases, a.k, a.methods, Path(a.out), _options(a),
                                                  propagator=propagator, unet_options=unet)
        print((Path(a.out) / "table.md").read_text())
        return 0 if records else 1
    cases = benchmark.data_split(Path(a.data) if a.data else data_root())["tuning"]
    if a.max_cases:  # as many LGG as BraTS cases
        lgg = [c for c in cases if c.name.startswith("TCGA")]
        other = [c for c in cases if c not in lgg]
        cases = other[:(a.max_cases + 1) // 2] + lgg[:a.max_cases // 2]
    benchmark.select_features(cases, a.checkpoint or str(default_checkpoint()), Path(a.out), a.k)
    print((Path(a.out) / "feature_selection.md").read_text())
    return 0


def main(argv: list[str] | None = None, propagator=None) -> int:
    """The command line. `propagator`: see `benchmark.benchmark_propagation` (the Slicer script injects the Logic)."""
    ap = argparse.ArgumentParser(prog="braindiffseg", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("propagate", help="segment a case from a few annotated axial slices")
    p.add_argument("--case", required=True, help="case folder (BraTS, BraTS 2023 or LGG layout)")
    p.add_argument("--annotation", help="label volume on the case's grid; slices with any label are annotated")
    p.add_argument("--simulate-annotation", type=int, metavar="K",
                   help="take K slices from the case's ground truth by the benchmark protocol")
    p.add_argument("--out", required=True, help="output label volume (.nii.gz)")
    p.add_argument("--uncertainty", help="output entropy volume (.nii.gz)")
    p.add_argument("--overlay", help="output PNG with a few predicted slices")
    p.add_argument("--json", help="write the summary (Dice, timings) to this JSON file")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _add_propagation_args(p)

    p = sub.add_parser("demo", help="the patient-level demo on BraTS2021_00006 with 3 simulated slices")
    p.add_argument("--case", default=None, help=f"default: $BRAINDIFFSEG_DATA/{DEMO_CASE}")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--out-dir", default="out/demo")
    _add_propagation_args(p)

    p = sub.add_parser("train-ddpm", help="train the diffusion backbone on unlabelled slices (resumable)")
    p.add_argument("--data", nargs="+", required=True, help="folders with case folders below them")
    p.add_argument("--out", required=True, help="checkpoint folder; an existing run there is resumed")
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over DDP processes)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--crop", type=int, default=0, help="train on random crops of this size (0: full slices)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-minutes", type=float, default=0.0, help="save and stop after this long")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=_ints, default=None, help="U-Net widths per level, e.g. '32,64,128,128'")
    p.add_argument("--init-from", default=None,
                   help="start from this checkpoint's weights (e.g. Resources/Models/backbone) instead of random ones")

    p = sub.add_parser("benchmark", help="benchmarks (results as JSON, Markdown and PNG)")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    b = bsub.add_parser("propagation", help="patient-level propagation under the protocol, several methods")
    b.add_argument("--data", nargs="+", default=None, help="case folders or folders above them "
                   "(default: the test split of $BRAINDIFFSEG_DATA)")
    b.add_argument("--split", choices=["test", "tuning", "all"], default="test",
                   help="with a data root: which part of the project's split to run")
    b.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 5])
    b.add_argument("--methods", nargs="+", default=["diffusion-mlp", "raw-mlp", "unet-patient", "growcut",
                                                     "fill-between"],
                   help="diffusion-mlp, raw-mlp, unet-patient, growcut, fill-between")
    b.add_argument("--max-cases", type=int, default=0, help="only the first N cases (0: all)")
    b.add_argument("--unet-steps", type=int, default=150, help="unet-patient: training steps")
    b.add_argument("--unet-batch", type=int, default=4, help="unet-patient: slices per step")
    b.add_argument("--out", required=True)
    _add_propagation_args(b)
    b = bsub.add_parser("features", help="the feature-selection experiment on the tuning cases")
    b.add_argument("--data", default=None, help="data root (default $BRAINDIFFSEG_DATA)")
    b.add_argument("--checkpoint", default=None)
    b.add_argument("--k", type=int, default=3)
    b.add_argument("--max-cases", type=int, default=0)
    b.add_argument("--out", required=True)
    from .fewshot import add_fewshot_args
    from .speed import add_speed_args

    add_fewshot_args(bsub.add_parser("fewshot", help="the paper's few-shot experiment: N labelled slices of the "
                                     "tuning cases, evaluation on the test cases, four methods"))
    add_speed_args(bsub.add_parser("speed", help="time and peak memory of one full volume, ours vs the reference "
                                   "approach (all decoder blocks, every pixel's features in memory)"))

    p = sub.add_parser("web", help="the browser annotator: paint, propagate and review a case (trame-slicer)")
    p.add_argument("--case", help="case folder (BraTS, BraTS 2023 or LGG layout)")
    for role in ("t1", "t1ce", "t2", "flair"):
        p.add_argument(f"--{role}", metavar="FILE", help=f"{role.upper()} image (instead of --case)")
    p.add_argument("--out", help="folder for saved segmentations (default: the case folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--brush", type=float, default=3.0, help="brush diameter in mm (one axial slice thick)")
    p.add_argument("--fast", action="store_true",
                   help="quick preview: --method raw and a small classifier (2 small MLPs, 6 epochs); also for tests")
    _add_propagation_args(p)

    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if a.command == "train-ddpm":
            from .ddpm_train import TrainOptions, train_ddpm

            cfg = _channels_config(a.channels) if a.channels else None
            try:
                train_ddpm(TrainOptions(data=a.data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                        crop=a.crop, precision=a.precision, device=a.device, seed=a.seed,
                                        max_minutes=a.max_minutes, save_every=a.save_every, config=cfg,
                                    init_from=a.init_from))
            except FileNotFoundError as exc:  # no case folders below --data
                raise InputError(str(exc)) from exc
            return 0
        if a.command == "benchmark":
            return _benchmark(a, propagator)
        if a.command == "web":
            try:  # lazy: the annotator needs slicer-core and trame-slicer (the `web` extra), the engine does not
                import BrainDiffSegWeb
            except ImportError as exc:
                raise InputError(f"The browser annotator needs the 'web' extra (pip install -e .[web]): {exc}") \
                    from exc
            return BrainDiffSegWeb.run(a, _options(a))
        if a.command == "demo":
            out = Path(a.out_dir)
            a.case = a.case or str(data_root() / DEMO_CASE)
            a.simulate_annotation, a.annotation, a.force, a.json = a.k, None, True, str(out / "summary.json")
            a.out, a.uncertainty, a.overlay = str(out / "segmentation.nii.gz"), str(out / "uncertainty.nii.gz"), \
                str(out / "overlay.png")
        summary = run_propagate(a)
        if a.json:
            path = check_writable(a.json, a.force)
            path.write_text(json.dumps(summary, indent=2))
        _print_summary(summary)
        if a.command == "demo":
            print(f"wrote {a.out}, {a.uncertainty}, {a.overlay}")
        return 0
    except BrainDiffSegError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
