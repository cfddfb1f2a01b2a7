"""Seeds-mode choices measured on the tuning cases only (issue 23): the classifier's minimum epoch size for a few
hundred seeded pixels (`propagate.SEEDS_EPOCH_SAMPLES`) and the gate with strokes. Same
simulated strokes (`BrainDiffSegLib.strokes`, seed 0) for every variant; Dice over the whole volume; paired
differences to the default with bootstrap intervals (`BrainDiffSegBench.stats.paired_differences`):

    python scripts/seeds_variants.py --variants default one-pass-epochs --out docs/results/seeds/tuning_variants.md
    python scripts/seeds_variants.py --variants watershed no-gate --reference watershed --runs axial:1 mixed:2 \
        --out docs/results/seeds/tuning_gate.md
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

from BrainDiffSegBench.report import paired_table_by_dataset
from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.preprocess import foreground_mask
from BrainDiffSegLib.propagation import propagate as P
from BrainDiffSegLib.propagation.cache import VolumeCache
from BrainDiffSegLib.protocol import region_dice
from BrainDiffSegLib.resources import data_root
from BrainDiffSegLib.splits import data_split
from BrainDiffSegLib.strokes import simulate_strokes

# name -> (module constants of `propagate` patched, options changed)
# (only variants with committed results; the strokes' intensity weight was measured with seeds_gate_variants.py)
VARIANTS = {"default": ({}, {}), "one-pass-epochs": ({"SEEDS_EPOCH_SAMPLES": 0}, {}),
            "watershed": ({}, {"gate": "watershed"}), "no-gate": ({}, {"gate": "none"})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["axial:1", "mixed:2"], help="orientation:k")
    p.add_argument("--variants", nargs="+", default=["default", "one-pass-epochs"], choices=list(VARIANTS))
    p.add_argument("--reference", default="default", help="the variant the others are compared with")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    records = []
    for cdir in data_split(data_root())["tuning"]:
        case = load_case(cdir)
        head = foreground_mask(case.images)
        cache = VolumeCache()  # the features once per case (every seeds-mode run reads them through a cache)
        for run in a.runs:
            orientation, k = run.split(":")
            ann, _ = simulate_strokes(case.label, head, int(k), orientation)
            for name in a.variants:
                patch, changes = VARIANTS[name]
                options = replace(PropagationOptions(annotation_mode="seeds"), **changes)
                with mock.patch.multiple(P, **patch) if patch else mock.patch.object(P, "log", P.log):
                    t = time.perf_counter()
                    res = P.propagate(case.images, ann, options, features=cache)
                rec = {"case": case.name, "k": f"{orientation}:{k}", "method": name, "backbone": None, "seed": 0,
                       "seconds": round(time.perf_counter() - t, 1),
                       "dice": {r: round(v, 4) for r, v in region_dice(res.labels, case.label, []).items()}}
                records.append(rec)
                print(json.dumps(rec), flush=True)
    table = paired_table_by_dataset(records, [(v, a.reference) for v in a.variants if v != a.reference])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(table + "\n```\n" + "\n".join(json.dumps(r) for r in records) + "\n```\n")


if __name__ == "__main__":
    main()
