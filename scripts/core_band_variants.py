"""The core's border for strokes (issue 23: BraTS TC at 1 axial slice of strokes), chosen on the tuning cases only.
Each BraTS tuning case and run is propagated once with today's defaults and the core's border left as the classifier
drew it (`core_band` 0), keeping the class probabilities (`--dump`); `refine.core_boundary` is then applied offline
with each band width to the same labels (`--evaluate`), which is what `propagate` does with `core_band` N (the
labels and probabilities are those of a run; a test checks the two agree):

    python scripts/core_band_variants.py --dump /tmp/core_band [--part 0/2]
    python scripts/core_band_variants.py --evaluate /tmp/core_band --out docs/results/seeds/tuning_core_band.md

Same simulated strokes (`BrainDiffSegLib.strokes`, seed 0) as the benchmarks; Dice over the whole volume; paired
differences to band 0 (`BrainDiffSegBench.report.paired_table_by_dataset`). LGG's 0/1 masks have no core: the
refinement leaves them unchanged, so they are not run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from BrainDiffSegBench.report import paired_table_by_dataset
from BrainDiffSegLib.constants import BACKGROUND_LABEL
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.preprocess import is_brats_labels, label_values
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.propagation.refine import core_boundary, core_choice
from BrainDiffSegLib.protocol import region_dice
from BrainDiffSegLib.resources import data_root
from BrainDiffSegLib.splits import data_split
from seeds_gate_variants import stroke_runs  # scripts/: the strokes of each tuning case and run

RUNS = ("axial:1", "axial:2", "axial:3", "mixed:2")
BANDS = (1, 2, 3)


def brats_tuning_cases() -> list[Path]:
    return [c for c in data_split(data_root())["tuning"] if is_brats_labels(label_values(load_case(c).label))]


def dump(out: Path, part: tuple[int, int]) -> None:
    for case, run, path, ann, cache in stroke_runs(brats_tuning_cases()[part[0]::part[1]], list(RUNS), out):
        t = time.perf_counter()
        res = propagate(case.images, ann, PropagationOptions(annotation_mode="seeds", core_band=0),
                        features=cache, keep_probabilities=True)
        choice = core_choice(res.probabilities, res.label_values)
        np.savez_compressed(path, labels=res.labels.astype(np.int8), annotation=ann.astype(np.int16),
                            choice=choice.astype(np.int8))
        print(f"{case.name} {run} {time.perf_counter() - t:.1f} s", flush=True)


def evaluate(src: Path, out: Path) -> None:
    dirs = {c.name: c for c in brats_tuning_cases()}
    records = []
    for f in sorted(src.glob("*.npz")):
        name, run = f.stem.split("__")
        run = run.replace("_", ":")
        case = load_case(dirs[name])
        d = np.load(f)
        labels, ann, choice = d["labels"].astype(np.int16), d["annotation"], d["choice"].astype(np.int16)
        known = ann > 0
        seeded = np.where(ann == BACKGROUND_LABEL, 0, ann).astype(np.int16)
        for band in (0,) + BANDS:
            t = time.perf_counter()
            res = core_boundary(case.images, labels, seeded, known, choice, band)
            records.append({"case": name, "k": run, "method": f"band-{band}", "backbone": None, "seed": 0,
                            "seconds": round(time.perf_counter() - t, 2),
                            "dice": {r: round(v, 4) for r, v in region_dice(res, case.label, []).items()}})
            print(json.dumps(records[-1]), flush=True)
    table = paired_table_by_dataset(records, [(f"band-{b}", "band-0") for b in BANDS], run="run")
    score = {b: float(np.mean([r["dice"][region] for r in records if r["method"] == f"band-{b}"
                               for region in ("TC", "ET")])) for b in (0,) + BANDS}
    seconds = {b: float(np.mean([r["seconds"] for r in records if r["method"] == f"band-{b}"])) for b in BANDS}
    lines = ["# The core's border for strokes, on the BraTS tuning cases", "",
             "`python scripts/core_band_variants.py --dump DIR` then `--evaluate DIR --out ...`; the product's "
             "defaults but `core_band`; runs: strokes on 1, 2, 3 axial slices and on a sagittal + a coronal slice "
             "(mixed:2). WT does not change (the refinement moves the border inside the whole tumour).", "",
             table, "| band | mean of TC and ET over the runs | mean seconds |", "|---|---|---|"]
    lines += [f"| {b} | {score[b]:.4f} | {seconds.get(b, 0.0):.2f} |" for b in (0,) + BANDS]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n\n```\n" + "\n".join(json.dumps(r) for r in records) + "\n```\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dump", type=Path)
    p.add_argument("--part", default="0/1", help="i/n: every n-th BraTS tuning case from the i-th (parallel dumps)")
    p.add_argument("--evaluate", type=Path)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.dump:
        dump(a.dump, tuple(int(v) for v in a.part.split("/")))
    if a.evaluate:
        if not a.out:
            p.error("--evaluate needs --out")
        evaluate(a.evaluate, a.out)


if __name__ == "__main__":
    main()
