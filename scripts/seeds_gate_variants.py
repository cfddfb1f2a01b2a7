"""Gates for strokes (issue 23), chosen on the tuning cases only. With strokes the watershed gate's Background
markers (a loop a few voxels around the tumour of one slice) lie inside the tumour of the neighbouring slices, and
the background side floods it (results section 15); with no gate the classifier's false positives connected to the
tumour stay. Every gate here works on the classifier's labels and probabilities, so each (case, run) is predicted
once, ungated, over the whole head (`--dump`), and the gates are then compared offline on the saved predictions
(the same labels a gated run gives inside its gate: `propagate` predicts only inside the gate for speed):

    python scripts/seeds_gate_variants.py --dump /tmp/gates --runs axial:1 axial:2 axial:3 mixed:2 [--part 0/2]
    python scripts/seeds_gate_variants.py --evaluate /tmp/gates --out docs/results/seeds/tuning_strokes_gate.md

and classifier settings under the chosen gate (`--set` at `--dump`, one folder each; the first folder is the
reference):

    python scripts/seeds_gate_variants.py --dump /tmp/iw07 --set intensity_weight=0.7
    python scripts/seeds_gate_variants.py --evaluate /tmp/gates /tmp/iw07 --variants core-markers-p0.9-r1 --out F

Same simulated strokes (`BrainDiffSegLib.strokes`, seed 0) as the benchmarks; Dice over the whole volume; paired
differences to the watershed gate (`BrainDiffSegBench.stats.paired_differences`).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from unittest import mock
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from BrainDiffSegBench.report import dataset_of, paired_table_by_dataset
from BrainDiffSegLib.constants import BACKGROUND_LABEL
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.preprocess import foreground_mask
from BrainDiffSegLib.propagation import refine as R
from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.propagation import propagate as P
from BrainDiffSegLib.propagation.propagate import keep_connected_to_annotation, propagate
from BrainDiffSegLib.protocol import region_dice
from BrainDiffSegLib.resources import data_root
from BrainDiffSegLib.splits import data_split
from BrainDiffSegLib.strokes import simulate_strokes

log = logging.getLogger("seeds_gate_variants")


def stroke_runs(cases: list[Path], runs: list[str], out: Path):
    """(case, run, path, strokes, cache) for each case folder and run ("orientation:k") whose `out` file
    (CASE__orientation_k.npz) is not there yet: the simulator's strokes (seed 0), one feature cache per case."""
    out.mkdir(parents=True, exist_ok=True)
    for cdir in cases:
        case = load_case(cdir)
        head = foreground_mask(case.images)
        cache = VolumeCache()
        for run in runs:
            path = out / f"{case.name}__{run.replace(':', '_')}.npz"
            if path.exists():
                continue
            orientation, k = run.split(":")
            ann, _ = simulate_strokes(case.label, head, int(k), orientation)
            yield case, run, path, ann, cache


def dump(out: Path, runs: list[str], part: tuple[int, int], changes: dict | None = None,
         patch: dict | None = None) -> None:
    cases = data_split(data_root())["tuning"]
    for case, run, path, ann, cache in stroke_runs(cases[part[0]::part[1]], runs, out):
        opt = replace(PropagationOptions(annotation_mode="seeds"), gate="none", postprocess=False, **(changes or {}))
        t = time.perf_counter()
        with mock.patch.multiple(P, **(patch or {})) if patch else mock.patch.object(P, "log", P.log):
            res = propagate(case.images, ann, opt, features=cache, keep_probabilities=True)
        np.savez_compressed(path, labels=res.labels.astype(np.int8), annotation=ann.astype(np.int8),
                            tumour=(1.0 - res.probabilities[..., 0]).astype(np.float16))
        print(f"{case.name} {run} {time.perf_counter() - t:.1f} s", flush=True)


def _evaluate_case(cdir: Path, files: list[Path], names: list[str]) -> list[dict]:
    case = load_case(cdir)
    head = foreground_mask(case.images)
    records = []
    for f in files:
        run = f.stem.split("__")[1].replace("_", ":")
        d = np.load(f)
        ann = d["annotation"].astype(np.int16)
        known = ann > 0
        seeded = np.where(ann == BACKGROUND_LABEL, 0, ann)
        labels, tumour = d["labels"].astype(np.int16), d["tumour"].astype(np.float32)
        labels[~head] = 0
        for vname in names:
            t = time.perf_counter()
            g = VARIANTS[vname](case.images, labels, tumour, seeded, known, head)
            seconds = time.perf_counter() - t
            res = np.where(g, labels, 0).astype(np.int16)
            res[known] = seeded[known]
            res = keep_connected_to_annotation(res, seeded)
            records.append({"case": case.name, "k": run, "method": vname, "backbone": None, "seed": 0,
                            "seconds": round(seconds, 2),
                            "dice": {r: round(v, 4) for r, v in region_dice(res, case.label, []).items()}})
    return records


def evaluate(srcs: list[Path], out: Path, variants: list[str], workers: int) -> None:
    """Every gate of `variants` on the predictions saved in `srcs[0]`; or, given several folders (predictions with
    other classifier settings, `--set`), the first of `variants` on each, named by its folder."""
    dirs = {Path(c).name: c for c in data_split(data_root())["tuning"]}
    records = []
    for src in srcs:
        by_case: dict[str, list[Path]] = {}
        for f in sorted(src.glob("*.npz")):
            by_case.setdefault(f.name.split("__")[0], []).append(f)
        names = variants if len(srcs) == 1 else variants[:1]
        with ProcessPoolExecutor(workers) as pool:
            for recs in pool.map(_evaluate_case, [dirs[n] for n in sorted(by_case)],
                                 [by_case[n] for n in sorted(by_case)], [names] * len(by_case)):
                for r in recs:
                    if len(srcs) > 1:
                        r["method"] = src.name
                    records.append(r)
                    print(json.dumps(r), flush=True)
    if len(srcs) > 1:
        variants = [s.name for s in srcs]
    ref = variants[0]
    lines = [paired_table_by_dataset(records, [(v, ref) for v in variants[1:]])]
    means = ["| dataset | variant | run | region | mean Dice |", "|---|---|---|---|---|"]
    for dataset in ("BraTS", "LGG"):
        recs = [r for r in records if dataset_of(r["case"]) == dataset]
        for v in variants:
            for run in sorted({r["k"] for r in recs}):
                rs = [r for r in recs if r["method"] == v and r["k"] == run]
                for region in ("WT", "TC", "ET"):
                    vals = [r["dice"][region] for r in rs if region in r["dice"]]
                    if vals:
                        means.append(f"| {dataset} | {v} | {run} | {region} | {np.mean(vals):.4f} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines + means) + "\n\n```\n" + "\n".join(json.dumps(r) for r in records) + "\n```\n")


def _watershed(images, labels, tumour, seeded, known, head):
    return R.watershed_gate(images, seeded, [], 2.0, head, 1, known | ~head)


def _core(labels, tumour, seeded, p, r):
    """The classifier's confident tumour (P(tumour) >= p) eroded by r voxels, in components holding a tumour seed."""
    return R.classifier_core(labels, tumour, seeded, p, r)


VARIANTS = {
    "watershed": lambda im, lab, tu, se, kn, hd: _watershed(im, lab, tu, se, kn, hd),
    "none": lambda im, lab, tu, se, kn, hd: np.ones(lab.shape, bool),
}
for _p in (0.5, 0.9):
    for _r in (1, 2, 3):
        VARIANTS[f"core-markers-p{_p}-r{_r}"] = (
            lambda im, lab, tu, se, kn, hd, p=_p, r=_r: R.core_gate(im, lab, tu, se, kn | ~hd, 2.0, hd, 1, p, r))
for _r in (1, 2, 3):
    # the classifier's tumour opened by r (its thin bridges to false positives cut), in components with a seed
    VARIANTS[f"opened-r{_r}"] = (lambda im, lab, tu, se, kn, hd, r=_r: R.within_margin(
        _core(lab, tu, se, 0.5, r) | (se > 0), r + 2.0))
    VARIANTS[f"union-opened-r{_r}"] = (lambda im, lab, tu, se, kn, hd, r=_r: R.within_margin(
        _core(lab, tu, se, 0.5, r) | (se > 0), r + 2.0) | _watershed(im, lab, tu, se, kn, hd))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", type=Path)
    p.add_argument("--runs", nargs="+", default=["axial:1", "axial:2", "axial:3", "mixed:2"])
    p.add_argument("--part", default="0/1", help="i/n: every n-th tuning case from the i-th (parallel dumps)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="--dump: PropagationOptions fields changed (numbers), e.g. intensity_weight=0.7")
    p.add_argument("--patch", nargs="*", default=[], metavar="CONSTANT=VALUE",
                   help="--dump: module constants of propagation.propagate changed, e.g. SEEDS_CLASS_WEIGHT_POWER=0.5")
    p.add_argument("--evaluate", type=Path, nargs="+", help="one folder of --dump: every gate; several: the first "
                   "of --variants on each, compared with the first folder")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if a.dump:
        i, n = (int(v) for v in a.part.split("/"))
        dump(a.dump, a.runs, (i, n), {k: float(v) for k, v in (x.split("=") for x in a.set)},
             {k: float(v) for k, v in (x.split("=") for x in a.patch)})
    if a.evaluate:
        variants = a.variants if len(a.evaluate) > 1 else ["watershed"] + [v for v in a.variants if v != "watershed"]
        evaluate(a.evaluate, a.out, variants, a.workers)


if __name__ == "__main__":
    main()
