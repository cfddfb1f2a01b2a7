"""Whole-volume propagation time with and without the hybrid's intensity ensemble (results section 11).

Alternates `intensity_weight` 0 and 0.5 in one process (so both see the same machine load), prints the engine's stage
timings and the Dice of each run:

    OMP_NUM_THREADS=1 python scripts/time_hybrid.py --case ../shared/data/brats2021/BraTS2021_00006 --k 1 --threads 1
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from BrainDiffSegLib.io import load_case
from BrainDiffSegLib.options import PropagationOptions
from BrainDiffSegLib.propagation.propagate import propagate
from BrainDiffSegLib.protocol import region_dice, simulate_annotation


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--k", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    case = load_case(a.case)
    annotation, zs = simulate_annotation(case.label, a.k)
    for rep in range(a.repeats):
        for w in (0.0, 0.5):
            t = time.perf_counter()
            res = propagate(case.images, annotation, replace(PropagationOptions(), intensity_weight=w, device="cpu"))
            stages = " ".join(f"{k}={v:.1f}" for k, v in res.timings.items())
            dice = {r: round(v, 3) for r, v in region_dice(res.labels, case.label, zs).items()}
            print(f"intensity_weight={w} repeat {rep}: {time.perf_counter() - t:.1f} s ({stages}) Dice {dice}",
                  flush=True)


if __name__ == "__main__":
    main()
