"""The paper's main experiment (Alshenoudy et al. 2023) on our data: few labelled axial slices of a pool of training
cases, segmentation of the slices of held-out cases, several methods, Dice vs the number N of labelled slices.

Data, on the model grid (the head's square box resized to 128 x 128, as everything else in the engine):
- BraTS: axial slices 70..100 of each volume (the paper's choice); LGG: the slices containing tumour.
- training pool: the *tuning* cases of the project's split (`splits.data_split`) except the last `val_cases`
  of them, which are the *validation* cases (early stopping of the trained networks); evaluation: the *test*
  cases. Nothing is tuned or stopped on the test cases.
- for each seed, a permutation of the pool's slices; the first N form the training set (nested sets over N).
Methods:
- `diffusion-mlp`: the engine's features (`FeatureExtractor`, the default `FeatureSpec`) and `PixelEnsemble`.
- `noise-predictor`: the paper's proposal, `segnets.NoisePredictorSegmenter` (backbone decoder + zero-initialised
  head trained, encoder frozen, fixed timestep and noise as the features), DiceCE.
- `unet`: `segnets.build_unet2d` (MONAI DynUNet), DiceCE, nnU-Net-style poly learning rate.
- `transunet`: `segnets.TransUNet2D`, CNN encoder/decoder with MONAI TransformerBlocks at the bottleneck, DiceCE.
The three trained networks share `segnets.train_segnet` (same budget, batch size, patch size, augmentation,
optimiser) and train until their validation Dice is flat: evaluated every `val_every` steps, stopped after
`patience` evaluations without improvement, the best weights kept; the curves are saved and plotted.
Scores per evaluation case over its evaluation slices stacked in 3D (Dice; HD95 in mm with the model-grid pixel
size; `protocol` rules for empty regions), averaged over cases; tables give mean ± sd over seeds.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegLib.errors import InputError
from BrainDiffSegLib.preprocess import ModelGrid, normalize_case, stack_roles

from .fewshot_report import METHODS
from .report import machine, nan_stats, round_nan
from .gridfeatures import ensemble_predict, grid_features

log = logging.getLogger(__name__)
BRATS_VALUES = [0, 1, 2, 4]
LGG_VALUES = [0, 1]


@dataclass
class FewShotOptions:
    ns: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    seeds: tuple[int, ...] = (0, 1)
    methods: tuple[str, ...] = METHODS
    steps: int = 400  # training budget of the trained networks (they stop earlier when the validation is flat)
    batch_size: int = 4
    crop: int = 64  # the trained networks learn on crop x crop patches of the slices (0: whole slices)
    val_cases: int = 1  # the last tuning cases of the dataset, held out for early stopping (0: fixed `steps`)
    val_every: int = 50
    patience: int = 3
    min_steps: int = 150
    lr: float = 2e-3
    n_mlps: int = 3  # diffusion-mlp ensemble size
    timestep: int = 100  # noise-predictor: the feature timestep (same fixed noise as the features)
    brats_slices: tuple[int, int] = (70, 100)  # inclusive axial range of BraTS volumes
    eval_every: int = 3  # evaluate every n-th slice of each evaluation case's range
    max_train_cases: int = 0  # 0: every tuning case of the dataset
    max_eval_cases: int = 0  # 0: every test case of the dataset (spread evenly when limited)
    checkpoint: str | None = None

    def check(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise InputError(f"unknown few-shot method(s) {bad}; choose from {list(METHODS)}")
        if not self.ns or min(self.ns) < 1:
            raise InputError(f"--n values must be at least 1, got {list(self.ns)}")
        if not self.seeds or self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise InputError("give at least one seed, and positive steps, batch size and --eval-every")
        if self.val_cases < 0 or self.val_every < 1 or self.patience < 1 or self.min_steps < 0:
            raise InputError("--val-cases and --min-steps must be >= 0, --val-every and --patience positive")


@dataclass
class SliceSet:
    """Slices of one case on the model grid."""

    name: str
    images: torch.Tensor  # (n, R, S, S) float32 in [-1, 1]
    present: np.ndarray  # (R,) bool
    labels: torch.Tensor  # (n, S, S) class indices
    head: torch.Tensor  # (n, S, S) bool: model pixels overlapping the head
    zs: list[int]
    spacing: tuple[float, float, float]  # mm per model pixel (x, y) and between the slices
    extractor_args: tuple = field(default=(), repr=False)  # (stack, present, grid, zs) for FeatureExtractor


def dataset_of_case(path: Path) -> str:
    return "LGG" if Path(path).name.startswith("TCGA") else "BraTS"


def case_slices(case_dir: Path, dataset: str, opt: FewShotOptions, size: int = 128, evaluation: bool = False
                ) -> SliceSet | None:
    """The experiment's slices of one case (None when the case has no usable slice)."""
    from BrainDiffSegLib.io import load_case

    from .segnets import labels_to_model, native_slices

    case = load_case(case_dir)
    if case.label is None:
        log.warning("%s has no ground truth; skipped", case_dir)
        return None
    norm, fg = normalize_case(case.images)
    stack, present = stack_roles(norm)
    grid = ModelGrid.from_mask(fg, size)
    Z = case.label.shape[-1]
    if dataset == "BraTS":
        lo, hi = opt.brats_slices
        zs = list(range(max(0, lo), min(Z - 1, hi) + 1))
    else:
        zs = [int(z) for z in np.nonzero(case.label.reshape(-1, Z).any(0))[0]]
        zs = list(range(zs[0], zs[-1] + 1)) if zs else []
    step = opt.eval_every if evaluation else 1
    zs = zs[::step]
    if not zs:
        return None
    values = BRATS_VALUES if dataset == "BraTS" else LGG_VALUES
    label = case.label if dataset == "BraTS" else (case.label > 0).astype(np.uint8)
    images = grid.to_model(native_slices(stack, zs))
    labels = labels_to_model(grid, np.moveaxis(label[..., zs], -1, 0), values)
    head = grid.to_model(np.moveaxis(fg[..., zs], -1, 0)[:, None].astype(np.float32), fill=0.0)[:, 0] > 0.5
    px = grid.side / size
    sp = case.spacing
    return SliceSet(case.name, images, present, labels, head, zs, (sp[0] * px, sp[1] * px, sp[2] * step),
                    (stack, present, grid))


def select_cases(data_root: Path, dataset: str, opt: FewShotOptions
                 ) -> tuple[list[Path], list[Path], list[Path]]:
    """(training pool cases, validation cases, evaluation cases) of one dataset from the project's split."""
    from BrainDiffSegLib.splits import data_split

    split = data_split(Path(data_root))
    train = [c for c in split["tuning"] if dataset_of_case(c) == dataset]
    test = [c for c in split["test"] if dataset_of_case(c) == dataset]
    if opt.val_cases and opt.val_cases >= len(train):
        raise InputError(f"{data_root}: {len(train)} {dataset} tuning case(s), too few to hold out --val-cases "
                         f"{opt.val_cases} for validation and keep a training pool")
    val = train[len(train) - opt.val_cases:] if opt.val_cases else []
    train = train[:len(train) - opt.val_cases]
    if opt.max_train_cases:
        train = train[:opt.max_train_cases]
    if opt.max_eval_cases and len(test) > opt.max_eval_cases:
        idx = np.linspace(0, len(test) - 1, opt.max_eval_cases).round().astype(int)
        test = [test[i] for i in idx]
    if not train or not test:
        raise InputError(f"{data_root}: no {dataset} cases in the tuning ({len(train)}) or test ({len(test)}) split")
    return train, val, test


# ------------------------------------------------------------------------------------------------ methods

class _Features:
    """Diffusion features (model grid, head pixels) of slices, computed once per (case, slice) and kept."""

    def __init__(self, unet, cfg):
        from BrainDiffSegLib.propagation.features import FeatureSpec

        self.unet, self.cfg, self.spec = unet, cfg, FeatureSpec()
        self.cache: dict[tuple[str, int], torch.Tensor] = {}

    def of(self, s: SliceSet, idx: list[int]) -> torch.Tensor:
        from BrainDiffSegLib.propagation.features import FeatureExtractor

        missing = [i for i in idx if (s.name, i) not in self.cache]
        if missing:
            stack, present, grid = s.extractor_args
            ex = FeatureExtractor(self.unet, self.cfg, self.spec, stack, present, grid, batch_size=8)
            for i in missing:
                self.cache[(s.name, i)] = self._all_roles(grid_features(ex, [s.zs[i]], s.head[i:i + 1]), s.present)
        return torch.cat([self.cache[(s.name, i)] for i in idx])

    def _all_roles(self, x: torch.Tensor, present: np.ndarray) -> torch.Tensor:
        """One feature layout for every case: the intensity channels (one group per smoothing level, one channel per
        present role) spread over all roles, absent roles 0 (cases of a pool may lack different sequences)."""
        if not self.spec.intensities:
            return x
        r, n_p = len(present), int(present.sum())
        groups = 1 + len(self.spec.smoothing)
        n_d = x.shape[1] - groups * n_p
        out = torch.zeros((x.shape[0], n_d + groups * r), dtype=x.dtype)
        out[:, :n_d] = x[:, :n_d]
        cols = torch.from_numpy(np.nonzero(present)[0])
        for g in range(groups):
            out[:, n_d + g * r + cols] = x[:, n_d + g * n_p:n_d + (g + 1) * n_p]
        return out


def _train_mlp(feats: _Features, train: list[tuple[SliceSet, int]], n_classes: int, opt: FewShotOptions,
               seed: int):
    from BrainDiffSegLib.propagation.classifier import ClassifierOptions, PixelEnsemble

    xs, ys = [], []
    for s, i in train:
        xs.append(feats.of(s, [i]))
        ys.append(s.labels[i][s.head[i]])
    x, y = torch.cat(xs), torch.cat(ys)
    ens = PixelEnsemble(x.shape[1], n_classes, ClassifierOptions(n_models=opt.n_mlps, seed=seed))
    ens.fit(x, y)

    def predict(s: SliceSet) -> torch.Tensor:
        out = torch.zeros(s.labels.shape, dtype=torch.long)
        p, _, _ = ensemble_predict(ens, feats.of(s, list(range(len(s.zs)))))
        out[s.head] = p.argmax(1)
        return out
    return predict


def _build_net(method: str, n_roles: int, n_classes: int, checkpoint: str, opt: FewShotOptions, size: int):
    from .segnets import NoisePredictorSegmenter, TransUNet2D, build_unet2d

    if method == "unet":
        return build_unet2d(2 * n_roles, n_classes)
    if method == "transunet":
        return TransUNet2D(2 * n_roles, n_classes, size=opt.crop or size)  # built for the patches it sees
    if method == "noise-predictor":
        from BrainDiffSegLib.model import load_backbone

        unet, cfg = load_backbone(checkpoint)
        return NoisePredictorSegmenter(unet, cfg, n_classes, t=opt.timestep)
    raise InputError(f"unknown few-shot method {method!r}")


def _train_net(method: str, train: list[tuple[SliceSet, int]], n_classes: int, opt: FewShotOptions, seed: int,
               checkpoint: str, validate=None):
    from .segnets import SegTrainOptions, predict_segnet, train_segnet

    images = torch.stack([s.images[i] for s, i in train])
    present = torch.stack([torch.from_numpy(s.present) for s, _ in train])
    labels = torch.stack([s.labels[i] for s, i in train])
    torch.manual_seed(seed)
    net = _build_net(method, images.shape[1], n_classes, checkpoint, opt, images.shape[-1])
    # DiceCE for every net: the noise predictor with class-weighted cross-entropy over-segmented (BraTS N = 5,
    # seed 0, 3 test cases: WT Dice 0.14, validation 0.14) where DiceCE reached WT 0.84 (validation 0.72)
    loss = "dicece"
    def predict(s: SliceSet) -> torch.Tensor:
        pres = torch.from_numpy(s.present)[None].expand(len(s.zs), -1)
        return predict_segnet(net, s.images, pres, roi=opt.crop).argmax(1)

    hist = train_segnet(net, images, present, labels, n_classes,
                        SegTrainOptions(steps=opt.steps, batch_size=opt.batch_size, lr=opt.lr, loss=loss, seed=seed,
                                        log_every=0, crop=opt.crop, val_every=opt.val_every, patience=opt.patience,
                                        min_steps=opt.min_steps),
                        validate=(lambda _net: validate(predict)) if validate is not None else None)
    predict.history = hist
    return predict


# ------------------------------------------------------------------------------------------------ experiment

def evaluate(pred: torch.Tensor, s: SliceSet, values: list[int]) -> tuple[dict, dict]:
    """Dice and HD95 per region of predicted class indices (n, S, S) against the slice set's labels, in 3D."""
    from BrainDiffSegLib.protocol import region_dice

    from .metrics import region_hd95

    vals = np.array(values)
    p = np.moveaxis(vals[pred.numpy()], 0, -1)
    t = np.moveaxis(vals[s.labels.numpy()], 0, -1)
    brats = values == BRATS_VALUES
    return region_dice(p, t, brats=brats), region_hd95(p, t, spacing=s.spacing, brats=brats)


def validation_dice(predict, sets: list[SliceSet], values: list[int]) -> float:
    """The early-stopping score: Dice averaged over the regions (WT, TC, ET for BraTS; WT for LGG) and the
    validation cases, each case's validation slices stacked in 3D."""
    from BrainDiffSegLib.protocol import region_dice

    vals, brats = np.array(values), values == BRATS_VALUES
    scores = []
    for s in sets:
        p = np.moveaxis(vals[predict(s).numpy()], 0, -1)
        t = np.moveaxis(vals[s.labels.numpy()], 0, -1)
        scores.append(np.mean(list(region_dice(p, t, brats=brats).values())))
    return float(np.mean(scores))


def run_dataset(data_root: Path, dataset: str, opt: FewShotOptions, out: Path) -> list[dict]:
    from BrainDiffSegLib.model import load_backbone, read_config
    from BrainDiffSegLib.resources import default_checkpoint

    from .fewshot_report import plot_dice_vs_n, plot_validation_curves, write_fewshot_paired, write_fewshot_table

    opt.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = opt.checkpoint or str(default_checkpoint())
    values = BRATS_VALUES if dataset == "BraTS" else LGG_VALUES
    train_cases, val_cases, eval_cases = select_cases(data_root, dataset, opt)
    size = read_config(checkpoint).sample_size  # every method works on the backbone's grid
    t0 = time.perf_counter()
    pool_sets = [s for s in (case_slices(c, dataset, opt, size) for c in train_cases) if s is not None]
    eval_sets = [s for s in (case_slices(c, dataset, opt, size, evaluation=True) for c in eval_cases)
                 if s is not None]
    val_sets = [s for s in (case_slices(c, dataset, opt, size, evaluation=True) for c in val_cases)
                if s is not None]
    validate = (lambda predict: validation_dice(predict, val_sets, values)) if val_sets else None
    pool = [(s, i) for s in pool_sets for i in range(len(s.zs))]
    log.info("%s: pool of %d slices from %d tuning cases; %d validation slices of %d tuning cases; %d evaluation "
             "slices of %d test cases (%.1f s)", dataset, len(pool), len(pool_sets),
             sum(len(s.zs) for s in val_sets), len(val_sets), sum(len(s.zs) for s in eval_sets), len(eval_sets),
             time.perf_counter() - t0)
    ns = [n for n in opt.ns if n <= len(pool)]
    if len(ns) < len(opt.ns):
        log.warning("%s: N > pool size (%d) skipped: %s", dataset, len(pool), [n for n in opt.ns if n > len(pool)])
    feats = None
    if "diffusion-mlp" in opt.methods:
        unet, cfg = load_backbone(checkpoint)
        feats = _Features(unet, cfg)
    records = []
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opt).items()}
    for seed in opt.seeds:
        order = np.random.default_rng(seed).permutation(len(pool))
        for n in ns:
            train = [pool[i] for i in order[:n]]
            for method in opt.methods:
                t = time.perf_counter()
                if method == "diffusion-mlp":
                    predict = _train_mlp(feats, train, len(values), opt, seed)
                    hist = {"val_dice": round(validate(predict), 5)} if validate else {}
                else:
                    predict = _train_net(method, train, len(values), opt, seed, checkpoint, validate)
                    h = predict.history
                    hist = {"steps_run": h["steps"]}
                    if validate:
                        hist.update(best_step=h["best_step"], val_dice=h["best_score"], stopped=h["stopped"],
                                    curve=h["curve"])
                t_train = time.perf_counter() - t
                per_case = []
                for s in eval_sets:
                    d, h = evaluate(predict(s), s, values)
                    per_case.append({"case": s.name, "dice": {r: round(v, 4) for r, v in d.items()},
                                     "hd95": {r: round_nan(v) for r, v in h.items()}})
                regions = list(per_case[0]["dice"])
                rec = {"dataset": dataset, "method": method, "n": n, "seed": seed,
                       "train_slices": [f"{s.name}:{s.zs[i]}" for s, i in train],
                       "seconds_train": round(t_train, 2), "seconds_total": round(time.perf_counter() - t, 2),
                       **hist,
                       "dice": {r: round(float(np.mean([c["dice"][r] for c in per_case])), 4) for r in regions},
                       "hd95": {r: round_nan(nan_stats([c["hd95"][r] for c in per_case])[0]) for r in regions},
                       "hd95_undefined": {r: nan_stats([c["hd95"][r] for c in per_case])[3] for r in regions},
                       "cases": per_case}
                records.append(rec)
                log.info("%s seed %d N=%d %-15s Dice %s HD95 %s (%.1f s%s)", dataset, seed, n, method,
                         " ".join(f"{r} {v:.3f}" for r, v in rec["dice"].items()),
                         " ".join(f"{r} {v:.1f}" for r, v in rec["hd95"].items()), rec["seconds_total"],
                         f"; {rec['stopped']} at {rec['steps_run']}, best {rec['best_step']}, validation "
                         f"{rec['val_dice']:.3f}" if "stopped" in rec else "")
                (out / f"fewshot_{dataset.lower()}.json").write_text(json.dumps(
                    {"machine": machine(), "dataset": dataset, "settings": settings, "checkpoint": checkpoint,
                     "train_cases": [s.name for s in pool_sets], "val_cases": [s.name for s in val_sets],
                     "eval_cases": [s.name for s in eval_sets],
                     "eval_slices": {s.name: s.zs for s in eval_sets}, "records": records}, indent=1))
            # tables and plot after every N: an interrupted run leaves usable partial results
            write_fewshot_table(records, out / f"fewshot_{dataset.lower()}.md", dataset)
            write_fewshot_paired(records, out / f"fewshot_{dataset.lower()}_paired.md", dataset)
            plot_dice_vs_n(records, out / f"fewshot_{dataset.lower()}.png", dataset)
            plot_validation_curves(records, out / f"fewshot_{dataset.lower()}_curves.png", dataset)
    return records
