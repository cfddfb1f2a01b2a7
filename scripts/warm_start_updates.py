"""Issue 25: does warm-starting the classifier on an update keep the Dice of a from-scratch update? On the tuning
cases (or --data), each case is propagated as a user would update it: the k = 1 protocol slice, then the k = 3
protocol slices added one at a time (complete slices, or with `--annotation-mode seeds` the seed simulator's strokes
on them, as `benchmark update`), through one `VolumeCache` per variant (`--warm-epochs 0` always runs: every
update from scratch, the variant every other is paired with; `--against N` pairs them with warm-N too). Records (case, k = slices annotated, variant, Dice, seconds, training seconds) go to
OUT/results.json; OUT/table.md pairs every variant with `warm-0` per dataset, k and region (bootstrap 95 % intervals
of the per-case differences) and gives the mean training and total seconds per update:

    python scripts/warm_start_updates.py --warm-epochs 0 2 4 --out docs/results/speed/warm_start
    python scripts/warm_start_updates.py --warm-epochs 0 3 4 --against 4 --out docs/results/speed/warm3_tuning
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegBench.report import dataset_of, machine as report_machine, paired_table_by_dataset
from BrainDiffSegBench.update import painter, update_order
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import region_dice
from BrainDiffSegLib.resources import data_root
from BrainDiffSegLib.splits import data_split


def run_case(path: Path, warm_epochs: list[int], mode: str) -> list[dict]:
    case = load_case(path)
    order = update_order(case.label)
    records = []
    for n in warm_epochs:
        opt = PropagationOptions(device="cpu", annotation_mode=mode)
        opt = replace(opt, classifier=replace(opt.classifier, warm_epochs=n))
        paint = painter(case, opt, order)  # complete slices, or the seed simulator's strokes on them
        cache = VolumeCache()
        for i in range(len(order)):
            zs = sorted(order[:i + 1])
            t = time.perf_counter()
            res = propagate(case.images, paint(zs), opt, features=cache)
            seconds = time.perf_counter() - t
            records.append({"case": case.name, "k": len(zs), "step": i, "method": f"warm-{n}", "backbone": None,
                            "seconds": round(seconds, 3), "train": round(res.timings["train_classifier"], 3),
                            "dice": {r: round(v, 4) for r, v in
                                     region_dice(res.labels, case.label, res.annotated_slices).items()}})
            print(json.dumps(records[-1]), flush=True)
    return records


def table(records: list[dict], variants: list[str], against: str = "warm-0") -> str:
    """Every variant paired with warm-0 (from scratch), and, with `against` another variant (e.g. the default
    warm-4), with that one too."""
    updates = [r for r in records if r["step"] > 0]
    pairs = [(v, "warm-0") for v in variants if v != "warm-0"]
    pairs += [(v, against) for v in variants if against != "warm-0" and v not in ("warm-0", against)]
    lines = [paired_table_by_dataset(updates, pairs, run="slices")]
    lines += ["| dataset | variant | updates | mean training s | mean total s |", "|---|---|---|---|---|"]
    for dataset in ("BraTS", "LGG"):
        for v in variants:
            ups = [r for r in updates if r["method"] == v and dataset_of(r["case"]) == dataset]
            if ups:
                lines.append(f"| {dataset} | {v} | {len(ups)} | {np.mean([r['train'] for r in ups]):.2f} | "
                             f"{np.mean([r['seconds'] for r in ups]):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, nargs="*", default=None, help="case folders (default: the tuning cases)")
    p.add_argument("--warm-epochs", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--annotation-mode", choices=("slices", "seeds"), default="slices",
                   help="complete slices, or the seed simulator's strokes on the same slices (`benchmark update`)")
    p.add_argument("--against", type=int, default=0,
                   help="also pair every variant with this one (e.g. 4, the default warm start)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)  # a script of its own: its process is ours
    cases = a.data or data_split(data_root())["tuning"]
    warm = sorted(set(a.warm_epochs) | {0, a.against})
    records = [r for c in cases for r in run_case(Path(c), warm, a.annotation_mode)]
    a.out.mkdir(parents=True, exist_ok=True)
    machine = report_machine()
    (a.out / "results.json").write_text(json.dumps({"machine": machine, "records": records}, indent=1))
    text = (f"# Warm-started updates against from-scratch updates ({len(cases)} cases)\n\n"
            f"`python scripts/warm_start_updates.py --warm-epochs {' '.join(map(str, warm))} "
            f"--annotation-mode {a.annotation_mode} --against {a.against} --out {a.out}`; "
            f"machine: {machine}. Updates only (slices 2, 3, ...); warm-0: every update from scratch; the product's "
            f"default for complete slices is warm-{PropagationOptions().classifier.warm_epochs}."
            "\n\n" + table(records, [f"warm-{n}" for n in warm], f"warm-{a.against}"))
    (a.out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
