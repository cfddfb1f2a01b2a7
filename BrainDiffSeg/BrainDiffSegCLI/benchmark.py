"""`braindiffseg benchmark propagation | features | fewshot | speed | update | suggest | merge | inpainting` (the
benchmarks: BrainDiffSegBench)."""
from __future__ import annotations

import logging
from pathlib import Path

from BrainDiffSegLib.options import add_arguments, options_from_arguments

log = logging.getLogger("braindiffseg")
HELP = "benchmarks (results as JSON, Markdown and PNG)"


def add_parser(sub) -> None:
    from BrainDiffSegBench.propagation import METHODS

    p = sub.add_parser("benchmark", help=HELP)
    bsub = p.add_subparsers(dest="benchmark", required=True)
    b = bsub.add_parser("propagation", help="patient-level propagation under the protocol, several methods")
    b.add_argument("--data", nargs="+", default=None, help="case folders or folders above them "
                   "(default: the test split of $BRAINDIFFSEG_DATA)")
    b.add_argument("--split", choices=["test", "tuning", "all"], default="test",
                   help="with a data root: which part of the project's split to run")
    b.add_argument("--k", type=int, nargs="+", default=[1, 2, 3, 5])
    b.add_argument("--methods", nargs="+", default=list(METHODS), help=", ".join(METHODS))
    b.add_argument("--max-cases", type=int, default=0, help="only the first N cases (0: all)")
    b.add_argument("--unet-steps", type=int, default=150, help="unet-patient: training steps")
    b.add_argument("--unet-batch", type=int, default=4, help="unet-patient: slices per step")
    b.add_argument("--classifier-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="run diffusion-mlp and raw-mlp once per seed (e.g. 0 1 2) and report the spread "
                   "(default: --seed only)")
    b.add_argument("--annotation", choices=["slices", "seeds"], default=None,
                   help="slices: the protocol's complete axial slices; seeds: simulated strokes on k slices of "
                   "--orientation, the same seeds for every method (default: --annotation-mode)")
    b.add_argument("--orientation", choices=["axial", "sagittal", "coronal", "mixed"], default="axial",
                   help="seeds: the orientation of the painted slices (mixed: sagittal, coronal, axial in turn)")
    _add_backbone_args(b)
    b.add_argument("--out", required=True)
    add_arguments(b)

    b = bsub.add_parser("features", help="the feature-selection experiment on the tuning cases")
    b.add_argument("--data", default=None, help="data root (default $BRAINDIFFSEG_DATA)")
    b.add_argument("--checkpoint", default=None)
    _add_backbone_args(b)
    b.add_argument("--k", type=int, default=3)
    b.add_argument("--max-cases", type=int, default=0)
    b.add_argument("--out", required=True)

    _add_fewshot_args(bsub.add_parser("fewshot", help="the paper's few-shot experiment: N labelled slices of the "
                                      "tuning cases, evaluation on the test cases, four methods"))
    _add_speed_args(bsub.add_parser("speed", help="time and peak memory of one full volume, ours vs the reference "
                                    "approach (all decoder blocks, every pixel's features in memory)"))

    b = bsub.add_parser("update", help="the interactive loop: a first propagation, then updates after painting one "
                        "more slice, with the per-volume feature cache; vs a run without it")
    b.add_argument("--case", default=None, help="case folder with ground truth (default: "
                   "$BRAINDIFFSEG_DATA/brats2021/BraTS2021_00006)")
    b.add_argument("--out", required=True)
    b.add_argument("--service", metavar="local|URL", help="also through an engine service: 'local' (a private one "
                   "started here, with this process's torch threads) or a running one's URL (token: "
                   "$BRAINDIFFSEG_TOKEN), against the same requests in process; overhead per call")
    b.add_argument("--load", type=int, default=0, help="run beside this many CPU-bound processes")
    b.add_argument("--no-growcut", dest="growcut", action="store_false",
                   help="do not run ITK Grow from seeds (no ratios; e.g. on a GPU machine without ITK)")
    b.add_argument("--warm-up", action="store_true", help="one untimed propagation first, so that the process's "
                   "one-time costs (backbone loading, CUDA's start) are outside the first run, as in a running service")
    add_arguments(b)

    b = bsub.add_parser("suggest", help="'paint this slice next': simulated users adding the suggested slice each "
                        "round vs evenly spaced slices, plus a correction user; Dice after 1, 2, 3, 5 slices")
    _add_suggest_args(b)

    b = bsub.add_parser("inpainting", help="healthy-tissue inpainting on healthy masks of the test split: the "
                        "DDPM(s) vs the baselines, the challenge's SSIM / PSNR / MSE inside the mask, time per volume")
    b.add_argument("--data", nargs="+", default=None, help="case folders or folders above them "
                   "(default: the test split of $BRAINDIFFSEG_DATA)")
    b.add_argument("--split", choices=["test", "tuning", "all"], default="test")
    b.add_argument("--max-cases", type=int, default=0, help="only the first N BraTS and the first N LGG cases (0: all)")
    b.add_argument("--model", default=None, help="2D inpainting checkpoint (default: the bundled model; none: skip)")
    b.add_argument("--model-3d", default=None, help="pseudo-3D inpainting checkpoint, or 'bundled' for "
                   "Resources/Models/inpaint3d (default: none)")
    b.add_argument("--steps", type=int, nargs="+", default=[25], help="DDIM step counts to compare")
    b.add_argument("--samples", type=int, nargs="+", default=[1], help="numbers of averaged samples to compare")
    b.add_argument("--strengths", type=float, nargs="+", default=None, help="fractions of the trajectory sampled "
                   "from the distance-weighted fill (1: from pure noise) to compare (default: the engine's, 0.15)")
    b.add_argument("--baselines", nargs="*", default=None, help="baselines to run (default: all)")
    b.add_argument("--seed", type=int, default=0, help="seed of the healthy masks")
    b.add_argument("--out", required=True)

    b = bsub.add_parser("merge", help="join runs split over several processes into one table: propagation runs "
                        "(folders with results.json) or few-shot runs (fewshot_<dataset>.json files or folders with "
                        "them, e.g. other seeds); a record in several inputs is taken from the first")
    b.add_argument("inputs", nargs="+", metavar="RUN", help="run folders or result files, first wins")
    b.add_argument("--out", required=True, help="folder for the joined results (may be one of the inputs)")


def _add_backbone_args(b) -> None:
    b.add_argument("--backbones", nargs="+", default=None, metavar="BACKBONE", help="backbones of diffusion-mlp, "
                   "each a dimension of the results: bundled, random (same architecture, seeded random weights; "
                   "random:SEED for another seed) or a checkpoint folder (default: --checkpoint or bundled)")
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice); results are "
                   "bit-identical for a given thread count, not across counts")


def _add_fewshot_args(b) -> None:
    from BrainDiffSegBench.fewshot import METHODS, FewShotOptions

    d = FewShotOptions()
    b.add_argument("--data", default=None, help="data root (default $BRAINDIFFSEG_DATA): its split is used")
    b.add_argument("--datasets", nargs="+", choices=["BraTS", "LGG"], default=["BraTS", "LGG"])
    b.add_argument("--n", type=int, nargs="+", default=list(d.ns),
                   help="numbers of labelled training slices")
    b.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    b.add_argument("--methods", nargs="+", default=list(d.methods), help=", ".join(METHODS))
    b.add_argument("--steps", type=int, default=d.steps, help="training budget (steps) of the trained networks; "
                   "with validation cases they stop earlier once the validation Dice is flat")
    b.add_argument("--batch-size", type=int, default=d.batch_size)
    b.add_argument("--crop", type=int, default=d.crop, help="trained networks: patch size (0: whole slices)")
    b.add_argument("--val-cases", type=int, default=d.val_cases,
                   help="last tuning cases of each dataset held out for early stopping (0: train for --steps)")
    b.add_argument("--val-every", type=int, default=d.val_every, help="validate every this many steps")
    b.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many validations without improvement")
    b.add_argument("--min-steps", type=int, default=d.min_steps, help="never stop before this step")
    b.add_argument("--lr", type=float, default=d.lr, help="learning rate of the trained networks (AdamW, poly decay)")
    b.add_argument("--ensemble", type=int, default=d.n_mlps, help="diffusion-mlp: number of MLPs")
    b.add_argument("--timestep", type=int, default=d.timestep, help="noise-predictor: fixed timestep (0: clean)")
    b.add_argument("--max-train-cases", type=int, default=0, help="0: every tuning case of the dataset")
    b.add_argument("--max-eval-cases", type=int, default=0, help="0: every test case of the dataset")
    b.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every n-th slice")
    b.add_argument("--checkpoint", default=None, help="backbone folder (default: the bundled model)")
    b.add_argument("--out", required=True)


def _add_speed_args(b) -> None:
    b.add_argument("--case", default=None, help="case folder with ground truth (default: "
                   "$BRAINDIFFSEG_DATA/brats2021/BraTS2021_00006)")
    b.add_argument("--k", type=int, default=3)
    b.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cuda is skipped where there is none")
    b.add_argument("--reference-slices", type=int, default=16,
                   help="slices on which the reference mode is measured (then extrapolated)")
    b.add_argument("--modes", nargs="+", choices=["ours", "first", "growcut", "reference"],
                   default=["ours", "growcut", "reference"], help="what to time (first: only ours' first result from "
                   "scratch, which ours includes; growcut: ITK Grow from seeds on the same annotation, for the ratio "
                   "ours / growcut)")
    b.add_argument("--load", type=int, default=0, help="run beside this many CPU-bound processes")
    b.add_argument("--out", required=True)


def _add_suggest_args(b) -> None:
    from BrainDiffSegLib.propagation.suggest import STRATEGIES

    b.add_argument("--data", nargs="*", default=None, help="case folders or folders above them (default: the test "
                   "split of $BRAINDIFFSEG_DATA; '--data' alone: none, only report the --join runs)")
    b.add_argument("--split", choices=["test", "tuning", "all"], default="test",
                   help="with a data root: which part of the project's split to run")
    b.add_argument("--strategies", nargs="+", default=list(STRATEGIES), help=", ".join(STRATEGIES))
    b.add_argument("--max-slices", type=int, default=5, help="rounds up to this many painted slices")
    b.add_argument("--max-cases", type=int, default=0, help="only the first N cases (0: all)")
    b.add_argument("--join", nargs="+", default=[], metavar="JSON", help="suggest.json of earlier runs (e.g. the "
                   "other dataset with other settings) reported together with this run")
    b.add_argument("--out", required=True)
    add_arguments(b)


def propagation_cases(data: list[str] | None, split: str) -> list[Path]:
    """The cases of `benchmark propagation`: with one data root, the chosen part of the project's split."""
    from BrainDiffSegLib.splits import data_split
    from BrainDiffSegLib.io import find_cases
    from BrainDiffSegLib.resources import data_root

    roots = [Path(d) for d in data] if data else [data_root()]
    if len(roots) == 1 and (roots[0] / "brats2018").exists() and split != "all":
        return data_split(roots[0])[split]
    return find_cases(roots)


def run_propagation(a, propagator=None) -> int:
    from BrainDiffSegBench.propagation import benchmark_propagation
    from BrainDiffSegBench.segnets import SegTrainOptions
    from BrainDiffSegBench.unet_patient import PatientUNetOptions

    options = options_from_arguments(a)
    cases = propagation_cases(a.data, a.split)
    cases = cases[:a.max_cases] if a.max_cases else cases
    log.info("%d cases, k=%s, methods %s", len(cases), a.k, a.methods)
    unet = PatientUNetOptions(train=SegTrainOptions(steps=a.unet_steps, batch_size=a.unet_batch, seed=options.seed))
    from BrainDiffSegLib.device import set_threads

    log.info("%d torch thread(s)", set_threads(a.threads))
    records = benchmark_propagation(cases, a.k, a.methods, Path(a.out), options, propagator=propagator,
                                    unet_options=unet, backbones=a.backbones, seeds=a.classifier_seeds,
                                    annotation=a.annotation or options.annotation_mode, orientation=a.orientation)
    print((Path(a.out) / "table.md").read_text())
    return 0 if records else 1


def run_features(a) -> int:
    from BrainDiffSegBench.features import select_features
    from BrainDiffSegLib.splits import data_split
    from BrainDiffSegLib.resources import data_root, default_checkpoint

    cases = data_split(Path(a.data) if a.data else data_root())["tuning"]
    if a.max_cases:  # as many LGG as BraTS cases
        lgg = [c for c in cases if c.name.startswith("TCGA")]
        other = [c for c in cases if c not in lgg]
        cases = other[:(a.max_cases + 1) // 2] + lgg[:a.max_cases // 2]
    from BrainDiffSegLib.device import set_threads

    log.info("%d torch thread(s)", set_threads(a.threads))
    select_features(cases, a.checkpoint or str(default_checkpoint()), Path(a.out), a.k, backbones=a.backbones)
    print((Path(a.out) / "feature_selection.md").read_text())
    return 0


def run_fewshot(a) -> int:
    from BrainDiffSegBench.fewshot import FewShotOptions, run_dataset
    from BrainDiffSegLib.resources import data_root

    opt = FewShotOptions(ns=tuple(a.n), seeds=tuple(a.seeds), methods=tuple(a.methods), steps=a.steps, lr=a.lr,
                         batch_size=a.batch_size, max_train_cases=a.max_train_cases,
                         max_eval_cases=a.max_eval_cases, eval_every=a.eval_every, checkpoint=a.checkpoint,
                         n_mlps=a.ensemble, timestep=a.timestep, crop=a.crop, val_cases=a.val_cases,
                         val_every=a.val_every, patience=a.patience, min_steps=a.min_steps)
    opt.check()
    root = Path(a.data) if a.data else data_root()
    for dataset in a.datasets:
        run_dataset(root, dataset, opt, Path(a.out))
        print((Path(a.out) / f"fewshot_{dataset.lower()}.md").read_text())
    return 0


def run_speed(a) -> int:
    from BrainDiffSegBench.speed import benchmark_speed
    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.resources import data_root

    case = a.case or str(data_root() / "brats2021" / "BraTS2021_00006")
    if not Path(case).is_dir():
        raise InputError(f"case folder not found: {case}")
    if a.reference_slices < a.k:
        raise InputError(f"--reference-slices ({a.reference_slices}) must be at least k ({a.k})")
    bad = [d for d in a.devices if d not in ("cpu", "cuda")]
    if bad:
        raise InputError(f"unknown device(s) {bad}; use cpu and/or cuda")
    benchmark_speed(case, Path(a.out), a.k, a.devices, a.reference_slices, modes=tuple(a.modes), load=a.load)
    print((Path(a.out) / "speed.md").read_text())
    return 0


def run_update(a) -> int:
    from BrainDiffSegBench.update import benchmark_update
    from BrainDiffSegLib.errors import InputError
    from BrainDiffSegLib.resources import data_root

    case = a.case or str(data_root() / "brats2021" / "BraTS2021_00006")
    if not Path(case).is_dir():
        raise InputError(f"case folder not found: {case}")
    benchmark_update(case, Path(a.out), options_from_arguments(a), service=a.service, load=a.load,
                     growcut=a.growcut, warm_up=a.warm_up)
    print((Path(a.out) / "update.md").read_text())
    return 0


def run_suggest(a) -> int:
    from BrainDiffSegBench.suggest import benchmark_suggest
    from BrainDiffSegLib.errors import InputError
    import torch

    from BrainDiffSegLib.propagation.suggest import STRATEGIES

    bad = [s for s in a.strategies if s not in STRATEGIES]
    if bad or a.max_slices < 1:
        raise InputError(f"unknown strategy(ies) {bad} (choose from {list(STRATEGIES)}) or --max-slices < 1")
    options = options_from_arguments(a)
    cases = propagation_cases(a.data, a.split) if a.data != [] else []
    cases = cases[:a.max_cases] if a.max_cases else cases
    settings = (f"method {options.method}, {options.classifier.n_models} MLPs, device {options.device}, seed "
                f"{options.seed}, {torch.get_num_threads()} torch thread(s), strategies {' '.join(a.strategies)}, "
                f"up to {a.max_slices} slices, annotation {options.annotation_mode}")
    log.info("%s", settings)
    missing = [j for j in a.join if not Path(j).is_file()]
    if missing:
        raise InputError(f"--join: no such file {missing}")
    res = benchmark_suggest(cases, Path(a.out), options, a.strategies, a.max_slices, settings,
                            [Path(j) for j in a.join])
    if not res["records"]:
        log.error("no case with ground truth: nothing to report")
        return 1
    print((Path(a.out) / "suggest.md").read_text())
    return 0


def run_merge(a) -> int:
    from BrainDiffSegBench.merge import merge

    for table in merge([Path(p) for p in a.inputs], Path(a.out)):
        print(table.read_text())
    return 0


def run_inpainting(a) -> int:
    from BrainDiffSegBench.inpainting import benchmark_inpainting
    from BrainDiffSegLib.inpainting.inpaint import default_inpaint3d_model, default_inpaint_model

    cases = propagation_cases(a.data, a.split)
    if a.max_cases:
        lgg = [c for c in cases if "lgg" in str(c).lower()]
        other = [c for c in cases if c not in lgg]
        cases = other[:a.max_cases] + lgg[:a.max_cases]
    models = {}
    if a.model != "none":
        models["DDPM 2D"] = str(a.model or default_inpaint_model())
    if a.model_3d:
        models["DDPM pseudo-3D"] = str(default_inpaint3d_model() if a.model_3d == "bundled" else a.model_3d)
    from BrainDiffSegBench.inpaint_metrics import BASELINES
    from BrainDiffSegLib.errors import InputError
    baselines = list(BASELINES) if a.baselines is None else a.baselines
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise InputError(f"--baselines: unknown {unknown}; choose from {list(BASELINES)}")
    from BrainDiffSegLib.inpainting.inpaint import DEFAULT_STRENGTH
    result = benchmark_inpainting(cases, Path(a.out), models, steps=a.steps, samples=a.samples, seed=a.seed,
                                  strengths=a.strengths or [DEFAULT_STRENGTH], baselines=baselines)
    log.info("wrote %s", Path(a.out) / "README.md")
    return 0 if result["rows"] else 1


def run(a, propagator=None) -> int:
    if a.benchmark == "propagation":
        return run_propagation(a, propagator)
    return {"features": run_features, "fewshot": run_fewshot, "speed": run_speed, "update": run_update,
            "suggest": run_suggest, "merge": run_merge, "inpainting": run_inpainting}[a.benchmark](a)
