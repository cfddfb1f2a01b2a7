"""Classifier settings against time and Dice on the tuning cases (issue 25: what is kept must measure faster at equal
Dice; settings are chosen here, never on the test cases).

Per case and k, one `VolumeCache` computes the features once (a warm-up run with the product default); each variant
then runs through it, so a variant's time is an update's (training, gate, prediction; a variant with other features
computes them in its run), and its Dice is compared with the default's on the same case (paired, bootstrap 95 %
interval over cases). The single-setting variants were measured against the default before issue 25 (`before`,
then the default); the second run compares the new default with `before`:

    OMP_NUM_THREADS=2 python scripts/speed_variants.py --max-cases 4 --k 1 3 --out docs/results/speed/variants
    OMP_NUM_THREADS=2 python scripts/speed_variants.py --max-cases 4 --k 1 3 --variants default before \
        --out docs/results/speed/tuning

Fewer or narrower members (a later stop on the issue; every variant trains from scratch, the default too):

    OMP_NUM_THREADS=2 python scripts/speed_variants.py --max-cases 5 --k 1 3 --variants default ensemble-4 \
        ensemble-3 hidden-32-32 ensemble-3-hidden-32-32 --out docs/results/speed/members
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from BrainDiffSegBench.report import machine, paired_table_by_dataset
from BrainDiffSegBench.stats import bootstrap_ci
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import region_dice, simulate_annotation
from BrainDiffSegLib.resources import data_root
from BrainDiffSegLib.splits import data_split

VARIANTS = {  # name -> options changed from the product default ("classifier": its ClassifierOptions fields)
    "default": {},
    # the default before issue 25 (results section 14), and the settings tried against it one at a time
    "before": {"classifier": {"hidden": (128, 32)}, "gate_scale": 1, "precision": "fp32"},
    "pixels-20k": {"classifier": {"max_pixels": 20000}},
    "epochs-6": {"classifier": {"max_epochs": 6}},
    "pixels-20k-epochs-6": {"classifier": {"max_pixels": 20000, "max_epochs": 6}},
    "pixels-10k-epochs-6": {"classifier": {"max_pixels": 10000, "max_epochs": 6}},
    "hidden-64-32": {"classifier": {"hidden": (64, 32)}},
    "gate-scale-2": {"gate_scale": 2},
    "gate-scale-1": {"gate_scale": 1},
    "backbone-bf16": {"precision": "bf16"},
    # fourth/fifth stop: fewer or narrower members (the list), against the default of that time (5 + 5 members
    # of 64-32)
    "ensemble-4": {"classifier": {"n_models": 4}},
    "ensemble-3": {"classifier": {"n_models": 3}},
    "hidden-32-32": {"classifier": {"hidden": (32, 32)}},
    "ensemble-3-hidden-32-32": {"classifier": {"n_models": 3, "hidden": (32, 32)}},
}


def options_of(name: str, from_scratch: bool = False) -> PropagationOptions:
    """The variant's options; `from_scratch`: no warm start from the cache's last ensemble (`warm_epochs` 0), so that
    every variant, the default too, trains its classifier as a first run does (with a warm start the default would
    reuse the warm-up run's ensemble and time no training)."""
    opt = PropagationOptions()
    change = dict(VARIANTS[name])
    classifier = change.pop("classifier", {})
    if from_scratch:
        classifier = {**classifier, "warm_epochs": 0}
    return replace(opt, classifier=replace(opt.classifier, **classifier), **change)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="data root (default $BRAINDIFFSEG_DATA)")
    p.add_argument("--max-cases", type=int, default=3, help="the first N BraTS and the first N LGG tuning cases")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--out", required=True)
    p.add_argument("--from-records", type=Path, default=None,
                   help="write OUT/README.md from these records.json instead of running (the tables only)")
    a = p.parse_args()
    if a.from_records is not None:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "README.md").write_text(table(json.loads(a.from_records.read_text())["records"], a))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    tuning = data_split(Path(a.data) if a.data else data_root())["tuning"]
    brats = [c for c in tuning if "rats" in c.name][:a.max_cases]
    lgg = [c for c in tuning if c.name.startswith("TCGA")][:a.max_cases]
    records = []
    for case_dir in brats + lgg:
        case = load_case(case_dir)
        for k in a.k:
            ann, zs = simulate_annotation(case.label, k)
            cache = VolumeCache()
            propagate(case.images, ann, options_of("default"), features=cache)  # warm-up: the features
            for name in a.variants:
                t = time.perf_counter()
                res = propagate(case.images, ann, options_of(name, from_scratch=True), features=cache)
                records.append({"case": case.name, "dataset": "BraTS" if "rats" in case.name else "LGG", "k": k,
                                "variant": name, "seconds": time.perf_counter() - t,
                                "timings": res.timings, "dice": region_dice(res.labels, case.label, zs)})
                print(json.dumps(records[-1]), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "records.json").write_text(json.dumps({"machine": machine(), "records": records}, indent=1))
    (out / "README.md").write_text(table(records, a))


def table(records: list[dict], a) -> str:
    lines = [f"# Classifier settings: time and Dice on the tuning cases\n\n`{machine()}`; first {a.max_cases} BraTS "
             f"and LGG tuning cases, k = {' and '.join(map(str, a.k))}; each variant's time is a run through the "
             "case's warm feature cache (the features computed once), its classifier trained from scratch.\n",
             "| variant | train s | predict s | total s | BraTS WT | TC | ET | LGG WT | paired Dice - default, worst region "
             "(mean, 95 % interval) |", "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["case"], r["k"], r["variant"]): r for r in records}
    for name in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == name]

        def mean_dice(dataset, region):
            v = [r["dice"].get(region) for r in rs if r["dataset"] == dataset]
            v = [x for x in v if x is not None and x == x]
            return f"{np.mean(v):.3f}" if v else "–"

        worst = None
        for region in ("WT", "TC", "ET"):
            diffs = [r["dice"][region] - by[(r["case"], r["k"], "default")]["dice"][region] for r in rs
                     if region in r["dice"] and r["dice"][region] == r["dice"][region]
                     and (r["case"], r["k"], "default") in by]
            if diffs:
                m, lo, hi = bootstrap_ci(diffs)
                if worst is None or m < worst[1]:
                    worst = (region, m, lo, hi)
        w = f"{worst[0]} {worst[1]:+.3f} [{worst[2]:+.3f}, {worst[3]:+.3f}]" if worst else "–"
        lines.append(f"| {name} | {np.mean([r['timings']['train_classifier'] for r in rs]):.2f} | "
                     f"{np.mean([r['timings']['predict'] for r in rs]):.2f} | {np.mean([r['seconds'] for r in rs]):.2f} | "
                     f"{mean_dice('BraTS', 'WT')} | {mean_dice('BraTS', 'TC')} | {mean_dice('BraTS', 'ET')} | "
                     f"{mean_dice('LGG', 'WT')} | {w} |")
    return "\n".join(lines) + "\n\n" + by_k_table(records)


def by_k_table(records: list[dict]) -> str:
    """Each variant minus the default per dataset, k and region (the experiment scripts' one paired table,
    `report.paired_table_by_dataset`)."""
    names = [v for v in dict.fromkeys(r["variant"] for r in records) if v != "default"]
    return ("Paired differences from the default per dataset, k and region:\n\n"
            + paired_table_by_dataset([dict(r, method=r["variant"]) for r in records],
                                      [(v, "default") for v in names], run="k"))


if __name__ == "__main__":
    main()
